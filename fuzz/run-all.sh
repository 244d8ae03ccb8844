#!/usr/bin/env bash
# Build every fuzz target once, then run each for SECONDS (one at a time, nice 19,
# one libFuzzer process) and print one summary line per target.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]      # SECONDS defaults to 60; all targets if none given
#
# Environment:
#   FUZZ_RUNS=N        also stop a target after N executions (libFuzzer -runs=N)
#   FUZZ_KEEP_GOING=1  fork mode (-fork=1 -ignore_crashes=1 ...): keep fuzzing after a crash,
#                      still one worker; every crash input is saved in artifacts/<target>/
#   FUZZ_TIMEOUT=S     per-input timeout in seconds (default 25)
#   FUZZ_ARGS="..."    extra libFuzzer flags
#   FUZZ_NO_BUILD=1    use the binaries already in fuzz/target (no rebuild)
#
# Crash inputs go to fuzz/artifacts/<target>/, libFuzzer logs to fuzz/artifacts/logs/.
# Exit status: 0 if no target crashed (or timed out / ran out of memory), 1 otherwise.
set -uo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"

SECONDS_PER_TARGET="${1:-60}"
shift || true
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi

if [[ -z "${FUZZ_NO_BUILD:-}" ]]; then
    echo "building ${#TARGETS[@]} target(s)..." >&2
    if ! nice -n 19 cargo +nightly fuzz build >&2; then
        echo "build failed" >&2
        exit 2
    fi
fi
BIN_DIR="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"

[[ -d corpus ]] || ./seed.sh >&2
mkdir -p artifacts/logs

failed=0
summary=()
for t in "${TARGETS[@]}"; do
    bin="$BIN_DIR/$t"
    if [[ ! -x "$bin" ]]; then
        summary+=("$(printf '%-18s %s' "$t" "no such target")")
        failed=1
        continue
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/logs/$t.log"
    args=(
        "-max_total_time=$SECONDS_PER_TARGET"
        "-timeout=${FUZZ_TIMEOUT:-25}"
        "-print_final_stats=1"
        "-artifact_prefix=$FUZZ_DIR/artifacts/$t/"
    )
    [[ -n "${FUZZ_RUNS:-}" ]] && args+=("-runs=$FUZZ_RUNS")
    if [[ -n "${FUZZ_KEEP_GOING:-}" ]]; then
        args+=("-fork=1" "-ignore_crashes=1" "-ignore_timeouts=1" "-ignore_ooms=1")
    fi
    # shellcheck disable=SC2206
    [[ -n "${FUZZ_ARGS:-}" ]] && args+=(${FUZZ_ARGS})

    echo "fuzzing $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)" >&2
    start=$(date +%s)
    nice -n 19 "$bin" "${args[@]}" "corpus/$t" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))

    # Executions: the final stats line, else libFuzzer's last "#N" status line.
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    [[ -z "$execs" ]] && execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    [[ -z "$execs" ]] && execs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+')
    execs=${execs:-0}
    rate=$(( took > 0 ? execs / took : execs ))

    artifacts=$(grep -oE '(Test unit written to|Test unit written to:) [^ ]+' "$log" \
        | awk '{print $NF}' | sort -u | tr '\n' ' ')
    # Fork mode names crash inputs in the log with "CRASH:" lines.
    [[ -z "$artifacts" ]] && artifacts=$(grep -oE 'CRASH: [^ ]+' "$log" | awk '{print $2}' | sort -u | tr '\n' ' ')
    if [[ $rc -eq 0 && -z "$artifacts" ]]; then
        result="ok"
    else
        kind="crash"
        grep -q 'ERROR: libFuzzer: timeout' "$log" && kind="timeout"
        grep -q 'ERROR: libFuzzer: out-of-memory' "$log" && kind="out-of-memory"
        result="$kind (exit $rc) ${artifacts:-see $log}"
        failed=1
    fi
    summary+=("$(printf '%-18s execs=%-11s time=%5ss exec/s=%-7s %s' "$t" "$execs" "$took" "$rate" "$result")")
    echo "${summary[-1]}" >&2
done

echo
echo "== summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
