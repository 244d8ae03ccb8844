//! AMD SEV-SNP evidence (dstack 0.6 attestation kind 3), appraised offline: the report
//! parsed from its raw bytes ([`report`]), AMD's chain ARK → ASK → VCEK against pinned
//! roots and the report's signature ([`certs`]), then typed facts for the claims
//! ([`SnpClaims`], `snp` in `verifier/CLAIMS.md`). Like a quote backend it reports facts
//! and never decides; the policy does.
//!
//! Stricter than dstack-verifier 0.6: certificate validity dates are checked at the
//! appraisal time, the VCEK's TCB extensions must equal REPORTED_TCB and its hwID the
//! CHIP_ID, names and PSS parameters are checked, every reserved report byte must be zero.
//! Not done yet: fetching a missing VCEK from AMD's KDS (claims say `no_vcek`), and
//! revocation (no CRL is read: `revocation_checked` is false).

use std::sync::Arc;

pub mod certs;
pub mod kds;
pub mod report;

use serde::Serialize;

pub use certs::{AmdRoots, AskVcek, PINNED_ARKS, VcekInfo, check_vcek};

pub use report::{GuestPolicy, PlatformInfo, Product, Report, SigningKey, TcbParts, TcbVersion};

use crate::evidence::EvidenceError;

/// Most entries in an SNP `cert_chain` (ASK + VCEK, or one certificate table).
pub const MAX_SNP_CHAIN_ENTRIES: usize = 8;
/// Largest `cert_chain` entry (a certificate table with ARK, ASK, VCEK and a CRL).
pub const MAX_SNP_CHAIN_ENTRY_LEN: usize = 64 * 1024;

/// dstack's `SnpQuote`, decoded: the report, the certificates beside it, and the
/// MrConfigV3 document HOST_DATA commits to.
#[derive(Debug, Clone)]
pub struct SnpEvidence {
    /// The parsed report (raw bytes kept).
    pub report: Report,
    /// `cert_chain` as carried: `[]`, `[ASK, VCEK]` (PEM or DER) or one certificate table.
    pub cert_chain: Vec<Vec<u8>>,
    /// The MrConfigV3 JSON document, exact bytes.
    pub mr_config: String,
}

/// Why SEV-SNP evidence did not verify. The code (`snp.error_code`) says whose problem it
/// is; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnpError {
    /// No VCEK to check the report with (an empty chain offline).
    #[error("no VCEK: {0}")]
    NoVcek(String),
    /// The certificates are not what AMD issues (encoding, table, PEM).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A form this appraisal does not verify (VLEK, unknown CPU).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The chain ARK → ASK → VCEK does not verify.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The report's signature does not verify.
    #[error("report signature: {0}")]
    Signature(String),
    /// The VCEK is not the one for this report (TCB, hwID, product).
    #[error("{0}")]
    VcekMismatch(String),
    /// The report's TCB values are impossible (REPORTED above CURRENT).
    #[error("TCB: {0}")]
    Tcb(String),
    /// AMD's CRL lists the ASK.
    #[error("revoked: {0}")]
    Revoked(String),
}

/// Class of an SNP verification failure (`snp.error_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnpErrorCode {
    /// [`SnpError::NoVcek`].
    NoVcek,
    /// [`SnpError::Malformed`].
    Malformed,
    /// [`SnpError::Unsupported`].
    Unsupported,
    /// [`SnpError::Chain`].
    ChainInvalid,
    /// [`SnpError::Signature`].
    SignatureInvalid,
    /// [`SnpError::VcekMismatch`].
    VcekMismatch,
    /// [`SnpError::Tcb`].
    TcbInvalid,
    /// [`SnpError::Revoked`].
    Revoked,
}

impl SnpError {
    /// Its class.
    pub fn code(&self) -> SnpErrorCode {
        match self {
            Self::NoVcek(_) => SnpErrorCode::NoVcek,
            Self::Malformed(_) => SnpErrorCode::Malformed,
            Self::Unsupported(_) => SnpErrorCode::Unsupported,
            Self::Chain(_) => SnpErrorCode::ChainInvalid,
            Self::Signature(_) => SnpErrorCode::SignatureInvalid,
            Self::VcekMismatch(_) => SnpErrorCode::VcekMismatch,
            Self::Tcb(_) => SnpErrorCode::TcbInvalid,
            Self::Revoked(_) => SnpErrorCode::Revoked,
        }
    }
}

/// The VCEK that verified the report (claims `snp.vcek`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcekClaims {
    /// Where it came from: `evidence` (the attestation's `cert_chain`) or `directory` (an
    /// offline [`CertDir`], for evidence that carries none).
    pub source: &'static str,
    /// Its productName extension, e.g. `Milan-B0`.
    pub product_name: String,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

/// Facts about a SEV-SNP report (`snp` in the claims).
#[derive(Debug, Clone, Serialize)]
pub struct SnpClaims {
    /// The report verified: chain to a pinned ARK, signature, VCEK matching the report.
    pub verified: bool,
    /// Why it did not verify.
    pub error: Option<String>,
    /// Class of the failure.
    pub error_code: Option<SnpErrorCode>,
    /// Which roots: `amd` (the pinned ARKs) or `custom`.
    pub root: &'static str,
    /// `Milan`, `Genoa` or `Turin`; `null` when it cannot be told.
    pub product: Option<Product>,
    /// The report format version (2, 3 or 5 seen).
    pub report_version: u32,
    /// MEASUREMENT (48 bytes, hex): the launch digest.
    pub measurement: String,
    /// HOST_DATA (32 bytes, hex).
    pub host_data: String,
    /// HOST_DATA equals SHA-256("dstack-mr-config-v3:" ‖ 0x00 ‖ mr_config): the `app`
    /// claims are what the host launched the guest with.
    pub mr_config_bound: bool,
    /// REPORT_DATA (64 bytes, hex).
    pub report_data: String,
    /// CHIP_ID (64 bytes, hex); all zero when the host masked it.
    pub chip_id: String,
    /// VMPL the report was requested from (0: the guest's most privileged level).
    pub vmpl: u32,
    /// The guest policy allows debugging (`policy.debug`): the host can read its memory.
    pub debug: bool,
    /// A migration agent is associated with the guest (REPORT_ID_MA is not all 0xFF).
    pub migration_agent: bool,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// FAMILY_ID, hex.
    pub family_id: String,
    /// IMAGE_ID, hex.
    pub image_id: String,
    /// ID_KEY_DIGEST, hex (zero without an ID block).
    pub id_key_digest: String,
    /// AUTHOR_KEY_DIGEST, hex.
    pub author_key_digest: String,
    /// Which key signed: `vcek`, `vlek`, `none` or `reserved`.
    pub signing_key: SigningKey,
    /// POLICY, decoded.
    pub policy: GuestPolicy,
    /// PLATFORM_INFO, decoded.
    pub platform_info: PlatformInfo,
    /// CURRENT_TCB; `null` when the product is unknown.
    pub current_tcb: Option<TcbParts>,
    /// REPORTED_TCB (what the VCEK is for).
    pub reported_tcb: Option<TcbParts>,
    /// COMMITTED_TCB.
    pub committed_tcb: Option<TcbParts>,
    /// LAUNCH_TCB.
    pub launch_tcb: Option<TcbParts>,
    /// Current SEV firmware `major.minor.build`.
    pub current_firmware: String,
    /// Committed SEV firmware `major.minor.build`.
    pub committed_firmware: String,
    /// `UpToDate` when reported, committed, current and launch TCB are equal, otherwise
    /// `OutOfDate`; `null` when not verified.
    pub tcb_status: Option<String>,
    /// Each component behind: `snp 23 < committed 24` (reported against committed,
    /// current and launch; committed against current).
    pub tcb_behind: Vec<String>,
    /// The VCEK that verified it; `null` when none did.
    pub vcek: Option<VcekClaims>,
    /// Whether AMD's CRL for the product was checked (it verified under the ARK, was
    /// current, and does not list the ASK). False when no CRL was at hand: offline
    /// without one in the certificate directory, or KDS unreachable.
    pub revocation_checked: bool,
    /// Why a CRL at hand could not be used (bad signature, out of date, unreachable).
    pub revocation_error: Option<String>,
}

/// Appraises SEV-SNP evidence against a set of ARKs.
#[derive(Debug, Clone)]
pub struct SnpVerifier {
    roots: AmdRoots,
    root_name: &'static str,
    cert_dir: Option<CertDir>,
    kds: Option<Arc<kds::Kds>>,
}

impl Default for SnpVerifier {
    fn default() -> Self {
        Self {
            roots: AmdRoots::amd(),
            root_name: "amd",
            cert_dir: None,
            kds: None,
        }
    }
}

/// How to build the [`SnpVerifier`] of a service or a CLI run.
#[derive(Debug, Clone, Default)]
pub struct SnpConfig {
    /// A development ARK (teesql-devattest's), PEM or DER, one certificate per product:
    /// it replaces AMD's roots and claims say `snp.root = "dev"`.
    pub dev_ark: Option<std::path::PathBuf>,
    /// ASKs, VCEKs and CRLs on disk in KDS's layout ([`CertDir`]).
    pub cert_dir: Option<std::path::PathBuf>,
    /// AMD's KDS or a mirror to fetch what the evidence and the directory lack; `None`:
    /// offline.
    pub kds_url: Option<String>,
    /// Time limit of one KDS request.
    pub fetch_timeout: std::time::Duration,
    /// Most bytes of fetched VCEKs kept.
    pub cache_bytes: u64,
}

impl SnpConfig {
    /// The verifier these settings describe; reads the development ARK file now.
    pub fn build(&self) -> Result<SnpVerifier, SnpError> {
        let mut verifier = match &self.dev_ark {
            Some(path) => SnpVerifier::with_dev_roots(dev_arks(path)?),
            None => SnpVerifier::default(),
        };
        if let Some(dir) = &self.cert_dir {
            verifier = verifier.with_cert_dir(CertDir::new(dir));
        }
        if let Some(url) = &self.kds_url {
            verifier = verifier.with_kds(Arc::new(kds::Kds::new(
                url,
                self.fetch_timeout,
                self.cache_bytes,
            )?));
        }
        Ok(verifier)
    }
}

/// The ARKs of a file (PEM certificates, or one DER), each filed under the product its
/// CN names (`ARK-Milan`, …).
fn dev_arks(path: &std::path::Path) -> Result<AmdRoots, SnpError> {
    let bad = |m: String| SnpError::Malformed(format!("SEV-SNP ARK file {}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let ders: Vec<Vec<u8>> = if bytes.starts_with(b"-----BEGIN") {
        x509_parser::pem::Pem::iter_from_buffer(&bytes)
            .map(|p| p.map(|p| p.contents).map_err(|e| bad(e.to_string())))
            .collect::<Result<_, _>>()?
    } else {
        vec![bytes]
    };
    let mut arks = Vec::new();
    for der in ders {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("not a certificate: {e}")))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let product = Product::ALL
            .into_iter()
            .find(|p| cn == format!("ARK-{}", p.as_str()))
            .ok_or_else(|| {
                bad(format!(
                    "CN {cn:?} is not ARK-Milan, ARK-Genoa or ARK-Turin"
                ))
            })?;
        arks.push((product, der.clone()));
    }
    if arks.is_empty() {
        return Err(bad("no certificate".into()));
    }
    Ok(AmdRoots::with_arks(arks))
}

/// What one product's verification takes from outside the evidence, each looked up once:
/// the ASK and VCEK (when the evidence has none) and AMD's CRL, from the certificate
/// directory, else from KDS ([`SnpVerifier::appraise_online`]).
#[derive(Debug, Default)]
struct Found {
    /// The chain and where it came from (`directory`, `kds`); `None` when the evidence
    /// carries its own or nothing was asked.
    chain: Option<Result<(AskVcek, &'static str), SnpError>>,
    /// The CRL, or why the one at hand could not be read or fetched.
    crl: Option<Result<Arc<Vec<u8>>, String>>,
}

/// How the ASK fared against AMD's CRL.
struct Revocation {
    checked: bool,
    error: Option<String>,
}

/// AMD certificates on disk, laid out like KDS, for evidence that carries no chain
/// (offline; nothing is fetched): `<dir>/<Product>/cert_chain` is KDS's
/// `/vcek/v1/<Product>/cert_chain` body (ASK then ARK, PEM; the ARK is ignored, the pinned
/// one decides) and `<dir>/<Product>/<hwID hex>/<REPORTED_TCB hex>.der` the VCEK KDS
/// serves for that chip and TCB (hwID: the 64-byte CHIP_ID, or its first 8 bytes on
/// Turin; the TCB as the report's 8 bytes).
#[derive(Debug, Clone)]
pub struct CertDir {
    root: std::path::PathBuf,
}

impl CertDir {
    /// A directory in the layout above.
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The ASK and the VCEK for `report` on `product`.
    fn lookup(&self, product: Product, report: &Report) -> Result<AskVcek, SnpError> {
        let dir = self.root.join(product.as_str());
        let chip = report.chip_id();
        let hw_id = match product {
            Product::Milan | Product::Genoa => &chip[..],
            Product::Turin => &chip[..8],
        };
        let vcek_path = dir
            .join(hex::encode(hw_id))
            .join(format!("{}.der", hex::encode(report.reported_tcb().0)));
        let read = |path: &std::path::Path, limit: usize| -> Result<Vec<u8>, SnpError> {
            use std::io::Read;
            let mut buf = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut buf))
                .map_err(|e| {
                    SnpError::NoVcek(format!(
                        "none in the attestation, and {}: {e} (KDS fetch not available offline)",
                        path.display()
                    ))
                })?;
            if buf.len() > limit {
                return Err(SnpError::Malformed(format!(
                    "{} is larger than {limit} bytes",
                    path.display()
                )));
            }
            Ok(buf)
        };
        let vcek = read(&vcek_path, certs::MAX_AMD_CERT_LEN)?;
        let chain_path = dir.join("cert_chain");
        let bundle = read(&chain_path, 2 * certs::MAX_AMD_CERT_LEN)?;
        let ask = kds::first_pem_certificate(&chain_path.display().to_string(), &bundle)?;
        Ok(AskVcek { ask, vcek })
    }

    /// `<dir>/<Product>/crl` (KDS's `/vcek/v1/<Product>/crl`, DER), when there is one.
    fn crl(&self, product: Product) -> Option<Result<Arc<Vec<u8>>, SnpError>> {
        use std::io::Read;
        let path = self.root.join(product.as_str()).join("crl");
        let file = std::fs::File::open(&path).ok()?;
        let mut buf = Vec::new();
        let read = file
            .take(certs::MAX_AMD_CRL_LEN as u64 + 1)
            .read_to_end(&mut buf);
        Some(match read {
            Err(e) => Err(SnpError::Malformed(format!("{}: {e}", path.display()))),
            Ok(_) if buf.len() > certs::MAX_AMD_CRL_LEN => Err(SnpError::Malformed(format!(
                "{} is larger than {} bytes",
                path.display(),
                certs::MAX_AMD_CRL_LEN
            ))),
            Ok(_) => Ok(Arc::new(buf)),
        })
    }
}

impl SnpVerifier {
    /// Roots other than AMD's (claims say `root: custom`).
    pub fn with_roots(roots: AmdRoots) -> Self {
        Self {
            roots,
            root_name: "custom",
            ..Self::default()
        }
    }

    /// A development PKI's roots (teesql-devattest's): claims say `root: dev`, which only
    /// the development profile accepts.
    pub fn with_dev_roots(roots: AmdRoots) -> Self {
        Self {
            roots,
            root_name: "dev",
            ..Self::default()
        }
    }

    /// Fetch what the evidence lacks from AMD's KDS (or a mirror): the ASK and VCEK of
    /// evidence without certificates (after the certificate directory), and the CRL.
    pub fn with_kds(self, kds: Arc<kds::Kds>) -> Self {
        Self {
            kds: Some(kds),
            ..self
        }
    }

    /// The KDS client, when there is one (metrics).
    pub fn kds(&self) -> Option<&Arc<kds::Kds>> {
        self.kds.as_ref()
    }

    /// [`Self::appraise`], first fetching from KDS what the evidence and the directory
    /// do not have (the VCEK and ASK of a report sent without them; the CRL). Cached in
    /// the client: no request is made per appraisal once fetched.
    pub async fn appraise_online(&self, evidence: &SnpEvidence, now: u64) -> SnpClaims {
        let r = &evidence.report;
        let (Some(kds), Some(product)) = (&self.kds, r.product()) else {
            return self.appraise_with(evidence, now, None);
        };
        let mut found = self.in_directory(product, evidence);
        if evidence.cert_chain.is_empty() && !matches!(found.chain, Some(Ok(_))) {
            let fetched = kds.ask_vcek(product, r).await;
            found.chain = Some(match (found.chain.take(), fetched) {
                (_, Ok(chain)) => Ok((chain, "kds")),
                (Some(Err(dir)), Err(kds)) => Err(SnpError::NoVcek(format!(
                    "{}; and {}",
                    dir.to_string().trim_start_matches("no VCEK: "),
                    kds.to_string().trim_start_matches("no VCEK: ")
                ))),
                (_, Err(kds)) => Err(kds),
            });
        }
        if found.crl.is_none() {
            found.crl = Some(kds.crl(product).await);
        }
        self.appraise_with(evidence, now, Some((product, found)))
    }

    /// What the certificate directory holds for `product`: the chain when the evidence
    /// carries none, and the CRL.
    fn in_directory(&self, product: Product, evidence: &SnpEvidence) -> Found {
        let Some(dir) = &self.cert_dir else {
            return Found::default();
        };
        Found {
            chain: evidence.cert_chain.is_empty().then(|| {
                dir.lookup(product, &evidence.report)
                    .map(|c| (c, "directory"))
            }),
            crl: dir.crl(product).map(|c| c.map_err(|e| e.to_string())),
        }
    }

    /// Take the ASK and VCEK from `dir` when the evidence carries no chain.
    pub fn with_cert_dir(self, dir: CertDir) -> Self {
        Self {
            cert_dir: Some(dir),
            ..self
        }
    }

    /// Verify `evidence` at unix time `now` and report what it says.
    pub fn appraise(&self, evidence: &SnpEvidence, now: u64) -> SnpClaims {
        self.appraise_with(evidence, now, None)
    }

    /// [`Self::appraise`] with what was already found for the report's product.
    fn appraise_with(
        &self,
        evidence: &SnpEvidence,
        now: u64,
        found: Option<(Product, Found)>,
    ) -> SnpClaims {
        let r = &evidence.report;
        let verified = self.verify(evidence, now, found);
        let product = match &verified {
            Ok((p, _, _, _)) => Some(*p),
            Err(_) => r.product(),
        };
        let tcb = |t: TcbVersion| product.map(|p| t.parts(p));
        let tcb_behind = product.map(|p| tcb_behind(r, p)).unwrap_or_default();
        let mut revocation = Revocation {
            checked: false,
            error: None,
        };
        let (tcb_status, vcek, error) = match verified {
            Ok((_, v, source, rev)) => {
                revocation = rev;
                let equal = [r.reported_tcb(), r.committed_tcb(), r.launch_tcb()]
                    .iter()
                    .all(|t| *t == r.current_tcb());
                let status = if equal { "UpToDate" } else { "OutOfDate" };
                (
                    Some(status.to_string()),
                    Some(VcekClaims {
                        source,
                        product_name: v.product_name,
                        not_before: v.not_before,
                        not_after: v.not_after,
                    }),
                    None,
                )
            }
            Err(e) => (None, None, Some(e)),
        };
        let policy = r.policy().clone();
        SnpClaims {
            verified: error.is_none(),
            error: error.as_ref().map(ToString::to_string),
            error_code: error.as_ref().map(SnpError::code),
            root: self.root_name,
            product,
            report_version: r.version(),
            measurement: hex::encode(r.measurement()),
            host_data: hex::encode(r.host_data()),
            mr_config_bound: crate::mr_config::v3_digest(evidence.mr_config.as_bytes())
                == r.host_data(),
            report_data: hex::encode(r.report_data()),
            chip_id: hex::encode(r.chip_id()),
            vmpl: r.vmpl(),
            debug: policy.debug,
            migration_agent: r.report_id_ma() != [0xff; 32],
            guest_svn: r.guest_svn(),
            family_id: hex::encode(r.family_id()),
            image_id: hex::encode(r.image_id()),
            id_key_digest: hex::encode(r.id_key_digest()),
            author_key_digest: hex::encode(r.author_key_digest()),
            signing_key: r.signing_key(),
            policy,
            platform_info: r.platform_info().clone(),
            current_tcb: tcb(r.current_tcb()),
            reported_tcb: tcb(r.reported_tcb()),
            committed_tcb: tcb(r.committed_tcb()),
            launch_tcb: tcb(r.launch_tcb()),
            current_firmware: r.current_firmware(),
            committed_firmware: r.committed_firmware(),
            tcb_status,
            tcb_behind,
            vcek,
            revocation_checked: revocation.checked,
            revocation_error: revocation.error,
        }
    }

    /// The product, the VCEK's extensions and where the VCEK came from.
    fn verify(
        &self,
        evidence: &SnpEvidence,
        now: u64,
        mut found: Option<(Product, Found)>,
    ) -> Result<(Product, VcekInfo, &'static str, Revocation), SnpError> {
        let r = &evidence.report;
        match r.signing_key() {
            SigningKey::Vcek => {}
            SigningKey::Vlek => {
                return Err(SnpError::Unsupported(
                    "the report is signed by a VLEK (only VCEKs are verified)".into(),
                ));
            }
            other => {
                return Err(SnpError::Signature(format!(
                    "the report is not signed by a chip key (KEY_INFO signing key {other:?})"
                )));
            }
        }
        if r.mask_chip_key() {
            return Err(SnpError::Signature(
                "MASK_CHIP_KEY is set: the firmware did not sign the report".into(),
            ));
        }
        let elsewhere = self.cert_dir.is_some() || found.is_some();
        let carried = match (elsewhere, evidence.cert_chain.is_empty()) {
            (true, true) => None,
            _ => Some(certs::ask_vcek(&evidence.cert_chain)?),
        };
        // v3+ names its CPU; a v2 report is tried as Milan, then Genoa (as dstack does;
        // Turin firmware writes v3 or later).
        let candidates = match (r.product(), r.cpuid()) {
            (Some(p), _) => vec![p],
            (None, Some((f, m, s))) => {
                return Err(SnpError::Unsupported(format!(
                    "CPUID family {f:#04x} model {m:#04x} stepping {s:#04x} is no known EPYC"
                )));
            }
            (None, None) => vec![Product::Milan, Product::Genoa],
        };
        let mut last = None;
        for product in candidates {
            let Found { chain, crl } = match found.take() {
                Some((p, f)) if p == product => f,
                _ => self.in_directory(product, evidence),
            };
            let looked_up = match (&carried, chain) {
                (Some(c), _) => Ok((c.clone(), "evidence")),
                (None, Some(found)) => found,
                (None, None) => Err(SnpError::NoVcek(
                    "none in the attestation, and no certificate directory or KDS to ask".into(),
                )),
            };
            let (chain, source) = match looked_up {
                Ok(found) => found,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match certs::verify_chain(&self.roots, product, &chain, now) {
                Ok(vcek) => {
                    check_vcek(r, product, &vcek.info)?;
                    certs::verify_report_signature(r, &vcek.public_key)?;
                    check_tcb_order(r, product)?;
                    let revocation = self.revocation(product, &chain.ask, crl, now)?;
                    return Ok((product, vcek.info, source, revocation));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| SnpError::Chain("no product to verify against".into())))
    }
}

impl SnpVerifier {
    /// The ASK against the CRL at hand (the directory's, else the fetched one): a listed
    /// ASK fails the verification; a CRL that cannot be used leaves revocation unchecked,
    /// with the reason.
    fn revocation(
        &self,
        product: Product,
        ask: &[u8],
        crl: Option<Result<Arc<Vec<u8>>, String>>,
        now: u64,
    ) -> Result<Revocation, SnpError> {
        let unchecked = |error: Option<String>| {
            Ok(Revocation {
                checked: false,
                error,
            })
        };
        match crl.map(|c| c.map(|der| certs::check_crl(&self.roots, product, ask, &der, now))) {
            None => unchecked(None),
            Some(Err(unavailable)) => unchecked(Some(unavailable)),
            Some(Ok(Ok(()))) => Ok(Revocation {
                checked: true,
                error: None,
            }),
            Some(Ok(Err(e @ SnpError::Revoked(_)))) => Err(e),
            Some(Ok(Err(unusable))) => unchecked(Some(unusable.to_string())),
        }
    }
}

/// REPORTED_TCB (what the VCEK certifies) may be below CURRENT_TCB, never above it.
fn check_tcb_order(r: &Report, product: Product) -> Result<(), SnpError> {
    let reported = r.reported_tcb().parts(product);
    let current = r.current_tcb().parts(product);
    for ((name, rep), (_, cur)) in reported.components().into_iter().zip(current.components()) {
        if rep > cur {
            return Err(SnpError::Tcb(format!(
                "REPORTED_TCB {name} {rep} is above CURRENT_TCB {name} {cur}"
            )));
        }
    }
    Ok(())
}

fn tcb_behind(r: &Report, product: Product) -> Vec<String> {
    let reported = r.reported_tcb().parts(product);
    let committed = r.committed_tcb().parts(product);
    let mut out = Vec::new();
    let mut compare = |lower: &TcbParts, prefix: &str, upper: &TcbParts, label: &str| {
        for ((name, lo), (_, hi)) in lower.components().into_iter().zip(upper.components()) {
            if lo < hi {
                out.push(format!("{prefix}{name} {lo} < {label} {hi}"));
            }
        }
    };
    compare(&reported, "", &committed, "committed");
    compare(&reported, "", &r.current_tcb().parts(product), "current");
    compare(&reported, "", &r.launch_tcb().parts(product), "launch");
    compare(
        &committed,
        "committed ",
        &r.current_tcb().parts(product),
        "current",
    );
    out
}

/// Decode dstack's `SnpQuote` fields into [`SnpEvidence`], bounding each.
pub(crate) fn snp_evidence(
    report: &[u8],
    cert_chain: Vec<Vec<u8>>,
    mr_config: String,
) -> Result<SnpEvidence, EvidenceError> {
    crate::evidence::check_len(
        "SEV-SNP cert_chain (entries)",
        cert_chain.len(),
        MAX_SNP_CHAIN_ENTRIES,
    )?;
    for c in &cert_chain {
        crate::evidence::check_len("SEV-SNP cert_chain entry", c.len(), MAX_SNP_CHAIN_ENTRY_LEN)?;
    }
    crate::evidence::check_len(
        "SEV-SNP mr_config",
        mr_config.len(),
        crate::mr_config::MAX_MR_CONFIG_DOCUMENT,
    )?;
    Ok(SnpEvidence {
        report: Report::parse(report)?,
        cert_chain,
        mr_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::decode_attestation;

    /// The VCEK's notBefore: the fixture verifies from this second on.
    const NOW: u64 = 1_781_658_304;

    fn testdata(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// dstack's verifier fixture: the report with ASK and VCEK (PEM) embedded.
    fn with_chain() -> SnpEvidence {
        let json: serde_json::Value =
            serde_json::from_slice(&testdata("dstack/sev-snp-attestation.json")).unwrap();
        let blob = hex::decode(json["attestation"].as_str().unwrap()).unwrap();
        decode_attestation(&blob).unwrap().snp.unwrap()
    }

    fn der_chain() -> AskVcek {
        certs::ask_vcek(&with_chain().cert_chain).unwrap()
    }

    #[test]
    fn embedded_chain_verifies_and_is_out_of_date() {
        let c = SnpVerifier::default().appraise(&with_chain(), NOW);
        assert!(c.verified, "{:?}", c.error);
        assert_eq!(c.product, Some(Product::Milan));
        assert!(c.measurement.starts_with("7f51e17f"));
        assert!(c.host_data.starts_with("783f0057"));
        assert!(c.chip_id.starts_with("38d17458"));
        assert!(c.mr_config_bound);
        assert_eq!(c.tcb_status.as_deref(), Some("OutOfDate"));
        assert!(
            c.tcb_behind.contains(&"snp 23 < committed 24".to_string()),
            "{:?}",
            c.tcb_behind
        );
        assert_eq!(c.vcek.unwrap().product_name, "Milan-B0");
        assert!(!c.debug && !c.migration_agent && c.vmpl == 0);
        assert!(!c.revocation_checked);
    }

    #[test]
    fn empty_chain_has_no_vcek_offline() {
        let blob = testdata("dstack/sev-snp-attestation.bin");
        let ev = decode_attestation(&blob).unwrap().snp.unwrap();
        assert!(ev.cert_chain.is_empty());
        let c = SnpVerifier::default().appraise(&ev, NOW);
        assert!(!c.verified);
        assert_eq!(c.error_code, Some(SnpErrorCode::NoVcek));
        let err = c.error.unwrap();
        assert!(err.starts_with("no VCEK:") && err.contains("KDS"), "{err}");
        assert_eq!(c.tcb_status, None);
        // Everything the report says is still decoded.
        assert!(c.measurement.starts_with("7f51e17f") && c.mr_config_bound);
    }

    #[test]
    fn a_flipped_report_byte_breaks_the_signature() {
        let ev = with_chain();
        let mut raw = ev.report.raw().to_vec();
        raw[0x90] ^= 1; // MEASUREMENT
        let ev = SnpEvidence {
            report: Report::parse(&raw).unwrap(),
            ..ev
        };
        let c = SnpVerifier::default().appraise(&ev, NOW);
        assert_eq!(
            c.error_code,
            Some(SnpErrorCode::SignatureInvalid),
            "{:?}",
            c.error
        );
    }

    #[test]
    fn a_tampered_ask_breaks_the_chain() {
        let mut chain = der_chain();
        // A byte of the ASK's subject key: it still parses, but no longer verifies.
        let at = chain.ask.len() / 2;
        chain.ask[at] ^= 1;
        let err = certs::verify_chain(&AmdRoots::amd(), Product::Milan, &chain, NOW).unwrap_err();
        assert_eq!(err.code(), SnpErrorCode::ChainInvalid, "{err}");
        // The same through the appraisal, as DER entries.
        let ev = SnpEvidence {
            cert_chain: vec![chain.ask, chain.vcek],
            ..with_chain()
        };
        let c = SnpVerifier::default().appraise(&ev, NOW);
        assert!(!c.verified);
        assert!(
            matches!(
                c.error_code,
                Some(SnpErrorCode::ChainInvalid | SnpErrorCode::Malformed)
            ),
            "{:?}",
            c.error
        );
    }

    #[test]
    fn the_wrong_products_root_does_not_verify_a_milan_chain() {
        let genoa = PINNED_ARKS[1].1.to_vec();
        let roots = AmdRoots::with_arks(vec![(Product::Milan, genoa)]);
        let c = SnpVerifier::with_roots(roots).appraise(&with_chain(), NOW);
        assert_eq!(
            c.error_code,
            Some(SnpErrorCode::ChainInvalid),
            "{:?}",
            c.error
        );
        assert_eq!(c.root, "custom");
        // The Milan chain as a Genoa one fails too. (That Genoa's key does not verify
        // the Milan ASK, names aside, is certs::tests::each_pinned_ark_signs_its_own_ask_only.)
        let err =
            certs::verify_chain(&AmdRoots::amd(), Product::Genoa, &der_chain(), NOW).unwrap_err();
        assert_eq!(err.code(), SnpErrorCode::ChainInvalid, "{err}");
    }

    #[test]
    fn validity_dates_are_checked_at_the_appraisal_time() {
        let before = SnpVerifier::default().appraise(&with_chain(), NOW - 1);
        assert_eq!(before.error_code, Some(SnpErrorCode::ChainInvalid));
        assert!(before.error.unwrap().contains("VCEK is valid from"));
        // VCEK notAfter 2033-06-17.
        let after = SnpVerifier::default().appraise(&with_chain(), 2_002_583_105);
        assert_eq!(after.error_code, Some(SnpErrorCode::ChainInvalid));
    }

    #[test]
    fn a_swapped_mr_config_is_not_bound() {
        let ev = SnpEvidence {
            mr_config: with_chain()
                .mr_config
                .replace("\"version\":3", "\"version\":4"),
            ..with_chain()
        };
        let c = SnpVerifier::default().appraise(&ev, NOW);
        assert!(c.verified);
        assert!(!c.mr_config_bound);
    }

    #[test]
    fn a_certificate_table_carries_the_chain_too() {
        let chain = der_chain();
        let header = 3 * 24;
        let mut table = Vec::new();
        for (guid, offset, len) in [
            (certs_guid_ask(), header, chain.ask.len()),
            (
                certs_guid_vcek(),
                header + chain.ask.len(),
                chain.vcek.len(),
            ),
        ] {
            table.extend(guid);
            table.extend((offset as u32).to_le_bytes());
            table.extend((len as u32).to_le_bytes());
        }
        table.extend([0u8; 24]);
        table.extend(&chain.ask);
        table.extend(&chain.vcek);
        assert_eq!(
            certs::ask_vcek(std::slice::from_ref(&table)).unwrap(),
            chain
        );
        // Out of bounds, or no terminator: refused.
        let mut short = table.clone();
        short.truncate(header + 10);
        assert!(certs::ask_vcek(&[short]).is_err());
        assert!(certs::ask_vcek(&[table[..48].to_vec()]).is_err());
    }

    fn certs_guid_ask() -> [u8; 16] {
        hex::decode("4ab7b379bbac4fe4a02f05aef327c782")
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn certs_guid_vcek() -> [u8; 16] {
        hex::decode("63da758de6644564adc5f4b93be8accd")
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// The empty-chain fixture verifies offline from a directory laid out like KDS,
    /// holding the ASK and the VCEK dstack fetched for it; without them it names the file.
    #[test]
    fn a_kds_shaped_directory_supplies_a_missing_chain() {
        let chain = der_chain();
        let dir = tempfile::tempdir().unwrap();
        let milan = dir.path().join("Milan");
        let report = with_chain().report;
        let vcek_dir = milan.join(hex::encode(report.chip_id()));
        std::fs::create_dir_all(&vcek_dir).unwrap();
        // KDS's cert_chain body: the ASK, then the ARK.
        let bundle = [
            testdata("sev-snp/virtee-milan-ask.pem"),
            testdata("sev-snp/go-sev-guest-milan-ark.pem"),
        ]
        .concat();
        std::fs::write(milan.join("cert_chain"), bundle).unwrap();
        let vcek_path = vcek_dir.join(format!("{}.der", hex::encode(report.reported_tcb().0)));
        let empty = decode_attestation(&testdata("dstack/sev-snp-attestation.bin"))
            .unwrap()
            .snp
            .unwrap();
        let verifier = SnpVerifier::default().with_cert_dir(CertDir::new(dir.path()));
        let missing = verifier.appraise(&empty, NOW);
        assert_eq!(missing.error_code, Some(SnpErrorCode::NoVcek));
        assert!(
            missing
                .error
                .as_deref()
                .unwrap()
                .contains(&*vcek_path.to_string_lossy()),
            "{:?}",
            missing.error
        );
        std::fs::write(&vcek_path, &chain.vcek).unwrap();
        let c = verifier.appraise(&empty, NOW);
        assert!(c.verified, "{:?}", c.error);
        assert_eq!(c.vcek.unwrap().source, "directory");
        assert_eq!(c.tcb_status.as_deref(), Some("OutOfDate"));
        // A chain the evidence carries is the one used.
        let carried = verifier.appraise(&with_chain(), NOW);
        assert_eq!(carried.vcek.unwrap().source, "evidence");
    }

    #[test]
    fn pinned_arks_are_the_published_ones() {
        use sha2::{Digest, Sha256};
        for (product, der, sha256) in PINNED_ARKS {
            assert_eq!(hex::encode(Sha256::digest(der)), sha256, "{product:?}");
            // Two independent published copies (go-sev-guest, Trustee; testdata/sev-snp).
            for source in ["go-sev-guest", "trustee"] {
                let name = format!(
                    "sev-snp/{source}-{}-ark.pem",
                    product.as_str().to_lowercase()
                );
                let pem = testdata(&name);
                let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
                assert_eq!(pem.contents, der, "{name}");
            }
            // Each verifies as its own root.
            let (_, ark) = x509_parser::parse_x509_certificate(der).unwrap();
            assert_eq!(
                ark.subject().to_string(),
                ark.issuer().to_string(),
                "{product:?}"
            );
        }
    }

    /// A development VCEK (P-384, self-signed by rcgen): the chain's RSA-PSS cannot be
    /// made with rcgen, so the extension rules are tested on the parsed certificate, the
    /// same [`VcekInfo::parse`] and [`check_vcek`] the verified chain goes through.
    fn dev_vcek(snp_spl: u8, hw_id: &[u8]) -> VcekInfo {
        let int = |v: u8| {
            if v < 0x80 {
                vec![0x02, 0x01, v]
            } else {
                vec![0x02, 0x02, 0x00, v]
            }
        };
        let ext = |arc: &[u64], content: Vec<u8>| {
            let mut oid = vec![1, 3, 6, 1, 4, 1, 3704, 1];
            oid.extend(arc);
            rcgen::CustomExtension::from_oid_content(&oid, content)
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "SEV-VCEK");
        params.custom_extensions = vec![
            ext(&[1], int(0)),
            ext(&[2], [&[0x16, 8][..], b"Milan-B0"].concat()),
            ext(&[3, 1], int(4)),
            ext(&[3, 2], int(0)),
            ext(&[3, 4], int(0)),
            ext(&[3, 5], int(0)),
            ext(&[3, 6], int(0)),
            ext(&[3, 7], int(0)),
            ext(&[3, 3], int(snp_spl)),
            ext(&[3, 8], int(213)),
            ext(&[4], hw_id.to_vec()),
        ];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        VcekInfo::parse(&cert).unwrap()
    }

    #[test]
    fn a_vcek_for_another_tcb_or_chip_does_not_match_the_report() {
        let report = with_chain().report;
        let chip = report.chip_id();
        // The real VCEK's values match (the builder is right).
        check_vcek(&report, Product::Milan, &dev_vcek(23, &chip)).unwrap();
        let tcb = check_vcek(&report, Product::Milan, &dev_vcek(24, &chip)).unwrap_err();
        assert_eq!(tcb.code(), SnpErrorCode::VcekMismatch);
        assert!(tcb.to_string().contains("snp 24"), "{tcb}");
        let mut other = chip;
        other[63] ^= 1;
        let hw = check_vcek(&report, Product::Milan, &dev_vcek(23, &other)).unwrap_err();
        assert!(hw.to_string().contains("hwID"), "{hw}");
        let short = check_vcek(&report, Product::Milan, &dev_vcek(23, &chip[..8])).unwrap_err();
        assert!(short.to_string().contains("hwID"), "{short}");
        // A Turin rule on a Milan VCEK: structVersion differs.
        let turin = check_vcek(&report, Product::Turin, &dev_vcek(23, &chip)).unwrap_err();
        assert!(turin.to_string().contains("structVersion"), "{turin}");
        // A masked CHIP_ID matches no VCEK.
        let mut raw = report.raw().to_vec();
        raw[0x1A0..0x1E0].fill(0);
        let masked = Report::parse(&raw).unwrap();
        let err = check_vcek(&masked, Product::Milan, &dev_vcek(23, &[0; 64])).unwrap_err();
        assert!(err.to_string().contains("all zero"), "{err}");
    }

    #[test]
    fn extension_encodings_are_exact() {
        assert_eq!(certs_small_int(&[0x02, 0x01, 0x17]), Some(23));
        assert_eq!(certs_small_int(&[0x02, 0x02, 0x00, 0xd5]), Some(213));
        // Not minimal, negative, or too long.
        assert_eq!(certs_small_int(&[0x02, 0x02, 0x00, 0x17]), None);
        assert_eq!(certs_small_int(&[0x02, 0x01, 0xd5]), None);
        assert_eq!(certs_small_int(&[0x02, 0x03, 0x00, 0x00, 0x01]), None);
    }

    fn certs_small_int(v: &[u8]) -> Option<u8> {
        certs::der_small_int(v)
    }
}
