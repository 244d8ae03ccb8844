//! DCAP collateral: where it comes from, how long it is good for, and its cache.
//!
//! Sources, in order: an explicit file (used for every quote), an offline directory
//! (indexed by what each file is for), then a PCCS or Intel PCS over HTTP. Fetched
//! collateral is cached per (TEE, FMSPC, PCK CA) until its own next update, and
//! concurrent misses for one key share a single fetch. A fetch that failed is remembered
//! for a short while (no refetch per request while a PCCS is down or rate-limits us), and
//! only a few fetches run at once, whatever the number of keys asked for.

mod disk;
mod early;
mod pccs;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, Pem, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

pub use pccs::{INTEL_PCS_URL, PccsClient};

use crate::backend::signatures::CollateralSignatures;
use crate::clock::Clock;
use crate::evidence::{Quote, TeeType};
use crate::tcb::{ParsedTcbInfo, TcbError};

/// Which collateral a quote needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollateralKey {
    /// TDX or SGX: which TCB Info and QE Identity endpoints serve it.
    pub tee: TeeType,
    /// FMSPC, upper-case hex (as PCS URLs use it).
    pub fmspc: String,
    /// The CA that issued the platform's PCK certificate: which PCK CRL applies.
    pub ca: PckCa,
}

impl fmt::Display for CollateralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tee = match self.tee {
            TeeType::Tdx => "TDX",
            TeeType::Sgx => "SGX",
        };
        write!(f, "{tee} FMSPC {} ({} CA)", self.fmspc, self.ca.as_str())
    }
}

/// The Intel PCK CA that issued a platform's PCK certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// Intel SGX PCK Processor CA (the issuer's name contains `Processor`).
    Processor,
    /// Intel SGX PCK Platform CA (the issuer's name contains `Platform`).
    Platform,
}

impl PckCa {
    /// The value of the `ca` query parameter of the PCS `pckcrl` endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processor => "processor",
            Self::Platform => "platform",
        }
    }

    fn from_issuer(issuer: &str) -> Option<Self> {
        if issuer.contains("Processor") {
            Some(Self::Processor)
        } else if issuer.contains("Platform") {
            Some(Self::Platform)
        } else {
            None
        }
    }
}

/// A collateral set with its validity window.
#[derive(Debug, Clone)]
pub struct Collateral {
    /// The set as dcap-qvl verifies with it: PCK CRL and its issuer chain, root CA CRL,
    /// TCB Info and QE Identity with their signatures and issuer chains.
    pub data: QuoteCollateralV3,
    /// When the set is valid, computed from `data` by [`Self::new`].
    pub window: CollateralWindow,
    /// SHA-256 over every field of `data`: which collateral a platform was verified
    /// under (see the platform cache).
    digest: [u8; 32],
    /// What the set's signatures cover, and which of them were checked already.
    signatures: Arc<CollateralSignatures>,
    /// The TCB Info as TCB lifecycle claims read it, parsed on first use (after a
    /// verification with the set checked its signature).
    tcb_info: Arc<OnceLock<Result<ParsedTcbInfo, TcbError>>>,
    /// The earliest `notAfter` of the set's own certificates, read on first use.
    certificates_until: Arc<OnceLock<Option<u64>>>,
}

/// Why collateral could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollateralError {
    /// The quote's PCK certificate (which names the FMSPC and the PCK CA) is missing or
    /// cannot be read.
    #[error("cannot tell which collateral the quote needs: {0}")]
    QuoteCertificates(String),
    /// No offline source has the collateral and no PCCS URL is configured.
    #[error(
        "no collateral for {key} in the offline sources (file, directory), and fetching from a PCCS is off"
    )]
    Offline {
        /// The collateral the quote needs.
        key: CollateralKey,
    },
    /// The PCCS could not be asked, timed out, or answered with an error or a body
    /// that is not collateral.
    #[error("fetching collateral for {key} from {url} failed: {detail}")]
    Fetch {
        /// The collateral asked for.
        key: CollateralKey,
        /// The PCCS base URL, or the URL of the one request that failed.
        url: String,
        /// What went wrong: the transport error with its causes, the HTTP status, …
        detail: String,
    },
    /// Collateral was obtained but is malformed (bad JSON, dates, CRL, issuer chain), or
    /// the HTTP client could not be built.
    #[error("collateral is malformed: {0}")]
    Invalid(String),
    /// A configured collateral file or directory cannot be read or is not collateral.
    #[error("cannot read collateral file {path}: {detail}")]
    File {
        /// The file or directory, as configured.
        path: String,
        /// What is wrong: the I/O error, the size bound, the JSON error.
        detail: String,
    },
}

impl Collateral {
    /// Wrap collateral, computing its validity window.
    pub fn new(data: QuoteCollateralV3) -> Result<Self, CollateralError> {
        let window = validity_window(&data)?;
        let digest = collateral_digest(&data);
        let signatures = Arc::new(CollateralSignatures::of(&data));
        Ok(Self {
            data,
            window,
            digest,
            signatures,
            tcb_info: Arc::default(),
            certificates_until: Arc::default(),
        })
    }

    /// The earliest `notAfter` of the certificates the set carries: its PCK CRL, TCB Info
    /// and QE Identity issuer chains, and its PCK certificate chain when it has one.
    /// `None` when one cannot be read. Read once for every platform cached under the set.
    pub(crate) fn certificates_until(&self) -> Option<u64> {
        *self.certificates_until.get_or_init(|| {
            let c = &self.data;
            [
                c.pck_crl_issuer_chain.as_bytes(),
                c.tcb_info_issuer_chain.as_bytes(),
                c.qe_identity_issuer_chain.as_bytes(),
                c.pck_certificate_chain.as_deref().unwrap_or("").as_bytes(),
            ]
            .into_iter()
            .map(crate::evidence::earliest_not_after)
            .try_fold(u64::MAX, |until, chain| Some(until.min(chain?)))
        })
    }

    /// The set's TCB Info, parsed once for every platform judged under it. Only for a
    /// set a verification has accepted: the parse does not check the signature.
    pub fn parsed_tcb_info(&self) -> Result<&ParsedTcbInfo, TcbError> {
        self.tcb_info
            .get_or_init(|| ParsedTcbInfo::parse(&self.data.tcb_info))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The set's signature record: each of its signatures is checked once, by the first
    /// verification with it (see [`crate::backend::signatures`]).
    pub fn signatures(&self) -> &Arc<CollateralSignatures> {
        &self.signatures
    }

    /// SHA-256 over every field of the collateral, each with its length.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Read a collateral JSON file (dcap-qvl's `QuoteCollateralV3` shape, bytes as hex).
    pub fn from_file(path: &Path) -> Result<Self, CollateralError> {
        let file_err = |detail: String| CollateralError::File {
            path: path.display().to_string(),
            detail,
        };
        let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        if meta.len() > MAX_COLLATERAL_FILE {
            return Err(file_err(format!(
                "{} bytes, more than the limit of {MAX_COLLATERAL_FILE}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let data: QuoteCollateralV3 = serde_json::from_slice(&bytes)
            .map_err(|e| file_err(format!("not DCAP collateral JSON: {e}")))?;
        Self::new(data).map_err(|e| file_err(e.to_string()))
    }

    /// Which quotes this collateral serves.
    pub fn key(&self) -> Result<CollateralKey, CollateralError> {
        #[derive(Deserialize)]
        struct TcbInfoHead {
            id: Option<String>,
            fmspc: String,
        }
        let head: TcbInfoHead = serde_json::from_str(&self.data.tcb_info)
            .map_err(|e| CollateralError::Invalid(format!("TCB Info: {e}")))?;
        let tee = match head.id.as_deref() {
            Some("TDX") => TeeType::Tdx,
            _ => TeeType::Sgx,
        };
        let issuer = first_cert_subject(&self.data.pck_crl_issuer_chain)?;
        let ca = PckCa::from_issuer(&issuer).ok_or_else(|| {
            CollateralError::Invalid(format!(
                "PCK CRL issuer {issuer:?} is neither a Processor nor a Platform CA"
            ))
        })?;
        Ok(CollateralKey {
            tee,
            fmspc: head.fmspc.to_ascii_uppercase(),
            ca,
        })
    }
}

/// Memory for remembered collateral keys: about 400 platforms.
const KEYS_BUDGET: u64 = 256 * 1024;
/// What a remembered key costs besides its FMSPC: the digest and the key (about 100
/// bytes), and moka's own allocations per entry (key `Arc`, entry, queue nodes, bucket).
const KEY_OVERHEAD: usize = 600;

/// What a quote's collateral key is read from: its TEE and its PCK certificate chain
/// (SHA-256). `None` when the quote carries no chain.
fn chain_digest(quote: &Quote) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let chain = quote.parsed().raw_cert_chain().ok()?;
    let mut h = Sha256::new();
    h.update(b"teesql-collateral-key-v1\0");
    h.update([match quote.tee_type() {
        TeeType::Tdx => 1,
        TeeType::Sgx => 2,
    }]);
    h.update(chain);
    Some(h.finalize().into())
}

/// Collateral files are small (about 20 KiB); anything much larger is not collateral.
const MAX_COLLATERAL_FILE: u64 = 4 * 1024 * 1024;

/// The collateral key of a quote, from the PCK certificate it embeds.
pub fn key_for_quote(quote: &Quote) -> Result<CollateralKey, CollateralError> {
    let chain = quote
        .pck_chain_der()
        .map_err(|e| CollateralError::QuoteCertificates(format!("{e:#}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| CollateralError::QuoteCertificates("no PCK certificate".into()))?;
    let ext = dcap_qvl::intel::parse_pck_extension_with::<dcap_qvl::configs::RingConfig>(leaf)
        .map_err(|e| CollateralError::QuoteCertificates(format!("PCK certificate: {e:#}")))?;
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| CollateralError::QuoteCertificates(format!("PCK certificate: {e}")))?;
    let issuer = cert.issuer().to_string();
    let ca = PckCa::from_issuer(&issuer).ok_or_else(|| {
        CollateralError::QuoteCertificates(format!(
            "PCK certificate issuer {issuer:?} is neither a Processor nor a Platform CA"
        ))
    })?;
    Ok(CollateralKey {
        tee: quote.tee_type(),
        fmspc: hex::encode_upper(ext.fmspc),
        ca,
    })
}

fn first_cert_subject(pem_chain: &str) -> Result<String, CollateralError> {
    let pem = Pem::iter_from_buffer(pem_chain.as_bytes())
        .next()
        .ok_or_else(|| CollateralError::Invalid("empty issuer chain".into()))?
        .map_err(|e| CollateralError::Invalid(format!("issuer chain PEM: {e}")))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| CollateralError::Invalid(format!("issuer chain certificate: {e}")))?;
    Ok(cert.subject().to_string())
}

/// From the latest issue date to the earliest next update of TCB Info, QE Identity and
/// both CRLs.
fn collateral_digest(c: &QuoteCollateralV3) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"teesql-collateral-v1\0");
    let pck_chain = c.pck_certificate_chain.as_deref();
    for field in [
        c.pck_crl_issuer_chain.as_bytes(),
        &c.root_ca_crl,
        &c.pck_crl,
        c.tcb_info_issuer_chain.as_bytes(),
        c.tcb_info.as_bytes(),
        &c.tcb_info_signature,
        c.qe_identity_issuer_chain.as_bytes(),
        c.qe_identity.as_bytes(),
        &c.qe_identity_signature,
        pck_chain.unwrap_or("").as_bytes(),
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    h.update([u8::from(pck_chain.is_some())]);
    h.finalize().into()
}

/// Validity window of a collateral set, unix seconds: from the latest issue date to the
/// earliest next update of TCB Info, QE Identity and both CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CollateralWindow {
    /// The latest issue date of the set.
    pub not_before: u64,
    /// The earliest next update of the set.
    pub not_after: u64,
}

fn validity_window(c: &QuoteCollateralV3) -> Result<CollateralWindow, CollateralError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Dated {
        issue_date: String,
        next_update: String,
    }
    let mut window = CollateralWindow {
        not_before: 0,
        not_after: u64::MAX,
    };
    let mut add = |from: u64, to: u64| {
        window.not_before = window.not_before.max(from);
        window.not_after = window.not_after.min(to);
    };
    for (what, json) in [("TCB Info", &c.tcb_info), ("QE Identity", &c.qe_identity)] {
        let d: Dated = serde_json::from_str(json)
            .map_err(|e| CollateralError::Invalid(format!("{what}: {e}")))?;
        add(
            rfc3339(what, &d.issue_date)?,
            rfc3339(what, &d.next_update)?,
        );
    }
    for (what, der) in [("root CA CRL", &c.root_ca_crl), ("PCK CRL", &c.pck_crl)] {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| CollateralError::Invalid(format!("{what}: {e}")))?;
        let next = crl
            .next_update()
            .ok_or_else(|| CollateralError::Invalid(format!("{what} has no nextUpdate")))?;
        add(
            crl.last_update().timestamp().max(0) as u64,
            next.timestamp().max(0) as u64,
        );
    }
    Ok(window)
}

fn rfc3339(what: &str, s: &str) -> Result<u64, CollateralError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
        .ok_or_else(|| CollateralError::Invalid(format!("{what}: bad date {s:?}")))
}

/// Counters the service exports as metrics.
#[derive(Debug, Default)]
pub struct CollateralStats {
    /// Fetches from the PCCS started (one per cache miss, shared by concurrent misses).
    pub fetches: AtomicU64,
    /// Fetches that failed or returned collateral that could not be read.
    pub fetch_failures: AtomicU64,
    /// Requests answered from the cache of fetched collateral.
    pub cache_hits: AtomicU64,
    /// Requests answered with a recent failure instead of a new fetch.
    pub failures_reused: AtomicU64,
    /// Collateral sets taken from the cache directory instead of the network.
    pub disk_hits: AtomicU64,
}

/// Most collateral fetches running at once.
pub const MAX_CONCURRENT_FETCHES: usize = 4;

/// Where collateral comes from, with the cache in front of the network.
#[derive(Debug)]
pub struct CollateralProvider {
    explicit: Option<Arc<Collateral>>,
    offline: HashMap<CollateralKey, Arc<Collateral>>,
    pccs: Option<PccsClient>,
    cache: moka::future::Cache<CollateralKey, Arc<Collateral>>,
    /// Recent fetch failures by key, kept for `failure_ttl`.
    failures: moka::sync::Cache<CollateralKey, CollateralError>,
    fetch_slots: tokio::sync::Semaphore,
    /// The early TCB info and evaluation numbers beside the collateral.
    tcb: early::TcbSources,
    /// What was fetched before, kept on disk across restarts.
    disk: Option<Arc<disk::DiskCache>>,
    /// Collateral keys of PCK certificate chains read before, by [`chain_digest`]: a
    /// platform's next quote reads no certificate to find its collateral.
    keys: moka::sync::Cache<[u8; 32], CollateralKey>,
    /// Fetch and cache counters, for metrics (explicit and offline sources not counted).
    pub stats: CollateralStats,
}

/// How to build a [`CollateralProvider`].
#[derive(Debug, Clone)]
pub struct CollateralConfig {
    /// One collateral file used for every quote.
    pub file: Option<std::path::PathBuf>,
    /// A directory of collateral files, indexed by TEE, FMSPC and CA.
    pub dir: Option<std::path::PathBuf>,
    /// PCCS or Intel PCS base URL; `None` = offline.
    pub pccs_url: Option<String>,
    /// Timeout for each HTTP request.
    pub fetch_timeout: Duration,
    /// Most collateral sets kept in the cache.
    pub cache_capacity: u64,
    /// How long a failed fetch is remembered (and answered) before a new attempt.
    pub failure_ttl: Duration,
    /// The time cached collateral expires against (its next update); fixed for
    /// recorded evidence.
    pub clock: Clock,
    /// A directory where fetched collateral is kept across restarts; `None` = memory
    /// only.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Most bytes the cache directory holds.
    pub cache_dir_max_bytes: u64,
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            file: None,
            dir: None,
            pccs_url: Some(INTEL_PCS_URL.to_string()),
            fetch_timeout: Duration::from_secs(10),
            cache_capacity: 1024,
            failure_ttl: Duration::from_secs(30),
            clock: Clock::System,
            cache_dir: None,
            cache_dir_max_bytes: 64 << 20,
        }
    }
}

impl CollateralProvider {
    /// Read the explicit file and every `*.json` of the offline directory now (one bad
    /// file fails the whole provider), and set up the PCCS client and the cache.
    pub fn new(config: &CollateralConfig) -> Result<Self, CollateralError> {
        let explicit = config
            .file
            .as_deref()
            .map(Collateral::from_file)
            .transpose()?
            .map(Arc::new);
        let mut offline = HashMap::new();
        let mut tcb =
            early::TcbSources::new(config.cache_capacity, config.failure_ttl, config.clock);
        if let Some(dir) = &config.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| CollateralError::File {
                path: dir.display().to_string(),
                detail: e.to_string(),
            })?;
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            tcb.load_dir(dir, &paths)?;
            for path in paths.into_iter().filter(|p| !early::TcbSources::owns(p)) {
                let c = Collateral::from_file(&path)?;
                let key = c.key().map_err(|e| CollateralError::File {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                tracing::debug!(path = %path.display(), %key, "loaded offline collateral");
                offline.insert(key, Arc::new(c));
            }
        }
        let pccs = config
            .pccs_url
            .as_deref()
            .map(|url| PccsClient::new(url, config.fetch_timeout))
            .transpose()?;
        let clock = config.clock;
        let disk = match &config.cache_dir {
            Some(dir) if pccs.is_some() => Some(Arc::new(
                disk::DiskCache::open(dir, config.cache_dir_max_bytes, clock, early::NUMBERS_TTL)
                    .map_err(|detail| CollateralError::File {
                    path: dir.display().to_string(),
                    detail,
                })?,
            )),
            _ => None,
        };
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilNextUpdate { clock })
            .build();
        Ok(Self {
            explicit,
            offline,
            pccs,
            cache,
            failures: moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.failure_ttl)
                .build(),
            fetch_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
            tcb,
            disk,
            keys: moka::sync::Cache::builder()
                .max_capacity(KEYS_BUDGET)
                .weigher(|_, k: &CollateralKey| {
                    u32::try_from(KEY_OVERHEAD + k.fmspc.len()).unwrap_or(u32::MAX)
                })
                .build(),
            stats: CollateralStats::default(),
        })
    }

    /// The collateral key of `quote` ([`key_for_quote`]), remembered by its TEE and PCK
    /// certificate chain.
    fn key_of(&self, quote: &Quote) -> Result<CollateralKey, CollateralError> {
        let Some(digest) = chain_digest(quote) else {
            return key_for_quote(quote);
        };
        if let Some(key) = self.keys.get(&digest) {
            return Ok(key);
        }
        let key = key_for_quote(quote)?;
        self.keys.insert(digest, key.clone());
        Ok(key)
    }

    /// Collateral for `quote`, from the first source that has it.
    pub async fn collateral_for(&self, quote: &Quote) -> Result<Arc<Collateral>, CollateralError> {
        self.collateral_by(self.key_of(quote)).await
    }

    /// What a DCAP appraisal of `quote` reads beside it, fetched side by side (a cold
    /// appraisal waits for the slowest, not the sum): its collateral, the early TCB info
    /// ([`Self::early_for`]) and the evaluation numbers ([`Self::eval_numbers_for`]).
    /// The quote's PCK certificate is read once for all three.
    pub async fn everything_for(&self, quote: &Quote) -> ForQuote {
        let key = self.key_of(quote);
        let (collateral, early, numbers) = tokio::join!(
            self.collateral_by(key.clone()),
            async { self.early_for_key(key.as_ref().ok()?).await },
            async { self.eval_numbers_for_key(key.as_ref().ok()?).await },
        );
        ForQuote {
            collateral,
            early,
            numbers,
        }
    }

    /// The collateral of a quote with key `key`: the explicit file whatever the key (even
    /// one that could not be read), else from the first source that has it.
    async fn collateral_by(
        &self,
        key: Result<CollateralKey, CollateralError>,
    ) -> Result<Arc<Collateral>, CollateralError> {
        if let Some(c) = &self.explicit {
            return Ok(c.clone());
        }
        let key = key?;
        if let Some(c) = self.offline.get(&key) {
            return Ok(c.clone());
        }
        let Some(pccs) = &self.pccs else {
            return Err(CollateralError::Offline { key });
        };
        if let Some(c) = self.cache.get(&key).await {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        if let Some(failed) = self.failures.get(&key) {
            self.stats.failures_reused.fetch_add(1, Ordering::Relaxed);
            return Err(failed);
        }
        self.cache
            .try_get_with(key.clone(), async {
                // Fetched before this process started, and still valid.
                if let Some(kept) = self.disk.as_ref().and_then(|d| d.take_standard(&key)) {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(kept);
                }
                // A closed semaphore never happens (it is never closed).
                let _slot = self.fetch_slots.acquire().await.ok();
                self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                let fetched = pccs
                    .fetch(&key)
                    .await
                    .and_then(Collateral::new)
                    .and_then(|c| {
                        // A PCCS that answers with another platform's collateral would
                        // otherwise have it cached under this key until it expires.
                        let got = c.key()?;
                        if got == key {
                            Ok(c)
                        } else {
                            Err(CollateralError::Fetch {
                                url: pccs.base_url().to_string(),
                                detail: format!("the PCCS answered with the collateral of {got}"),
                                key: key.clone(),
                            })
                        }
                    });
                match &fetched {
                    Err(e) => {
                        self.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                        self.failures.insert(key.clone(), e.clone());
                    }
                    Ok(c) => {
                        if let Some(d) = &self.disk {
                            d.store_standard(&key, c);
                        }
                    }
                }
                fetched.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Drop every cached collateral set and remembered failure (offline and explicit
    /// sources stay).
    pub fn clear_cache(&self) {
        self.cache.invalidate_all();
        self.failures.invalidate_all();
        self.tcb.clear();
    }

    /// The earliest `not_after` (unix seconds) of the collateral sets held now, by source:
    /// `offline` (the explicit file and the offline directory, loaded once and never
    /// refreshed) and `pccs` (the cache of fetched collateral, entries past their next
    /// update not counted). A source that holds nothing is left out. Read at scrape
    /// time, so evictions need no tracking.
    pub fn earliest_expiry(&self) -> Vec<(&'static str, u64)> {
        let offline = self
            .explicit
            .iter()
            .chain(self.offline.values())
            .map(|c| c.window.not_after)
            .min();
        let pccs = self.cache.iter().map(|(_, c)| c.window.not_after).min();
        [("offline", offline), ("pccs", pccs)]
            .into_iter()
            .filter_map(|(source, at)| at.map(|at| (source, at)))
            .collect()
    }

    /// The `early` TCB info of `quote`'s platform (Intel's next TCB evaluation data set),
    /// when a source has it. Never an error: it only forecasts; a failure is logged and
    /// remembered for the failure TTL.
    pub async fn early_for(&self, quote: &Quote) -> Option<Arc<crate::tcb::SignedTcbInfo>> {
        self.early_for_key(&self.key_of(quote).ok()?).await
    }

    async fn early_for_key(&self, key: &CollateralKey) -> Option<Arc<crate::tcb::SignedTcbInfo>> {
        self.tcb
            .early(
                key,
                self.network_for(key),
                &self.fetch_slots,
                &self.stats,
                self.disk.as_ref(),
            )
            .await
    }

    /// The PCCS to ask for `key`'s lifecycle documents: only when its collateral comes
    /// from there too. Collateral given as a file or directory is an offline appraisal,
    /// and it stays offline.
    fn network_for(&self, key: &CollateralKey) -> Option<&PccsClient> {
        if self.explicit.is_some() || self.offline.contains_key(key) {
            None
        } else {
            self.pccs.as_ref()
        }
    }

    /// The list of TCB evaluation data numbers for `quote`'s TEE, with their recovery
    /// dates, when a source has it (as [`Self::early_for`], never an error).
    pub async fn eval_numbers_for(&self, quote: &Quote) -> Option<Arc<crate::tcb::SignedList>> {
        self.eval_numbers_for_key(&self.key_of(quote).ok()?).await
    }

    async fn eval_numbers_for_key(
        &self,
        key: &CollateralKey,
    ) -> Option<Arc<crate::tcb::SignedList>> {
        self.tcb
            .numbers(
                key,
                self.network_for(key),
                &self.fetch_slots,
                &self.stats,
                self.disk.as_ref(),
            )
            .await
    }
}

/// What [`CollateralProvider::everything_for`] found for a quote.
#[derive(Debug)]
pub struct ForQuote {
    /// Its collateral, or why there is none.
    pub collateral: Result<Arc<Collateral>, CollateralError>,
    /// The early TCB info of its platform, when a source has it.
    pub early: Option<Arc<crate::tcb::SignedTcbInfo>>,
    /// The TCB evaluation numbers list of its TEE, when a source has it.
    pub numbers: Option<Arc<crate::tcb::SignedList>>,
}

/// moka expiry: each entry lives until its collateral's earliest next update.
struct UntilNextUpdate {
    clock: Clock,
}

impl moka::Expiry<CollateralKey, Arc<Collateral>> for UntilNextUpdate {
    fn expire_after_create(
        &self,
        _key: &CollateralKey,
        value: &Arc<Collateral>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.window.not_after.saturating_sub(self.clock.now()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(p)
    }

    use crate::recorded::intel_quote as recorded_quote;

    #[test]
    fn a_set_reads_its_certificates_once() {
        let (_, c) = crate::recorded::intel();
        assert!(
            c.certificates_until.get().is_none(),
            "read on first use only"
        );
        let until = c.certificates_until().unwrap();
        assert_eq!(c.certificates_until.get(), Some(&Some(until)));
        // A clone shares what was read.
        assert_eq!(c.clone().certificates_until.get(), Some(&Some(until)));
    }

    #[test]
    fn window_of_recorded_collateral_matches_provenance() {
        // testdata/README.md: tdx_quote window 1750329147 – 1752919235.
        let c = Collateral::from_file(&testdata("dcap/tdx_quote_collateral.json")).unwrap();
        assert_eq!(
            c.window,
            CollateralWindow {
                not_before: 1_750_329_147,
                not_after: 1_752_919_235
            }
        );
        let key = c.key().unwrap();
        assert_eq!(key.tee, TeeType::Tdx);
    }

    #[test]
    fn a_set_s_tcb_info_is_parsed_once_and_judges_as_the_text_does() {
        let quote = recorded_quote();
        let c = Collateral::from_file(&testdata("dcap/tdx_quote_collateral.json")).unwrap();
        let copy = c.clone();
        let parsed = c.parsed_tcb_info().unwrap();
        assert!(std::ptr::eq(parsed, copy.parsed_tcb_info().unwrap()));
        let platform = crate::tcb::Platform::of(&quote).unwrap();
        assert_eq!(
            parsed.standing(&platform).unwrap(),
            crate::tcb::standing(&c.data.tcb_info, &platform).unwrap()
        );
        // A TCB Info that does not parse is an error every time, never a panic.
        let mut data = c.data.clone();
        data.tcb_info.truncate(10);
        let broken = Collateral {
            data,
            tcb_info: Arc::default(),
            certificates_until: Arc::default(),
            ..c.clone()
        };
        for _ in 0..2 {
            assert!(matches!(
                broken.parsed_tcb_info(),
                Err(TcbError::Malformed { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_platform_s_collateral_key_is_read_once() {
        let quote = recorded_quote();
        let provider = CollateralProvider::new(&CollateralConfig {
            file: Some(testdata("dcap/tdx_quote_collateral.json")),
            pccs_url: None,
            ..CollateralConfig::default()
        })
        .unwrap();
        for _ in 0..3 {
            let found = provider.everything_for(&quote).await;
            assert!(found.collateral.is_ok());
        }
        provider.keys.run_pending_tasks();
        assert_eq!(provider.keys.entry_count(), 1);
        let digest = chain_digest(&quote).unwrap();
        assert_eq!(
            provider.keys.get(&digest),
            Some(key_for_quote(&quote).unwrap())
        );
        assert_eq!(
            provider.key_of(&quote).unwrap(),
            key_for_quote(&quote).unwrap()
        );
    }

    #[test]
    fn quote_key_matches_its_collateral_key() {
        let quote = recorded_quote();
        let c = Collateral::from_file(&testdata("dcap/tdx_quote_collateral.json")).unwrap();
        assert_eq!(key_for_quote(&quote).unwrap(), c.key().unwrap());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339("t", "1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(rfc3339("t", "2025-06-19T10:16:03Z").unwrap(), 1_750_328_163);
        assert!(rfc3339("t", "2025-13-19T10:16:03Z").is_err());
        assert!(rfc3339("t", "yesterday").is_err());
    }
}
