//! AMD's Key Distribution Service: the ASK, the VCEK of a chip at a TCB, and the CRL,
//! for SEV-SNP evidence that carries no certificates (dstack's guest collector sends an
//! empty `cert_chain` when the host gave the guest no certificate table).
//!
//! Endpoints (AMD #57230; go-sev-guest `kds/kds.go`; dstack `sev-snp-qvl`; notes §5):
//! - `GET {base}/vcek/v1/{Milan|Genoa|Turin}/cert_chain`: PEM, the ASK then the ARK (the
//!   ARK is ignored: the pinned one decides);
//! - `GET {base}/vcek/v1/{product}/{hwID hex}?blSPL=…&teeSPL=…&snpSPL=…&ucodeSPL=…`
//!   (Turin: `fmcSPL` first and an 8-byte hwID): the VCEK, DER, values from REPORTED_TCB
//!   in decimal;
//! - `GET {base}/vcek/v1/{product}/crl`: the ARK-signed CRL, DER.
//!
//! KDS throttles (about one identical request per 10 s per client, answered 429), so
//! nothing here is fetched per request: VCEKs are immutable per chip and TCB and cached
//! until the cache's byte bound evicts them, the ASK for a day, the CRL for an hour; a
//! failure is remembered for 30 s; concurrent requests for the same thing share one fetch;
//! and all requests together stay within a budget (16 at once, then one per 2 s), so
//! reports naming made-up chips cannot turn into a stream of requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::SnpError;
use super::certs::{AskVcek, MAX_AMD_CERT_LEN, MAX_AMD_CRL_LEN};
use super::report::{Product, Report};

/// AMD's KDS.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";

/// How long a fetched ASK is kept.
const ASK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a fetched CRL is kept (AMD's are valid for weeks; revocations should show
/// within the hour).
const CRL_TTL: Duration = Duration::from_secs(3600);
/// How long a failed fetch is answered from memory.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Requests to KDS at most in a burst, and then at most one per [`REQUEST_EVERY`]: any
/// peer can send a report naming a chip no one has seen, so without a budget a stream of
/// made-up chips would become a stream of KDS requests (and AMD throttles the verifier's
/// address, legitimate fetches included). Past the budget a fetch fails at once, and is
/// remembered like any failure.
const REQUEST_BURST: f64 = 16.0;
const REQUEST_EVERY: Duration = Duration::from_secs(2);

/// What a VCEK is filed under: its product, chip (hwID) and TCB (REPORTED_TCB).
type VcekKey = (Product, Vec<u8>, [u8; 8]);

/// A KDS client with its caches.
#[derive(Debug)]
pub struct Kds {
    base: String,
    http: reqwest::Client,
    /// `(product, hwID, REPORTED_TCB)` → VCEK DER, bounded in bytes.
    vceks: moka::future::Cache<VcekKey, Arc<Vec<u8>>>,
    /// product → ASK DER.
    asks: moka::future::Cache<Product, Arc<Vec<u8>>>,
    /// product → CRL DER.
    crls: moka::future::Cache<Product, Arc<Vec<u8>>>,
    /// URL → why it failed, for [`FAILURE_TTL`].
    failures: moka::sync::Cache<String, String>,
    /// HTTP requests sent (tests and metrics: proof nothing is fetched per request).
    requests: AtomicU64,
    /// The request budget: tokens left and when they were counted.
    budget: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Kds {
    /// A client for the KDS at `base` (AMD's: [`AMD_KDS_URL`]; a trailing `/vcek/v1` is
    /// dropped), each request bounded by `timeout`, the VCEK cache by `max_bytes`.
    pub fn new(base: &str, timeout: Duration, max_bytes: u64) -> Result<Self, SnpError> {
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/vcek/v1")
            .to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SnpError::Unsupported(format!(
                "KDS URL {base:?} is not http(s)"
            )));
        }
        let http = crate::http::client_builder(timeout)
            .build()
            .map_err(|e| SnpError::Unsupported(format!("HTTP client: {e}")))?;
        let weigh = |_: &_, v: &Arc<Vec<u8>>| u32::try_from(v.len()).unwrap_or(u32::MAX);
        Ok(Self {
            base,
            http,
            vceks: moka::future::Cache::builder()
                .max_capacity(max_bytes.max(MAX_AMD_CERT_LEN as u64))
                .weigher(weigh)
                .build(),
            asks: moka::future::Cache::builder()
                .max_capacity(8)
                .time_to_live(ASK_TTL)
                .build(),
            crls: moka::future::Cache::builder()
                .max_capacity(8)
                .time_to_live(CRL_TTL)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(256)
                .time_to_live(FAILURE_TTL)
                .build(),
            requests: AtomicU64::new(0),
            budget: std::sync::Mutex::new((REQUEST_BURST, std::time::Instant::now())),
        })
    }

    /// Take one request from the budget; `false` when it is spent.
    fn spend(&self) -> bool {
        let Ok(mut budget) = self.budget.lock() else {
            return false;
        };
        let (tokens, at) = &mut *budget;
        let now = std::time::Instant::now();
        let earned = now.duration_since(*at).as_secs_f64() / REQUEST_EVERY.as_secs_f64();
        *tokens = (*tokens + earned).min(REQUEST_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The ASK and the VCEK that signs `report` on `product`.
    pub async fn ask_vcek(&self, product: Product, report: &Report) -> Result<AskVcek, SnpError> {
        let p = product.as_str();
        let chip = report.chip_id();
        let hw_id = match product {
            Product::Milan | Product::Genoa => chip.to_vec(),
            Product::Turin => chip[..8].to_vec(),
        };
        let tcb = report.reported_tcb();
        let t = tcb.parts(product);
        let fmc = t.fmc.map(|f| format!("fmcSPL={f}&")).unwrap_or_default();
        let vcek_url = format!(
            "{}/vcek/v1/{p}/{}?{fmc}blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            self.base,
            hex::encode(&hw_id),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        );
        let vcek = self
            .vceks
            .try_get_with((product, hw_id, tcb.0), async {
                self.get(&vcek_url, MAX_AMD_CERT_LEN)
                    .await
                    .map(Arc::new)
                    .map_err(SnpError::NoVcek)
            })
            .await
            .map_err(|e| (*e).clone())?;
        let chain_url = format!("{}/vcek/v1/{p}/cert_chain", self.base);
        let ask = self
            .asks
            .try_get_with(product, async {
                let body = self
                    .get(&chain_url, 2 * MAX_AMD_CERT_LEN)
                    .await
                    .map_err(SnpError::NoVcek)?;
                first_pem_certificate(&chain_url, &body).map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(AskVcek {
            ask: ask.to_vec(),
            vcek: vcek.to_vec(),
        })
    }

    /// The product's CRL (DER, not yet checked: [`super::certs::check_crl`] does), or
    /// why KDS did not give it.
    pub async fn crl(&self, product: Product) -> Result<Arc<Vec<u8>>, String> {
        let url = format!("{}/vcek/v1/{}/crl", self.base, product.as_str());
        self.crls
            .try_get_with(product, async {
                self.get(&url, MAX_AMD_CRL_LEN).await.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The body at `url`, or why not (`KDS <url>: …`).
    async fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        if let Some(e) = self.failures.get(url) {
            return Err(e);
        }
        let result = self.fetch(url, limit).await;
        if let Err(e) = &result {
            tracing::warn!(%url, error = %e, "KDS fetch failed");
            self.failures.insert(url.to_string(), e.clone());
        }
        result
    }

    async fn fetch(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        let failed = |m: String| format!("KDS {url}: {m}");
        if !self.spend() {
            return Err(failed(format!(
                "not asked: more than {REQUEST_BURST} requests in a burst or one per {}s",
                REQUEST_EVERY.as_secs()
            )));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| failed(crate::http::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(failed(format!("HTTP {}", resp.status())));
        }
        crate::http::read_bounded(&mut resp, limit)
            .await
            .map_err(|e| match e {
                crate::http::BodyError::Transport(e) => failed(crate::http::error_chain(&e)),
                crate::http::BodyError::TooLarge => failed(format!("larger than {limit} bytes")),
            })
    }
}

/// The first certificate of a PEM bundle (KDS `cert_chain`: the ASK).
pub(crate) fn first_pem_certificate(what: &str, bundle: &[u8]) -> Result<Vec<u8>, SnpError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(bundle)
        .map_err(|e| SnpError::Malformed(format!("{what}: no PEM ASK: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(SnpError::Malformed(format!(
            "{what}: the first PEM block is not a CERTIFICATE"
        )));
    }
    Ok(pem.contents)
}

impl Kds {
    /// HTTP requests sent so far (tests and metrics: proof nothing is fetched per
    /// request).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}
