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
    pub event_type: u32,
    #[serde(with = "hex::serde")]
    pub digest: Vec<u8>,
    pub event: String,
    #[serde(with = "hex::serde")]
    pub event_payload: Vec<u8>,
    /// Runtime event version: 1 (the default) or 2 (digest over canonical JSON).
    #[serde(default = "v1", skip_serializing_if = "is_v1")]
    pub version: u8,
}

fn v1() -> u8 {
    1
}

fn is_v1(v: &u8) -> bool {
    *v == 1
}

/// A dstack runtime event: a name and a payload, extended into RTMR3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub event: String,
    pub payload: Vec<u8>,
    /// 1: digest over `type:name:payload` bytes; 2: digest over canonical JSON.
    pub version: u8,
}

impl RuntimeEvent {
    pub fn new(event: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            event: event.into(),
            payload: payload.into(),
            version: 1,
        }
    }

    /// The digest extended into RTMR3. Version 1:
    /// `SHA-384(le32(0x08000001) || ":" || name || ":" || payload)`; version 2:
    /// `SHA-384` of the RFC 8785 canonical JSON `{"name", "payload" (hex), "type"}`.
    pub fn digest(&self) -> [u8; 48] {
        if self.version == 2 {
            // Fields in sorted key order; serde_json's string escaping matches RFC 8785
            // for these values (strings and a small integer).
            #[derive(Serialize)]
            struct Canonical<'a> {
                name: &'a str,
                payload: String,
                r#type: u32,
            }
            let json = serde_json::to_vec(&Canonical {
                name: &self.event,
                payload: hex::encode(&self.payload),
                r#type: DSTACK_RUNTIME_EVENT_TYPE,
            })
            .unwrap_or_default();
            return Sha384::digest(json).into();
        }
        let mut h = Sha384::new();
        h.update(DSTACK_RUNTIME_EVENT_TYPE.to_le_bytes());
        h.update(b":");
        h.update(self.event.as_bytes());
        h.update(b":");
        h.update(&self.payload);
        h.finalize().into()
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
    /// For KMS, the KMS root key's SubjectPublicKeyInfo (hex).
    pub id: String,
}

/// What the boot events of a dstack app say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppIdentity {
    pub app_id: Option<Vec<u8>>,
    pub compose_hash: Option<Vec<u8>>,
    pub instance_id: Option<Vec<u8>>,
    pub os_image_hash: Option<Vec<u8>>,
    /// The `key-provider` payload; `Err` holds the raw text when it is not the JSON
    /// object dstack writes.
    pub key_provider: Option<Result<KeyProvider, String>>,
}

impl AppIdentity {
    /// Read the identity from runtime events. The first occurrence of each boot event
    /// counts: events are append-only and an app can emit, but never rewrite, later ones.
    /// A later duplicate is ignored here and still visible in the event list of the claims.
    pub fn from_events(events: &[RuntimeEvent]) -> Self {
        let mut id = Self::default();
        for e in events {
            let slot = match e.event.as_str() {
                "app-id" => &mut id.app_id,
                "compose-hash" => &mut id.compose_hash,
                "instance-id" => &mut id.instance_id,
                "os-image-hash" => &mut id.os_image_hash,
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
