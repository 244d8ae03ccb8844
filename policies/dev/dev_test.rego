package teesql.dev_test

import rego.v1

import data.teesql.quote
import data.teesql.quote_test
import data.teesql.sidecar
import data.teesql.sidecar_test

dev_quote := object.union(quote_test.good, {"tdx": {"root": "dev"}})

test_dev_profile_accepts_dev_root if {
	quote.allow with input as dev_quote
}

test_dev_profile_refuses_intel_root if {
	not quote.allow with input as quote_test.good
}

test_dev_profile_lets_clients_connect_without_attestation if {
	sidecar.allow with input as sidecar_test.no_cert
}
