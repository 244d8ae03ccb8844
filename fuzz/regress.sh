#!/usr/bin/env bash
# Run every committed regression input (fuzz/regressions/<target>/<name>) through its
# target once. A regression is a minimized input that crashed a target when it was
# found; once the bug is fixed it must pass.
#
#   fuzz/regress.sh            # all targets that have regressions
#   fuzz/regress.sh TARGET...  # only these
#
# Exit status: 0 if every input passes, 1 if any still crashes.
set -uo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    TARGETS=()
    for d in regressions/*/; do
        [[ -d "$d" ]] && TARGETS+=("$(basename "$d")")
    done
fi
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    echo "no regressions"
    exit 0
fi

nice -n 19 cargo +nightly fuzz build >&2 || exit 2
BIN_DIR="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"

failed=0
for t in "${TARGETS[@]}"; do
    for f in regressions/"$t"/*; do
        [[ -f "$f" ]] || continue
        [[ "$(basename "$f")" == *.md ]] && continue
        if out=$("$BIN_DIR/$t" -runs=1 "$f" 2>&1); then
            printf 'pass  %s\n' "$f"
        else
            failed=1
            msg=$(grep -m1 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" <<<"$out")
            printf 'FAIL  %s\n      %s\n' "$f" "${msg:-$(tail -1 <<<"$out")}"
        fi
    done
done
exit "$failed"
