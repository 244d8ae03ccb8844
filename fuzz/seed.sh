#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/corpus/<target>/ from ../testdata and small
# hand-made inputs. The corpus directories are not committed; run this first.
#
#   fuzz/seed.sh            # (re)create seeds; existing corpus entries are kept
#   fuzz/seed.sh --clean    # delete fuzz/corpus first
#
# Needs python3 (standard library only) and the openssl CLI (for the RA-TLS certificates).
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ_DIR")"
CORPUS="$FUZZ_DIR/corpus"

if [[ "${1:-}" == "--clean" ]]; then
    rm -rf "$CORPUS"
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

FUZZ_DIR="$FUZZ_DIR" ROOT="$ROOT" CORPUS="$CORPUS" TMP="$TMP" python3 - <<'PY'
import json, os, struct, subprocess, base64

root, corpus, tmp = os.environ["ROOT"], os.environ["CORPUS"], os.environ["TMP"]
testdata = os.path.join(root, "testdata")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(rel):
    with open(os.path.join(testdata, rel), "rb") as f:
        return f.read()


getquotes = {n: json.loads(read("dstack/" + n)) for n in ("getquote-tdx-lite.json", "getquote-quote-report.json")}
attest_json = read("dstack/attestation-tdx-lite.json")
attest_hex = json.loads(attest_json)["attestation"]
sim_attest = read("dstack/simulator-attestation.bin")

# ---------------------------------------------------------------- pgwire
def frame(tag, body):
    return (tag or b"") + struct.pack(">i", len(body) + 4) + body

def cstr(s):
    return s.encode() + b"\0"

ssl = struct.pack(">ii", 8, 80877103)
gss = struct.pack(">ii", 8, 80877104)
cancel = struct.pack(">iii", 16, 80877102, 4242) + b"\x01\x02\x03\x04"
cancel32 = struct.pack(">iii", 12 + 32, 80877102, 4242) + bytes(range(32))
def startup(minor, params):
    body = struct.pack(">i", (3 << 16) | minor) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body
st = startup(0, [("user", "postgres"), ("database", "app"), ("application_name", "psql")])
st32 = startup(2, [("user", "app_rw"), ("_pq_.test", "on")])
for name, data in {
    "ssl_request": ssl, "gssenc_request": gss, "cancel": cancel, "cancel_v32": cancel32,
    "startup": st, "startup_v32": st32, "ssl_then_startup": ssl + st,
    "startup_minimal": startup(0, [("user", "u")]),
}.items():
    put("startup_packet", name, data)

R = lambda code, rest=b"": frame(b"R", struct.pack(">I", code) + rest)
backend = {
    "auth_sasl": R(10, cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0"),
    "auth_continue": R(11, b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4096"),
    "auth_final": R(12, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
    "auth_ok": R(0),
    "auth_md5": R(5, b"\x01\x02\x03\x04"),
    "auth_cleartext": R(3),
    "parameter_status": frame(b"S", cstr("server_version") + cstr("17.2")),
    "backend_key_data": frame(b"K", struct.pack(">i", 1234) + b"\xaa\xbb\xcc\xdd"),
    "ready_for_query": frame(b"Z", b"I"),
    "error_response": frame(b"E", b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0"),
    "notice_response": frame(b"N", b"SNOTICE\0C00000\0Mhello\0\0"),
    "negotiate_protocol_version": frame(b"v", struct.pack(">II", 0, 1) + cstr("_pq_.x")),
    "password_message": frame(b"p", cstr("secret")),
    "sasl_initial_response": frame(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", 11) + b"n,,n=,r=abc"),
    "sasl_initial_response_none": frame(b"p", cstr("SCRAM-SHA-256") + struct.pack(">i", -1)),
}
for name, data in backend.items():
    put("backend_messages", name, b"\0" + data)
put("backend_messages", "login_stream", b"\0" + b"".join(backend[k] for k in (
    "auth_sasl", "auth_continue", "auth_final", "auth_ok", "parameter_status",
    "backend_key_data", "ready_for_query")))

# ---------------------------------------------------------------- scram
# flags: bit0 cb Some(32 bytes), bits1-2 mechanism (0 plain, 1 PLUS, 2 from extra, 3 ""),
# bit3 substitute @N/@C/@P in client-final, bit4 replay, bit5 cb = tls_server_end_point(extra),
# bit6 verifier with two passwords. Parts separated by 0xFF.
def scram(flags, first, final=b"", extra=None):
    data = bytes([flags]) + first + b"\xff" + final
    if extra is not None:
        data += b"\xff" + extra
    return data
ok_final = b"c=@C,r=@N,p=@P"
ca_pem = json.loads(read("dstack/simulator-appkeys.json"))["ca_cert"]
ca_der = base64.b64decode("".join(l for l in ca_pem.splitlines() if "-----" not in l))
for name, data in {
    "client_first_only": scram(0, b"n,,n=,r=abc"),
    "full_exchange": scram(0x08, b"n,,n=,r=abc", ok_final),
    "full_exchange_y": scram(0x08, b"y,,n=user,r=abc", ok_final),
    "full_exchange_plus": scram(0x0b, b"p=tls-server-end-point,,n=,r=abc", ok_final),
    "full_exchange_two_keys": scram(0x48, b"n,,n=,r=rOprNGfwEbeRWgbNEkqO", ok_final),
    "full_exchange_replay": scram(0x18, b"n,,n=,r=abc,x=ext", ok_final),
    "plus_cert_hash": scram(0x2a, b"p=tls-server-end-point,,n=,r=abc", ok_final, ca_der),
    "literal_final": scram(0x00, b"n,,n=,r=abc", b"c=biws,r=abcXXXXXXXXXXXXXXXXXXXXXXXX,p=" + b"A" * 43 + b"="),
    "mechanism_from_extra": scram(0x04, b"n,,n=,r=abc", b"", b"SCRAM-SHA-256"),
}.items():
    put("scram", name, data)

# ---------------------------------------------------------------- quotes
tdx_quote = read("dcap/tdx_quote")
put("quote", "tdx_quote", tdx_quote)
put("quote", "tdx_quote_outdated", read("dcap/tdx_quote_outdated"))
put("quote", "sgx_quote", read("dcap/sgx_quote"))
put("quote", "dstack_near_quote_hex", read("dstack-near/quote.hex"))
for n, g in getquotes.items():
    put("quote", n.replace(".json", "") + "_quote.bin", bytes.fromhex(g["quote"]))
put("quote", "tdx_quote_0x_hex", "0x" + tdx_quote.hex() + "\n")
wrapped = tdx_quote.hex()
put("quote", "tdx_quote_xxd", "\n".join(wrapped[i:i + 60] for i in range(0, len(wrapped), 60)))

# ---------------------------------------------------------------- collateral
for rel in ("dcap/tdx_quote_collateral.json", "dcap/sgx_quote_collateral.json",
            "dcap/tdx_quote_outdated_collateral.json", "dstack-near/quote_collateral.json"):
    put("collateral_json", rel.replace("/", "_"), read(rel))

# ---------------------------------------------------------------- event logs / GetQuote
for n, g in getquotes.items():
    put("event_log", n, json.dumps(g))
    put("event_log", n.replace(".json", "") + "_event_log.json", g["event_log"])
put("event_log", "synthetic_v2.json", json.dumps([
    {"imr": 3, "event_type": 0x08000001, "digest": "", "event": "app-id", "event_payload": "00" * 20},
    {"imr": 3, "event_type": 0x08000001, "digest": "", "event": "key-provider",
     "event_payload": json.dumps({"name": "kms", "id": "abcd"}).encode().hex(), "version": 2},
    {"imr": 3, "event_type": 0x08000001, "digest": "", "event": "compose-hash", "event_payload": "11" * 32},
]))
put("event_log", "not_runtime_on_rtmr3.json",
    json.dumps([{"imr": 3, "event_type": 1, "digest": "00", "event": "x", "event_payload": ""}]))

# ---------------------------------------------------------------- attestations
def mp(v):
    """Minimal msgpack encoder (str, bytes, int >= 0, None, list, dict)."""
    if v is None:
        return b"\xc0"
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if v < 128: return bytes([v])
        if v < 1 << 8: return b"\xcc" + struct.pack(">B", v)
        if v < 1 << 16: return b"\xcd" + struct.pack(">H", v)
        if v < 1 << 32: return b"\xce" + struct.pack(">I", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32: return bytes([0xa0 | len(b)]) + b
        if len(b) < 1 << 8: return b"\xd9" + struct.pack(">B", len(b)) + b
        if len(b) < 1 << 16: return b"\xda" + struct.pack(">H", len(b)) + b
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        if len(v) < 1 << 8: return b"\xc4" + struct.pack(">B", len(v)) + bytes(v)
        if len(v) < 1 << 16: return b"\xc5" + struct.pack(">H", len(v)) + bytes(v)
        return b"\xc6" + struct.pack(">I", len(v)) + bytes(v)
    if isinstance(v, list):
        h = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return h + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        h = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return h + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(type(v))

g = getquotes["getquote-tdx-lite.json"]
events = json.loads(g["event_log"])
v1 = mp({
    "version": 1,
    "platform": {"kind": "tdx", "data": {
        "quote": bytes.fromhex(g["quote"]),
        "event_log": [{"imr": e["imr"], "event_type": e["event_type"], "digest": bytes.fromhex(e["digest"]),
                       "event": e["event"], "event_payload": bytes.fromhex(e["event_payload"])}
                      for e in events if e["imr"] != 3],
    }},
    "stack": {"kind": "dstack", "data": {
        "report_data": bytes.fromhex(g["report_data"]),
        "runtime_events": [{"event": e["event"], "payload": bytes.fromhex(e["event_payload"]), "version": 2}
                           for e in events if e["imr"] == 3],
        "config": g["vm_config"],
    }},
})
put("attestation", "simulator_v0.bin", sim_attest)
put("attestation", "tdx_lite_v0.bin", bytes.fromhex(attest_hex))
put("attestation", "tdx_lite_v1.msgpack", v1)
put("attestation", "tdx_lite_wrapped.json", attest_json)
put("attestation", "tdx_lite_0x_hex", "0x" + attest_hex)
put("attestation", "simulator_v0_hex", sim_attest.hex())
put("attestation", "sev_snp_v0_no_chain.bin", read("dstack/sev-snp-attestation.bin"))
put("attestation", "sev_snp_wrapped.json", read("dstack/sev-snp-attestation.json"))

# ---------------------------------------------------------------- manifest
addr, inst = "0xbd32b609057a1a4569558a571d535c8f1212b097", "ea23198e3419ebbb240571a29d0112d9bcbe69c0"
# r = x(G), so public key recovery succeeds (the signer is just not anyone in particular).
sig = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798" + "22" * 32 + "1b"
base = f"v=1;cluster={addr};leader_instance={inst};leader_url=https://x;epoch=1;valid_until=2;sig=0x{sig}"
for name, txt in {
    "manifest": base,
    "manifest_quoted": f'"{base}"',
    "manifest_unknown_key": base + ";extra=yes",
    "manifest_v0": base[:-2] + "00",
    "manifest_canonical_order": f"cluster={addr};epoch=7;leader_instance={inst};leader_url=https://leader.example:5433;v=1;valid_until=1900000000;sig=0x{sig[:-2]}1c",
}.items():
    put("manifest", name, txt)

# ---------------------------------------------------------------- RA-TLS certificates
key = os.path.join(testdata, "fixtures", "test-p256-key.pem")

def der_octet(content):
    n = len(content)
    if n < 0x80:
        head = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(b)]) + b
    return b"\x04" + head + content

def cert(name, exts):
    out = os.path.join(tmp, name + ".pem")
    cmd = ["openssl", "req", "-x509", "-new", "-key", key, "-subj", "/CN=" + name, "-days", "30",
           "-out", out, "-set_serial", "1"]
    for oid, content in exts:
        cmd += ["-addext", f"{oid}=DER:{der_octet(content).hex()}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pem = open(out, "rb").read()
    der = subprocess.run(["openssl", "x509", "-in", out, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return pem, der

PEN = "1.3.6.1.4.1.62397.1."
app_info = mp({"app_name": "teesql", "instance_id": bytes(20), "device_id": bytes(32)})
gq = getquotes["getquote-quote-report.json"]
certs = {
    "ratls_v0": [(PEN + "8", sim_attest), (PEN + "4", b"app:custom"), (PEN + "3", bytes(range(20)))],
    "ratls_v1": [(PEN + "8", v1), (PEN + "9", app_info)],
    "ratls_legacy": [(PEN + "1", bytes.fromhex(gq["quote"])), (PEN + "2", gq["event_log"].encode()),
                     (PEN + "4", b"app:ca")],
    "plain": [],
}
pems = {}
for name, exts in certs.items():
    pem, der = cert(name, exts)
    pems[name] = pem
    put("ra_tls_cert", name + ".der", der)
    put("ra_tls_cert", name + ".pem", pem)
put("ra_tls_cert", "chain.pem", pems["ratls_v0"] + pems["plain"])
put("ra_tls_cert", "simulator_ca.pem", ca_pem)
put("ra_tls_cert", "simulator_ca.der", ca_der)

# pool_handover: [client chunk, server chunk, op count] then ops (see the target's layout),
# then the reset answer. Tags index the target's tables: client "QPBEDCHSFdcfp", server
# "ZZZCTDENSAIG12nst" (Z's status: pick >> 4 into "IIITE").
def c_msg(tag, body=b""):
    return bytes([(len(body) << 2) | 0, b"QPBEDCHSFdcfp".index(tag)]) + body
def s_msg(tag, body=b""):
    return bytes([(len(body) << 2) | 1, b"ZZZCTDENSAIG12nst".index(tag)]) + body
def s_z(status):
    return bytes([1, b"IIITE".index(status) << 4])
reset_ok = bytes((step << 2) for step in range(9))
idle = [c_msg(b"Q", b"SELECT 1\0"), s_msg(b"C", b"SELECT 1\0"), s_z(b"I")]
pipelined = [c_msg(b"Q", b"SELECT 1\0"), c_msg(b"Q", b"DISCARD ALL\0"), c_msg(b"Q", b"SELECT 2\0"),
             s_msg(b"C", b"SELECT 1\0"), s_z(b"I"), s_msg(b"C", b"DISCARD ALL\0"), s_z(b"I")]
unsynced = [c_msg(b"P", b"\0SELECT 1/0\0\0\0"), c_msg(b"B", b"\0\0\0\0\0\0\0\0"),
            c_msg(b"E", b"\0\0\0\0\0"), c_msg(b"H"), s_msg(b"E", b"SERROR\0\0")]
in_tx = [c_msg(b"Q", b"BEGIN\0"), s_msg(b"C", b"BEGIN\0"), s_z(b"T")]
extended = [c_msg(b"P", b"\0SELECT 1\0\0\0"), c_msg(b"S"), s_msg(b"1"), s_z(b"I")]
for name, ops, chunks in [("idle", idle, (255, 255)), ("idle_split", idle, (2, 3)),
                          ("pipelined", pipelined, (255, 7)), ("unsynced", unsynced, (4, 255)),
                          ("in_transaction", in_tx, (255, 255)), ("extended", extended, (1, 1))]:
    put("pool_handover", name, bytes([chunks[0], chunks[1], len(ops)]) + b"".join(ops) + reset_ok)
put("pool_handover", "reset_with_notices",
    bytes([255, 255, 0, 0 << 2, 1 << 2, 2, 3]) + b"Mx\0" + bytes((step << 2) for step in range(2, 9)))
PY

for t in "$CORPUS"/*/; do
    printf '%-18s %3d seeds\n' "$(basename "$t")" "$(find "$t" -type f | wc -l)"
done
