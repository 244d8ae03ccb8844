# The policies on the claims the verifier makes of real evidence (testdata/, kept equal
# to the verifier's output by verifier/tests/claims_golden.rs): dstack's recorded 0.5
# GetQuote, and development dstack 0.6 CVMs whose operator chose the app id 5a…5a, one
# without a KMS and one under the development KMS.
package teesql.evidence_test

import rego.v1

import data.teesql.quote

chosen := "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"

codes(claims) := {d.code | some d in quote.deny with input as claims}

test_a_kms_less_0_6_app_id_is_not_an_identity if {
	c := data.testdata.dev_0_6_kms_less
	c.app.app_id == chosen
	c.app.app_id_attested_by == "none"
	codes(c) == {"dev_root"}
	codes(c) == {"app_id_not_attested", "dev_root"} with data.teesql.pins.app_id as [chosen]

	# Its compose hash identifies it instead.
	codes(c) == {"dev_root"} with data.teesql.pins.app_id as [chosen] with data.teesql.pins.compose_hash as [c.app.compose_hash]
}

test_the_same_app_id_under_a_pinned_kms_is_an_identity if {
	c := data.testdata.dev_0_6_kms
	c.app.app_id == chosen
	c.app.app_id_attested_by == "kms"
	codes(c) == {"app_id_not_attested", "dev_root"} with data.teesql.pins.app_id as [chosen]
	codes(c) == {"dev_root"} with data.teesql.pins.app_id as [chosen] with data.teesql.kms_roots as [c.app.key_provider.id]

	# Another KMS's root does not vouch for it.
	other := data.testdata.dev_0_6_kms_less
	codes(other) == {"app_id_not_attested", "dev_root"} with data.teesql.pins.app_id as [chosen] with data.teesql.kms_roots as [c.app.key_provider.id]
}

test_dstack_0_5_app_id_is_its_compose_hash_prefix if {
	c := data.testdata.dstack_0_5_getquote
	c.app.app_id_attested_by == "compose_hash"
	c.app.key_provider.name == "local-sgx"
	not "app_id_not_attested" in codes(c) with data.teesql.pins.app_id as [c.app.app_id]

	# Its app's runtime event is not part of its identity.
	c.app.runtime_events[0].event == "LIUM_MINER_HOTKEY"
	c.app.os_image_hash == null
}

test_mr_config_of_real_evidence_agrees_with_its_event_log if {
	data.testdata.dev_0_6_kms.tdx.mr_config.matches_event_log == true
	data.testdata.dstack_0_5_getquote.tdx.mr_config.form == "unused"
	bad := object.union(data.testdata.dev_0_6_kms, {"tdx": {"mr_config": {"matches_event_log": false, "mismatches": ["compose_hash"]}}})
	"mr_config_mismatch" in codes(bad)
}
