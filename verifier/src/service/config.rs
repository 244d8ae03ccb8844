//! `teesql-verifier serve` configuration: a TOML file, overridden by environment
//! variables, overridden by flags. Every bad setting is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{DecisionLog, DecisionService, LogTarget, Metrics, ServiceOptions};
use crate::Clock;
use crate::appraise::Appraiser;
use crate::backend::dcap::{DcapBackend, TrustRoot};
use crate::collateral::{CollateralConfig, CollateralProvider, INTEL_PCS_URL};
use crate::policy::PolicySet;

/// Every setting, each optional: flags and environment (clap) and the file (TOML) fill
/// the same shape, then merge.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "TEESQL_VERIFIER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// HTTP address for /metrics and /healthz [default: off].
    #[arg(long, env = "TEESQL_VERIFIER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Policy profile directory; repeat to merge profiles [default: policies/teesql].
    #[arg(
        long = "policy-dir",
        env = "TEESQL_VERIFIER_POLICY_DIR",
        value_name = "DIR",
        value_delimiter = ','
    )]
    #[serde(alias = "policy_dir")]
    pub policy_dirs: Option<Vec<PathBuf>>,
    /// Root CA (DER or PEM) to verify quotes against instead of Intel's.
    #[arg(long, env = "TEESQL_VERIFIER_TRUST_ROOT", value_name = "FILE")]
    pub trust_root: Option<PathBuf>,
    /// A development root (teesql-dev's seeded PKI) to verify quotes against; claims say
    /// `tdx.root = "dev"`, which only the development profile accepts.
    #[arg(long, env = "TEESQL_VERIFIER_DEV_TRUST_ROOT", value_name = "FILE")]
    pub dev_trust_root: Option<PathBuf>,
    /// PCCS or Intel PCS for collateral [default: Intel PCS].
    #[arg(long, env = "PCCS_URL", value_name = "URL")]
    pub pccs_url: Option<String>,
    /// Never fetch collateral over the network.
    #[arg(long, env = "TEESQL_VERIFIER_OFFLINE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub offline: Option<bool>,
    /// Directory of collateral JSON files, used before the PCCS.
    #[arg(long, env = "TEESQL_VERIFIER_COLLATERAL_DIR", value_name = "DIR")]
    pub collateral_dir: Option<PathBuf>,
    /// One collateral JSON file used for every quote (testing).
    #[arg(long, env = "TEESQL_VERIFIER_COLLATERAL", value_name = "FILE")]
    pub collateral_file: Option<PathBuf>,
    /// Time limit to fetch one collateral set from the PCCS, seconds [default: 10].
    #[arg(long, env = "TEESQL_VERIFIER_FETCH_TIMEOUT", value_name = "SECS")]
    pub fetch_timeout_secs: Option<u64>,
    /// Decision log: "stdout", "off", or a file to append to [default: stdout].
    #[arg(long, env = "TEESQL_VERIFIER_DECISION_LOG", value_name = "TARGET")]
    pub decision_log: Option<String>,
    /// Memory for cached appraisals of verified quotes, MiB; evidence without a verified
    /// quote gets a sixteenth of it, at least 1 MiB [default: 64].
    #[arg(long, env = "TEESQL_VERIFIER_CACHE_MAX_MIB", value_name = "MIB")]
    pub cache_max_mib: Option<u64>,
    /// Replaced by cache_max_mib (the cache is bounded in bytes); kept to say so.
    #[arg(skip)]
    pub cache_capacity: Option<u64>,
    /// Longest an appraisal stays cached, seconds (never past its collateral) [default: 3600].
    #[arg(long, env = "TEESQL_VERIFIER_CACHE_TTL", value_name = "SECS")]
    pub cache_max_ttl_secs: Option<u64>,
    /// Time limit of one policy evaluation, milliseconds [default: 250].
    #[arg(long, env = "TEESQL_VERIFIER_EVAL_TIMEOUT_MS", value_name = "MS")]
    pub eval_timeout_ms: Option<u64>,
    /// Time limit of one request, seconds [default: 30].
    #[arg(long, env = "TEESQL_VERIFIER_REQUEST_TIMEOUT", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Appraise as of this fixed unix time instead of the clock (recorded evidence, tests).
    #[arg(long, env = "TEESQL_VERIFIER_NOW", value_name = "UNIX")]
    pub now: Option<u64>,
}

macro_rules! overlay {
    ($hi:expr, $lo:expr, $($f:ident),*) => {
        ServeSettings { $($f: $hi.$f.or($lo.$f),)* }
    };
}

impl ServeSettings {
    /// `self` (flags and environment) over `file`.
    pub fn over(self, file: ServeSettings) -> ServeSettings {
        overlay!(
            self,
            file,
            listen,
            metrics_listen,
            policy_dirs,
            trust_root,
            dev_trust_root,
            pccs_url,
            offline,
            collateral_dir,
            collateral_file,
            fetch_timeout_secs,
            decision_log,
            cache_max_mib,
            cache_capacity,
            cache_max_ttl_secs,
            eval_timeout_ms,
            request_timeout_secs,
            now
        )
    }

    /// Read a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Settings checked and resolved, with defaults applied.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub policy_dirs: Vec<PathBuf>,
    pub trust_root: TrustRoot,
    pub collateral: CollateralConfig,
    pub decision_log: LogTarget,
    pub options: ServiceOptions,
    pub eval_limit: Duration,
    pub request_timeout: Duration,
}

impl ServeConfig {
    /// Check every setting; all problems are returned together.
    pub fn resolve(s: ServeSettings) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let addr = |name: &str, v: &str, errors: &mut Vec<String>| {
            v.parse::<SocketAddr>()
                .map_err(|e| errors.push(format!("{name} {v:?}: {e} (expected ip:port)")))
                .ok()
        };
        let listen = addr(
            "listen",
            s.listen.as_deref().unwrap_or("127.0.0.1:50051"),
            &mut errors,
        );
        let metrics_listen = s
            .metrics_listen
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "off")
            .and_then(|v| addr("metrics_listen", v, &mut errors));
        let policy_dirs = s
            .policy_dirs
            .unwrap_or_else(|| vec![PathBuf::from("policies/teesql")]);
        for d in &policy_dirs {
            if !d.is_dir() {
                errors.push(format!("policy_dir {}: not a directory", d.display()));
            }
        }
        let trust_root = match (&s.trust_root, &s.dev_trust_root) {
            (Some(_), Some(_)) => {
                errors.push("trust_root and dev_trust_root: give one, not both".into());
                None
            }
            (Some(p), None) => TrustRoot::from_file(p)
                .map_err(|e| errors.push(e.to_string()))
                .ok(),
            (None, Some(p)) => TrustRoot::development_from_file(p)
                .map_err(|e| errors.push(e.to_string()))
                .ok(),
            (None, None) => Some(TrustRoot::intel()),
        };
        let pccs_url = s.pccs_url.unwrap_or_else(|| INTEL_PCS_URL.to_string());
        if !(pccs_url.starts_with("http://") || pccs_url.starts_with("https://")) {
            errors.push(format!("pccs_url {pccs_url:?}: must be an http(s) URL"));
        }
        for (name, p) in [
            ("collateral_dir", &s.collateral_dir),
            ("collateral_file", &s.collateral_file),
        ] {
            if let Some(p) = p
                && !p.exists()
            {
                errors.push(format!("{name} {}: does not exist", p.display()));
            }
        }
        let positive = |name: &str, v: Option<u64>, default: u64, errors: &mut Vec<String>| {
            let v = v.unwrap_or(default);
            if v == 0 {
                errors.push(format!("{name}: must be greater than 0"));
            }
            v
        };
        let fetch_timeout = positive("fetch_timeout_secs", s.fetch_timeout_secs, 10, &mut errors);
        let cache_mib = positive("cache_max_mib", s.cache_max_mib, 64, &mut errors);
        if s.cache_capacity.is_some() {
            errors.push(
                "cache_capacity: replaced by cache_max_mib (the appraisal cache is bounded in bytes)"
                    .into(),
            );
        }
        let cache_ttl = positive(
            "cache_max_ttl_secs",
            s.cache_max_ttl_secs,
            3600,
            &mut errors,
        );
        let eval_ms = positive("eval_timeout_ms", s.eval_timeout_ms, 250, &mut errors);
        let request_timeout = positive(
            "request_timeout_secs",
            s.request_timeout_secs,
            30,
            &mut errors,
        );
        let decision_log: LogTarget = s
            .decision_log
            .as_deref()
            .unwrap_or("stdout")
            .parse()
            .unwrap_or(LogTarget::Stdout);
        if let LogTarget::File(p) = &decision_log
            && let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty())
            && !parent.is_dir()
        {
            errors.push(format!(
                "decision_log {}: directory {} does not exist",
                p.display(),
                parent.display()
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let clock = s.now.map(Clock::Fixed).unwrap_or(Clock::System);
        match (listen, trust_root) {
            (Some(listen), Some(trust_root)) => Ok(Self {
                listen,
                metrics_listen,
                policy_dirs,
                trust_root,
                collateral: CollateralConfig {
                    file: s.collateral_file,
                    dir: s.collateral_dir,
                    pccs_url: (!s.offline.unwrap_or(false)).then_some(pccs_url),
                    fetch_timeout: Duration::from_secs(fetch_timeout),
                    clock,
                    ..CollateralConfig::default()
                },
                decision_log,
                options: ServiceOptions {
                    cache_max_bytes: cache_mib.saturating_mul(1 << 20),
                    cache_max_ttl: Duration::from_secs(cache_ttl),
                    clock,
                },
                eval_limit: Duration::from_millis(eval_ms),
                request_timeout: Duration::from_secs(request_timeout),
            }),
            _ => Err(vec!["invalid configuration".into()]),
        }
    }

    /// Build the service: load policies, collateral sources, the decision log.
    /// Needs a tokio runtime (the decision log writer).
    pub fn build(&self) -> Result<Arc<DecisionService>, Vec<String>> {
        let policies =
            PolicySet::load(&self.policy_dirs, self.eval_limit).map_err(|e| vec![e.to_string()])?;
        let collateral =
            Arc::new(CollateralProvider::new(&self.collateral).map_err(|e| vec![e.to_string()])?);
        let metrics = Arc::new(Metrics::new().with_collateral(collateral.clone()));
        let log = DecisionLog::start(&self.decision_log)
            .map_err(|e| vec![format!("decision_log: {e}")])?;
        let backend = DcapBackend::new(self.trust_root.clone(), collateral);
        Ok(Arc::new(DecisionService::new(
            Appraiser::new(Arc::new(backend)),
            policies,
            &self.options,
            log,
            metrics,
        )))
    }
}
