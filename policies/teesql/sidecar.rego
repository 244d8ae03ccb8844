# Purpose "sidecar": a client connecting to a database sidecar on port 5433.
# The production default requires the client to present attestation (mutual RA-TLS).
package teesql.sidecar

import rego.v1

import data.teesql.lib

default allow := false

# Allow on positive grounds only, never merely because nothing denied: a profile with a
# file or a data key missing must fail closed.
allow if {
	count(deny) == 0
	acceptable_evidence
}

acceptable_evidence if {
	input.evidence.kind == "none"
	client_attestation_optional
}

acceptable_evidence if {
	input.evidence.kind == "ra_tls_cert"
	lib.quote_verified
	input.binding.ok == true
	data.teesql.lib.checks_loaded
}

# Only an explicit false in data.json makes client attestation optional.
client_attestation_optional if data.teesql.require_client_attestation == false

deny contains d if {
	input.evidence.kind == "none"
	not client_attestation_optional
	d := {"code": "client_attestation_required", "message": "the client presented no certificate; this policy requires an RA-TLS client certificate"}
}

deny contains d if {
	input.evidence.kind != "none"
	some d in lib.peer_problems
}

# Tenants: per-application isolation in the database. data.teesql.tenants maps a tenant
# name to its Postgres role and the attested identities that belong to it:
#   "tenants": {"acme": {"role": "tenant_acme", "privileges": "readwrite",
#                        "compose_hashes": ["…"], "app_ids": ["…"]}}
# An attested client (RTMR3 replayed, or on SEV-SNP its HOST_DATA-bound MrConfigV3
# document) that maps to exactly one tenant is granted that
# tenant's role, and its session records {"tenant": name}. The sidecar lets a client log
# in as a tenant role only when granted, and maps data.teesql.tenant_user (the generic
# user, "teesql_app") to the granted role.
attested_app if {
	input.app != null
	lib.app_attested
}

tenants_of contains t if {
	attested_app
	some t, spec in data.teesql.tenants
	input.app.compose_hash != null
	data.teesql.lib.norm(input.app.compose_hash) in data.teesql.lib.pinned(object.get(spec, "compose_hashes", []))
}

# A tenant is mapped by app id only when the app id is an identity (lib.app_id_attested:
# a pinned KMS, or derived from the compose hash).
tenants_of contains t if {
	lib.app_id_attested
	some t in tenants_by_app_id
}

tenants_by_app_id contains t if {
	attested_app
	some t, spec in data.teesql.tenants
	input.app.app_id != null
	data.teesql.lib.norm(input.app.app_id) in data.teesql.lib.pinned(object.get(spec, "app_ids", []))
}

# A tenant would map by app id, but the app id is not an identity: say so, rather than
# that no tenant maps.
unattested_tenant if {
	count(tenants_of) == 0
	count(tenants_by_app_id) > 0
	not lib.app_id_attested
}

needs_tenant if asks_for_tenant

needs_tenant if data.teesql.require_tenant == true

deny contains d if {
	unattested_tenant
	needs_tenant
	d := {"code": "app_id_not_attested", "message": sprintf("tenant %s is mapped by this client's app id, but %s", [concat(", ", sort([t | some t in tenants_by_app_id])), lib.app_id_unattested_reason])}
}

tenant_roles := {spec.role | some spec in data.teesql.tenants}

asks_for_tenant if input.connection.user == data.teesql.tenant_user

asks_for_tenant if input.connection.user in tenant_roles

grants := {"roles": [data.teesql.tenants[t].role], "attributes": {"tenant": t}} if {
	count(tenants_of) == 1
	some t in tenants_of
}

app_field(f) := object.get(input.app, f, null) if input.app != null

app_field(_) := null if input.app == null

deny contains d if {
	count(tenants_of) == 0
	asks_for_tenant
	not unattested_tenant
	d := {"code": "tenant_not_mapped", "message": sprintf("user %s needs a tenant, and no tenant maps this client's attested compose hash %v or app id %v", [input.connection.user, app_field("compose_hash"), app_field("app_id")])}
}

deny contains d if {
	count(tenants_of) == 0
	not asks_for_tenant
	data.teesql.require_tenant == true
	not unattested_tenant
	d := {"code": "tenant_not_mapped", "message": sprintf("require_tenant is set, and no tenant maps this client's attested compose hash %v or app id %v", [app_field("compose_hash"), app_field("app_id")])}
}

deny contains d if {
	count(tenants_of) > 1
	d := {"code": "tenant_ambiguous", "message": sprintf("this client's attested identity maps to several tenants: %s", [concat(", ", sort([t | some t in tenants_of]))])}
}

# A tenant's application logs in only as its tenant's role (or the generic user): never as
# another tenant's role, and never as a cluster-wide role, which row-level security keyed
# on the tenant would not confine.
deny contains d if {
	count(tenants_of) == 1
	some t in tenants_of
	input.connection.user != data.teesql.tenant_user
	data.teesql.tenants[t].role != input.connection.user
	d := {"code": "role_not_granted", "message": sprintf("this client is tenant %s and logs in only as %s or %s, not %s", [t, data.teesql.tenants[t].role, data.teesql.tenant_user, input.connection.user])}
}

# Reasons an allowed decision carries as warnings (README, "TCB recoveries").
warn contains d if some d in lib.quote_warnings
