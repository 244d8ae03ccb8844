# AMD SEV-SNP evidence (claims `snp`) under the shipped policies. testdata/dstack-0.6-sev-snp
# is what the verifier makes of dstack's recorded Milan fixture (ASK and VCEK embedded):
# verified, OutOfDate (reported SNP firmware 23 below the committed 24), its app claims
# read from the MrConfigV3 document HOST_DATA commits to.
package teesql.snp_test

import rego.v1

import data.teesql.quote
import data.teesql.sidecar

snp := data.testdata.dstack_0_6_sev_snp

measurement := "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"

codes(claims) := {d.code | some d in quote.deny with input as claims}

# With the measurement pinned and this host's OutOfDate TCB accepted.
accepting := ["UpToDate", "OutOfDate"]

pinned_codes(claims) := {d.code | some d in quote.deny with input as claims with data.teesql.pins.snp_measurement as [measurement] with data.teesql.accepted_tcb_statuses as accepting}

test_the_fixture_is_what_dstack_states if {
	snp.evidence.tee == "sev-snp"
	snp.tdx == null
	snp.snp.verified == true
	snp.snp.product == "Milan"
	snp.snp.measurement == measurement
	snp.snp.tcb_status == "OutOfDate"
	"snp 23 < committed 24" in snp.snp.tcb_behind
	snp.app.attested_by == "host_data"
	snp.app.app_id_attested_by == "compose_hash"
}

# A TDX-only deployment (nothing pinned for SEV-SNP) refuses it, naming what to pin.
test_unpinned_snp_is_refused if {
	c := snp
	not quote.allow with input as c
	codes(c) == {"snp_measurement_not_pinned", "snp_tcb_not_accepted"}
}

# (Bind testdata to a local before `with` replaces data: the override hides the rest.)
test_pinned_snp_is_allowed if {
	c := snp
	m := measurement
	pinned_codes(c) == set()
	quote.allow with input as c with data.teesql.pins.snp_measurement as [m] with data.teesql.accepted_tcb_statuses as accepting

	# Its TCB is OutOfDate: refused under the default statuses.
	codes(c) == {"snp_tcb_not_accepted"} with data.teesql.pins.snp_measurement as [m]

	# Another measurement pinned.
	codes(c) == {"snp_measurement_not_pinned", "snp_tcb_not_accepted"} with data.teesql.pins.snp_measurement as ["00"]
}

test_snp_pins_leave_tdx_decisions_unchanged if {
	tdx := data.testdata.dev_0_6_kms
	m := measurement
	codes(tdx) == {"dev_root"}
	codes(tdx) == {"dev_root"} with data.teesql.pins.snp_measurement as [m]
}

test_what_the_host_controls_is_refused if {
	c := snp
	pinned_codes(object.union(c, {"snp": {"debug": true, "policy": {"debug": true}}})) == {"snp_debug"}
	pinned_codes(object.union(c, {"snp": {"vmpl": 2}})) == {"snp_vmpl"}
	pinned_codes(object.union(c, {"snp": {"policy": {"migrate_ma": true}}})) == {"snp_migration_agent"}
	pinned_codes(object.union(c, {"snp": {"migration_agent": true}})) == {"snp_migration_agent"}
	pinned_codes(object.union(c, {"snp": {"policy": {"smt": false}}})) == {"snp_platform_mismatch"}
	pinned_codes(object.union(c, {"snp": {"root": "custom"}})) == {"untrusted_root"}
}

test_an_unverified_report_is_refused_with_its_class if {
	c := snp
	no_vcek := object.union(c, {"snp": {"verified": false, "error_code": "no_vcek", "error": "no VCEK: …", "tcb_status": null, "vcek": null}})
	not quote.allow with input as no_vcek with data.teesql.pins.snp_measurement as [measurement]
	pinned_codes(no_vcek) == {"snp_no_vcek"}
	bad_sig := object.union(no_vcek, {"snp": {"error_code": "signature_invalid"}})
	pinned_codes(bad_sig) == {"snp_unverified"}
	revoked := object.union(no_vcek, {"snp": {"error_code": "revoked"}})
	pinned_codes(revoked) == {"snp_revoked"}
}

# HOST_DATA that does not commit to the document: its app claims are not attested.
test_an_unbound_mr_config_is_no_identity if {
	c := snp
	app_id := c.app.app_id
	unbound := object.union(c, {"snp": {"mr_config_bound": false}})
	pinned_codes(unbound) == {"snp_host_data_mismatch"}
	pinned_codes(unbound) == {"snp_host_data_mismatch", "app_id_not_attested"} with data.teesql.pins.app_id as [app_id]
	pinned_codes(c) == set() with data.teesql.pins.app_id as [app_id]
}

# An app id from mr_config under a KMS is an identity only when that KMS's root is pinned.
test_a_kms_app_id_needs_its_kms_pinned if {
	c := snp
	chosen := "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
	root := c.app.key_provider.id
	kms := object.union(c, {"app": {"app_id": chosen, "app_id_attested_by": "kms"}})
	pinned_codes(kms) == {"app_id_not_attested"} with data.teesql.pins.app_id as [chosen]
	pinned_codes(kms) == set() with data.teesql.pins.app_id as [chosen] with data.teesql.kms_roots as [root]
	none := object.union(c, {"app": {"app_id": chosen, "app_id_attested_by": "none"}})
	pinned_codes(none) == {"app_id_not_attested"} with data.teesql.pins.app_id as [chosen] with data.teesql.kms_roots as [root]
}

# An SEV-SNP client on the Postgres port: a bound RA-TLS certificate, its measurement pinned.
test_a_pinned_snp_client_is_admitted_by_the_sidecar if {
	c := snp
	client := object.union(c, {"purpose": "sidecar", "evidence": {"kind": "ra_tls_cert", "cert": {"not_before": 1700000000, "not_after": 1900000000, "attestation_format": "versioned_v0"}}, "binding": {"kind": "ra_tls_spki", "ok": true, "expected": c.snp.report_data}, "connection": {"user": "teesql_read", "database": "app", "sni": "db", "client_addr": "127.0.0.1:5000", "alpn": ""}})
	sidecar.allow with input as client with data.teesql.pins.snp_measurement as [measurement] with data.teesql.accepted_tcb_statuses as accepting
	not sidecar.allow with input as client
	unbound := object.union(client, {"binding": {"ok": false}})
	not sidecar.allow with input as unbound with data.teesql.pins.snp_measurement as [measurement] with data.teesql.accepted_tcb_statuses as accepting
}

# data.teesql.accepted_tees: a profile can refuse a TEE whatever else it pins.
test_accepted_tees if {
	c := snp
	pinned_codes(c) == {"tee_not_accepted"} with data.teesql.accepted_tees as ["tdx"]
	tdx := data.testdata.dev_0_6_kms
	codes(tdx) == {"dev_root", "tee_not_accepted"} with data.teesql.accepted_tees as ["sev-snp"]
	codes(tdx) == {"dev_root"} with data.teesql.accepted_tees as ["tdx"]
}
