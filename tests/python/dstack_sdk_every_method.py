"""Call every method of dstack's Python SDK (dstack-sdk 0.5.x) against a guest agent.

Usage: dstack_sdk_every_method.py ENDPOINT [DSTACK_VERSION]. Prints one JSON object with
what each call returned (bytes as hex) for tests/tests/dstack_sdk.rs to check; any
exception fails the script, except where a dstack 0.6 agent (DSTACK_VERSION 0.6) is
expected to refuse: EmitEvent is gone there, and what the call raised is recorded. The
endpoint goes through DSTACK_SIMULATOR_ENDPOINT, as a dstack app sees it.
"""

import asyncio
import hashlib
import json
import os
import sys

from dstack_sdk import AsyncDstackClient, DstackClient

os.environ["DSTACK_SIMULATOR_ENDPOINT"] = sys.argv[1]
dstack_version = sys.argv[2] if len(sys.argv) > 2 else "0.5"
client = DstackClient()
out = {}

out["is_reachable"] = client.is_reachable()
v = client.version()
out["version"] = {"version": v.version, "rev": v.rev}

info = client.info()  # parses tcb_info as dstack 0.5's TcbInfoV05x
out["info"] = {
    "app_id": info.app_id,
    "instance_id": info.instance_id,
    "app_name": info.app_name,
    "device_id": info.device_id,
    "compose_hash": info.compose_hash,
    "mr_aggregated": info.mr_aggregated,
    "os_image_hash": info.os_image_hash,
    "key_provider_info": info.key_provider_info,
    "vm_config": info.vm_config,
    "tcb_info": {
        "mrtd": info.tcb_info.mrtd,
        "rtmr0": info.tcb_info.rtmr0,
        "rtmr1": info.tcb_info.rtmr1,
        "rtmr2": info.tcb_info.rtmr2,
        "rtmr3": info.tcb_info.rtmr3,
        "mr_aggregated": info.tcb_info.mr_aggregated,
        "os_image_hash": info.tcb_info.os_image_hash,
        "compose_hash": info.tcb_info.compose_hash,
        "device_id": info.tcb_info.device_id,
        "app_compose_sha256": hashlib.sha256(info.tcb_info.app_compose.encode()).hexdigest(),
        "events": len(info.tcb_info.event_log),
    },
}

keys = {}
for algorithm in ["secp256k1", "k256", "ed25519"]:
    k = client.get_key("pg/superuser", "python-test", algorithm)
    keys[algorithm] = {
        "key": k.decode_key().hex(),
        "signature_chain": [s.hex() for s in k.decode_signature_chain()],
    }
out["get_key"] = keys

q = client.get_quote(b"teesql-python")
out["get_quote"] = {
    "quote": q.quote,
    "report_data": q.report_data,
    "vm_config": q.vm_config,
    "events": len(q.decode_event_log()),
    "replayed_rtmr3": q.replay_rtmrs()[3],
}

a = client.attest(b"teesql-attest")
out["attest"] = a.decode_attestation().hex()

if dstack_version == "0.6":
    try:
        client.emit_event("teesql-python-event", b"payload")
        out["emit_event"] = {"error": None}
    except Exception as e:  # dstack 0.6 removed EmitEvent
        out["emit_event"] = {"error": str(e)}
    out["get_quote"]["event_log"] = q.event_log
else:
    client.emit_event("teesql-python-event", b"payload")
    after = client.get_quote(b"after-event")
    out["emit_event"] = {"events_after": len(after.decode_event_log())}

tls = client.get_tls_key(
    subject="db.local",
    alt_names=["localhost"],
    usage_ra_tls=True,
    usage_server_auth=True,
    usage_client_auth=True,
)
out["get_tls_key"] = {"key_der_len": len(tls.as_uint8array()), "chain": tls.certificate_chain}
timed = client.get_tls_key(
    subject="db.local",
    usage_ra_tls=True,
    not_before=1767225600,
    not_after=1798761600,
    with_app_info=True,
)
out["get_tls_key_options"] = {"chain": timed.certificate_chain}

signed = {}
for algorithm, data in [
    ("secp256k1", b"hello teesql"),
    ("secp256k1_prehashed", hashlib.sha256(b"hello teesql").digest()),
    ("ed25519", b"hello teesql"),
]:
    s = client.sign(algorithm, data)
    good = client.verify(algorithm, data, s.decode_signature(), s.decode_public_key())
    bad = client.verify(algorithm, b"x" * len(data), s.decode_signature(), s.decode_public_key())
    signed[algorithm] = {
        "signature": s.signature,
        "public_key": s.public_key,
        "signature_chain": s.signature_chain,
        "valid": good.valid,
        "valid_for_other_data": bad.valid,
    }
out["sign_verify"] = signed


async def async_calls():
    async with AsyncDstackClient() as ac:
        info = await ac.info()
        key = await ac.get_key("pg/superuser", "python-test")
        return {"app_id": info.app_id, "key": key.key}


out["async"] = asyncio.run(async_calls())
print(json.dumps(out))
