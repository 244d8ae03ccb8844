package teesql.report_test

import rego.v1

import data.teesql.quote_test
import data.teesql.report

fresh := object.union(quote_test.good, {
	"purpose": "report",
	"now": 1751000100,
	"binding": {"kind": "report_data", "ok": true, "expected": "aa"},
	"report": {
		"app_id": "a1", "compose_hash": "c1", "instance_id": "i1",
		"postgres_state": {"wal_lsn": "0/16B3740", "controldata_hash": "ab", "pg_version": "17.2"},
		"timestamp": 1751000000, "consistent": true, "inconsistencies": [],
	},
})

codes(claims) := {d.code | some d in report.deny with input as claims}

test_fresh_consistent_report_allowed if {
	report.allow with input as fresh
}

test_stale_report_denied if {
	codes(object.union(fresh, {"now": 1751000000 + 301})) == {"report_stale"}
}

test_inconsistent_report_denied if {
	bad := object.union(fresh, {"report": {"consistent": false, "inconsistencies": ["tcb_info.mrtd"]}})
	codes(bad) == {"report_inconsistent"}
}

test_unbound_report_denied if {
	codes(object.union(fresh, {"binding": {"ok": false}})) == {"key_not_bound"}
}
