# Purpose "client": an application (or its forwarder) judging a database server.
package teesql.client

import rego.v1

import data.teesql.lib

default allow := false

allow if {
	input.tdx.verified == true
	count(deny) == 0
}

deny contains d if some d in lib.peer_problems

# The application may pin MRTDs itself (EXPECTED_MRTD), on top of the policy's pins.
# (Functions are called by full path: regorus does not resolve them through import aliases.)
expected_mrtds := object.get(input.connection, "expected_mrtds", []) if is_object(input.connection)

expected_mrtds := [] if not is_object(input.connection)

deny contains d if {
	expected := data.teesql.lib.pinned(expected_mrtds)
	count(expected) > 0
	is_string(input.tdx.mrtd)
	not data.teesql.lib.norm(input.tdx.mrtd) in expected
	d := {"code": "mrtd_not_expected", "message": sprintf("the server's MRTD %s is not the one the client expects: %s", [input.tdx.mrtd, data.teesql.lib.shown(expected)])}
}
