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
deny contains d if {
	expected := lib.pinned(object.get(input.connection, "expected_mrtds", []))
	count(expected) > 0
	not lib.norm(input.tdx.mrtd) in expected
	d := {"code": "mrtd_not_expected", "message": sprintf("the server's MRTD %s is not the one the client expects: %s", [input.tdx.mrtd, lib.shown(expected)])}
}
