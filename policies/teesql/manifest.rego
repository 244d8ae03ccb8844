# Purpose "manifest": a signed leader manifest (DNS TXT _teesql-leader.<domain>), and,
# when the caller is connected to the leader, that leader's certificate: the attested
# dstack instance id must be the manifest's leader_instance and its app id the cluster.
package teesql.manifest

import rego.v1

import data.teesql.lib

default allow := false

allow if count(deny) == 0

# Signers pinned by the policy's data, and those the caller itself trusts.
pinned_signers := {lower(s) | some s in array.concat(data.teesql.manifest_signers, object.get(input.manifest, "expected_signers", []))}

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

deny contains d if {
	input.evidence.kind != "none"
	input.app != null
	input.manifest.error == null
	data.teesql.lib.norm_or_empty(input.app.app_id) != data.teesql.lib.norm(input.manifest.cluster)
	d := {"code": "leader_app_mismatch", "message": sprintf("the leader runs app %v but the manifest's cluster is %s", [input.app.app_id, input.manifest.cluster])}
}
