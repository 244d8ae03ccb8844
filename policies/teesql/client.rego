# Purpose "client": an application (or its forwarder) judging a database server.
package teesql.client

import rego.v1

import data.teesql.lib

default allow := false

# Positive grounds only (see sidecar.rego): a verified quote bound to the server's key.
allow if {
	lib.quote_verified
	input.binding.ok == true
	data.teesql.lib.checks_loaded
	count(deny) == 0
}

deny contains d if some d in lib.peer_problems

# Reasons an allowed decision carries as warnings (README, "TCB recoveries").
warn contains d if some d in lib.quote_warnings

# The application may pin the server itself (EXPECTED_MRTD, forward's
# --expected-compose-hash / --expected-app-id), on top of the policy's pins.
# (Functions are called by full path: regorus does not resolve them through import aliases.)
expected(field) := data.teesql.lib.pinned(object.get(input.connection, field, [])) if is_object(input.connection)

expected(_) := set() if not is_object(input.connection)

deny contains d if {
	pins := expected("expected_mrtds")
	count(pins) > 0
	is_string(input.tdx.mrtd)
	not data.teesql.lib.norm(input.tdx.mrtd) in pins
	d := {"code": "mrtd_not_expected", "message": sprintf("the server's MRTD %s is not the one the client expects: %s", [input.tdx.mrtd, data.teesql.lib.shown(pins)])}
}

# Compose hash and app id are attested through the RTMR3 event log.
expected_app := {"compose_hash": "expected_compose_hashes", "app_id": "expected_app_ids"}

deny contains d if {
	some field, key in expected_app
	pins := expected(key)
	count(pins) > 0
	input.app == null
	d := {"code": sprintf("%s_not_expected", [field]), "message": sprintf("the client expects the server's %s to be one of %s, but the server's evidence has no event log to attest it", [field, data.teesql.lib.shown(pins)])}
}

deny contains d if {
	some field, key in expected_app
	pins := expected(key)
	count(pins) > 0
	input.app != null
	value := object.get(input.app, field, null)
	not data.teesql.lib.norm_or_empty(value) in pins
	d := {"code": sprintf("%s_not_expected", [field]), "message": sprintf("the server's %s %v is not one the client expects: %s", [field, value, data.teesql.lib.shown(pins)])}
}

# An expected app id identifies the server only when the app id is an identity, or when
# the client also expects a compose hash (checked above).
deny contains d if {
	pins := expected("expected_app_ids")
	count(pins) > 0
	count(expected("expected_compose_hashes")) == 0
	input.app != null
	data.teesql.lib.norm_or_empty(object.get(input.app, "app_id", null)) in pins
	not lib.app_id_attested
	d := {"code": "app_id_not_attested", "message": sprintf("the server has the expected app id, but %s", [lib.app_id_unattested_reason])}
}
