//! dstack event logs: RTMR3 replay and the application identity they record.
//!
//! RTMR3 is replayed from each runtime event's name and payload, never from the digests
//! a log ships (current guests ship them empty, and a shipped digest proves nothing).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384, Sha512};

/// TCG event type dstack uses for its runtime events (RTMR3).
pub const DSTACK_RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// One entry of a TDX event log, as dstack ships it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxEvent {
    /// Index of the measurement register: 0 = MRTD/RTMR0 … 3 = RTMR3.
    pub imr: u32,
    /// TCG event type; [`DSTACK_RUNTIME_EVENT_TYPE`] for dstack's runtime events.
    pub event_type: u32,
    /// The digest the log says was extended (hex in JSON; current guests ship it empty
    /// for runtime events). Never trusted: RTMR3 is replayed from name and payload.
    #[serde(with = "hex::serde")]
    pub digest: Vec<u8>,
    /// The runtime event's name (e.g. `compose-hash`); boot events may have none.
    pub event: String,
    /// The event data (hex in JSON); for runtime events, the payload the digest covers.
    #[serde(with = "hex::serde")]
    pub event_payload: Vec<u8>,
    /// Runtime event version: 1 (the default) or 2 (digest over canonical JSON, dstack
    /// 0.6). Any other value is refused when the log is read, as dstack refuses it.
    #[serde(
        default = "v1",
        skip_serializing_if = "is_v1",
        deserialize_with = "event_version"
    )]
    pub version: u8,
    /// The digest's preimage (hex), which dstack 0.6's `GetQuote` ships beside version 2
    /// runtime events. When present it must be the preimage of the event's own name and
    /// payload ([`RuntimeEvent::preimage`]); the digest is always recomputed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_hex"
    )]
    pub preimage: Option<Vec<u8>>,
}

fn v1() -> u8 {
    1
}

fn is_v1(v: &u8) -> bool {
    *v == 1
}

/// The runtime event versions dstack defines (`EventLogVersion`: 1 and 2).
pub const EVENT_VERSIONS: [u8; 2] = [1, 2];

/// Check a runtime event's version: dstack defines 1 and 2 and refuses anything else;
/// hashing an unknown version as version 1 would replay something the guest never
/// measured.
pub fn check_event_version(version: u64) -> Result<u8, UnknownEventVersion> {
    u8::try_from(version)
        .ok()
        .filter(|v| EVENT_VERSIONS.contains(v))
        .ok_or(UnknownEventVersion { version })
}

/// A runtime event version dstack does not define ([`check_event_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime event version {version} (dstack defines 1 and 2)")]
pub struct UnknownEventVersion {
    /// The version the event carries.
    pub version: u64,
}

fn event_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = i128::deserialize(d)?;
    u64::try_from(v)
        .map_err(|_| format!("unknown runtime event version {v} (dstack defines 1 and 2)"))
        .and_then(|v| check_event_version(v).map_err(|e| e.to_string()))
        .map_err(serde::de::Error::custom)
}

mod optional_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_str(&hex::encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| hex::decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A dstack runtime event: a name and a payload, extended into RTMR3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// The event name, e.g. `app-id`, `compose-hash`, `system-ready`; part of the digest.
    pub event: String,
    /// The payload, raw bytes, exactly as measured (a hash, an id, JSON text…).
    pub payload: Vec<u8>,
    /// 1: digest over `type:name:payload` bytes; 2: digest over canonical JSON.
    pub version: u8,
}

impl RuntimeEvent {
    /// A version 1 event (digest over `type:name:payload`), as V0 attestations carry.
    pub fn new(event: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            event: event.into(),
            payload: payload.into(),
            version: 1,
        }
    }

    /// What the digest is taken over. Version 1:
    /// `le32(0x08000001) || ":" || name || ":" || payload`; version 2: the RFC 8785
    /// canonical JSON `{"name", "payload" (hex), "type"}` (dstack 0.6,
    /// `cc-eventlog/src/runtime_events.rs`).
    pub fn preimage(&self) -> Vec<u8> {
        if self.version == 2 {
            // Fields in sorted key order; serde_json's string escaping matches RFC 8785
            // for these values (strings and a small integer).
            #[derive(Serialize)]
            struct Canonical<'a> {
                name: &'a str,
                payload: String,
                r#type: u32,
            }
            return serde_json::to_vec(&Canonical {
                name: &self.event,
                payload: hex::encode(&self.payload),
                r#type: DSTACK_RUNTIME_EVENT_TYPE,
            })
            .unwrap_or_default();
        }
        let mut pre = Vec::with_capacity(self.event.len() + self.payload.len() + 6);
        pre.extend_from_slice(&DSTACK_RUNTIME_EVENT_TYPE.to_le_bytes());
        pre.push(b':');
        pre.extend_from_slice(self.event.as_bytes());
        pre.push(b':');
        pre.extend_from_slice(&self.payload);
        pre
    }

    /// The digest extended into RTMR3: `SHA-384` of [`Self::preimage`].
    pub fn digest(&self) -> [u8; 48] {
        Sha384::digest(self.preimage()).into()
    }
}

/// Replay a measurement register: start at zero, `mr = SHA-384(mr || digest)` per event.
pub fn replay_rtmr<'a>(digests: impl IntoIterator<Item = &'a [u8; 48]>) -> [u8; 48] {
    let mut mr = [0u8; 48];
    for d in digests {
        let mut h = Sha384::new();
        h.update(mr);
        h.update(d);
        mr = h.finalize().into();
    }
    mr
}

/// Replay RTMR3 from runtime events' names and payloads.
pub fn replay_rtmr3(events: &[RuntimeEvent]) -> [u8; 48] {
    let digests: Vec<[u8; 48]> = events.iter().map(RuntimeEvent::digest).collect();
    replay_rtmr(digests.iter())
}

/// The key provider a dstack app was booted with (`key-provider` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProvider {
    /// `kms`, `local-sgx`, `tpm` or `none`.
    pub name: String,
    /// For KMS, the KMS root CA certificate's SubjectPublicKeyInfo DER (hex); for
    /// `local-sgx`, the key provider enclave's MRENCLAVE; empty otherwise.
    pub id: String,
}

/// The event that ends the boot: dstack's guest writes it when the app is set up, and
/// everything after it is emitted at run time by the application.
pub const SYSTEM_READY: &str = "system-ready";

/// What the boot events of a dstack app say about it. Only events before the first
/// `system-ready` count (dstack's own `find_event` stops there): an application can
/// extend RTMR3 at run time, but what it emits proves nothing about the boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppIdentity {
    /// The first `app-id` payload, raw bytes (20 in dstack); `None` when the boot has none.
    /// What vouches for it is [`Self::app_id_attested_by`].
    pub app_id: Option<Vec<u8>>,
    /// The first `compose-hash` payload: SHA-256 of the app's compose file, raw bytes.
    pub compose_hash: Option<Vec<u8>>,
    /// The first `instance-id` payload, raw bytes: this CVM instance, not the app.
    pub instance_id: Option<Vec<u8>>,
    /// The first `os-image-hash` payload, raw bytes: the dstack OS image booted.
    pub os_image_hash: Option<Vec<u8>>,
    /// The `key-provider` payload; `Err` holds the raw text when it is not the JSON
    /// object dstack writes.
    pub key_provider: Option<Result<KeyProvider, String>>,
    /// `init-script-hash` events (dstack 0.6), in order: SHA-256 of each init script.
    pub init_script_hashes: Vec<Vec<u8>>,
    /// `gpu-policy-hash` (dstack 0.6): SHA-256 of the canonical JSON GPU policy.
    pub gpu_policy_hash: Option<Vec<u8>>,
    /// `gpu-attestation` (dstack 0.6): the JSON summary of the GPU evidence checked at boot.
    pub gpu_attestation: Option<Vec<u8>>,
    /// Index of the first `system-ready` event, when the log has one. Events from the
    /// next one on are runtime events.
    pub system_ready_at: Option<usize>,
}

/// Why an app id is (or is not) an identity: dstack 0.6 lets a CVM without a KMS measure
/// any app id its operator chooses (commit c8ed2a21), so the app id names an application
/// only when a KMS vouches for it or when it is derived from the compose hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppIdAttestation {
    /// The key provider is a KMS, which issues keys for that app id only; it is an
    /// identity when policy data pins that KMS's root (`data.teesql.kms_roots`).
    Kms,
    /// The app id is the first 20 bytes of the attested compose hash (the KMS-less
    /// derivation of dstack 0.5, and 0.6's default).
    ComposeHash,
    /// Neither: the CVM's operator could have chosen it.
    None,
}

impl AppIdentity {
    /// Read the identity from runtime events. Only events before the first
    /// `system-ready` count, and the first occurrence of each: events are append-only
    /// and an app can emit, but never rewrite, later ones. Later events stay visible in
    /// the event list of the claims.
    pub fn from_events(events: &[RuntimeEvent]) -> Self {
        let mut id = Self::default();
        for (i, e) in events.iter().enumerate() {
            let slot = match e.event.as_str() {
                SYSTEM_READY => {
                    id.system_ready_at = Some(i);
                    break;
                }
                "app-id" => &mut id.app_id,
                "compose-hash" => &mut id.compose_hash,
                "instance-id" => &mut id.instance_id,
                "os-image-hash" => &mut id.os_image_hash,
                "gpu-policy-hash" => &mut id.gpu_policy_hash,
                "gpu-attestation" => &mut id.gpu_attestation,
                "init-script-hash" => {
                    id.init_script_hashes.push(e.payload.clone());
                    continue;
                }
                "key-provider" => {
                    if id.key_provider.is_none() {
                        id.key_provider = Some(
                            serde_json::from_slice::<KeyProvider>(&e.payload)
                                .map_err(|_| String::from_utf8_lossy(&e.payload).into_owned()),
                        );
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(e.payload.clone());
            }
        }
        id
    }

    /// Events the application emitted after the boot (after the first `system-ready`).
    pub fn runtime_events<'a>(&self, events: &'a [RuntimeEvent]) -> &'a [RuntimeEvent] {
        match self.system_ready_at {
            Some(i) => events.get(i + 1..).unwrap_or_default(),
            None => &[],
        }
    }

    /// What the app id rests on (see [`AppIdAttestation`]).
    pub fn app_id_attested_by(&self) -> AppIdAttestation {
        let Some(app_id) = &self.app_id else {
            return AppIdAttestation::None;
        };
        let derived = self
            .compose_hash
            .as_ref()
            .is_some_and(|c| c.len() >= 20 && app_id.as_slice() == &c[..20]);
        if derived {
            AppIdAttestation::ComposeHash
        } else if matches!(&self.key_provider, Some(Ok(kp)) if kp.name == "kms") {
            AppIdAttestation::Kms
        } else {
            AppIdAttestation::None
        }
    }
}

/// The report data dstack RA-TLS puts in a certificate's quote:
/// `SHA-512("ratls-cert:" || SubjectPublicKeyInfo DER)`.
pub fn ra_tls_report_data(spki_der: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"ratls-cert:");
    h.update(spki_der);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ra_tls_binding_test_vector() {
        let rd = hex::encode(ra_tls_report_data(b"test-public-key"));
        assert!(rd.starts_with("8d07f3b3"), "{rd}");
        assert!(rd.ends_with("4f8"), "{rd}");
    }

    #[test]
    fn replay_of_nothing_is_zero() {
        assert_eq!(replay_rtmr3(&[]), [0u8; 48]);
    }

    #[test]
    fn replay_depends_on_order_and_content() {
        let a = RuntimeEvent::new("app-id", vec![1, 2, 3]);
        let b = RuntimeEvent::new("compose-hash", vec![4]);
        let ab = replay_rtmr3(&[a.clone(), b.clone()]);
        assert_ne!(ab, replay_rtmr3(&[b.clone(), a.clone()]));
        assert_ne!(
            ab,
            replay_rtmr3(&[a, RuntimeEvent::new("compose-hash", vec![5])])
        );
    }

    #[test]
    fn digests_match_dstacks_vectors() {
        // dstack next@312dc605, cc-eventlog/src/runtime_events.rs tests: name
        // `compose-hash`, payload 0xabcd, in both versions.
        let mut e = RuntimeEvent::new("compose-hash", vec![0xab, 0xcd]);
        assert_eq!(
            hex::encode(e.digest()),
            "e910bac274d132c3c6c23ac10103947a0a07783a277d9aab6bb12db5749cdb296275a888328c43479a8be40268a72a62"
        );
        e.version = 2;
        assert_eq!(
            e.preimage(),
            br#"{"name":"compose-hash","payload":"abcd","type":134217729}"#
        );
        assert_eq!(
            hex::encode(e.digest()),
            "9dde1673f544faa94b921825209593ddde08d0baf9cd6990175dffaf3081f1bb10311d56de189491feb33842a050ad7b"
        );
    }

    #[test]
    fn unknown_event_versions_are_refused() {
        let json = |v: &str| {
            format!(
                r#"{{"imr":3,"event_type":134217729,"digest":"","event":"x","event_payload":"","version":{v}}}"#
            )
        };
        for ok in ["1", "2"] {
            assert!(serde_json::from_str::<TdxEvent>(&json(ok)).is_ok(), "{ok}");
        }
        for bad in ["0", "3", "256", "-1"] {
            let err = serde_json::from_str::<TdxEvent>(&json(bad)).unwrap_err();
            assert!(err.to_string().contains("version"), "{bad}: {err}");
        }
        assert_eq!(check_event_version(2), Ok(2));
        assert!(check_event_version(7).is_err());
    }

    #[test]
    fn identity_ends_at_system_ready() {
        let boot = vec![
            RuntimeEvent::new("app-id", vec![0xaa; 20]),
            RuntimeEvent::new("compose-hash", vec![0xcc; 32]),
            RuntimeEvent::new("system-ready", vec![]),
        ];
        let mut events = boot.clone();
        // What an application emits at run time changes nothing about the boot, not
        // even a second system-ready or an identity event the boot did not have.
        events.extend([
            RuntimeEvent::new("os-image-hash", vec![0x01; 32]),
            RuntimeEvent::new("system-ready", vec![]),
            RuntimeEvent::new("app-id", vec![0xbb; 20]),
            RuntimeEvent::new("instance-id", vec![0x02; 20]),
        ]);
        let id = AppIdentity::from_events(&events);
        assert_eq!(id, AppIdentity::from_events(&boot));
        assert_eq!(id.os_image_hash, None);
        assert_eq!(id.instance_id, None);
        assert_eq!(id.system_ready_at, Some(2));
        assert_eq!(id.runtime_events(&events).len(), 4);
        assert_eq!(id.runtime_events(&events)[0].event, "os-image-hash");
        // Without a system-ready, every event counts and none is a runtime event.
        let unfinished = AppIdentity::from_events(&boot[..2]);
        assert_eq!(unfinished.system_ready_at, None);
        assert!(unfinished.runtime_events(&boot[..2]).is_empty());
    }

    #[test]
    fn an_app_id_is_an_identity_under_a_kms_or_derived_from_the_compose_hash() {
        let compose = [0xcc; 32];
        let id = |app_id: &[u8], provider: &str| {
            AppIdentity::from_events(&[
                RuntimeEvent::new("app-id", app_id.to_vec()),
                RuntimeEvent::new("compose-hash", compose.to_vec()),
                RuntimeEvent::new(
                    "key-provider",
                    format!(r#"{{"name":"{provider}","id":""}}"#).into_bytes(),
                ),
            ])
        };
        assert_eq!(
            id(&compose[..20], "none").app_id_attested_by(),
            AppIdAttestation::ComposeHash
        );
        assert_eq!(
            id(&[0xaa; 20], "kms").app_id_attested_by(),
            AppIdAttestation::Kms
        );
        assert_eq!(
            id(&[0xaa; 20], "none").app_id_attested_by(),
            AppIdAttestation::None
        );
        assert_eq!(
            id(&[0xaa; 20], "local-sgx").app_id_attested_by(),
            AppIdAttestation::None
        );
        assert_eq!(
            AppIdentity::default().app_id_attested_by(),
            AppIdAttestation::None
        );
    }

    #[test]
    fn identity_takes_first_occurrence_and_parses_key_provider() {
        let events = vec![
            RuntimeEvent::new("app-id", vec![0xaa; 20]),
            RuntimeEvent::new("key-provider", br#"{"name":"kms","id":"3059"}"#.to_vec()),
            RuntimeEvent::new("app-id", vec![0xbb; 20]),
        ];
        let id = AppIdentity::from_events(&events);
        assert_eq!(id.app_id, Some(vec![0xaa; 20]));
        assert_eq!(
            id.key_provider,
            Some(Ok(KeyProvider {
                name: "kms".into(),
                id: "3059".into()
            }))
        );
        let odd = AppIdentity::from_events(&[RuntimeEvent::new("key-provider", b"tpm".to_vec())]);
        assert_eq!(odd.key_provider, Some(Err("tpm".into())));
    }
}
