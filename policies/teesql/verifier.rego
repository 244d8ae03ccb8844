# Purpose "verifier": a TeeSQL verifier's own identity, as its clients appraise it — the
# sidecar and `forward` before they ask it anything (its RA-TLS certificate), and a
# relying party before it trusts the key that signs decision tokens (its quote, bound to
# that key by the report data).
#
# Whoever answers the sidecar's questions decides who gets into the database, so a
# verifier is accepted only by its pinned identity: data.teesql.verifier_pins.compose_hash
# and/or data.teesql.verifier_pins.app_id. With no pins, no verifier is accepted.
package teesql.verifier

import rego.v1

import data.teesql.lib

default allow := false

# Allow on positive grounds only: a profile with a file or a data key missing fails closed.
allow if {
	count(deny) == 0
	acceptable_evidence
	lib.quote_verified
	input.binding.ok == true
	input.app != null
	count(pins.compose_hash) + count(pins.app_id) > 0
	data.teesql.lib.checks_loaded
}

acceptable_evidence if input.evidence.kind == "ra_tls_cert"

# A quote with its event log, bound to a signing key by the report data.
acceptable_evidence if {
	input.evidence.kind in {"getquote", "dstack_attestation"}
	input.binding.kind == "report_data"
}

pins := {field: data.teesql.lib.pinned(object.get(data.teesql.verifier_pins, field, [])) |
	some field in ["compose_hash", "app_id"]
}

deny contains d if some d in lib.quote_problems

# Reasons an allowed decision carries as warnings (README, "TCB recoveries").
warn contains d if some d in lib.quote_warnings

deny contains d if some d in lib.cert_problems

deny contains d if {
	not acceptable_evidence
	d := {"code": "not_ra_tls", "message": sprintf("a verifier proves itself with an RA-TLS certificate or a quote bound to its signing key, not %s", [input.evidence.kind])}
}

deny contains d if {
	input.binding.kind == "none"
	d := {"code": "key_not_bound", "message": "nothing binds the quote to a key the verifier holds"}
}

deny contains d if {
	input.tdx != null
	input.app == null
	d := {"code": "no_event_log", "message": "the verifier's evidence has no event log, so its compose hash and app id cannot be attested"}
}

deny contains d if {
	count(pins.compose_hash) + count(pins.app_id) == 0
	d := {"code": "verifier_not_pinned", "message": "data.teesql.verifier_pins has no compose_hash or app_id: a verifier is accepted only by its pinned identity"}
}

deny contains d if {
	some field in ["compose_hash", "app_id"]
	count(pins[field]) > 0
	input.app != null
	value := object.get(input.app, field, null)
	not data.teesql.lib.norm_or_empty(value) in pins[field]
	d := {"code": sprintf("verifier_%s_not_pinned", [field]), "message": sprintf("the verifier's %s %v is not pinned; pinned: %s", [field, value, data.teesql.lib.shown(pins[field])])}
}

# A verifier pinned by app id alone: the app id must be an identity.
deny contains d if {
	count(pins.app_id) > 0
	count(pins.compose_hash) == 0
	input.app != null
	data.teesql.lib.norm_or_empty(object.get(input.app, "app_id", null)) in pins.app_id
	not lib.app_id_attested
	d := {"code": "app_id_not_attested", "message": sprintf("the verifier has the pinned app id, but %s", [lib.app_id_unattested_reason])}
}
