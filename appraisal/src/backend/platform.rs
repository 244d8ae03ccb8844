//! The platform cache: what a full DCAP verification proved about a platform, kept so
//! that a fresh quote from a platform verified a moment ago costs only what is unique to
//! that quote.
//!
//! A TDX quote splits in two. The TD's own fields — MRTD, MRCONFIGID, MROWNER,
//! MROWNERCONFIG, RTMR0–3, REPORTDATA — and the attestation key's signature over header
//! and report change from quote to quote. Everything else — the header, the TDX module's
//! fields (TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES), TDATTRIBUTES and XFAM, any
//! TD 1.5 fields, the attestation key, the QE report and its signature, the QE auth data
//! and the PCK certificate chain — is what dcap-qvl's platform checks read (PCK chain and
//! revocation, QE report signature and its binding of the attestation key, QE identity,
//! TCB level matching, TDX module identity, TD attribute rules). Those bytes, with the
//! trust root, name a cache entry; the entry records the collateral it was verified
//! under and the time span in which every certificate and CRL involved was valid.
//!
//! A quote whose key, collateral and time match an entry gets one check: the attestation
//! key's ECDSA signature over its header and report. Anything else — another PCK chain, QE
//! report, TEE_TCB_SVN or TD attributes, other collateral (a new TCB Info, a new CRL),
//! another root, a time outside the span — is a different key or a mismatch, and the quote
//! gets dcap-qvl's full verification. Only successful verifications are kept, so a peer
//! cannot fill the cache without genuine quotes, and the cache is bounded in bytes.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dcap_qvl::quote::{AuthData, Report};
use sha2::{Digest, Sha256};

use crate::evidence::{Quote, TeeType};

/// Bytes of the TD report that are the TD's own (MRTD through REPORTDATA): offsets in a
/// TD 1.0 report, which TD 1.5 reports extend.
const TD_OWN_FIELDS: std::ops::Range<usize> = 136..584;
/// The attestation key's signature (r ‖ s) and the key itself (x ‖ y).
const SIGNATURE_LEN: usize = 64;
const ATTESTATION_KEY_LEN: usize = 64;
/// Default memory for platform entries.
pub const DEFAULT_PLATFORM_CACHE_BYTES: u64 = 1 << 20;
/// Entries are dropped after this long without use, whatever their certificates say.
const IDLE: Duration = Duration::from_secs(3600);

/// What a full verification established for a platform.
#[derive(Debug, Clone)]
pub(crate) struct PlatformEntry {
    /// Digest of the collateral it was verified under.
    collateral: [u8; 32],
    /// Unix seconds: the verification time, and the earliest expiry of every certificate
    /// and of the collateral involved.
    from: u64,
    until: u64,
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
}

impl PlatformEntry {
    fn weight(&self) -> u32 {
        let ids: usize = self.advisory_ids.iter().map(|s| s.len() + 24).sum();
        u32::try_from(self.tcb_status.len() + ids + 160).unwrap_or(u32::MAX)
    }
}

/// A quote's platform key and layout; `None` for quotes the cache does not serve (SGX,
/// unexpected layouts), which always get the full verification.
#[derive(Debug, Clone, Copy)]
pub struct PlatformKey {
    key: [u8; 32],
    /// Header and report: what the attestation key signs. The signature and the key
    /// follow the 4-byte auth data length.
    signed_len: usize,
}

impl PlatformKey {
    /// The key of `quote` under the root `root_der`; `None` when the cache does not serve
    /// it. Never panics on any quote that decoded.
    pub fn of(root_der: &[u8], quote: &Quote) -> Option<Self> {
        if quote.tee_type() != TeeType::Tdx {
            return None;
        }
        let parsed = quote.parsed();
        let body = match (parsed.header.version, &parsed.report) {
            (4, Report::TD10(_)) => 48,
            (5, Report::TD10(_) | Report::TD15(_) | Report::TD15Ex(_)) => 48 + 6,
            _ => return None,
        };
        let signed_len = parsed.signed_length();
        let raw = quote.raw();
        // Header and report, the auth data length, then signature and attestation key.
        let sig_at = signed_len.checked_add(4)?;
        let key_at = sig_at + SIGNATURE_LEN;
        if body + TD_OWN_FIELDS.end > signed_len || raw.len() < key_at + ATTESTATION_KEY_LEN {
            return None;
        }
        // The parser must agree on where the signature and key are.
        let (signature, key) = match &parsed.auth_data {
            AuthData::V3(a) => (&a.ecdsa_signature, &a.ecdsa_attestation_key),
            AuthData::V4(a) => (&a.ecdsa_signature, &a.ecdsa_attestation_key),
        };
        if raw[sig_at..key_at] != signature[..]
            || raw[key_at..key_at + ATTESTATION_KEY_LEN] != key[..]
        {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"teesql-platform-v1\0");
        h.update((root_der.len() as u64).to_le_bytes());
        h.update(root_der);
        h.update((raw.len() as u64).to_le_bytes());
        h.update((body as u64).to_le_bytes());
        h.update(&raw[..body + TD_OWN_FIELDS.start]);
        h.update(&raw[body + TD_OWN_FIELDS.end..sig_at]);
        h.update(&raw[key_at..]);
        Some(Self {
            key: h.finalize().into(),
            signed_len,
        })
    }
}

/// Counters the service exports as metrics.
#[derive(Debug, Default)]
pub struct PlatformStats {
    /// Quotes served from the cache (one signature check).
    pub hits: AtomicU64,
    /// TDX quotes that needed the full verification.
    pub misses: AtomicU64,
}

/// Platform entries by [`PlatformKey`], bounded in bytes.
#[derive(Debug)]
pub struct PlatformCache {
    entries: moka::sync::Cache<[u8; 32], Arc<PlatformEntry>>,
    /// Hit and miss counters, for metrics.
    pub stats: PlatformStats,
}

impl PlatformCache {
    /// An empty cache holding at most about `max_bytes` of entries; an entry unused for
    /// an hour is dropped.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, e: &Arc<PlatformEntry>| e.weight())
                .time_to_idle(IDLE)
                .build(),
            stats: PlatformStats::default(),
        }
    }

    /// Whether a successful verification of this platform under this root is on record
    /// (its PCK chain leads to the root), whatever the collateral.
    pub(crate) fn knows(&self, key: &PlatformKey) -> bool {
        self.entries.contains_key(&key.key)
    }

    /// The entry for `key` if it was made under `collateral` and `now` lies in its span.
    pub(crate) fn lookup(
        &self,
        key: &PlatformKey,
        collateral: &[u8; 32],
        now: u64,
    ) -> Option<Arc<PlatformEntry>> {
        let entry = self.entries.get(&key.key)?;
        (entry.collateral == *collateral && entry.from <= now && now <= entry.until)
            .then_some(entry)
    }

    /// Record a successful full verification at `now`.
    pub(crate) fn insert(
        &self,
        key: &PlatformKey,
        quote: &Quote,
        collateral: &crate::collateral::Collateral,
        now: u64,
        tcb_status: String,
        advisory_ids: Vec<String>,
    ) {
        let Some(until) = certificates_valid_until(quote, collateral) else {
            return;
        };
        let until = until.min(collateral.window.not_after);
        if until < now {
            return;
        }
        self.entries.insert(
            key.key,
            Arc::new(PlatformEntry {
                collateral: collateral.digest(),
                from: now,
                until,
                tcb_status,
                advisory_ids,
            }),
        );
    }

    /// Number of entries (after pending maintenance).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Whether no platform is cached (after pending maintenance, as [`Self::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The one check a quote served from the cache gets: the attestation key's ECDSA P-256
/// signature over header and report. The key is part of the platform key, so it is the
/// key the QE report bound when the entry was made.
pub fn signature_verifies(quote: &Quote, key: &PlatformKey) -> bool {
    let raw = quote.raw();
    let signed_len = key.signed_len;
    let sig_at = signed_len + 4;
    let key_at = sig_at + SIGNATURE_LEN;
    let mut public = [0x04u8; 1 + ATTESTATION_KEY_LEN];
    public[1..].copy_from_slice(&raw[key_at..key_at + ATTESTATION_KEY_LEN]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
        .verify(&raw[..signed_len], &raw[sig_at..key_at])
        .is_ok()
}

/// The earliest `notAfter` of every certificate the verification relied on: the quote's
/// PCK chain (read as dcap-qvl reads it, see `Quote::pck_chain_der`) and the collateral's
/// own certificates (read once per set). `None` when one cannot be read (then nothing is
/// cached).
fn certificates_valid_until(quote: &Quote, c: &crate::collateral::Collateral) -> Option<u64> {
    let pck = crate::evidence::earliest_not_after(quote.parsed().raw_cert_chain().ok()?)?;
    Some(pck.min(c.certificates_until()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collateral::Collateral;
    use crate::recorded::intel as recorded;
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// The earliest `notAfter` of every certificate of `chains`, each read on its own.
    fn earliest(chains: &[&[u8]]) -> u64 {
        chains
            .iter()
            .flat_map(|chain| crate::evidence::pem_certificates(chain).unwrap())
            .map(|der| {
                let (_, cert) = X509Certificate::from_der(&der).unwrap();
                cert.validity().not_after.timestamp() as u64
            })
            .min()
            .unwrap()
    }

    #[test]
    fn an_entry_lasts_until_the_first_certificate_it_relied_on_expires() {
        let (quote, c) = recorded();
        let d = &c.data;
        let every = [
            quote.parsed().raw_cert_chain().unwrap(),
            d.pck_crl_issuer_chain.as_bytes(),
            d.tcb_info_issuer_chain.as_bytes(),
            d.qe_identity_issuer_chain.as_bytes(),
        ];
        let until = certificates_valid_until(&quote, &c).unwrap();
        assert_eq!(until, earliest(&every));
        // Read once per set: asked again, and through a clone, it says the same.
        assert_eq!(certificates_valid_until(&quote, &c.clone()), Some(until));

        // Every chain of the collateral counts: a certificate that expires before all the
        // others, added to each in turn, is the answer.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let short = params.self_signed(&key).unwrap().pem();
        let with = |chain: &str| format!("{chain}{short}");
        for (which, data) in [
            (
                "PCK CRL issuer chain",
                dcap_qvl::QuoteCollateralV3 {
                    pck_crl_issuer_chain: with(&d.pck_crl_issuer_chain),
                    ..d.clone()
                },
            ),
            (
                "TCB Info issuer chain",
                dcap_qvl::QuoteCollateralV3 {
                    tcb_info_issuer_chain: with(&d.tcb_info_issuer_chain),
                    ..d.clone()
                },
            ),
            (
                "QE Identity issuer chain",
                dcap_qvl::QuoteCollateralV3 {
                    qe_identity_issuer_chain: with(&d.qe_identity_issuer_chain),
                    ..d.clone()
                },
            ),
            (
                "PCK certificate chain",
                dcap_qvl::QuoteCollateralV3 {
                    pck_certificate_chain: Some(short.clone()),
                    ..d.clone()
                },
            ),
        ] {
            let c = Collateral::new(data).unwrap();
            assert_eq!(
                certificates_valid_until(&quote, &c),
                Some(1_577_836_800),
                "2020-01-01 in the {which}"
            );
        }

        // A certificate that cannot be read: no entry is made.
        let broken = Collateral::new(dcap_qvl::QuoteCollateralV3 {
            tcb_info_issuer_chain: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                .into(),
            ..d.clone()
        })
        .unwrap();
        assert_eq!(certificates_valid_until(&quote, &broken), None);
    }
}
