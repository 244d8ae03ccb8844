package teesql.client_test

import rego.v1

import data.teesql.client
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
