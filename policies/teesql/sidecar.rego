# Purpose "sidecar": a client connecting to a database sidecar on port 5433.
# The production default requires the client to present attestation (mutual RA-TLS).
package teesql.sidecar

import rego.v1

import data.teesql.lib

default allow := false

allow if count(deny) == 0

deny contains d if {
	input.evidence.kind == "none"
	data.teesql.require_client_attestation
	d := {"code": "client_attestation_required", "message": "the client presented no certificate; this policy requires an RA-TLS client certificate"}
}

deny contains d if {
	input.evidence.kind != "none"
	some d in lib.peer_problems
}
