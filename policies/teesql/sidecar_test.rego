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
