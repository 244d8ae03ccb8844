package teesql.quote_test

import rego.v1

import data.teesql.quote

mrtd := "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"

# A verified UpToDate quote, as the DCAP backend reports it.
good := {
	"claims_version": 1,
	"purpose": "quote",
	"now": 1751000000,
	"evidence": {"kind": "quote", "cert": null, "report_data_consistent": null, "vm_config": null},
	"tdx": {
		"verified": true, "error": null, "error_code": null, "root": "intel", "backend": "dcap",
		"tee_type": "tdx", "quote_version": 4, "tcb_status": "UpToDate", "advisory_ids": [],
		"mrtd": mrtd, "rtmr0": "00", "rtmr1": "11", "rtmr2": "22", "rtmr3": "33",
		"report_data": "aa", "debug": false,
		"collateral": {"not_before": 1750329147, "not_after": 1752919235},
	},
	"app": null,
	"binding": {"kind": "none", "ok": false, "expected": null},
	"connection": null,
}

codes(claims) := {d.code | some d in quote.deny with input as claims}

test_verified_quote_allowed if {
	quote.allow with input as good
	count(codes(good)) == 0
}

test_unverified_quote_denied_with_backend_class if {
	bad := object.union(good, {"tdx": {"verified": false, "error": "collateral is valid from 1 to 2", "error_code": "collateral_expired"}})
	not quote.allow with input as bad
	codes(bad) == {"collateral_expired"}
}

test_unknown_failure_class_still_denies if {
	bad := object.union(good, {"tdx": {"verified": false, "error": "something new", "error_code": "verification_failed"}})
	codes(bad) == {"quote_unverified"}
}

test_dev_root_refused_in_production if {
	dev := object.union(good, {"tdx": {"root": "dev"}})
	not quote.allow with input as dev
	codes(dev) == {"dev_root"}
}

test_custom_root_refused_in_production if {
	c := object.union(good, {"tdx": {"root": "custom"}})
	codes(c) == {"untrusted_root"}
}

# TeeSQL's client libraries accept UpToDate and SWHardeningNeeded; so does the default.
test_sw_hardening_needed_accepted_by_default if {
	hardening := object.union(good, {"tdx": {"tcb_status": "SWHardeningNeeded", "advisory_ids": ["INTEL-SA-00615"]}})
	quote.allow with input as hardening
}

test_listed_advisory_refused_whatever_the_status if {
	hardening := object.union(good, {"tdx": {"tcb_status": "SWHardeningNeeded", "advisory_ids": ["INTEL-SA-00615", "INTEL-SA-00837"]}})
	codes(hardening) == {"advisory_refused"} with data.teesql.refused_advisory_ids as ["intel-sa-00837"]
	quote.allow with input as hardening with data.teesql.refused_advisory_ids as ["INTEL-SA-00001"]
}

test_configuration_needed_denied_by_default if {
	config := object.union(good, {"tdx": {"tcb_status": "ConfigurationNeeded"}})
	codes(config) == {"tcb_status_not_accepted"}
}

test_out_of_date_tcb_denied_and_configurable if {
	old := object.union(good, {"tdx": {"tcb_status": "OutOfDate"}})
	codes(old) == {"tcb_out_of_date"}
	quote.allow with input as old with data.teesql.accepted_tcb_statuses as ["UpToDate", "OutOfDate"]
}

# TCB lifecycle: Intel's set 20 became standard 10 days ago and demoted the platform.
tcb_fix := [
	{"component": "tdx[2]", "kind": "TDX Late Microcode Update", "have": 3, "needs": 4},
	{"component": "tdx_module", "kind": "TDX Module", "have": 6, "needs": 11},
]

demoted := object.union(good, {"tdx": {"tcb_status": "OutOfDate", "tcb": {
	"eval_data_number": 20, "standard_since": "2026-08-12T00:00:00Z", "days_since_standard": 10,
	"early": null, "fix": tcb_fix,
}}})

warnings(claims) := {d.code | some d in quote.warn with input as claims}

test_out_of_date_names_the_fix if {
	some d in quote.deny with input as demoted
	d.code == "tcb_out_of_date"
	contains(d.message, "tdx_module (TDX Module) 6 -> 11")
	contains(d.message, "set 20")
}

test_a_recent_demotion_is_admitted_within_the_grace_with_a_warning if {
	quote.allow with input as demoted with data.teesql.tcb_grace_days as 30
	warnings(demoted) == {"tcb_grace"} with data.teesql.tcb_grace_days as 30
	not quote.allow with input as demoted with data.teesql.tcb_grace_days as 10
	codes(demoted) == {"tcb_out_of_date"} with data.teesql.tcb_grace_days as 10
}

test_no_grace_without_the_recovery_date if {
	unknown := object.union(demoted, {"tdx": {"tcb": {"days_since_standard": null}}})
	not quote.allow with input as unknown with data.teesql.tcb_grace_days as 30
}

test_the_early_set_warns_ahead_and_never_denies if {
	ahead := object.union(good, {"tdx": {"tcb": {
		"eval_data_number": 19, "standard_since": null, "days_since_standard": null,
		"early": {"status": "OutOfDate", "eval_data_number": 20, "tcb_recovery_date": "2025-08-12T00:00:00Z", "standard_from": "2026-08-12T00:00:00Z", "days_until": 29},
		"fix": tcb_fix,
	}}})
	quote.allow with input as ahead
	some d in quote.warn with input as ahead
	d.code == "tcb_early_demotion"
	contains(d.message, "in 29 days")
	contains(d.message, "2026-08-12")
	count(quote.warn) == 0 with input as ahead with data.teesql.warn_early_demotion as false
}

test_min_tcb_eval_data_number if {
	old := object.union(good, {"tdx": {"tcb": {"eval_data_number": 17, "standard_since": null, "days_since_standard": null, "early": null, "fix": []}}})
	quote.allow with input as old
	codes(old) == {"tcb_eval_data_number_too_low"} with data.teesql.min_tcb_eval_data_number as 18
}

test_debug_td_denied if {
	dbg := object.union(good, {"tdx": {"debug": true}})
	codes(dbg) == {"debug_td"}
}

test_mrtd_pin_allows_listed_and_denies_others if {
	quote.allow with input as good with data.teesql.pins.mrtd as [upper(mrtd)]
	codes(good) == {"mrtd_not_pinned"} with data.teesql.pins.mrtd as ["ab"]
	msgs := {d.message | some d in quote.deny with input as good with data.teesql.pins.mrtd as ["ab"]}
	some m in msgs
	contains(m, mrtd)
	contains(m, "pinned: ab")
}

test_rtmr_pins if {
	codes(good) == {"rtmr1_not_pinned"} with data.teesql.pins.rtmr1 as ["ff"]
	quote.allow with input as good with data.teesql.pins.rtmr1 as ["0x11"]
}

test_unbound_key_denied if {
	unbound := object.union(good, {"binding": {"kind": "report_data", "ok": false, "expected": "bb"}})
	codes(unbound) == {"key_not_bound"}
}

test_compose_hash_pin_needs_event_log if {
	codes(good) == {"compose_hash_unattested"} with data.teesql.pins.compose_hash as ["cc"]
}

app := {
	"app_id": "a1", "app_id_attested_by": "compose_hash", "compose_hash": "c1", "instance_id": "i1", "os_image_hash": null,
	"key_provider": null, "rtmr3_replayed": true, "rtmr3_replay": "33", "replay_error": null, "events": [],
}

kms_root := "3059301306072a8648ce3d020106082a8648ce3d030107034200041111"

# A KMS-less dstack 0.6 CVM whose operator chose the app id a1.
chosen_app := object.union(app, {"app_id_attested_by": "none", "key_provider": {"name": "none", "id": ""}})

# The same app id, issued under a KMS.
kms_app := object.union(app, {"app_id_attested_by": "kms", "key_provider": {"name": "kms", "id": kms_root}})

test_an_app_id_pin_alone_needs_an_attested_app_id if {
	chosen := object.union(good, {"app": chosen_app})
	codes(chosen) == {"app_id_not_attested"} with data.teesql.pins.app_id as ["a1"]
	some d in quote.deny with input as chosen with data.teesql.pins.app_id as ["a1"]
	contains(d.message, "compose hash")
	contains(d.message, "kms_roots")

	# Beside a compose hash pin the app id rests on the compose hash.
	quote.allow with input as chosen with data.teesql.pins.app_id as ["a1"] with data.teesql.pins.compose_hash as ["c1"]

	# Derived from the compose hash (dstack 0.5's KMS-less form): an identity.
	quote.allow with input as object.union(good, {"app": app}) with data.teesql.pins.app_id as ["a1"]
}

test_an_app_id_under_a_kms_counts_only_when_the_kms_is_pinned if {
	under_kms := object.union(good, {"app": kms_app})
	codes(under_kms) == {"app_id_not_attested"} with data.teesql.pins.app_id as ["a1"]
	quote.allow with input as under_kms with data.teesql.pins.app_id as ["a1"] with data.teesql.kms_roots as [upper(kms_root)]
	codes(under_kms) == {"app_id_not_attested"} with data.teesql.pins.app_id as ["a1"] with data.teesql.kms_roots as ["3059"]

	# An unreplayed log attests nothing.
	unreplayed := object.union(under_kms, {"app": {"rtmr3_replayed": false}})
	"app_id_not_attested" in codes(unreplayed) with data.teesql.pins.app_id as ["a1"] with data.teesql.kms_roots as [kms_root]
}

test_mr_config_that_disagrees_with_the_event_log_is_denied if {
	mismatch := object.union(good, {"app": app, "tdx": {"mr_config": {"form": "v1", "matches_event_log": false, "mismatches": ["compose_hash"]}}})
	codes(mismatch) == {"mr_config_mismatch"}
	agrees := object.union(good, {"app": app, "tdx": {"mr_config": {"form": "v1", "matches_event_log": true, "mismatches": []}}})
	quote.allow with input as agrees
	unknown := object.union(good, {"app": app, "tdx": {"mr_config": {"form": "v3", "matches_event_log": null, "mismatches": []}}})
	quote.allow with input as unknown
}

test_compose_hash_pin_with_replayed_log if {
	with_app := object.union(good, {"app": app})
	quote.allow with input as with_app with data.teesql.pins.compose_hash as ["C1"]
	codes(with_app) == {"compose_hash_not_pinned"} with data.teesql.pins.compose_hash as ["c2"]
	codes(with_app) == {"os_image_hash_not_pinned"} with data.teesql.pins.os_image_hash as ["e1"]
}

test_rtmr3_mismatch_denied if {
	bad_app := object.union(app, {"rtmr3_replayed": false, "rtmr3_replay": "44"})
	bad := object.union(good, {"app": bad_app})
	codes(bad) == {"rtmr3_mismatch"}
}

test_inconsistent_evidence_denied if {
	bad := object.union(good, {"evidence": {"report_data_consistent": false}})
	codes(bad) == {"evidence_inconsistent"}
}

test_no_quote_denied if {
	none := object.union(good, {"tdx": null})
	not quote.allow with input as none
	codes(none) == {"no_quote"}
}

test_a_backend_the_policy_does_not_accept_is_refused if {
	sim := object.union(good, {"tdx": {"backend": "simulator"}})
	codes(sim) == {"backend_not_accepted"}
}

test_ita_tokens_decide_like_dcap if {
	ita := object.union(good, {"tdx": {"backend": "ita", "root": "intel-trust-authority", "token_sha256": "ab"}})
	quote.allow with input as ita
}

test_an_unavailable_service_is_named if {
	down := object.union(good, {"tdx": {"verified": false, "backend": "ita", "root": "intel-trust-authority", "error": "HTTP 503", "error_code": "service_unavailable"}})
	codes(down) == {"attestation_service_unavailable"}
	bad := object.union(down, {"tdx": {"error_code": "token_invalid"}})
	codes(bad) == {"attestation_token_invalid"}
}

simulated := object.union(good, {"tdx": {"verified": false, "backend": "simulator", "root": "simulator", "error": "no root", "error_code": "simulated", "tcb_status": null}})

test_simulator_quotes_are_refused_in_production if {
	codes(simulated) == {"simulated_quote", "untrusted_root", "backend_not_accepted"}
}

test_simulator_quotes_pass_where_the_simulator_root_is_accepted if {
	quote.allow with input as simulated
		with data.teesql.accepted_roots as ["simulator"]
		with data.teesql.accepted_backends as ["simulator"]
	# An unverified quote from another root still fails.
	forged := object.union(simulated, {"tdx": {"root": "dev"}})
	not quote.allow with input as forged
		with data.teesql.accepted_roots as ["simulator", "dev"]
		with data.teesql.accepted_backends as ["simulator"]
}

test_unmatched_ita_policies_are_denied if {
	ita := object.union(good, {"tdx": {"backend": "ita", "root": "intel-trust-authority", "ita": {"issuer": "Intel Trust Authority", "policy_ids_required": ["b802fff0-eba4-4286-9fdb-7a3cdc04e94d"], "policy_ids_matched": [], "policy_ids_unmatched": ["b802fff0-eba4-4286-9fdb-7a3cdc04e94d"]}}})
	codes(ita) == {"ita_policy_unmatched"}
	matched := object.union(ita, {"tdx": {"ita": {"policy_ids_matched": ["b802fff0-eba4-4286-9fdb-7a3cdc04e94d"], "policy_ids_unmatched": []}}})
	quote.allow with input as matched
}
