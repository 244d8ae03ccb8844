//! dstack's `MRCONFIGID`: what the host committed the TD's configuration to at launch,
//! and whether that commitment agrees with the attested event log.
//!
//! The forms (dstack `dstack-types/src/mr_config.rs`, next@312dc605; 48 bytes each):
//! - all zeros: unused;
//! - legacy (dstack ≤ 0.5.1): the compose hash, zero-padded, no version byte;
//! - `01 ‖ compose_hash ‖ 00×15` (v1, dstack 0.5.2);
//! - `02 ‖ keccak256(compose_hash ‖ app_id ‖ kind ‖ key_provider_id) ‖ 00×15` (v2, dstack
//!   0.5.2; kind: none 0, local-sgx 1, kms 2, tpm 3);
//! - `03 ‖ SHA-256("dstack-mr-config-v3:" ‖ 0x00 ‖ document) ‖ 00×15` (v3, dstack 0.6),
//!   where the document is the exact bytes of the MrConfigV3 JSON the VMM delivers in
//!   the sys-config (`mr_config`, or `vm_config.mr_config`).
//!
//! A dstack guest refuses to boot when its MRCONFIGID does not match what it measures, so
//! a mismatch means the evidence is not what a dstack guest produced.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sha3::Keccak256;

use crate::eventlog::{AppIdentity, KeyProvider};

/// The largest MrConfigV3 document read from evidence (dstack's is a few hundred bytes).
pub const MAX_MR_CONFIG_DOCUMENT: usize = 16 * 1024;

/// Which form an MRCONFIGID has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MrConfigForm {
    /// All 48 bytes zero: the host committed to nothing.
    Unused,
    /// dstack ≤ 0.5.1: the compose hash, zero-padded, no version byte; recognised only
    /// when it equals the attested compose hash.
    Legacy,
    /// `01 ‖ compose_hash ‖ 00×15` (dstack 0.5.2).
    V1,
    /// `02 ‖ keccak256(compose_hash ‖ app_id ‖ kind ‖ key_provider_id) ‖ 00×15`
    /// (dstack 0.5.2).
    V2,
    /// `03 ‖ SHA-256("dstack-mr-config-v3:" ‖ 0x00 ‖ document) ‖ 00×15` (dstack 0.6).
    V3,
    /// None of the above (another version byte, or non-zero padding).
    Unknown,
}

/// What the quote's MRCONFIGID commits to (claims `tdx.mr_config`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MrConfigClaims {
    /// The form recognised from the 48 bytes (and, for legacy, the attested compose hash).
    pub form: MrConfigForm,
    /// v1 and legacy: the compose hash it carries (hex).
    pub compose_hash: Option<String>,
    /// v2 (Keccak-256) and v3 (SHA-256): the digest it carries (hex).
    pub digest: Option<String>,
    /// v3: the MrConfigV3 document, when the evidence carries one whose digest matches.
    pub document: Option<serde_json::Value>,
    /// Whether what it commits to equals the attested boot events; `null` when that cannot
    /// be told (no event log, form unused or unknown, v3 without its document).
    pub matches_event_log: Option<bool>,
    /// What differs, when it does not match.
    pub mismatches: Vec<String>,
}

impl MrConfigClaims {
    /// Read an MRCONFIGID, compared with the boot identity (when there is an event log)
    /// and with the MrConfigV3 document found in the evidence's configuration.
    pub fn read(id: &[u8; 48], identity: Option<&AppIdentity>, config: Option<&str>) -> Self {
        let mut claims = Self {
            form: MrConfigForm::Unknown,
            compose_hash: None,
            digest: None,
            document: None,
            matches_event_log: None,
            mismatches: Vec::new(),
        };
        let padded = id[33..].iter().all(|b| *b == 0);
        let body: [u8; 32] = id[1..33].try_into().unwrap_or([0; 32]);
        let compose = identity.and_then(|i| i.compose_hash.as_deref());
        if id.iter().all(|b| *b == 0) {
            claims.form = MrConfigForm::Unused;
            return claims;
        }
        // The legacy form has no version byte; it is recognised by equalling the
        // attested compose hash, which also keeps it apart from v1–v3.
        if id[32..].iter().all(|b| *b == 0) && compose == Some(&id[..32]) {
            claims.form = MrConfigForm::Legacy;
            claims.compose_hash = Some(hex::encode(&id[..32]));
            claims.matches_event_log = Some(true);
            return claims;
        }
        match (id[0], padded) {
            (1, true) => {
                claims.form = MrConfigForm::V1;
                claims.compose_hash = Some(hex::encode(body));
                if identity.is_some() {
                    claims.check("compose_hash", compose == Some(&body[..]));
                }
            }
            (2, true) => {
                claims.form = MrConfigForm::V2;
                claims.digest = Some(hex::encode(body));
                if let Some(identity) = identity {
                    let ok = v2_digest(identity).is_some_and(|d| d == body);
                    claims.check("compose_hash, app_id, key provider", ok);
                }
            }
            (3, true) => {
                claims.form = MrConfigForm::V3;
                claims.digest = Some(hex::encode(body));
                if let Some(document) = config.and_then(find_document) {
                    if v3_digest(document.as_bytes()) != body {
                        claims.check("document digest", false);
                    } else if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&document) {
                        if let Some(identity) = identity {
                            for field in v3_mismatches(&doc, identity) {
                                claims.check(field, false);
                            }
                            if claims.mismatches.is_empty() {
                                claims.matches_event_log = Some(true);
                            }
                        }
                        claims.document = Some(doc);
                    } else {
                        claims.check("document is not JSON", false);
                    }
                }
            }
            _ => {}
        }
        claims
    }

    fn check(&mut self, what: &str, ok: bool) {
        if !ok {
            self.mismatches.push(what.to_string());
        }
        self.matches_event_log = Some(self.mismatches.is_empty());
    }
}

/// `keccak256(compose_hash ‖ app_id ‖ kind ‖ key_provider_id)`, from the boot events.
fn v2_digest(id: &AppIdentity) -> Option<[u8; 32]> {
    let Some(Ok(KeyProvider { name, id: kp_id })) = &id.key_provider else {
        return None;
    };
    let kind: u8 = match name.as_str() {
        "none" => 0,
        "local-sgx" => 1,
        "kms" => 2,
        "tpm" => 3,
        _ => return None,
    };
    let mut h = Keccak256::new();
    h.update(id.compose_hash.as_ref()?);
    h.update(id.app_id.as_ref()?);
    h.update([kind]);
    h.update(hex::decode(kp_id).ok()?);
    Some(h.finalize().into())
}

/// `SHA-256("dstack-mr-config-v3:" ‖ 0x00 ‖ document)`: also SEV-SNP's HOST_DATA.
pub fn v3_digest(document: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"dstack-mr-config-v3:")
        .chain_update([0u8])
        .chain_update(document)
        .finalize()
        .into()
}

/// The MrConfigV3 document in a sys-config or VmConfig JSON: `mr_config` at the top, or
/// inside `vm_config` (an object, or a JSON string holding one).
fn find_document(config: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(config).ok()?;
    let in_vm_config = match doc.get("vm_config") {
        Some(serde_json::Value::String(s)) => serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| v.get("mr_config").cloned()),
        Some(v) => v.get("mr_config").cloned(),
        None => None,
    };
    match doc.get("mr_config").cloned().or(in_vm_config) {
        Some(serde_json::Value::String(s)) if s.len() <= MAX_MR_CONFIG_DOCUMENT => Some(s),
        _ => None,
    }
}

/// The fields of a MrConfigV3 document that differ from the boot events. Fields a
/// document leaves out are not checked (dstack's guest does the same).
fn v3_mismatches(doc: &serde_json::Value, id: &AppIdentity) -> Vec<&'static str> {
    let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_lowercase);
    let hexed = |b: &Option<Vec<u8>>| b.as_ref().map(hex::encode);
    let mut out = Vec::new();
    if doc.get("version").and_then(|v| v.as_u64()).unwrap_or(3) != 3 {
        out.push("version");
    }
    if text("compose_hash").is_none() || text("compose_hash") != hexed(&id.compose_hash) {
        out.push("compose_hash");
    }
    for (key, value) in [
        ("app_id", &id.app_id),
        ("instance_id", &id.instance_id),
        ("gpu_policy_hash", &id.gpu_policy_hash),
    ] {
        if doc.get(key).is_some() && text(key) != hexed(value) {
            out.push(key);
        }
    }
    let provider = match &id.key_provider {
        Some(Ok(kp)) => Some(kp),
        _ => None,
    };
    // The document spells the local SGX provider `local`; the event `local-sgx`.
    let name = provider.map(|kp| match kp.name.as_str() {
        "local-sgx" => "local".to_string(),
        other => other.to_string(),
    });
    if doc.get("key_provider").is_some() && text("key_provider") != name {
        out.push("key_provider");
    }
    if doc.get("key_provider_id").is_some()
        && text("key_provider_id") != provider.map(|kp| kp.id.to_lowercase())
    {
        out.push("key_provider_id");
    }
    if let Some(list) = doc.get("init_script_hashes") {
        let want: Vec<String> = id.init_script_hashes.iter().map(hex::encode).collect();
        let got: Option<Vec<String>> = list.as_array().map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_lowercase())
                .collect()
        });
        if got.as_ref() != Some(&want) {
            out.push("init_script_hashes");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::RuntimeEvent;

    fn identity(provider: &str, provider_id: &str) -> AppIdentity {
        AppIdentity::from_events(&[
            RuntimeEvent::new("app-id", vec![0x11; 20]),
            RuntimeEvent::new("compose-hash", vec![0x22; 32]),
            RuntimeEvent::new("gpu-policy-hash", vec![0x55; 32]),
            RuntimeEvent::new("instance-id", vec![0x44; 20]),
            RuntimeEvent::new(
                "key-provider",
                format!(r#"{{"name":"{provider}","id":"{provider_id}"}}"#).into_bytes(),
            ),
            RuntimeEvent::new("system-ready", vec![]),
        ])
    }

    fn id_of(version: u8, body: &[u8]) -> [u8; 48] {
        let mut id = [0u8; 48];
        id[0] = version;
        id[1..1 + body.len()].copy_from_slice(body);
        id
    }

    #[test]
    fn v3_matches_dstacks_test_vector() {
        // dstack next@312dc605, dstack-types/src/mr_config.rs tests: the JCS document
        // and its digest (recomputed: 90e5cffa…d94099).
        let doc = format!(
            r#"{{"app_id":"{}","compose_hash":"{}","gpu_policy_hash":"{}","instance_id":"{}","key_provider":"kms","key_provider_id":"{}","version":3}}"#,
            "11".repeat(20),
            "22".repeat(32),
            "55".repeat(32),
            "44".repeat(20),
            "33".repeat(32)
        );
        let digest = v3_digest(doc.as_bytes());
        assert_eq!(
            hex::encode(digest),
            "90e5cffa571b22c2ca846872d6fb7b071aa1346f1a1f87f72869c47b39d94099"
        );
        let config = serde_json::json!({ "mr_config": doc }).to_string();
        let id = identity("kms", &"33".repeat(32));
        let c = MrConfigClaims::read(&id_of(3, &digest), Some(&id), Some(&config));
        assert_eq!(c.form, MrConfigForm::V3);
        assert_eq!(c.matches_event_log, Some(true), "{c:?}");
        assert_eq!(c.document.as_ref().unwrap()["key_provider"], "kms");
        // Nested in a vm_config string, as sys-config carries it.
        let nested = serde_json::json!({
            "vm_config": serde_json::json!({ "mr_config": doc }).to_string()
        })
        .to_string();
        let c = MrConfigClaims::read(&id_of(3, &digest), Some(&id), Some(&nested));
        assert_eq!(c.matches_event_log, Some(true));
        // Another KMS in the events: the document no longer matches.
        let other = identity("kms", &"34".repeat(32));
        let c = MrConfigClaims::read(&id_of(3, &digest), Some(&other), Some(&config));
        assert_eq!(c.matches_event_log, Some(false));
        assert_eq!(c.mismatches, ["key_provider_id"]);
        // A document that is not the committed one.
        let c = MrConfigClaims::read(&id_of(3, &[0x77; 32]), Some(&id), Some(&config));
        assert_eq!(c.mismatches, ["document digest"]);
        // No document: the commitment cannot be checked.
        let c = MrConfigClaims::read(&id_of(3, &digest), Some(&id), None);
        assert_eq!(c.matches_event_log, None);
    }

    #[test]
    fn v1_v2_legacy_and_unused() {
        let id = identity("kms", &"33".repeat(32));
        let c = MrConfigClaims::read(&id_of(1, &[0x22; 32]), Some(&id), None);
        assert_eq!(
            (c.form, c.matches_event_log),
            (MrConfigForm::V1, Some(true))
        );
        let c = MrConfigClaims::read(&id_of(1, &[0x23; 32]), Some(&id), None);
        assert_eq!(c.matches_event_log, Some(false));
        assert_eq!(c.mismatches, ["compose_hash"]);
        let c = MrConfigClaims::read(&id_of(1, &[0x23; 32]), None, None);
        assert_eq!(c.matches_event_log, None);

        let mut h = Keccak256::new();
        h.update([0x22; 32]);
        h.update([0x11; 20]);
        h.update([2u8]);
        h.update([0x33; 32]);
        let v2: [u8; 32] = h.finalize().into();
        let c = MrConfigClaims::read(&id_of(2, &v2), Some(&id), None);
        assert_eq!(
            (c.form, c.matches_event_log),
            (MrConfigForm::V2, Some(true))
        );
        let none = identity("none", "");
        let c = MrConfigClaims::read(&id_of(2, &v2), Some(&none), None);
        assert_eq!(c.matches_event_log, Some(false));

        let mut legacy = [0u8; 48];
        legacy[..32].copy_from_slice(&[0x22; 32]);
        let c = MrConfigClaims::read(&legacy, Some(&id), None);
        assert_eq!(
            (c.form, c.matches_event_log),
            (MrConfigForm::Legacy, Some(true))
        );
        let c = MrConfigClaims::read(&[0u8; 48], Some(&id), None);
        assert_eq!((c.form, c.matches_event_log), (MrConfigForm::Unused, None));
        let mut odd = [0u8; 48];
        odd[0] = 9;
        odd[47] = 1;
        let c = MrConfigClaims::read(&odd, Some(&id), None);
        assert_eq!((c.form, c.matches_event_log), (MrConfigForm::Unknown, None));
    }
}
