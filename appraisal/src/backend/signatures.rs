//! Collateral signatures, checked once per collateral set rather than once per quote.
//!
//! dcap-qvl's verification of a TDX quote checks about eight ECDSA P-256 signatures.
//! Three belong to the quote and its platform: the PCK certificate's (by the PCK CA), the
//! QE report's (by the PCK key) and the quote's own (by the attestation key). The others
//! cover collateral that every quote verified with it shares: TCB Info and QE Identity (by
//! Intel's TCB signing key), the TCB signing and PCK CA certificates (by the root) and
//! both CRLs. On a platform never seen before, those repeated checks were most of the
//! verification's time.
//!
//! [`OnceConfig`] is dcap-qvl with its audited parts (the `der`/`x509-cert` parser, the DER
//! signature encoder, ring), except that signature checks go through [`ECDSA_P256_ONCE`].
//! That algorithm remembers a check that succeeded on a collateral message, keyed by
//! SHA-256 over the public key, the message's SHA-256 and the signature. Any other check
//! goes straight to ring.
//!
//! A collateral message is the TCB Info or QE Identity JSON, or the signed part (TBS) of
//! a CRL, of a certificate in the TCB Info or QE Identity issuer chain, or of a CA
//! certificate in the PCK CRL's issuer chain of the [`Collateral`] being verified with.
//! (dcap-qvl never reads that last chain, and a PCCS fills it in; only CA certificates of
//! it count, so that no platform's PCK certificate can pass for collateral.) The [`Collateral`] keeps its record, so the record lives and dies with
//! that set. Nothing of the quote is remembered beyond its own appraisal, so every quote
//! still gets its own three checks. That includes a quote verified before.
//!
//! Within one appraisal, the quote's PCK certificate is checked before any collateral is
//! fetched for it (so that a forged chain costs no request). That success is handed to
//! the verification that follows, in a record of the appraisal's own, which
//! [`ECDSA_P256_ONCE`] reads but never writes.
//!
//! This trades no check for speed. A remembered success stands for ring's answer on the
//! exact same key, message and signature, which would be the same again. A changed byte
//! anywhere is another key, so it gets ring's check. Failures are never remembered.
//!
//! [`Collateral`]: crate::collateral::Collateral

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::config::{Config, CryptoProvider};
use dcap_qvl::crypto::RingCrypto;
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Certificates read from one issuer chain: Intel's have two (signer and root).
const MAX_CHAIN: usize = 4;
/// Successes a record keeps. A collateral set's own signatures are about six; an
/// appraisal hands on one (its PCK certificate's).
const MAX_REMEMBERED: usize = 32;

/// Successful signature checks, by the exact key, message and signature: a set that grows to a fixed size, then
/// stays as it is.
#[derive(Debug, Default)]
pub struct Remembered {
    digests: Mutex<Vec<[u8; 32]>>,
    /// Checks answered from the set.
    hits: AtomicU64,
}

impl Remembered {
    /// Whether a check with this key succeeded before; counted as a hit when it did.
    fn answers(&self, key: &[u8; 32]) -> bool {
        let found = self.lock().contains(key);
        if found {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Remember a successful check while there is room.
    fn insert(&self, key: [u8; 32]) {
        let mut digests = self.lock();
        if digests.len() < MAX_REMEMBERED && !digests.contains(&key) {
            digests.push(key);
        }
    }

    /// Checks answered from the set rather than by ring.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<[u8; 32]>> {
        // A set of digests cannot be left half-written: a poisoned lock is still usable.
        self.digests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a signature check is remembered by: SHA-256 over the algorithm, the public key,
/// the message's SHA-256 and the signature, each with its length. Every check here is
/// ECDSA P-256 with SHA-256 and an ASN.1 DER signature.
fn check_key(public_key: &[u8], message: &[u8; 32], signature: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"teesql-signature-v1\0ecdsa-p256-sha256-der\0");
    for part in [public_key, message, signature] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// ECDSA P-256 with SHA-256 by ring (`public_key` a SEC1 point, `signature` ASN.1 DER, as
/// in X.509), answered from `record` when this exact check succeeded before, and
/// remembered there when it succeeds now.
pub(crate) fn verify_remembered(
    record: &Remembered,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    remembered_check(record, public_key, message, &sha256(message), signature)
}

/// [`verify_remembered`] with the message's SHA-256 already computed.
fn remembered_check(
    record: &Remembered,
    public_key: &[u8],
    message: &[u8],
    digest: &[u8; 32],
    signature: &[u8],
) -> bool {
    let key = check_key(public_key, digest, signature);
    if record.answers(&key) {
        return true;
    }
    let ok = ring_algorithm()
        .verify_signature(public_key, message, signature)
        .is_ok();
    if ok {
        record.insert(key);
    }
    ok
}

/// What a collateral set's signatures cover, and which of its checks succeeded.
#[derive(Debug, Default)]
pub struct CollateralSignatures {
    /// Length and SHA-256 of each collateral message, sorted.
    messages: Vec<(usize, [u8; 32])>,
    verified: Remembered,
}

impl CollateralSignatures {
    /// The messages of `c`. A part that does not parse is left out: dcap-qvl's own check
    /// of it fails in any case.
    pub(crate) fn of(c: &QuoteCollateralV3) -> Self {
        let message = |m: &[u8]| (m.len(), sha256(m));
        let mut messages = vec![
            message(c.tcb_info.as_bytes()),
            message(c.qe_identity.as_bytes()),
        ];
        for der in [&c.root_ca_crl, &c.pck_crl] {
            if let Ok((_, crl)) = CertificateRevocationList::from_der(der) {
                messages.push(message(crl.tbs_cert_list.as_ref()));
            }
        }
        // Not `pck_certificate_chain`: its leaf is the platform's, not collateral. Of the
        // PCK CRL's issuer chain, which nothing verifies, only CA certificates.
        for (chain, cas_only) in [
            (&c.pck_crl_issuer_chain, true),
            (&c.tcb_info_issuer_chain, false),
            (&c.qe_identity_issuer_chain, false),
        ] {
            // Read as dcap-qvl reads them.
            let ders = crate::evidence::pem_certificates(chain.as_bytes()).unwrap_or_default();
            for der in ders.iter().take(MAX_CHAIN) {
                if let Ok((_, cert)) = X509Certificate::from_der(der)
                    && (cert.is_ca() || !cas_only)
                {
                    messages.push(message(cert.tbs_certificate.as_ref()));
                }
            }
        }
        messages.sort_unstable();
        messages.dedup();
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Signature checks of this set answered from its record rather than by ring.
    pub fn hits(&self) -> u64 {
        self.verified.hits()
    }

    /// The message's SHA-256 when it is one of the set's. Only a message of a collateral
    /// message's length is hashed.
    fn covers(&self, message: &[u8]) -> Option<[u8; 32]> {
        let len = message.len();
        let at = self.messages.partition_point(|(l, _)| *l < len);
        if self.messages.get(at).is_none_or(|(l, _)| *l != len) {
            return None;
        }
        let digest = sha256(message);
        self.messages[at..]
            .iter()
            .take_while(|(l, _)| *l == len)
            .any(|(_, d)| *d == digest)
            .then_some(digest)
    }
}

/// The records [`ECDSA_P256_ONCE`] consults during one verification.
#[derive(Debug, Clone)]
struct Scope {
    /// The collateral's: read and written, for collateral messages only.
    collateral: Arc<CollateralSignatures>,
    /// This appraisal's own checks made before dcap-qvl's (the quote's PCK chain, checked
    /// before any collateral is fetched for it): read only, and gone with the appraisal.
    appraisal: Option<Arc<Remembered>>,
}

thread_local! {
    /// The records [`ECDSA_P256_ONCE`] uses on this thread, set by [`with_records`] for the
    /// length of one synchronous verification.
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Run `f` (a synchronous dcap-qvl verification) with the records that [`ECDSA_P256_ONCE`]
/// consults on this thread: the collateral's, and the checks this appraisal made already.
/// The previous scope is restored after, even if `f` panics.
pub(crate) fn with_records<R>(
    collateral: &Arc<CollateralSignatures>,
    appraisal: Option<&Arc<Remembered>>,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SCOPE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let scope = Scope {
        collateral: collateral.clone(),
        appraisal: appraisal.cloned(),
    };
    let previous = SCOPE.with(|s| s.borrow_mut().replace(scope));
    let _restore = Restore(previous);
    f()
}

/// ECDSA P-256 with SHA-256 (ring, through dcap-qvl's audited choice), remembering
/// successful checks of collateral messages; see the module documentation.
pub static ECDSA_P256_ONCE: &dyn SignatureVerificationAlgorithm = &EcdsaP256Once;

#[derive(Debug)]
struct EcdsaP256Once;

/// ring's ECDSA P-256 SHA-256, as dcap-qvl's audited configuration picks it.
fn ring_algorithm() -> &'static dyn SignatureVerificationAlgorithm {
    RingCrypto::sig_algo()
}

impl SignatureVerificationAlgorithm for EcdsaP256Once {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let Some(scope) = SCOPE.with(|s| s.borrow().clone()) else {
            return ring_algorithm().verify_signature(public_key, message, signature);
        };
        if let Some(digest) = scope.collateral.covers(message) {
            let record = &scope.collateral.verified;
            return remembered_check(record, public_key, message, &digest, signature)
                .then_some(())
                .ok_or(InvalidSignature);
        }
        if let Some(appraisal) = &scope.appraisal
            && appraisal.answers(&check_key(public_key, &sha256(message), signature))
        {
            return Ok(());
        }
        ring_algorithm().verify_signature(public_key, message, signature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        ring_algorithm().public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        ring_algorithm().signature_alg_id()
    }

    fn fips(&self) -> bool {
        ring_algorithm().fips()
    }
}

/// dcap-qvl's ring configuration with [`ECDSA_P256_ONCE`] as its signature algorithm.
#[derive(Debug)]
pub struct OnceConfig;

impl Config for OnceConfig {
    type X509 = dcap_qvl::x509::X509CertBackend;
    type SigEncoder = dcap_qvl::signature::DerSigEncoder;
    type Crypto = OnceCrypto;
}

/// ring's hashes, [`ECDSA_P256_ONCE`] for signatures.
#[derive(Debug)]
pub struct OnceCrypto;

impl CryptoProvider for OnceCrypto {
    fn sig_algo() -> &'static dyn SignatureVerificationAlgorithm {
        ECDSA_P256_ONCE
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        RingCrypto::sha256(data)
    }

    fn sha384(data: &[u8]) -> [u8; 48] {
        RingCrypto::sha384(data)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn key_pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn sign(key: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        key.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_record_answers_only_the_exact_check_that_succeeded() {
        let key = key_pair();
        let public = key.public_key().as_ref();
        let message = b"TCB Info";
        let signature = sign(&key, message);
        let record = Remembered::default();

        assert!(verify_remembered(&record, public, message, &signature));
        assert_eq!(record.hits(), 0, "the first check is ring's");
        assert!(verify_remembered(&record, public, message, &signature));
        assert_eq!(record.hits(), 1, "the same check again is answered");

        // Another valid signature of the same message is another check: ring's.
        let again = sign(&key, message);
        assert_ne!(again, signature);
        assert!(verify_remembered(&record, public, message, &again));
        assert_eq!(record.hits(), 1);

        // A failure is never remembered, and a success answers nothing else.
        let mut bad = signature.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        for _ in 0..2 {
            assert!(!verify_remembered(&record, public, message, &bad));
            assert!(!verify_remembered(
                &record,
                public,
                b"QE Identity",
                &signature
            ));
            let other = key_pair();
            assert!(!verify_remembered(
                &record,
                other.public_key().as_ref(),
                message,
                &signature
            ));
        }
        assert_eq!(record.hits(), 1);
        assert_eq!(record.lock().len(), 2, "only the two successes are kept");
    }

    #[test]
    fn a_record_stays_bounded() {
        let key = key_pair();
        let record = Remembered::default();
        for i in 0..MAX_REMEMBERED + 8 {
            let message = i.to_le_bytes();
            let signature = sign(&key, &message);
            assert!(verify_remembered(
                &record,
                key.public_key().as_ref(),
                &message,
                &signature
            ));
        }
        assert_eq!(record.lock().len(), MAX_REMEMBERED);
    }

    #[test]
    fn the_algorithm_remembers_collateral_messages_only() {
        let key = key_pair();
        let public = key.public_key().as_ref();
        let collateral = b"{\"tcbInfo\":{}}";
        let quote = b"a quote's header and report";
        let record = Arc::new(CollateralSignatures {
            messages: vec![(collateral.len(), sha256(collateral))],
            verified: Remembered::default(),
        });
        let (collateral_sig, quote_sig) = (sign(&key, collateral), sign(&key, quote));
        with_records(&record, None, || {
            for _ in 0..3 {
                ECDSA_P256_ONCE
                    .verify_signature(public, collateral, &collateral_sig)
                    .unwrap();
                ECDSA_P256_ONCE
                    .verify_signature(public, quote, &quote_sig)
                    .unwrap();
            }
        });
        assert_eq!(record.hits(), 2, "the collateral check, answered twice");
        assert_eq!(record.verified.lock().len(), 1, "nothing of the quote");

        // An appraisal's record is read, never written.
        let appraisal = Arc::new(Remembered::default());
        with_records(&record, Some(&appraisal), || {
            ECDSA_P256_ONCE
                .verify_signature(public, quote, &quote_sig)
                .unwrap();
            let mut bad = quote_sig.clone();
            bad[10] ^= 1;
            assert!(
                ECDSA_P256_ONCE
                    .verify_signature(public, quote, &bad)
                    .is_err()
            );
        });
        assert_eq!((appraisal.hits(), appraisal.lock().len()), (0, 0));
        assert!(verify_remembered(&appraisal, public, quote, &quote_sig));
        with_records(&record, Some(&appraisal), || {
            ECDSA_P256_ONCE
                .verify_signature(public, quote, &quote_sig)
                .unwrap();
        });
        assert_eq!(appraisal.hits(), 1, "the appraisal's own check, handed on");

        // Outside a scope, every check is ring's.
        ECDSA_P256_ONCE
            .verify_signature(public, collateral, &collateral_sig)
            .unwrap();
        assert_eq!(record.hits(), 2);
    }

    #[test]
    fn the_scope_is_restored_after_a_panic_and_when_nested() {
        let outer = Arc::new(CollateralSignatures::default());
        let inner = Arc::new(CollateralSignatures::default());
        let current = || SCOPE.with(|s| s.borrow().as_ref().map(|s| s.collateral.clone()));
        with_records(&outer, None, || {
            with_records(&inner, None, || {
                assert!(Arc::ptr_eq(&current().unwrap(), &inner));
            });
            assert!(Arc::ptr_eq(&current().unwrap(), &outer));
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_records(&inner, None, || panic!("a verification panicked"))
            }));
            assert!(panicked.is_err());
            assert!(Arc::ptr_eq(&current().unwrap(), &outer));
        });
        assert!(current().is_none());
    }

    #[test]
    fn the_recorded_collateral_s_messages_are_its_own() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/dcap");
        let c = crate::collateral::Collateral::from_file(&dir.join("tdx_quote_collateral.json"))
            .unwrap();
        let s = CollateralSignatures::of(&c.data);
        // TCB Info, QE Identity, two CRLs, and three certificates: Intel's root, the
        // PCK Platform CA and the TCB signing certificate (the chains share them).
        assert_eq!(s.messages.len(), 7);
        assert!(s.covers(c.data.tcb_info.as_bytes()).is_some());
        assert!(s.covers(c.data.qe_identity.as_bytes()).is_some());
        let mut same_length = c.data.tcb_info.clone().into_bytes();
        same_length[0] ^= 1;
        assert!(s.covers(&same_length).is_none());
        let quote =
            crate::evidence::decode_quote_text(&std::fs::read(dir.join("tdx_quote")).unwrap())
                .unwrap();
        let chain = quote.parsed().raw_cert_chain().unwrap();
        let pems = crate::evidence::pem_certificates(chain).unwrap();
        let tbs = |der: &[u8]| {
            X509Certificate::from_der(der)
                .unwrap()
                .1
                .tbs_certificate
                .as_ref()
                .to_vec()
        };
        let leaf = tbs(&pems[0]);
        assert!(
            s.covers(&leaf).is_none(),
            "the PCK certificate is the platform's"
        );
        assert!(s.covers(&tbs(&pems[1])).is_some(), "its CA is collateral");
        assert!(s.covers(quote.raw()).is_none());

        // A PCCS that lists a platform's PCK certificate in the PCK CRL's issuer chain
        // (nothing verifies that chain) does not make it collateral.
        let mut data = c.data.clone();
        data.pck_crl_issuer_chain = String::from_utf8(chain.to_vec()).unwrap();
        let s = CollateralSignatures::of(&data);
        assert!(s.covers(&leaf).is_none());
        assert!(s.covers(&tbs(&pems[1])).is_some());
    }
}
