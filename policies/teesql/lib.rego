# Checks shared by every purpose that judges a quote. Pins and lists come from
# data.teesql (data.json), so operators change data, not code. Read leaf keys
# (data.teesql.pins, …), never data.teesql as a whole: the policies live there too.
package teesql.lib

import rego.v1

# Every purpose's allow rule requires this: without this file nothing is allowed.
checks_loaded := true

# Pins are compared in lowercase hex without 0x.
norm(x) := lower(trim_prefix(trim_prefix(x, "0x"), "0X"))

pinned(list) := {norm(x) | some x in list}

shown(list) := "none" if count(list) == 0

shown(list) := concat(", ", sort(list)) if count(list) > 0

# Verification failures keep the backend's class as their code.
failure_code := {
	"collateral_expired": "collateral_expired",
	"collateral_unavailable": "collateral_unavailable",
	"signature_invalid": "quote_signature_invalid",
	"tcb_level_unknown": "tcb_level_unknown",
	"revoked": "tcb_revoked",
	"not_tdx": "not_tdx",
	"service_unavailable": "attestation_service_unavailable",
	"token_invalid": "attestation_token_invalid",
	"simulated": "simulated_quote",
}

quote_problems contains d if {
	input.tdx == null
	object.get(input, "snp", null) == null
	d := {"code": "no_quote", "message": "the evidence carries no quote"}
}

# A dstack simulator quote verifies under no root; only a profile that accepts the
# `simulator` root (the development profile) takes it unverified.
simulator_accepted if {
	input.tdx.root == "simulator"
	input.tdx.error_code == "simulated"
	"simulator" in data.teesql.accepted_roots
}

# The quote verified, or is a simulator quote this profile takes as it is.
quote_verified if input.tdx.verified == true

quote_verified if simulator_accepted

# SEV-SNP (claims `snp`, dstack 0.6 on AMD): the report verified against AMD's pinned
# roots. It is accepted only where data pins its launch measurement
# (data.teesql.pins.snp_measurement), so a TDX-only deployment refuses it.
quote_verified if input.snp.verified == true

snp_pins := pinned(object.get(data.teesql.pins, "snp_measurement", []))

# Which TEEs a profile takes evidence from (data.teesql.accepted_tees: "tdx", "sev-snp").
# Claims without `evidence.tee` (made before it existed) are TDX when they carry a quote.
evidence_tee := input.evidence.tee if is_string(input.evidence.tee)

evidence_tee := "tdx" if {
	not is_string(input.evidence.tee)
	input.tdx != null
}

quote_problems contains d if {
	not evidence_tee in data.teesql.accepted_tees
	d := {"code": "tee_not_accepted", "message": sprintf("the evidence comes from %s; this policy accepts evidence from: %s", [evidence_tee, shown(data.teesql.accepted_tees)])}
}

snp_failure_code := {"no_vcek": "snp_no_vcek", "revoked": "snp_revoked"}

quote_problems contains d if {
	input.snp.verified == false
	code := object.get(snp_failure_code, input.snp.error_code, "snp_unverified")
	d := {"code": code, "message": sprintf("the SEV-SNP report did not verify (%s): %s", [input.snp.error_code, input.snp.error])}
}

quote_problems contains d if {
	input.snp != null
	count(snp_pins) == 0
	d := {"code": "snp_measurement_not_pinned", "message": sprintf("SEV-SNP evidence (measurement %s) is accepted only where data.teesql.pins.snp_measurement pins it; this policy pins none", [input.snp.measurement])}
}

quote_problems contains d if {
	count(snp_pins) > 0
	input.snp != null
	not norm(input.snp.measurement) in snp_pins
	d := {"code": "snp_measurement_not_pinned", "message": sprintf("SEV-SNP measurement %s is not pinned; pinned: %s", [input.snp.measurement, shown(snp_pins)])}
}

quote_problems contains d if {
	input.snp != null
	not input.snp.root in data.teesql.accepted_roots
	d := {"code": "untrusted_root", "message": sprintf("the SEV-SNP report was verified against the %s roots; this policy accepts only: %s", [input.snp.root, shown(data.teesql.accepted_roots)])}
}

# The guest policy comes from the untrusted host: refuse what lets it read or move the
# guest.
quote_problems contains d if {
	input.snp.debug == true
	not data.teesql.allow_debug
	d := {"code": "snp_debug", "message": "the SEV-SNP guest policy allows debugging: the host can read its memory"}
}

quote_problems contains d if {
	input.snp != null
	input.snp.vmpl != 0
	d := {"code": "snp_vmpl", "message": sprintf("the SEV-SNP report comes from VMPL %d, not the guest's most privileged level 0", [input.snp.vmpl])}
}

quote_problems contains d if {
	input.snp != null
	snp_migration_agent
	d := {"code": "snp_migration_agent", "message": "the SEV-SNP guest policy allows a migration agent, or one is associated: the host could move the guest"}
}

snp_migration_agent if input.snp.policy.migrate_ma == true

# What the guest policy requires of the platform must hold on it (as dstack checks).
snp_platform_mismatches contains "SMT is enabled though the policy forbids it" if {
	input.snp.policy.smt == false
	input.snp.platform_info.smt_en == true
}

snp_platform_mismatches contains "RAPL is not disabled though the policy requires it" if {
	input.snp.policy.rapl_dis == true
	input.snp.platform_info.rapl_dis == false
}

snp_platform_mismatches contains "ciphertext hiding is off though the policy requires it" if {
	input.snp.policy.ciphertext_hiding == true
	input.snp.platform_info.ciphertext_hiding_en == false
}

quote_problems contains d if {
	count(snp_platform_mismatches) > 0
	d := {"code": "snp_platform_mismatch", "message": sprintf("the SEV-SNP platform does not honour the guest policy: %s", [concat("; ", sort(snp_platform_mismatches))])}
}

snp_migration_agent if input.snp.migration_agent == true

quote_problems contains d if {
	input.snp != null
	input.snp.mr_config_bound == false
	d := {"code": "snp_host_data_mismatch", "message": sprintf("the SEV-SNP report's HOST_DATA %s does not commit to the MrConfigV3 document it came with: its app identity is not attested", [input.snp.host_data])}
}

quote_problems contains d if {
	input.snp.verified == true
	not input.snp.tcb_status in data.teesql.accepted_tcb_statuses
	d := {"code": "snp_tcb_not_accepted", "message": sprintf("SEV-SNP TCB status %s (%s) is not accepted; accepted: %s", [input.snp.tcb_status, shown(input.snp.tcb_behind), shown(data.teesql.accepted_tcb_statuses)])}
}

quote_problems contains d if {
	input.tdx.verified == false
	not simulator_accepted
	code := object.get(failure_code, input.tdx.error_code, "quote_unverified")
	d := {"code": code, "message": sprintf("the quote did not verify: %s", [input.tdx.error])}
}

quote_problems contains d if {
	not input.tdx.root in data.teesql.accepted_roots
	input.tdx.root == "dev"
	d := {"code": "dev_root", "message": sprintf("the quote was verified against the development trust root; this policy accepts only: %s", [shown(data.teesql.accepted_roots)])}
}

quote_problems contains d if {
	not input.tdx.root in data.teesql.accepted_roots
	input.tdx.root != "dev"
	d := {"code": "untrusted_root", "message": sprintf("the quote was verified against the %s trust root; this policy accepts only: %s", [input.tdx.root, shown(data.teesql.accepted_roots)])}
}

quote_problems contains d if {
	input.tdx != null
	not input.tdx.backend in data.teesql.accepted_backends
	d := {"code": "backend_not_accepted", "message": sprintf("the quote was appraised by the %s backend; this policy accepts: %s", [input.tdx.backend, shown(data.teesql.accepted_backends)])}
}

quote_problems contains d if {
	input.tdx.verified == true
	not input.tdx.tcb_status in data.teesql.accepted_tcb_statuses
	not input.tdx.tcb_status in out_of_date
	d := {"code": "tcb_status_not_accepted", "message": sprintf("TCB status %s (advisories: %s) is not accepted; accepted: %s", [input.tdx.tcb_status, shown(input.tdx.advisory_ids), shown(data.teesql.accepted_tcb_statuses)])}
}

# TCB lifecycle (README, "TCB recoveries"). Intel's standard TCB set decides; a platform
# it demoted less than data.teesql.tcb_grace_days ago is admitted with a warning; the
# early set (Intel's next one) only ever warns, when data.teesql.warn_early_demotion.
out_of_date := {"OutOfDate", "OutOfDateConfigurationNeeded"}

tcb_in_grace if {
	input.tdx.tcb_status in out_of_date
	input.tdx.tcb.days_since_standard != null
	input.tdx.tcb.days_since_standard < data.teesql.tcb_grace_days
}

# What must rise, as an operator reads it: "tdx_module (TDX Module) 6 -> 11, …".
fix_texts contains fix_text(f) if some f in input.tdx.tcb.fix

tcb_fix := concat(", ", sort(fix_texts)) if count(fix_texts) > 0

fix_text(f) := sprintf("%s (%s) %d -> %d", [f.component, fix_kind(f), f.have, f.needs])

tcb_fix := "see the platform's TCB levels" if count(fix_texts) == 0

fix_kind(f) := f.kind if f.kind != null

fix_kind(f) := "unlabelled" if f.kind == null

quote_problems contains d if {
	input.tdx.verified == true
	input.tdx.tcb_status in out_of_date
	not input.tdx.tcb_status in data.teesql.accepted_tcb_statuses
	not tcb_in_grace
	d := {"code": "tcb_out_of_date", "message": sprintf("TCB status %s (advisories: %s) under Intel's TCB evaluation data set %v: the platform must be updated; to recover raise %s", [input.tdx.tcb_status, shown(input.tdx.advisory_ids), object.get(object.get(input.tdx, "tcb", {}), "eval_data_number", "unknown"), tcb_fix])}
}

quote_problems contains d if {
	input.tdx.verified == true
	input.tdx.tcb.eval_data_number < data.teesql.min_tcb_eval_data_number
	d := {"code": "tcb_eval_data_number_too_low", "message": sprintf("the collateral is Intel's TCB evaluation data set %d; this policy requires at least %d (fetch newer collateral)", [input.tdx.tcb.eval_data_number, data.teesql.min_tcb_eval_data_number])}
}

# Warnings: reasons an allowed decision carries (purposes `warn` them).
quote_warnings contains d if {
	input.tdx.verified == true
	tcb_in_grace
	not input.tdx.tcb_status in data.teesql.accepted_tcb_statuses
	d := {"code": "tcb_grace", "message": sprintf("TCB status %s: demoted by Intel's TCB evaluation data set %d, standard for %d days; admitted within tcb_grace_days (%d); to recover raise %s", [input.tdx.tcb_status, input.tdx.tcb.eval_data_number, input.tdx.tcb.days_since_standard, data.teesql.tcb_grace_days, tcb_fix])}
}

quote_warnings contains d if {
	input.tdx.verified == true
	data.teesql.warn_early_demotion == true
	early := input.tdx.tcb.early
	early != null
	input.tdx.tcb_status in data.teesql.accepted_tcb_statuses
	not early.status in data.teesql.accepted_tcb_statuses
	d := {"code": "tcb_early_demotion", "message": sprintf("Intel's next TCB evaluation data set %d rates the platform %s; it becomes the standard on %s (in %s days); to recover raise %s", [early.eval_data_number, early.status, early_date(early), early_days(early), tcb_fix])}
}

early_date(e) := e.standard_from if e.standard_from != null

early_date(e) := "a date not yet known" if e.standard_from == null

early_days(e) := sprintf("%d", [e.days_until]) if e.days_until != null

early_days(e) := "unknown" if e.days_until == null

# Intel security advisories the platform is affected by (from the TCB level the quote
# matched), refused by ID in data.teesql.refused_advisory_ids.
quote_problems contains d if {
	input.tdx.verified == true
	refused := {upper(a) | some a in data.teesql.refused_advisory_ids}
	affected := {upper(a) | some a in input.tdx.advisory_ids} & refused
	count(affected) > 0
	d := {"code": "advisory_refused", "message": sprintf("the platform is affected by %s, which this policy refuses (TCB status %s)", [shown(affected), input.tdx.tcb_status])}
}

# Intel Trust Authority appraised the quote against policies of the operator's (named in
# --ita-policy-ids, or attached to the API key): each must have matched.
quote_problems contains d if {
	unmatched := input.tdx.ita.policy_ids_unmatched
	count(unmatched) > 0
	d := {"code": "ita_policy_unmatched", "message": sprintf("Intel Trust Authority appraised the quote against policies it did not match: %s", [shown(unmatched)])}
}

quote_problems contains d if {
	input.tdx.debug == true
	not data.teesql.allow_debug
	d := {"code": "debug_td", "message": "the TD runs in debug mode: the host can read its memory"}
}

quote_problems contains d if {
	input.binding.kind != "none"
	input.binding.ok == false
	d := {"code": "key_not_bound", "message": sprintf("the quote's report data %s does not bind the presented %s (expected %s): a replayed quote", [signed_report_data, binding_subject[input.binding.kind], input.binding.expected])}
}

# The report data the TEE signed: the TDX quote's or the SEV-SNP report's.
signed_report_data := input.tdx.report_data if input.tdx != null

signed_report_data := input.snp.report_data if {
	input.tdx == null
	input.snp != null
}

signed_report_data := "none" if {
	input.tdx == null
	object.get(input, "snp", null) == null
}

binding_subject := {"ra_tls_spki": "certificate key", "report_data": "report data"}

quote_problems contains d if {
	input.evidence.report_data_consistent == false
	d := {"code": "evidence_inconsistent", "message": "the report data stated beside the quote differs from the quote's own"}
}

quote_problems contains d if {
	input.app != null
	app_attested_by == "rtmr3"
	input.app.rtmr3_replayed == false
	d := {"code": "rtmr3_mismatch", "message": sprintf("replaying the event log gives RTMR3 %s but the quote says %s%s", [object.get(input.app, "rtmr3_replay", null), input.tdx.rtmr3, replay_note])}
}

replay_note := sprintf(" (%s)", [input.app.replay_error]) if input.app.replay_error != null

replay_note := "" if input.app.replay_error == null

# Register pins: MRTD and RTMR0-2 cannot be replayed, so they are allowlisted.
register_names := {"mrtd": "MRTD", "rtmr0": "RTMR0", "rtmr1": "RTMR1", "rtmr2": "RTMR2"}

quote_problems contains d if {
	some reg, label in register_names
	pins := pinned(data.teesql.pins[reg])
	count(pins) > 0
	input.tdx[reg] != null
	not norm(input.tdx[reg]) in pins
	d := {"code": sprintf("%s_not_pinned", [reg]), "message": sprintf("%s %s is not pinned; pinned: %s", [label, input.tdx[reg], shown(pins)])}
}

# MRCONFIGID is what the host committed the TD's configuration to; a dstack guest does
# not boot when it disagrees with what the guest measures.
quote_problems contains d if {
	input.tdx.mr_config.matches_event_log == false
	d := {"code": "mr_config_mismatch", "message": sprintf("the quote's MRCONFIGID (%s) does not commit to the attested event log: %s differ", [input.tdx.mr_config.form, concat(", ", input.tdx.mr_config.mismatches)])}
}

# An app id names an application only when something vouches for it: dstack 0.6 lets a
# CVM without a KMS measure any app id its operator chooses (dstack commit c8ed2a21). It
# counts when it is the first 20 bytes of the attested compose hash, or when the key
# provider is a KMS whose root (the `id` of the key-provider event) is pinned in
# data.teesql.kms_roots. With that list missing, no KMS counts (fail closed).
# What vouches for the app claims: the TDX event log replayed to RTMR3, or (SEV-SNP) the
# MrConfigV3 document HOST_DATA commits to in a verified report. Claims without
# `attested_by` are TDX.
default app_attested_by := "rtmr3"

app_attested_by := input.app.attested_by if is_string(input.app.attested_by)

app_attested if {
	app_attested_by == "rtmr3"
	input.app.rtmr3_replayed == true
}

app_attested if {
	app_attested_by == "host_data"
	input.snp.verified == true
	input.snp.mr_config_bound == true
}

app_id_attested if {
	app_attested
	input.app.app_id_attested_by == "compose_hash"
}

app_id_attested if {
	app_attested
	input.app.app_id_attested_by == "kms"
	norm(input.app.key_provider.id) in pinned(data.teesql.kms_roots)
}

# Why an app id is not an identity, naming what to pin instead.
app_id_unattested_reason := sprintf("the app id %v is measured by a CVM whose key provider is %v, which lets its operator choose the app id; pin the application's compose hash beside it, or pin its KMS root in data.teesql.kms_roots", [object.get(input.app, "app_id", null), key_provider_name]) if {
	not app_id_attested
	input.app.app_id_attested_by != "kms"
}

app_id_unattested_reason := sprintf("the app id %v comes from a KMS whose root %v is not in data.teesql.kms_roots; pin that KMS root, or the application's compose hash", [object.get(input.app, "app_id", null), input.app.key_provider.id]) if {
	not app_id_attested
	input.app.app_id_attested_by == "kms"
}

key_provider_name := input.app.key_provider.name if is_object(input.app.key_provider)

key_provider_name := "unknown" if not is_object(input.app.key_provider)

# App pins: attested through RTMR3 replay.
app_names := {"compose_hash": "compose hash", "app_id": "app id", "os_image_hash": "OS image hash"}

quote_problems contains d if {
	some field, label in app_names
	count(data.teesql.pins[field]) > 0
	input.app == null
	d := {"code": sprintf("%s_unattested", [field]), "message": sprintf("%s is pinned but the evidence has no event log to attest it", [label])}
}

quote_problems contains d if {
	some field, label in app_names
	pins := pinned(data.teesql.pins[field])
	count(pins) > 0
	input.app != null
	value := object.get(input.app, field, null)
	not norm_or_empty(value) in pins
	d := {"code": sprintf("%s_not_pinned", [field]), "message": sprintf("%s %v is not pinned; pinned: %s", [label, value, shown(pins)])}
}

# A pinned app id that matches is not enough on its own: unless a compose hash is pinned
# beside it, the app id itself must be an identity.
quote_problems contains d if {
	pins := pinned(data.teesql.pins.app_id)
	count(pins) > 0
	count(data.teesql.pins.compose_hash) == 0
	input.app != null
	norm_or_empty(object.get(input.app, "app_id", null)) in pins
	not app_id_attested
	d := {"code": "app_id_not_attested", "message": app_id_unattested_reason}
}

norm_or_empty(x) := norm(x) if x != null

norm_or_empty(null) := ""

# The presented certificate must be within its validity period.
cert_problems contains d if {
	c := input.evidence.cert
	c != null
	input.now > c.not_after
	d := {"code": "certificate_expired", "message": sprintf("the certificate expired at %d (now %d)", [c.not_after, input.now])}
}

cert_problems contains d if {
	c := input.evidence.cert
	c != null
	input.now < c.not_before
	d := {"code": "certificate_not_yet_valid", "message": sprintf("the certificate is valid from %d (now %d)", [c.not_before, input.now])}
}

# A TLS peer must present an RA-TLS certificate whose key the quote binds.
peer_problems contains d if some d in quote_problems

peer_problems contains d if some d in cert_problems

peer_problems contains d if {
	input.evidence.kind != "ra_tls_cert"
	d := {"code": "not_ra_tls", "message": sprintf("the peer presented %s, not an RA-TLS certificate", [input.evidence.kind])}
}

peer_problems contains d if {
	input.evidence.kind == "ra_tls_cert"
	input.tdx == null
	object.get(input, "snp", null) == null
	d := {"code": "no_attestation", "message": "the peer's certificate carries no attestation (no dstack quote extension)"}
}
