# Purpose "sidecar": a client connecting to a database sidecar on port 5433.
# The production default requires the client to present attestation (mutual RA-TLS).
package teesql.sidecar

import rego.v1

import data.teesql.lib

default allow := false

# Allow on positive grounds only, never merely because nothing denied: a profile with a
# file or a data key missing must fail closed.
allow if {
	count(deny) == 0
	acceptable_evidence
}

acceptable_evidence if {
	input.evidence.kind == "none"
	client_attestation_optional
}

acceptable_evidence if {
	input.evidence.kind == "ra_tls_cert"
	lib.quote_verified
	input.binding.ok == true
	data.teesql.lib.checks_loaded
}

# Only an explicit false in data.json makes client attestation optional.
client_attestation_optional if data.teesql.require_client_attestation == false

deny contains d if {
	input.evidence.kind == "none"
	not client_attestation_optional
	d := {"code": "client_attestation_required", "message": "the client presented no certificate; this policy requires an RA-TLS client certificate"}
}

deny contains d if {
	input.evidence.kind != "none"
	some d in lib.peer_problems
}
