package teesql.client_test

import rego.v1

import data.teesql.client
import data.teesql.quote_test
import data.teesql.sidecar_test

server := object.union(sidecar_test.client, {"purpose": "client"})

codes(claims) := {d.code | some d in client.deny with input as claims}

test_attested_server_allowed if {
	client.allow with input as server
}

test_expected_mrtd_from_client_enforced if {
	pinned := object.union(server, {"connection": {"expected_mrtds": ["0xAB"]}})
	codes(pinned) == {"mrtd_not_expected"}
	ok := object.union(server, {"connection": {"expected_mrtds": [upper(server.tdx.mrtd)]}})
	client.allow with input as ok
}

test_server_without_attestation_denied if {
	bare := object.union(server, {"evidence": {"kind": "none"}})
	not client.allow with input as bare
	"not_ra_tls" in codes(bare)
}

test_no_connection_context_is_not_an_error if {
	quote_only := object.union(server, {"connection": null})
	client.allow with input as quote_only
}

app := {
	"app_id": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
	"compose_hash": "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1",
	"instance_id": "11", "os_image_hash": null, "key_provider": {"name": "kms", "id": quote_test.kms_root},
	"app_id_attested_by": "kms",
	"rtmr3_replayed": true, "rtmr3_replay": "33", "replay_error": null, "events": [],
}

with_app := object.union(server, {"app": app})

test_expected_compose_hash_and_app_id_enforced if {
	ok := object.union(with_app, {"connection": {"expected_compose_hashes": [concat("", ["0x", upper(app.compose_hash)])], "expected_app_ids": [app.app_id]}})
	# With a compose hash expected beside it, the app id needs no pinned KMS.
	client.allow with input as ok
	other := object.union(with_app, {"connection": {"expected_compose_hashes": ["dd"]}})
	codes(other) == {"compose_hash_not_expected"}
	other_app := object.union(with_app, {"connection": {"expected_app_ids": ["dd"]}})
	codes(other_app) == {"app_id_not_expected"}
}

test_an_expected_app_id_alone_needs_an_attested_app_id if {
	by_app_id := object.union(with_app, {"connection": {"expected_app_ids": [app.app_id]}})
	codes(by_app_id) == {"app_id_not_attested"}
	client.allow with input as by_app_id with data.teesql.kms_roots as [quote_test.kms_root]
	chosen := object.union(by_app_id, {"app": {"app_id_attested_by": "none", "key_provider": {"name": "none", "id": ""}}})
	codes(chosen) == {"app_id_not_attested"} with data.teesql.kms_roots as [quote_test.kms_root]
}

test_expected_identity_needs_an_event_log if {
	no_log := object.union(server, {"app": null, "connection": {"expected_compose_hashes": ["c1"]}})
	codes(no_log) == {"compose_hash_not_expected"}
}
