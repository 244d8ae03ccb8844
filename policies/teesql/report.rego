# Purpose "report": a sidecar's /attestation report, a fresh quote bound to the state
# of Postgres (report data = SHA-256("wal_lsn|controldata_hash|timestamp")).
package teesql.report

import rego.v1

import data.teesql.lib

default allow := false

allow if {
	lib.quote_verified
	input.report.consistent == true
	data.teesql.lib.checks_loaded
	count(deny) == 0
}

deny contains d if some d in lib.quote_problems

# Reasons an allowed decision carries as warnings (README, "TCB recoveries").
warn contains d if some d in lib.quote_warnings

deny contains d if {
	input.report.consistent == false
	d := {"code": "report_inconsistent", "message": sprintf("the report states values its quote does not attest: %s", [concat(", ", input.report.inconsistencies)])}
}

deny contains d if {
	input.now - input.report.timestamp > data.teesql.report_max_age_secs
	d := {"code": "report_stale", "message": sprintf("the report is %d s old; at most %d s is accepted", [input.now - input.report.timestamp, data.teesql.report_max_age_secs])}
}

deny contains d if {
	input.report.timestamp > input.now + 60
	d := {"code": "report_from_future", "message": sprintf("the report is dated %d, after now (%d)", [input.report.timestamp, input.now])}
}
