package teesql.verifier_test

import rego.v1

import data.teesql.client_test
import data.teesql.quote_test
import data.teesql.verifier

# A verifier's RA-TLS certificate with its event log, as a sidecar sees it.
peer := object.union(client_test.with_app, {"purpose": "verifier", "connection": null})

pinned := {"compose_hash": [concat("", ["0x", upper(client_test.app.compose_hash)])], "app_id": []}

codes(claims) := {d.code | some d in verifier.deny with input as claims with data.teesql.verifier_pins as pinned}

allowed(claims) if verifier.allow with input as claims with data.teesql.verifier_pins as pinned

test_pinned_verifier_allowed if {
	allowed(peer)
	codes(peer) == set()
}

test_no_pins_fail_closed if {
	not verifier.allow with input as peer
	{d.code | some d in verifier.deny with input as peer} == {"verifier_not_pinned"}
	not verifier.allow with input as peer with data.teesql.verifier_pins as {}
}

test_other_compose_hash_denied if {
	other := object.union(peer, {"app": {"compose_hash": "dd"}})
	not allowed(other)
	codes(other) == {"verifier_compose_hash_not_pinned"}
}

test_app_id_pin_enforced_beside_compose_hash if {
	both := {"compose_hash": pinned.compose_hash, "app_id": ["b2"]}
	not verifier.allow with input as peer with data.teesql.verifier_pins as both
	ok := {"compose_hash": pinned.compose_hash, "app_id": [client_test.app.app_id]}
	verifier.allow with input as peer with data.teesql.verifier_pins as ok
}

test_a_verifier_pinned_by_app_id_alone_needs_an_attested_app_id if {
	by_app_id := {"compose_hash": [], "app_id": [client_test.app.app_id]}
	not verifier.allow with input as peer with data.teesql.verifier_pins as by_app_id
	{d.code | some d in verifier.deny with input as peer} == {"app_id_not_attested"} with data.teesql.verifier_pins as by_app_id
	verifier.allow with input as peer with data.teesql.verifier_pins as by_app_id with data.teesql.kms_roots as [quote_test.kms_root]
}

test_no_event_log_denied if {
	bare := object.union(peer, {"app": null})
	not allowed(bare)
	"no_event_log" in codes(bare)
}

test_unbound_key_denied if {
	unbound := object.union(peer, {"binding": {"ok": false}})
	not allowed(unbound)
	"key_not_bound" in codes(unbound)
}

test_quote_bound_to_a_signing_key_allowed if {
	q := object.union(peer, {"evidence": {"kind": "getquote", "cert": null}, "binding": {"kind": "report_data", "ok": true, "expected": "aa"}})
	allowed(q)
	unbound := object.union(q, {"binding": {"kind": "none", "ok": false}})
	not allowed(unbound)
	{"not_ra_tls", "key_not_bound"} == codes(unbound)
}

test_unverified_quote_denied if {
	bad := object.union(peer, {"tdx": {"verified": false, "error": "bad signature", "error_code": "signature_invalid"}})
	not allowed(bad)
	"quote_signature_invalid" in codes(bad)
}
