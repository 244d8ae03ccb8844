# Purpose "quote": a bare quote, attestation blob or certificate, judged on its own.
package teesql.quote

import rego.v1

import data.teesql.lib

default allow := false

allow if {
	lib.quote_verified
	data.teesql.lib.checks_loaded
	count(deny) == 0
}

deny contains d if some d in lib.quote_problems

# Reasons an allowed decision carries as warnings (README, "TCB recoveries").
warn contains d if some d in lib.quote_warnings

deny contains d if some d in lib.cert_problems
