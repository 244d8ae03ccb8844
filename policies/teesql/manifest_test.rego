package teesql.manifest_test

import rego.v1

import data.teesql.manifest
import data.teesql.quote_test
import data.teesql.sidecar_test

signer := "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a"

parsed := {
	"version": 1,
	"cluster": "0xbd32b609057a1a4569558a571d535c8f1212b097",
	"leader_instance": "ea23198e3419ebbb240571a29d0112d9bcbe69c0",
	"leader_url": "https://leader.example",
	"epoch": 42,
	"valid_until": 1800000000,
	"signer": signer,
	"error": null,
}

alone := {
	"claims_version": 1, "purpose": "manifest", "now": 1760000000,
	"evidence": {"kind": "none", "cert": null, "report_data_consistent": null, "vm_config": null},
	"tdx": null, "app": null, "binding": {"kind": "none", "ok": false, "expected": null},
	"connection": null, "manifest": parsed, "report": null,
}

codes(claims) := {d.code | some d in manifest.deny with input as claims}

test_pinned_signer_allows if {
	manifest.allow with input as alone with data.teesql.manifest_signers as [upper(signer)]
}

test_unpinned_signer_denied if {
	codes(alone) == {"manifest_signer_not_pinned"} with data.teesql.manifest_signers as ["0x0000000000000000000000000000000000000001"]
	codes(alone) == {"manifest_signer_not_pinned"}
}

test_expired_manifest_denied if {
	old := object.union(alone, {"now": 1800000000})
	codes(old) == {"manifest_expired"} with data.teesql.manifest_signers as [signer]
}

test_invalid_manifest_denied if {
	bad := object.union(alone, {"manifest": {"error": "manifest field \"epoch\" is missing", "signer": null}})
	"manifest_invalid" in codes(bad)
}

leader_app := {
	"app_id": "bd32b609057a1a4569558a571d535c8f1212b097",
	"instance_id": "ea23198e3419ebbb240571a29d0112d9bcbe69c0",
	"compose_hash": null, "os_image_hash": null, "key_provider": {"name": "kms", "id": quote_test.kms_root},
	"app_id_attested_by": "kms",
	"rtmr3_replayed": true, "rtmr3_replay": "33", "replay_error": null, "events": [],
}

with_leader := object.union(object.union(sidecar_test.client, {"purpose": "manifest", "manifest": parsed, "report": null}), {"app": leader_app})

test_matching_leader_allows if {
	manifest.allow with input as with_leader with data.teesql.manifest_signers as [signer]
}

test_other_instance_denied if {
	other := object.union(with_leader, {"app": {"instance_id": "00"}})
	codes(other) == {"leader_instance_mismatch"} with data.teesql.manifest_signers as [signer]
}

# A real leader: its app id is its own member contract, not the cluster's address.
member_leader := object.union(with_leader, {"app": {"app_id": "7e1c3b5a9f2d4e6a8b0c1d2e3f4a5b6c7d8e9f0a"}})

test_leader_app_id_is_not_compared_with_the_cluster if {
	manifest.allow with input as member_leader with data.teesql.manifest_signers as [signer]
}

pinned_members := {"0xBD32B609057A1A4569558A571D535C8F1212B097": {"member_app_ids": ["0x7E1C3B5A9F2D4E6A8B0C1D2E3F4A5B6C7D8E9F0A"]}}

test_pinned_member_app_allows if {
	manifest.allow with input as member_leader with data.teesql.manifest_signers as [signer] with data.teesql.clusters as pinned_members with data.teesql.kms_roots as [quote_test.kms_root]
}

# (regorus 0.11 evaluates a rule passed straight to a function under `with data.…` as
# undefined: bind it to a local first.)
test_a_member_app_id_needs_its_kms_pinned if {
	leader := member_leader
	codes(leader) == {"app_id_not_attested"} with data.teesql.manifest_signers as [signer] with data.teesql.clusters as pinned_members
	chosen := object.union(member_leader, {"app": {"app_id_attested_by": "none", "key_provider": {"name": "none", "id": ""}}})
	codes(chosen) == {"app_id_not_attested"} with data.teesql.manifest_signers as [signer] with data.teesql.clusters as pinned_members with data.teesql.kms_roots as [quote_test.kms_root]
}

test_app_outside_the_pinned_members_denied if {
	other := object.union(member_leader, {"app": {"app_id": "00"}})
	codes(other) == {"leader_app_mismatch"} with data.teesql.manifest_signers as [signer] with data.teesql.clusters as pinned_members
}

test_pins_for_another_cluster_do_not_apply if {
	other := object.union(member_leader, {"app": {"app_id": "00"}})
	elsewhere := {"0x0000000000000000000000000000000000000001": {"member_app_ids": ["11"]}}
	manifest.allow with input as other with data.teesql.manifest_signers as [signer] with data.teesql.clusters as elsewhere
}

test_u64_max_valid_until_never_expires if {
	forever := object.union(alone, {"manifest": {"valid_until": 18446744073709551615}, "now": 4102444800})
	manifest.allow with input as forever with data.teesql.manifest_signers as [signer]
}

test_leader_without_event_log_denied if {
	bare := object.union(with_leader, {"app": null})
	"leader_unattested" in codes(bare) with data.teesql.manifest_signers as [signer]
}

test_caller_expected_signer_is_accepted if {
	with_expected := object.union(alone, {"manifest": {"expected_signers": [signer]}})
	manifest.allow with input as with_expected
}

test_an_older_epoch_than_one_accepted_is_a_rollback if {
	rolled := object.union(alone, {"manifest": {"epoch": 41, "highest_epoch_seen": 42}})
	codes(rolled) == {"manifest_rolled_back"} with data.teesql.manifest_signers as [signer]
	same := object.union(alone, {"manifest": {"highest_epoch_seen": 42}})
	manifest.allow with input as same with data.teesql.manifest_signers as [signer]
}
