package teesql.sidecar_test

import rego.v1

import data.teesql.quote_test
import data.teesql.sidecar

spki_hash := "ee"

# A client that presented a bound RA-TLS certificate.
client := object.union(quote_test.good, {"purpose": "sidecar", "evidence": {"kind": "ra_tls_cert", "cert": {"not_before": 1700000000, "not_after": 1800000000, "attestation_format": "versioned_v0"}}, "binding": {"kind": "ra_tls_spki", "ok": true, "expected": "aa"}, "connection": {"user": "teesql_read", "database": "app", "sni": "db", "client_addr": "127.0.0.1:5000", "alpn": ""}})

no_cert := object.union(client, {"evidence": {"kind": "none", "cert": null}, "tdx": null, "binding": {"kind": "none", "ok": false, "expected": null}})

codes(claims) := {d.code | some d in sidecar.deny with input as claims}

test_attested_client_allowed if {
	sidecar.allow with input as client
}

test_missing_client_certificate_denied_by_default if {
	not sidecar.allow with input as no_cert
	codes(no_cert) == {"client_attestation_required"}
}

test_missing_client_certificate_allowed_when_not_required if {
	sidecar.allow with input as no_cert with data.teesql.require_client_attestation as false
}

test_client_key_not_bound_denied if {
	bad := object.union(client, {"binding": {"ok": false}})
	codes(bad) == {"key_not_bound"}
}

test_plain_certificate_denied if {
	plain := object.union(client, {"tdx": null})
	codes(plain) == {"no_attestation", "no_quote"}
}

test_expired_client_certificate_denied if {
	old := object.union(client, {"now": 1900000000})
	codes(old) == {"certificate_expired"}
}

# Tenants.
tenants := {
	"acme": {"role": "tenant_acme", "privileges": "readwrite", "compose_hashes": ["0xC1"]},
	"globex": {"role": "tenant_globex", "privileges": "read", "app_ids": ["b2"]},
}

as_user(claims, user) := object.union(claims, {"connection": {"user": user}})

acme_client := object.union(client, {"app": quote_test.app})

globex_client := object.union(client, {"app": object.union(quote_test.app, {"app_id": "B2", "compose_hash": "c9"})})

stranger := object.union(client, {"app": object.union(quote_test.app, {"app_id": "a9", "compose_hash": "c9"})})

test_tenant_granted_by_compose_hash if {
	c := as_user(acme_client, "teesql_app")
	sidecar.allow with input as c with data.teesql.tenants as tenants
	sidecar.grants == {"roles": ["tenant_acme"], "attributes": {"tenant": "acme"}} with input as c with data.teesql.tenants as tenants
}

test_tenant_granted_by_app_id_and_own_role_allowed if {
	c := as_user(globex_client, "tenant_globex")
	sidecar.allow with input as c with data.teesql.tenants as tenants
	sidecar.grants.roles == ["tenant_globex"] with input as c with data.teesql.tenants as tenants
}

test_a_chosen_app_id_maps_no_tenant if {
	chosen := object.union(client, {"app": object.union(quote_test.chosen_app, {"app_id": "B2", "compose_hash": "c9"})})
	c := as_user(chosen, "teesql_app")
	codes(c) == {"app_id_not_attested"} with data.teesql.tenants as tenants
	not sidecar.grants with input as c with data.teesql.tenants as tenants
	codes(as_user(chosen, "tenant_globex")) == {"app_id_not_attested"} with data.teesql.tenants as tenants

	# With require_tenant, a cluster role is refused for the same reason.
	reader := as_user(chosen, "teesql_read")
	codes(reader) == {"app_id_not_attested"} with data.teesql.tenants as tenants with data.teesql.require_tenant as true
	sidecar.allow with input as reader with data.teesql.tenants as tenants
}

test_an_app_id_under_a_pinned_kms_maps_its_tenant if {
	under_kms := object.union(client, {"app": object.union(quote_test.kms_app, {"app_id": "B2", "compose_hash": "c9"})})
	c := as_user(under_kms, "teesql_app")
	codes(c) == {"app_id_not_attested"} with data.teesql.tenants as tenants
	sidecar.grants.roles == ["tenant_globex"] with input as c with data.teesql.tenants as tenants with data.teesql.kms_roots as [quote_test.kms_root]
	sidecar.allow with input as c with data.teesql.tenants as tenants with data.teesql.kms_roots as [quote_test.kms_root]
}

test_other_tenants_role_not_granted if {
	c := as_user(acme_client, "tenant_globex")
	codes(c) == {"role_not_granted"} with data.teesql.tenants as tenants
}

test_tenant_never_gets_a_cluster_role if {
	codes(as_user(acme_client, "teesql_readwrite")) == {"role_not_granted"} with data.teesql.tenants as tenants
	codes(as_user(acme_client, "postgres")) == {"role_not_granted"} with data.teesql.tenants as tenants
}

test_unmapped_client_asking_for_a_tenant_refused if {
	codes(as_user(stranger, "teesql_app")) == {"tenant_not_mapped"} with data.teesql.tenants as tenants
	codes(as_user(stranger, "tenant_acme")) == {"tenant_not_mapped"} with data.teesql.tenants as tenants
	not sidecar.grants with input as as_user(stranger, "teesql_app") with data.teesql.tenants as tenants
}

test_unmapped_client_keeps_cluster_roles_unless_tenants_required if {
	sidecar.allow with input as stranger with data.teesql.tenants as tenants
	codes(stranger) == {"tenant_not_mapped"} with data.teesql.tenants as tenants with data.teesql.require_tenant as true
}

test_unreplayed_event_log_maps_to_no_tenant if {
	unreplayed := object.union(acme_client, {"app": {"rtmr3_replayed": false}})
	codes(as_user(unreplayed, "teesql_app")) == {"rtmr3_mismatch", "tenant_not_mapped"} with data.teesql.tenants as tenants
}

test_identity_in_two_tenants_is_ambiguous if {
	both := object.union(tenants, {"globex": {"compose_hashes": ["c1"]}})
	codes(as_user(acme_client, "teesql_app")) == {"tenant_ambiguous"} with data.teesql.tenants as both
	not sidecar.grants with input as as_user(acme_client, "teesql_app") with data.teesql.tenants as both
}

test_no_grants_without_tenants if {
	# No tenants configured: the same client keeps the cluster roles.
	not sidecar.grants with input as as_user(acme_client, "teesql_read")
	sidecar.allow with input as as_user(acme_client, "teesql_read")
}
