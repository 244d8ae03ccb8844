//! What decisions rest on and where they go: collateral sources, the limits one caller
//! can make the service spend, the decision log, the signing key, the epochs file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teesql_proto::settings::Problems;

use super::settings::{ServeSettings, defaults};
use crate::Clock;
use crate::collateral::{CollateralConfig, INTEL_PCS_URL};
use crate::service::LogTarget;
use crate::service::token::DecisionSigner;

/// How SEV-SNP evidence is verified: the development ARK, the certificate directory,
/// KDS (AMD's unless offline or told otherwise), asked within the collateral's
/// `fetch_timeout_secs`.
pub(super) fn snp(
    s: &ServeSettings,
    fetch_timeout: Duration,
    p: &mut Problems,
) -> crate::snp::SnpConfig {
    must_exist(
        p,
        [
            ("snp_dev_ark", &s.snp_dev_ark),
            ("snp_cert_dir", &s.snp_cert_dir),
        ],
    );
    let kds_url = match (s.offline.unwrap_or(false), &s.kds_url) {
        (true, _) => None,
        (false, Some(u)) => Some(u.clone()),
        (false, None) => Some(crate::snp::kds::AMD_KDS_URL.to_string()),
    };
    if let Some(u) = &kds_url {
        must_be_http(p, "kds_url", u);
    }
    crate::snp::SnpConfig {
        dev_ark: s.snp_dev_ark.clone(),
        cert_dir: s.snp_cert_dir.clone(),
        kds_url,
        fetch_timeout,
        cache_bytes: 4 << 20,
    }
}

/// Each path given must exist.
fn must_exist<'a>(
    p: &mut Problems,
    paths: impl IntoIterator<Item = (&'a str, &'a Option<PathBuf>)>,
) {
    for (name, path) in paths {
        if let Some(path) = path
            && !path.exists()
        {
            p.push(format!("{name} {}: does not exist", path.display()));
        }
    }
}

/// A URL the verifier fetches from must be http(s).
fn must_be_http(p: &mut Problems, name: &str, url: &str) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        p.push(format!("{name} {url:?}: must be an http(s) URL"));
    }
}

/// Where collateral comes from: the offline file and directory, then the PCCS.
pub(super) fn collateral(s: &ServeSettings, clock: Clock, p: &mut Problems) -> CollateralConfig {
    let pccs_url = s
        .pccs_url
        .clone()
        .unwrap_or_else(|| INTEL_PCS_URL.to_string());
    must_be_http(p, "pccs_url", &pccs_url);
    must_exist(
        p,
        [
            ("collateral_dir", &s.collateral_dir),
            ("collateral_file", &s.collateral_file),
        ],
    );
    let fetch_timeout = p.at_least(
        "fetch_timeout_secs",
        s.fetch_timeout_secs.unwrap_or(defaults::FETCH_TIMEOUT_SECS),
        1,
    );
    let cache_mib = p.at_least(
        "collateral_cache_mib",
        s.collateral_cache_mib
            .unwrap_or(defaults::COLLATERAL_CACHE_MIB),
        1,
    );
    if let Some(dir) = &s.collateral_cache_dir {
        // The cache removes its oldest files past its bound: it must own its directory.
        let same = |other: &Option<std::path::PathBuf>| {
            other.as_ref().is_some_and(|o| {
                o == dir
                    || matches!((o.canonicalize(), dir.canonicalize()), (Ok(a), Ok(b)) if a == b)
            })
        };
        for (name, other) in [
            ("collateral_dir", &s.collateral_dir),
            ("state_dir", &s.state_dir),
        ] {
            if same(other) {
                p.push(format!(
                    "collateral_cache_dir {}: the same directory as {name}; give the cache a directory of its own",
                    dir.display()
                ));
            }
        }
    }
    if let Some(dir) = &s.collateral_cache_dir
        && dir.exists()
        && !dir.is_dir()
    {
        p.push(format!(
            "collateral_cache_dir {}: not a directory",
            dir.display()
        ));
    }
    CollateralConfig {
        file: s.collateral_file.clone(),
        dir: s.collateral_dir.clone(),
        pccs_url: (!s.offline.unwrap_or(false)).then_some(pccs_url),
        fetch_timeout: Duration::from_secs(fetch_timeout),
        clock,
        cache_dir: s.collateral_cache_dir.clone(),
        cache_dir_max_bytes: cache_mib.saturating_mul(1 << 20),
        ..CollateralConfig::default()
    }
}

/// What one caller can make the service spend: memory for appraisals, time per
/// evaluation and request, message size and concurrency.
pub(super) struct Limits {
    pub(super) cache_mib: u64,
    pub(super) cache_ttl: u64,
    pub(super) eval_ms: u64,
    pub(super) request_timeout: u64,
    pub(super) max_message_kib: u64,
    pub(super) concurrency: u64,
}

impl Limits {
    pub(super) fn check(s: &ServeSettings, p: &mut Problems) -> Self {
        let mut positive =
            |name: &str, v: Option<u64>, default: u64| p.at_least(name, v.unwrap_or(default), 1);
        let cache_mib = positive("cache_max_mib", s.cache_max_mib, defaults::CACHE_MAX_MIB);
        let cache_ttl = positive(
            "cache_max_ttl_secs",
            s.cache_max_ttl_secs,
            defaults::CACHE_MAX_TTL_SECS,
        );
        let eval_ms = positive(
            "eval_timeout_ms",
            s.eval_timeout_ms,
            defaults::EVAL_TIMEOUT_MS,
        );
        let request_timeout = positive(
            "request_timeout_secs",
            s.request_timeout_secs,
            defaults::REQUEST_TIMEOUT_SECS,
        );
        let max_message_kib = positive(
            "max_message_kib",
            s.max_message_kib,
            defaults::MAX_MESSAGE_KIB,
        );
        let concurrency = positive(
            "concurrency_per_connection",
            s.concurrency_per_connection,
            defaults::CONCURRENCY_PER_CONNECTION,
        );
        if s.cache_capacity.is_some() {
            p.report(
                "cache_capacity",
                "replaced by cache_max_mib (the appraisal cache is bounded in bytes)",
            );
        }
        Self {
            cache_mib,
            cache_ttl,
            eval_ms,
            request_timeout,
            max_message_kib,
            concurrency,
        }
    }
}

/// Where decisions are logged; a file's directory must exist.
pub(super) fn decision_log(s: &ServeSettings, p: &mut Problems) -> Option<LogTarget> {
    let decision_log: Option<LogTarget> = p.parse(
        "decision_log",
        s.decision_log.as_deref().unwrap_or(defaults::DECISION_LOG),
    );
    if let Some(LogTarget::File(path)) = &decision_log
        && let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !parent.is_dir()
    {
        p.push(format!(
            "decision_log {}: directory {} does not exist",
            path.display(),
            parent.display()
        ));
    }
    decision_log
}

/// The key that signs decisions, unless signing is off.
pub(super) fn signer(s: &ServeSettings, p: &mut Problems) -> Option<Arc<DecisionSigner>> {
    let issuer = s
        .token_issuer
        .clone()
        .unwrap_or_else(|| crate::service::token::DEFAULT_ISSUER.to_string());
    if s.sign_decisions.unwrap_or(true) {
        let made = match &s.signing_key {
            Some(path) => DecisionSigner::from_pem_file(path, &issuer),
            None => DecisionSigner::generate(&issuer),
        };
        made.map(Arc::new).map_err(|e| p.push(e)).ok()
    } else {
        None
    }
}

/// The manifest epochs file in the state directory, when there is one.
pub(super) fn manifest_epochs_file(s: &ServeSettings, p: &mut Problems) -> Option<PathBuf> {
    // The state directory must exist and its epoch file, if any, be readable: a
    // corrupt one is a start-up error, not silently forgotten protection.
    s.state_dir.as_ref().and_then(|dir| {
            if !dir.is_dir() {
                p.push(format!(
                    "state_dir {}: not a directory (create it; the verifier keeps manifest epochs there)",
                    dir.display()
                ));
                return None;
            }
            let file = dir.join("manifest-epochs.json");
            crate::service::epochs::Epochs::open(Some(file.clone()))
                .map_err(|e| p.push(format!("state_dir: {e}")))
                .ok()
                .map(|_| file)
        })
}
