//! Local DCAP verification with dcap-qvl (ring), against a configured trust root.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dcap_qvl::verify::QuoteVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::platform::{PlatformCache, PlatformKey, signature_verifies};
use super::signatures::{OnceConfig, Remembered, verify_remembered, with_records};
use super::{BoxFuture, QuoteBackend, QuoteFacts, TrustRootKind, VerifyError, VerifyErrorCode};
use crate::collateral::{Collateral, CollateralError, CollateralProvider};
use crate::evidence::{Quote, TeeType};
use crate::tcb::{EvalNumbers, Platform, SignedList, SignedTcbInfo, Standing, TcbClaims};

/// Intel's SGX/TDX root CA (DER), as shipped by dcap-qvl.
static INTEL_ROOT_DER: &[u8] = include_bytes!("intel_root_ca.der");

/// The root certificate quotes are verified against.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    der: Arc<[u8]>,
    kind: TrustRootKind,
}

/// A trust root that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("trust root {path}: {detail}")]
pub struct TrustRootError {
    path: String,
    detail: String,
}

impl TrustRoot {
    /// Intel's production root. The default.
    pub fn intel() -> Self {
        Self {
            der: Arc::from(INTEL_ROOT_DER),
            kind: TrustRootKind::Intel,
        }
    }

    /// A root from DER or PEM bytes: `intel` when it is Intel's root (by its bytes),
    /// `custom` otherwise.
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self, TrustRootError> {
        let der = parse_root(path, bytes)?;
        let kind = if der == INTEL_ROOT_DER {
            TrustRootKind::Intel
        } else {
            TrustRootKind::Custom
        };
        Ok(Self {
            der: Arc::from(der),
            kind,
        })
    }

    /// A development root (the seeded PKI of `teesql-dev`), declared as such by whoever
    /// configures the verifier: claims then say `root = "dev"`, which the production
    /// policy refuses. Which root is a development root is the operator's statement about
    /// this key, never something a certificate says of itself.
    pub fn development(path: &str, bytes: &[u8]) -> Result<Self, TrustRootError> {
        let der = parse_root(path, bytes)?;
        if der == INTEL_ROOT_DER {
            return Err(TrustRootError {
                path: path.to_string(),
                detail: "this is Intel's root, not a development root".into(),
            });
        }
        Ok(Self {
            der: Arc::from(der),
            kind: TrustRootKind::Dev,
        })
    }

    /// Read a root certificate file (DER or PEM).
    pub fn from_file(path: &std::path::Path) -> Result<Self, TrustRootError> {
        let (shown, bytes) = read_root(path)?;
        Self::from_bytes(&shown, &bytes)
    }

    /// Read a development root certificate file (DER or PEM); see [`Self::development`].
    pub fn development_from_file(path: &std::path::Path) -> Result<Self, TrustRootError> {
        let (shown, bytes) = read_root(path)?;
        Self::development(&shown, &bytes)
    }

    /// What the claims call this root (`tdx.root`): `intel`, `custom` or `dev`.
    pub fn kind(&self) -> &TrustRootKind {
        &self.kind
    }

    /// The root certificate, DER (PEM input is converted on load).
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

fn read_root(path: &std::path::Path) -> Result<(String, Vec<u8>), TrustRootError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TrustRootError {
        path: shown.clone(),
        detail: e.to_string(),
    })?;
    Ok((shown, bytes))
}

/// DER of a root certificate given as DER or PEM, checked to be X.509.
fn parse_root(path: &str, bytes: &[u8]) -> Result<Vec<u8>, TrustRootError> {
    let err = |detail: String| TrustRootError {
        path: path.to_string(),
        detail,
    };
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        x509_parser::pem::parse_x509_pem(bytes)
            .map_err(|e| err(format!("invalid PEM: {e}")))?
            .1
            .contents
    } else {
        bytes.to_vec()
    };
    X509Certificate::from_der(&der).map_err(|e| err(format!("not an X.509 certificate: {e}")))?;
    Ok(der)
}

/// The DCAP backend: collateral from a [`CollateralProvider`], verification by dcap-qvl,
/// with a [`PlatformCache`] in front when one is given.
#[derive(Debug)]
pub struct DcapBackend {
    root: TrustRoot,
    collateral: Arc<CollateralProvider>,
    platforms: Option<Arc<PlatformCache>>,
    /// Platforms' standings under the standard and early sets, by everything they are
    /// computed from: a known platform's next quote reuses them.
    standings: moka::sync::Cache<[u8; 32], Arc<Standings>>,
    /// PCK CA certificates found signed by the trust root, before any collateral is
    /// fetched for a quote: a platform never seen has its PCK certificate checked, not
    /// Intel's CA again.
    cas: Remembered,
}

/// What the TCB lifecycle claims of one platform are made from.
#[derive(Debug)]
struct Standings {
    platform: Platform,
    standard: Standing,
    early: Option<Standing>,
    numbers: Option<EvalNumbers>,
}

impl Standings {
    /// Approximate heap bytes, for the cache's byte budget.
    fn weight(&self) -> u32 {
        let standing = |s: &Standing| 96 + 64 * (s.fix.len() + s.advisory_ids.len());
        let n = 256
            + standing(&self.standard)
            + self.early.as_ref().map_or(0, standing)
            + self.numbers.as_ref().map_or(0, |n| 64 * n.numbers.len());
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Bytes the standings cache may hold.
const STANDINGS_BUDGET: u64 = 1 << 20;

impl DcapBackend {
    /// Every quote gets dcap-qvl's full verification.
    pub fn new(root: TrustRoot, collateral: Arc<CollateralProvider>) -> Self {
        Self {
            root,
            collateral,
            standings: moka::sync::Cache::builder()
                .max_capacity(STANDINGS_BUDGET)
                .weigher(|_, v: &Arc<Standings>| v.weight())
                .build(),
            platforms: None,
            cas: Remembered::default(),
        }
    }

    /// A fresh quote from a platform verified before (same PCK chain, QE report, TDX
    /// module and TD attributes, same collateral and root) gets only its own signature
    /// checked; see [`super::platform`].
    pub fn with_platform_cache(mut self, platforms: Arc<PlatformCache>) -> Self {
        self.platforms = Some(platforms);
        self
    }

    /// Where this backend gets collateral (e.g. to fetch it ahead of [`Self::verify_with`]).
    pub fn collateral(&self) -> &Arc<CollateralProvider> {
        &self.collateral
    }

    /// Verify with collateral already in hand. Synchronous and CPU-bound: about 0.6 ms for
    /// the first full verification under a collateral set, about 0.3 ms for a platform
    /// never seen under a set already used (the set's signatures are checked once), and
    /// about 0.06 ms for a quote from a known platform.
    pub fn verify_with(&self, quote: &Quote, collateral: &Collateral, now: u64) -> QuoteFacts {
        let key = self.platform_key(quote);
        let lifecycle = Lifecycle::default();
        self.verify_keyed(quote, collateral, now, key.as_ref(), lifecycle, None)
    }

    /// The quote's key in the platform cache, when there is a cache and it serves the quote.
    fn platform_key(&self, quote: &Quote) -> Option<PlatformKey> {
        self.platforms.as_ref()?;
        PlatformKey::of(self.root.der(), quote)
    }

    fn verify_keyed(
        &self,
        quote: &Quote,
        collateral: &Collateral,
        now: u64,
        key: Option<&PlatformKey>,
        lifecycle: Lifecycle,
        checked: Option<&Arc<Remembered>>,
    ) -> QuoteFacts {
        let mut facts = self.facts(Some(collateral));
        let window = collateral.window;
        if now < window.not_before || now > window.not_after {
            facts.error = Some(VerifyError {
                code: VerifyErrorCode::CollateralExpired,
                message: format!(
                    "collateral is valid from {} to {} (unix seconds); the appraisal time is {now}",
                    window.not_before, window.not_after
                ),
            });
            return facts;
        }
        let platform = self.platforms.as_deref().zip(key);
        if let Some((cache, key)) = platform {
            if let Some(entry) = cache.lookup(key, &collateral.digest(), now) {
                cache.stats.hits.fetch_add(1, Ordering::Relaxed);
                if signature_verifies(quote, key) {
                    facts.verified = true;
                    facts.tcb_status = Some(entry.tcb_status.clone());
                    facts.advisory_ids = entry.advisory_ids.clone();
                    facts.tcb = self.tcb_claims(quote, collateral, &lifecycle, now);
                } else {
                    // dcap-qvl's words for the same failure, so policies and logs see one.
                    facts.error = Some(VerifyError {
                        code: VerifyErrorCode::SignatureInvalid,
                        message: "ISV enclave report signature is invalid".into(),
                    });
                }
                return facts;
            }
            cache.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        // dcap-qvl's audited parts, with each collateral signature checked once per set.
        let verifier = QuoteVerifier::<OnceConfig>::new_with_config(self.root.der.to_vec())
            // Debug TDs are a fact for the policy, not a verification failure.
            .allow_debug(true);
        // `verify` rather than `verify_with_policy`: the policy is ours, and the claims
        // dcap-qvl would build for one (a second parse of both CRLs and every
        // certificate, for a time window this backend computes itself) go unused.
        let verified = with_records(collateral.signatures(), checked, || {
            verifier.verify(quote.raw(), &collateral.data, now)
        });
        match verified {
            Ok(report) => {
                if quote.tee_type() != TeeType::Tdx {
                    facts.error = Some(VerifyError {
                        code: VerifyErrorCode::NotTdx,
                        message: "the quote is a genuine SGX enclave quote, not a TDX quote".into(),
                    });
                    return facts;
                }
                facts.verified = true;
                facts.tcb_status = Some(report.status.clone());
                facts.advisory_ids = report.advisory_ids;
                facts.tcb = self.tcb_claims(quote, collateral, &lifecycle, now);
                if let Some((cache, key)) = platform {
                    cache.insert(
                        key,
                        quote,
                        collateral,
                        now,
                        report.status,
                        facts.advisory_ids.clone(),
                    );
                }
            }
            Err(e) => facts.error = Some(classify(&e)),
        }
        facts
    }

    /// The TCB lifecycle claims of a verified quote: its platform under the standard set
    /// that verified it, under the early set when that is newer and signed under this
    /// root, with the recovery dates of the evaluation numbers list. `None` when the
    /// platform cannot be read or the standard TCB info matches no level.
    fn tcb_claims(
        &self,
        quote: &Quote,
        collateral: &Collateral,
        lifecycle: &Lifecycle,
        now: u64,
    ) -> Option<TcbClaims> {
        // Keyed by what the platform is read from (the PCK chain, TEE_TCB_SVN, the QE
        // report) rather than by the platform itself, so that a known platform's next
        // quote (the platform cache's fast path) parses no certificate here.
        let key = {
            use sha2::{Digest, Sha256};
            let parsed = quote.parsed();
            let mut h = Sha256::new();
            h.update(collateral.digest());
            for part in [
                parsed.raw_cert_chain().unwrap_or_default(),
                quote
                    .td_report()
                    .map(|t| t.tee_tcb_svn)
                    .unwrap_or_default()
                    .as_slice(),
                parsed.qe_report().as_slice(),
            ] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
            h.update(
                lifecycle
                    .early
                    .as_ref()
                    .map(|e| e.digest())
                    .unwrap_or_default(),
            );
            h.update(
                lifecycle
                    .numbers
                    .as_ref()
                    .map(|n| n.digest())
                    .unwrap_or_default(),
            );
            <[u8; 32]>::from(h.finalize())
        };
        let standings = match self.standings.get(&key) {
            Some(s) => s,
            None => {
                let chain = collateral.data.pck_certificate_chain.as_deref();
                let platform = Platform::of_chain(quote, chain)
                    .map_err(|e| tracing::debug!(error = %e, "no TCB lifecycle claims"))
                    .ok()?;
                let s = Arc::new(self.standings_of(platform, collateral, lifecycle)?);
                self.standings.insert(key, s.clone());
                s
            }
        };
        Some(TcbClaims::new(
            &standings.platform,
            &standings.standard,
            standings.early.as_ref(),
            standings.numbers.as_ref(),
            now,
        ))
    }

    fn standings_of(
        &self,
        platform: Platform,
        collateral: &Collateral,
        lifecycle: &Lifecycle,
    ) -> Option<Standings> {
        let standard = collateral
            .parsed_tcb_info()
            .and_then(|t| t.standing(&platform))
            .map_err(|e| tracing::debug!(error = %e, "no TCB lifecycle claims"))
            .ok()?;
        let early = lifecycle
            .early
            .as_deref()
            .filter(|e| e.eval_data_number > standard.eval_data_number)
            .and_then(|e| {
                e.verify(self.root.der())
                    .and_then(|()| crate::tcb::standing(&e.tcb_info, &platform))
                    .and_then(|s| match &e.qe_identity {
                        Some(qe) => qe
                            .verify("the early QE identity", self.root.der())
                            .and_then(|()| crate::tcb::with_qe(s, &qe.json, &platform)),
                        None => Ok(s),
                    })
                    .map_err(|e| tracing::warn!(error = %e, "the early TCB set is not used"))
                    .ok()
            });
        let numbers = lifecycle.numbers.as_deref().and_then(|n| {
            EvalNumbers::from_signed(&n.body, n.issuer_chain.as_bytes(), self.root.der())
                .map_err(|e| tracing::warn!(error = %e, "the TCB evaluation numbers are not used"))
                .ok()
        });
        Some(Standings {
            platform,
            standard,
            early,
            numbers,
        })
    }

    fn facts(&self, collateral: Option<&Collateral>) -> QuoteFacts {
        QuoteFacts {
            collateral: collateral.map(|c| c.window),
            ..QuoteFacts::new("dcap", self.root.kind)
        }
    }
}

impl QuoteBackend for DcapBackend {
    fn name(&self) -> &str {
        "dcap"
    }

    fn appraise<'a>(&'a self, quote: &'a Quote, now: u64) -> BoxFuture<'a, QuoteFacts> {
        Box::pin(async move {
            // The quote picks the collateral it needs through its own (unverified) PCK
            // certificate. Before anything is fetched for it, that certificate must chain
            // to the trust root: a forged one costs no request to the PCCS. A platform
            // known to the cache has had exactly this chain verified under this root.
            let key = self.platform_key(quote);
            let known = self
                .platforms
                .as_deref()
                .zip(key.as_ref())
                .is_some_and(|(cache, key)| cache.knows(key));
            // Its check of the PCK certificate is handed to dcap-qvl's verification, which
            // makes it again; its check of the CA under the root is kept in `cas`.
            let checked = (!known).then(|| Arc::new(Remembered::default()));
            if let Some(checked) = &checked
                && let Err(detail) = pck_chain_verifies(quote, self.root.der(), &self.cas, checked)
            {
                let mut facts = self.facts(None);
                facts.error = Some(VerifyError {
                    code: VerifyErrorCode::SignatureInvalid,
                    message: format!(
                        "the quote's PCK certificate chain does not lead to the {} trust root: {detail}",
                        self.root.kind().as_str()
                    ),
                });
                return facts;
            }
            // The lifecycle documents are fetched beside the collateral, not after it: a
            // cold appraisal waits for the slowest of the three, not their sum.
            let found = self.collateral.everything_for(quote).await;
            match found.collateral {
                Ok(c) => {
                    let lifecycle = Lifecycle {
                        early: found.early,
                        numbers: found.numbers,
                    };
                    self.verify_keyed(quote, &c, now, key.as_ref(), lifecycle, checked.as_ref())
                }
                Err(e) => {
                    let mut facts = self.facts(None);
                    facts.error = Some(collateral_error(&e));
                    facts
                }
            }
        })
    }
}

/// The TCB lifecycle documents read beside a quote's collateral.
#[derive(Debug, Default)]
struct Lifecycle {
    early: Option<Arc<SignedTcbInfo>>,
    numbers: Option<Arc<SignedList>>,
}

/// Why a quote's PCK certificate chain does not lead to the trust root
/// (checked before any collateral is fetched for the quote).
#[derive(Debug, thiserror::Error)]
pub enum PckChainError {
    /// The quote carries no PCK certificate chain, or its PEM does not parse (dcap-qvl's
    /// error, with its causes).
    #[error("no PCK certificate chain: {0:#}")]
    NoChain(anyhow::Error),
    /// Fewer than two certificates.
    #[error("{count} certificate(s), expected the PCK certificate and its CA")]
    TooShort {
        /// How many there are.
        count: usize,
    },
    /// A certificate (or the trust root) that does not parse.
    #[error("{what}: {source}")]
    Certificate {
        /// Which: `PCK certificate`, `PCK CA certificate` or `trust root`.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// A signature in the chain that does not verify.
    #[error("the {what} signature does not verify")]
    Signature {
        /// Whose: `PCK certificate's` or `PCK CA certificate's`.
        what: &'static str,
    },
}

/// The quote's PCK certificate is signed by its PCK CA, and that CA by the trust root's
/// key (ECDSA P-256 with SHA-256, as Intel's PCK hierarchy signs). Validity periods,
/// revocation and everything else are dcap-qvl's full verification, later.
///
/// The CA's check is answered from, and remembered in, `cas`: the same CA certificate
/// under the same root. The PCK certificate's successful check goes into `checked`, for
/// the rest of this appraisal.
pub(crate) fn pck_chain_verifies(
    quote: &Quote,
    root_der: &[u8],
    cas: &Remembered,
    checked: &Remembered,
) -> Result<(), PckChainError> {
    let ders = quote.pck_chain_der().map_err(PckChainError::NoChain)?;
    let [leaf, ca, ..] = ders.as_slice() else {
        return Err(PckChainError::TooShort { count: ders.len() });
    };
    fn parse<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>, PckChainError> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|source| PckChainError::Certificate { what, source })
    }
    let (leaf, ca, root) = (
        parse("PCK certificate", leaf)?,
        parse("PCK CA certificate", ca)?,
        parse("trust root", root_der)?,
    );
    let signed_by = |what: &'static str,
                     cert: &X509Certificate<'_>,
                     issuer: &X509Certificate<'_>,
                     record: &Remembered| {
        verify_remembered(
            record,
            &issuer.public_key().subject_public_key.data,
            cert.tbs_certificate.as_ref(),
            &cert.signature_value.data,
        )
        .then_some(())
        .ok_or(PckChainError::Signature { what })
    };
    signed_by("PCK CA certificate's", &ca, &root, cas)?;
    signed_by("PCK certificate's", &leaf, &ca, checked)
}

fn collateral_error(e: &CollateralError) -> VerifyError {
    VerifyError {
        code: VerifyErrorCode::CollateralUnavailable,
        message: e.to_string(),
    }
}

/// Sort a dcap-qvl failure into a class a policy can name. dcap-qvl reports failures as
/// text, so this matches on its messages; anything unknown stays `Other` with the text.
fn classify(e: &anyhow::Error) -> VerifyError {
    let message = format!("{e:#}");
    let m = message.to_ascii_lowercase();
    let code = if m.contains("revoked") {
        VerifyErrorCode::Revoked
    } else if m.contains("expired") || m.contains("in the future") || m.contains("not valid yet") {
        VerifyErrorCode::CollateralExpired
    } else if m.contains("no matching tcb level") || m.contains("below minimum required") {
        VerifyErrorCode::TcbLevelUnknown
    } else if m.contains("signature")
        || m.contains("unknownissuer")
        || m.contains("unknown issuer")
        || m.contains("certificate")
        || m.contains("hash mismatch")
        || m.contains("bad der")
    {
        VerifyErrorCode::SignatureInvalid
    } else {
        VerifyErrorCode::Other
    };
    VerifyError { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collateral::CollateralConfig;
    use dcap_qvl::quote::AuthData;

    use crate::recorded::{NOW as RECORDED_NOW, intel as recorded};

    fn backend() -> DcapBackend {
        let offline = CollateralConfig {
            file: Some(crate::recorded::dcap("tdx_quote_collateral.json")),
            pccs_url: None,
            ..CollateralConfig::default()
        };
        DcapBackend::new(
            TrustRoot::intel(),
            Arc::new(CollateralProvider::new(&offline).unwrap()),
        )
    }

    /// The quote with one byte changed at `at`.
    fn tampered(quote: &Quote, at: usize) -> Quote {
        let mut raw = quote.raw().to_vec();
        raw[at] ^= 0x01;
        crate::evidence::decode_quote_bytes(&raw).unwrap()
    }

    #[test]
    fn collateral_signatures_are_checked_once_per_set_with_dcap_qvl_s_verdict() {
        let (quote, collateral) = recorded();
        let backend = backend();
        let first = backend.verify_with(&quote, &collateral, RECORDED_NOW);
        assert!(first.verified, "{:?}", first.error);
        let after_first = collateral.signatures().hits();
        let second = backend.verify_with(&quote, &collateral, RECORDED_NOW);
        assert!(second.verified, "{:?}", second.error);
        let answered = collateral.signatures().hits() - after_first;
        // TCB Info, QE Identity, both CRLs, the TCB signing and PCK CA certificates.
        assert!(answered >= 6, "{answered} collateral checks answered");
        // dcap-qvl's own, audited configuration says the same.
        let theirs = QuoteVerifier::new_prod()
            .verify(quote.raw(), &collateral.data, RECORDED_NOW)
            .unwrap();
        for facts in [&first, &second] {
            assert_eq!(facts.tcb_status.as_deref(), Some(theirs.status.as_str()));
            assert_eq!(facts.advisory_ids, theirs.advisory_ids);
        }
    }

    #[test]
    fn a_quote_s_own_signatures_are_checked_every_time() {
        let (quote, collateral) = recorded();
        let backend = backend();
        assert!(
            backend
                .verify_with(&quote, &collateral, RECORDED_NOW)
                .verified
        );
        let parsed = quote.parsed();
        let signature_at = parsed.signed_length() + 4;
        let qe_signature = match &parsed.auth_data {
            AuthData::V3(a) => a.qe_report_signature,
            AuthData::V4(a) => a.qe_report_data.qe_report_signature,
        };
        let qe_signature_at = quote
            .raw()
            .windows(qe_signature.len())
            .position(|w| w == qe_signature)
            .unwrap();
        for (what, at, expected) in [
            ("the quote's", signature_at, "isv enclave report signature"),
            ("the QE report's", qe_signature_at, "qe_report"),
        ] {
            let facts = backend.verify_with(&tampered(&quote, at), &collateral, RECORDED_NOW);
            assert!(!facts.verified, "{what} signature was not checked");
            let error = facts.error.unwrap();
            assert_eq!(error.code, VerifyErrorCode::SignatureInvalid, "{what}");
            assert!(
                error.message.to_ascii_lowercase().contains(expected),
                "{what}: {}",
                error.message
            );
        }
        assert!(
            backend
                .verify_with(&quote, &collateral, RECORDED_NOW)
                .verified
        );
    }

    #[test]
    fn another_set_s_successes_prove_nothing_for_a_forged_one() {
        let (quote, genuine) = recorded();
        let backend = backend();
        assert!(backend.verify_with(&quote, &genuine, RECORDED_NOW).verified);
        // The same messages, with the TCB Info's signature changed.
        let mut data = genuine.data.clone();
        data.tcb_info_signature[7] ^= 0x01;
        let forged = Collateral::new(data).unwrap();
        let facts = backend.verify_with(&quote, &forged, RECORDED_NOW);
        assert!(!facts.verified);
        assert_eq!(facts.error.unwrap().code, VerifyErrorCode::SignatureInvalid);
        assert_eq!(forged.signatures().hits(), 0);
    }

    /// The PCK pre-check of `quote` under `backend`'s root, and the record it hands on.
    fn pre_checked(backend: &DcapBackend, quote: &Quote) -> Arc<Remembered> {
        let checked = Arc::new(Remembered::default());
        pck_chain_verifies(quote, backend.root.der(), &backend.cas, &checked).unwrap();
        checked
    }

    /// The verification that follows a pre-check, with the record it handed on.
    fn verify_after(
        backend: &DcapBackend,
        quote: &Quote,
        collateral: &Collateral,
        checked: &Arc<Remembered>,
    ) -> QuoteFacts {
        let lifecycle = Lifecycle::default();
        backend.verify_keyed(
            quote,
            collateral,
            RECORDED_NOW,
            None,
            lifecycle,
            Some(checked),
        )
    }

    #[test]
    fn the_pre_check_hands_its_pck_check_to_the_verification() {
        let (quote, collateral) = recorded();
        let backend = backend();
        let root = backend.root.der().to_vec();
        let checked = pre_checked(&backend, &quote);
        assert_eq!((backend.cas.hits(), checked.hits()), (0, 0));
        let facts = verify_after(&backend, &quote, &collateral, &checked);
        assert!(facts.verified, "{:?}", facts.error);
        assert_eq!(checked.hits(), 1, "dcap-qvl's PCK certificate check");

        // The next quote's pre-check finds the CA checked under this root.
        pck_chain_verifies(&quote, &root, &backend.cas, &Remembered::default()).unwrap();
        assert_eq!(backend.cas.hits(), 1);
        // Under another root the chain fails, whatever was checked before.
        let ca = quote.pck_chain_der().unwrap().swap_remove(1);
        let err = pck_chain_verifies(&quote, &ca, &backend.cas, &Remembered::default());
        assert!(
            matches!(err, Err(PckChainError::Signature { what }) if what.contains("CA")),
            "{err:?}"
        );
    }

    /// Where the quote's PCK chain (its PEM text) starts in the quote's bytes.
    fn chain_at(quote: &Quote) -> usize {
        let chain = quote.parsed().raw_cert_chain().unwrap();
        quote
            .raw()
            .windows(chain.len())
            .position(|w| w == chain)
            .unwrap()
    }

    /// The recorded quote with its PCK chain's first `-----BEGIN` line prefixed by a byte:
    /// dcap-qvl's PEM parser still reads the PCK certificate there, x509-parser's skips
    /// that block. The chain keeps its length (a line break inside the root's body goes),
    /// so no length field of the quote changes; the chain is not signed.
    fn disguised(quote: &Quote) -> Quote {
        let chain = quote.parsed().raw_cert_chain().unwrap();
        let at = chain_at(quote);
        let mut text = chain.to_vec();
        let begin = b"-----BEGIN CERTIFICATE-----\n";
        let last = text.windows(begin.len()).rposition(|w| w == begin).unwrap();
        let line_break = last + begin.len() + 64;
        assert_eq!(text[line_break], b'\n');
        text.remove(line_break);
        text.insert(0, b'X');
        let mut raw = quote.raw().to_vec();
        raw[at..at + chain.len()].copy_from_slice(&text);
        crate::evidence::decode_quote_bytes(&raw).unwrap()
    }

    #[test]
    fn every_reader_of_the_pck_chain_reads_what_dcap_qvl_verifies() {
        let (quote, collateral) = recorded();
        let odd = disguised(&quote);
        // The two PEM parsers disagree on this chain...
        let chain = odd.parsed().raw_cert_chain().unwrap();
        let x509_first = x509_parser::pem::Pem::iter_from_buffer(chain)
            .next()
            .unwrap()
            .unwrap()
            .contents;
        let ders = odd.pck_chain_der().unwrap();
        assert_ne!(x509_first, ders[0]);
        assert_eq!(ders, quote.pck_chain_der().unwrap());
        // ...and every reader takes the certificates dcap-qvl verifies.
        assert_eq!(
            crate::collateral::key_for_quote(&odd).unwrap(),
            crate::collateral::key_for_quote(&quote).unwrap()
        );
        assert_eq!(Platform::of(&odd).unwrap(), Platform::of(&quote).unwrap());
        let backend = backend();
        let checked = pre_checked(&backend, &odd);
        let facts = verify_after(&backend, &odd, &collateral, &checked);
        assert!(facts.verified, "{:?}", facts.error);
        // A pre-check that read x509-parser's first block would have checked the PCK CA
        // under the root instead, and handed on nothing that dcap-qvl's check could use.
        assert_eq!(
            checked.hits(),
            1,
            "the pre-check checked dcap-qvl's PCK certificate"
        );
        assert!(facts.tcb.is_some());
    }

    #[test]
    fn tcb_claims_read_the_pck_chain_dcap_qvl_verified() {
        let (quote, collateral) = recorded();
        let chain = quote.parsed().raw_cert_chain().unwrap();
        // Collateral that carries the platform's chain: dcap-qvl verifies that one, and
        // never reads the quote's.
        let mut data = collateral.data.clone();
        data.pck_certificate_chain = Some(String::from_utf8(chain.to_vec()).unwrap());
        let with_chain = Collateral::new(data).unwrap();
        // The quote's own copy, broken where its PCK certificate starts.
        let at = chain_at(&quote) + b"-----BEGIN CERTIFICATE-----\n".len();
        let mut raw = quote.raw().to_vec();
        raw[at..at + 4].copy_from_slice(b"AAAA");
        let broken = crate::evidence::decode_quote_bytes(&raw).unwrap();
        assert!(Platform::of(&broken).is_err());

        let facts = backend().verify_with(&broken, &with_chain, RECORDED_NOW);
        assert!(facts.verified, "{:?}", facts.error);
        let plain = backend().verify_with(&quote, &collateral, RECORDED_NOW);
        assert!(plain.tcb.is_some());
        assert_eq!(
            format!("{:?}", facts.tcb),
            format!("{:?}", plain.tcb),
            "the claims read the chain dcap-qvl verified"
        );
    }

    #[tokio::test]
    async fn a_whole_appraisal_verifies_with_the_records() {
        let (quote, collateral) = recorded();
        let backend = backend();
        let cached = backend.collateral().collateral_for(&quote).await.unwrap();
        assert_eq!(cached.digest(), collateral.digest());
        for _ in 0..2 {
            let facts = backend.appraise(&quote, RECORDED_NOW).await;
            assert!(facts.verified, "{:?}", facts.error);
        }
        assert_eq!(backend.cas.hits(), 1, "the second pre-check's CA check");
        assert!(cached.signatures().hits() >= 5);
        let signature_at = quote.parsed().signed_length() + 4;
        let facts = backend
            .appraise(&tampered(&quote, signature_at), RECORDED_NOW)
            .await;
        assert!(!facts.verified);
    }
}
