# Purpose "manifest": a signed leader manifest (DNS TXT _teesql-leader.<domain>), and,
# when the caller is connected to the leader, that leader's certificate: its attested
# dstack instance id must be the manifest's leader_instance. The manifest's `cluster` is
# the cluster's contract address, and each member CVM's app id is its own member
# contract, so the leader's app id is compared only with the member app ids that
# data.teesql.clusters pins for that cluster:
#   "clusters": {"0x<cluster>": {"member_app_ids": ["<app id>", ...]}}
package teesql.manifest

import rego.v1

import data.teesql.lib

default allow := false

# Positive grounds only (see sidecar.rego): a parsed manifest, signed by a pinned signer,
# not expired, and, with the leader's certificate, a verified leader that is the one named.
allow if {
	count(deny) == 0
	input.manifest.error == null
	lower(input.manifest.signer) in pinned_signers
	input.manifest.valid_until > input.now
	leader_acceptable
}

leader_acceptable if input.evidence.kind == "none"

leader_acceptable if {
	input.evidence.kind != "none"
	lib.quote_verified
	input.binding.ok == true
	input.app != null
	data.teesql.lib.checks_loaded
	data.teesql.lib.norm_or_empty(input.app.instance_id) == data.teesql.lib.norm(input.manifest.leader_instance)
}

# Signers pinned by the policy's data, and those the caller itself trusts.
pinned_signers := {lower(s) | some s in data.teesql.manifest_signers} | {lower(s) | some s in object.get(input.manifest, "expected_signers", [])}

deny contains d if {
	input.manifest.error != null
	d := {"code": "manifest_invalid", "message": sprintf("the manifest cannot be used: %s", [input.manifest.error])}
}

deny contains d if {
	input.manifest.error == null
	count(pinned_signers) == 0
	d := {"code": "manifest_signer_not_pinned", "message": sprintf("no manifest signer is pinned (data.teesql.manifest_signers or the caller's expected signers); this manifest was signed by %s", [input.manifest.signer])}
}

deny contains d if {
	input.manifest.error == null
	count(pinned_signers) > 0
	not lower(input.manifest.signer) in pinned_signers
	d := {"code": "manifest_signer_not_pinned", "message": sprintf("the manifest was signed by %s; pinned signers: %s", [input.manifest.signer, data.teesql.lib.shown(pinned_signers)])}
}

# The verifier remembers the highest epoch it accepted per (cluster, signer), for the
# signers pinned here only (a caller's own expected_signers cannot poison it): an older
# manifest, however validly signed, is a rollback to a former leader.
deny contains d if {
	input.manifest.error == null
	is_number(input.manifest.highest_epoch_seen)
	input.manifest.epoch < input.manifest.highest_epoch_seen
	d := {"code": "manifest_rolled_back", "message": sprintf("the manifest's epoch %d is older than epoch %d, already accepted for cluster %s", [input.manifest.epoch, input.manifest.highest_epoch_seen, input.manifest.cluster])}
}

deny contains d if {
	input.manifest.error == null
	input.manifest.valid_until <= input.now
	d := {"code": "manifest_expired", "message": sprintf("the manifest expired at %d (now %d, epoch %d)", [input.manifest.valid_until, input.now, input.manifest.epoch])}
}

# With the leader's certificate.
deny contains d if {
	input.evidence.kind != "none"
	some d in lib.peer_problems
}

deny contains d if {
	input.evidence.kind != "none"
	input.app == null
	d := {"code": "leader_unattested", "message": "the leader's certificate carries no event log, so its instance and app cannot be checked"}
}

deny contains d if {
	input.evidence.kind != "none"
	input.app != null
	input.manifest.error == null
	data.teesql.lib.norm_or_empty(input.app.instance_id) != data.teesql.lib.norm(input.manifest.leader_instance)
	d := {"code": "leader_instance_mismatch", "message": sprintf("connected to instance %v but the manifest names leader %s", [input.app.instance_id, input.manifest.leader_instance])}
}

# Member app ids pinned for the manifest's cluster (empty when none are). A multi-value
# rule rather than a set comprehension: rego-cpp (regopy 1.5.2) does not parse
# `some k, v in x` inside a set or array comprehension (tests/regopy/evaluate.py).
member_app_ids contains data.teesql.lib.norm(a) if {
	some cluster, c in data.teesql.clusters
	data.teesql.lib.norm(cluster) == data.teesql.lib.norm(input.manifest.cluster)
	some a in c.member_app_ids
}

# A member app id tells a cluster's member apart only when the app id is an identity.
deny contains d if {
	input.evidence.kind != "none"
	input.app != null
	input.manifest.error == null
	count(member_app_ids) > 0
	data.teesql.lib.norm_or_empty(input.app.app_id) in member_app_ids
	not lib.app_id_attested
	d := {"code": "app_id_not_attested", "message": sprintf("the leader runs a member app of cluster %s, but %s", [input.manifest.cluster, lib.app_id_unattested_reason])}
}

deny contains d if {
	input.evidence.kind != "none"
	input.app != null
	input.manifest.error == null
	count(member_app_ids) > 0
	not data.teesql.lib.norm_or_empty(input.app.app_id) in member_app_ids
	d := {"code": "leader_app_mismatch", "message": sprintf("the leader runs app %v, which is not a member pinned for cluster %s: %s", [input.app.app_id, input.manifest.cluster, data.teesql.lib.shown(member_app_ids)])}
}
