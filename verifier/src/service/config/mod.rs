//! `teesql-verifier serve` configuration: a TOML file, overridden by environment
//! variables, overridden by flags. Every bad setting is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teesql_proto::settings::{Env, Problems};

use crate::Clock;
use crate::backend::dcap::TrustRoot;
use crate::backend::{BackendConfig, BackendSettings, resolve_backends};
use crate::policy::PolicySet;
use crate::service::{DecisionLog, DecisionService, LogTarget, Metrics, ServiceOptions};

mod decisions;
mod endpoint;
mod settings;

use decisions::{Limits, collateral, decision_log, manifest_epochs_file, signer, snp};
use endpoint::Endpoint;
pub use endpoint::{AdminAccess, Listen, RaTlsConfig};
pub use settings::{ServeSettings, defaults};

/// Settings checked and resolved, with defaults applied.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where gRPC is served (`listen`, default `127.0.0.1:50051`).
    pub listen: Listen,
    /// TLS for gRPC (an operator certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for gRPC with an RA-TLS certificate from the guest agent (set up by
    /// `server::Verifier::attest`).
    pub ra_tls: Option<RaTlsConfig>,
    /// Who may call PolicyAdmin: the token in `admin_token_file`, else local callers only.
    pub admin: AdminAccess,
    /// Serve gRPC server reflection (`reflection`, default true).
    pub reflection: bool,
    /// Largest request accepted, bytes (`max_message_kib` × 1024; default 4 MiB).
    pub max_message_bytes: usize,
    /// Requests served at once on one connection (`concurrency_per_connection`, default 64).
    pub concurrency_per_connection: usize,
    /// Signs decisions, unless turned off.
    pub signer: Option<Arc<super::token::DecisionSigner>>,
    /// Where `/metrics`, `/healthz` and the JWKS are served (`metrics_listen`); `None`
    /// when unset, empty or `off`.
    pub metrics_listen: Option<SocketAddr>,
    /// Policy profile directories, merged in order (`policy_dir`, default `policies/teesql`);
    /// empty when the policies come from a bundle.
    pub policy_dirs: Vec<PathBuf>,
    /// An OPA bundle to take the policies from instead (`policy_bundle`,
    /// `policy_bundle_url`, `bundle_verification_key`).
    pub bundle: Option<Arc<crate::service::bundles::BundleSource>>,
    /// Quote backends, trust root, collateral sources and platform cache (`backend`,
    /// `trust_root`, `pccs_url`, `offline`, `collateral_*`, `platform_cache_kib`, `ita_*`).
    pub backend: BackendConfig,
    /// How SEV-SNP reports are verified (`snp_dev_ark`, `snp_cert_dir`, `kds_url`).
    pub snp: crate::snp::SnpConfig,
    /// Where decisions are logged (`decision_log`: stdout, off or a file; default stdout).
    pub decision_log: LogTarget,
    /// Appraisal cache size and lifetime, clock and manifest epochs file
    /// (`cache_max_mib`, `cache_max_ttl_secs`, `now`, `state_dir`).
    pub options: ServiceOptions,
    /// Time limit of one policy evaluation (`eval_timeout_ms`, default 250 ms).
    pub eval_limit: Duration,
    /// Time limit of one gRPC request (`request_timeout_secs`, default 30 s).
    pub request_timeout: Duration,
}

/// The bundle settings: at most one of `policy_bundle` and `policy_bundle_url`, the
/// verification key read now, the poll interval bounded.
fn bundle_source(
    s: &ServeSettings,
    p: &mut Problems,
) -> Option<crate::service::bundles::BundleSource> {
    use crate::policy::bundle::BundleKey;
    use crate::service::bundles::{BundleLocation, BundleSource};
    let location = match (&s.policy_bundle, &s.policy_bundle_url) {
        (Some(_), Some(_)) => {
            p.push("policy_bundle and policy_bundle_url: give one".to_string());
            return None;
        }
        (Some(f), None) => {
            if !f.is_file() {
                p.push(format!("policy_bundle {}: not a file", f.display()));
            }
            BundleLocation::File(f.clone())
        }
        (None, Some(u)) => {
            let shown = BundleLocation::Url(u.clone()).to_string();
            if u.starts_with("http://") && s.bundle_verification_key.is_none() {
                p.push(format!(
                    "policy_bundle_url {shown}: plain http without bundle_verification_key: anyone on the path could replace the policies; use https or sign the bundles"
                ));
            } else if !(u.starts_with("https://") || u.starts_with("http://")) {
                p.push(format!("policy_bundle_url {shown}: not an http(s) URL"));
            }
            BundleLocation::Url(u.clone())
        }
        (None, None) => {
            if s.bundle_verification_key.is_some() {
                p.push(
                    "bundle_verification_key: given without policy_bundle or policy_bundle_url"
                        .to_string(),
                );
            }
            return None;
        }
    };
    let key = s.bundle_verification_key.as_ref().and_then(|path| {
        let read = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                BundleKey::from_bytes(&bytes, s.bundle_verification_scope.as_deref().unwrap_or(""))
                    .map_err(|e| e.to_string())
            });
        read.map_err(|e| p.push(format!("bundle_verification_key {}: {e}", path.display())))
            .ok()
    });
    if s.bundle_verification_key.is_some() && key.is_none() {
        return None;
    }
    let poll = s
        .policy_bundle_poll_secs
        .unwrap_or(defaults::BUNDLE_POLL_SECS);
    if poll < defaults::MIN_BUNDLE_POLL_SECS {
        p.push(format!(
            "policy_bundle_poll_secs {poll}: at least {}",
            defaults::MIN_BUNDLE_POLL_SECS
        ));
    }
    BundleSource::new(location, key, Duration::from_secs(poll.max(1)))
        .map_err(|e| p.push(e))
        .ok()
}

impl ServeConfig {
    /// Flags over the environment over the file, then [`Self::resolve`]: every problem,
    /// in any layer, is returned together.
    pub fn load(
        flags: ServeSettings,
        env: &dyn Env,
        file: ServeSettings,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::new();
        let from_env = ServeSettings::from_env(env, &mut p);
        Self::check(flags.over(from_env).over(file), env, p)
    }

    /// Check every setting (no environment); all problems are returned together.
    pub fn resolve(s: ServeSettings) -> Result<Self, Vec<String>> {
        Self::check(s, &teesql_proto::settings::NoEnv, Problems::new())
    }

    fn check(s: ServeSettings, env: &dyn Env, mut p: Problems) -> Result<Self, Vec<String>> {
        let (chain, ita) = resolve_backends(
            &BackendSettings {
                backend: s.backend.clone(),
                ita_url: s.ita_url.clone(),
                ita_jwks_url: s.ita_jwks_url.clone(),
                ita_issuer: s.ita_issuer.clone(),
                ita_api_key_file: s.ita_api_key_file.clone(),
                ita_policy_ids: s.ita_policy_ids.clone(),
                ita_policy_must_match: s.ita_policy_must_match,
            },
            env,
            &mut p,
        );
        let endpoint = Endpoint::check(&s, &mut p);
        let bundle = bundle_source(&s, &mut p);
        let from_bundle = s.policy_bundle.is_some() || s.policy_bundle_url.is_some();
        let policy_dirs = match (&s.policy_dirs, from_bundle) {
            (Some(dirs), false) => dirs.clone(),
            (None, false) => vec![PathBuf::from(defaults::POLICY_DIR)],
            (Some(_), true) => {
                p.push(
                    "policy_dir and policy_bundle/policy_bundle_url: give one source of policies"
                        .to_string(),
                );
                Vec::new()
            }
            (None, true) => Vec::new(),
        };
        for d in &policy_dirs {
            if !d.is_dir() {
                p.push(format!("policy_dir {}: not a directory", d.display()));
            }
        }
        let trust_root = TrustRoot::choose(s.trust_root.as_deref(), s.dev_trust_root.as_deref())
            .map_err(|e| p.push(e))
            .ok();
        let clock = s.now.map(Clock::Fixed).unwrap_or(Clock::System);
        let collateral = collateral(&s, clock, &mut p);
        let snp = snp(&s, collateral.fetch_timeout, &mut p);
        let limits = Limits::check(&s, &mut p);
        let decision_log = decision_log(&s, &mut p);
        let signer = signer(&s, &mut p);
        let manifest_epochs_file = manifest_epochs_file(&s, &mut p);
        p.finish(|| {
            let Endpoint {
                listen,
                tls,
                ra_tls,
                admin,
                metrics_listen,
            } = endpoint;
            Some(Self {
                listen: listen?,
                tls,
                ra_tls,
                admin: admin?,
                reflection: s.reflection.unwrap_or(true),
                max_message_bytes: usize::try_from(limits.max_message_kib.saturating_mul(1024))
                    .unwrap_or(usize::MAX),
                concurrency_per_connection: usize::try_from(limits.concurrency)
                    .unwrap_or(usize::MAX),
                signer,
                metrics_listen,
                policy_dirs,
                bundle: bundle.map(Arc::new),
                backend: BackendConfig {
                    chain: chain?,
                    ita,
                    trust_root: trust_root?,
                    collateral,
                    platform_cache_bytes: s
                        .platform_cache_kib
                        .unwrap_or(defaults::PLATFORM_CACHE_KIB)
                        .saturating_mul(1024),
                },
                snp,
                decision_log: decision_log?,
                options: ServiceOptions {
                    cache_max_bytes: limits.cache_mib.saturating_mul(1 << 20),
                    cache_max_ttl: Duration::from_secs(limits.cache_ttl),
                    clock,
                    manifest_epochs_file,
                },
                eval_limit: Duration::from_millis(limits.eval_ms),
                request_timeout: Duration::from_secs(limits.request_timeout),
            })
        })
    }

    /// Build the service: load policies, the backend and its collateral sources, the
    /// decision log. Needs a tokio runtime (the decision log writer).
    pub fn build(&self) -> Result<Arc<DecisionService>, Vec<String>> {
        let policies = match &self.bundle {
            Some(b) => b.fetch_blocking(self.eval_limit),
            None => PolicySet::load(&self.policy_dirs, self.eval_limit),
        }
        .map_err(|e| vec![e.to_string()])?;
        let mut backend = self.backend.build().map_err(|e| vec![e.to_string()])?;
        let snp = self.snp.build().map_err(|e| vec![e.to_string()])?;
        backend.appraiser = backend.appraiser.with_snp(snp);
        let metrics = Arc::new(
            Metrics::new()
                .with_collateral(backend.collateral.clone())
                .with_platforms(backend.platforms.clone()),
        );
        let log = DecisionLog::start(&self.decision_log)
            .map_err(|e| vec![format!("decision_log: {e}")])?;
        let service =
            DecisionService::new(backend.appraiser, policies, &self.options, log, metrics);
        let service = match &self.bundle {
            Some(b) => service.with_bundle(b.clone()),
            None => service,
        };
        Ok(Arc::new(match &self.signer {
            Some(signer) => service.with_signer(signer.clone()),
            None => service,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ServeSettings {
        ServeSettings {
            policy_dirs: Some(vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))]),
            ..ServeSettings::default()
        }
    }

    #[test]
    fn flags_over_environment_over_file() {
        let file = ServeSettings {
            listen: Some("127.0.0.1:1".into()),
            cache_max_mib: Some(8),
            eval_timeout_ms: Some(100),
            ..ServeSettings::default()
        };
        let env = [
            ("TEESQL_VERIFIER_LISTEN", "127.0.0.1:2"),
            ("TEESQL_VERIFIER_CACHE_MAX_MIB", "16"),
            ("TEESQL_VERIFIER_OFFLINE", "yes"),
        ];
        let c = ServeConfig::load(
            ServeSettings {
                listen: Some("127.0.0.1:3".into()),
                ..flags()
            },
            &env,
            file,
        )
        .unwrap();
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:3".parse().unwrap()));
        assert_eq!(c.options.cache_max_bytes, 16 << 20);
        assert_eq!(c.eval_limit, Duration::from_millis(100));
        assert_eq!(c.backend.collateral.pccs_url, None);
        assert_eq!(
            c.request_timeout,
            Duration::from_secs(defaults::REQUEST_TIMEOUT_SECS)
        );
    }

    /// A variable renamed so that it is `TEESQL_VERIFIER_` and its key is still read by
    /// its old name for one release, with a notice; the new name wins.
    #[test]
    fn renamed_variables_are_read_by_their_old_names_with_a_notice() {
        let mut p = Problems::new();
        let old = [
            ("TEESQL_VERIFIER_CACHE_TTL", "120"),
            ("PCCS_URL", "https://pccs.example"),
            ("TEESQL_VERIFIER_FETCH_TIMEOUT_SECS", "7"),
            ("TEESQL_VERIFIER_FETCH_TIMEOUT", "9"),
        ];
        let s = ServeSettings::from_env(&old, &mut p);
        assert_eq!(s.cache_max_ttl_secs, Some(120));
        assert_eq!(s.pccs_url.as_deref(), Some("https://pccs.example"));
        assert_eq!(s.fetch_timeout_secs, Some(7), "the new name wins");
        assert!(p.is_empty());
        let notices = p.notices().join("\n");
        assert!(
            notices.contains("TEESQL_VERIFIER_CACHE_TTL is deprecated")
                && notices.contains("set TEESQL_VERIFIER_CACHE_MAX_TTL_SECS")
                && notices.contains("PCCS_URL is deprecated")
                && notices.contains("set TEESQL_PCCS_URL"),
            "{notices}"
        );
        assert!(
            !notices.contains("TEESQL_VERIFIER_FETCH_TIMEOUT is"),
            "{notices}"
        );
    }

    /// Each kind of bad value, in each layer, names its key or variable; all come back
    /// together.
    #[test]
    fn every_kind_of_bad_value_names_its_key() {
        let env = [
            ("TEESQL_VERIFIER_FETCH_TIMEOUT_SECS", "ten"),
            ("TEESQL_VERIFIER_OFFLINE", "perhaps"),
            ("TEESQL_VERIFIER_NOW", "-1"),
        ];
        let file = ServeSettings {
            metrics_listen: Some("9090".into()),
            cache_max_mib: Some(0),
            cache_max_ttl_secs: Some(0),
            eval_timeout_ms: Some(0),
            request_timeout_secs: Some(0),
            cache_capacity: Some(10),
            pccs_url: Some("ftp://pccs".into()),
            collateral_file: Some("/nonexistent/collateral.json".into()),
            decision_log: Some("/nonexistent/dir/decisions.log".into()),
            trust_root: Some("/nonexistent/root.der".into()),
            ..ServeSettings::default()
        };
        let errors = ServeConfig::load(
            ServeSettings {
                listen: Some("localhost".into()),
                policy_dirs: Some(vec!["/nonexistent/policies".into()]),
                ..ServeSettings::default()
            },
            &env,
            file,
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "TEESQL_VERIFIER_FETCH_TIMEOUT_SECS \"ten\"",
            "TEESQL_VERIFIER_OFFLINE \"perhaps\": expected true or false",
            "TEESQL_VERIFIER_NOW \"-1\"",
            "listen \"localhost\"",
            "metrics_listen \"9090\"",
            "policy_dir /nonexistent/policies: not a directory",
            "trust root /nonexistent/root.der",
            "pccs_url \"ftp://pccs\"",
            "collateral_file /nonexistent/collateral.json: does not exist",
            "cache_max_mib: 0 is below the minimum, 1",
            "cache_max_ttl_secs: 0 is below",
            "eval_timeout_ms: 0 is below",
            "request_timeout_secs: 0 is below",
            "cache_capacity: replaced by cache_max_mib",
            "decision_log /nonexistent/dir/decisions.log: directory /nonexistent/dir does not exist",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        assert_eq!(errors.len(), 15, "{all}");
    }

    #[test]
    fn ra_tls_is_tls_on_tcp_and_not_beside_an_operator_certificate() {
        // RA-TLS counts as TLS: a non-loopback listener needs no insecure_plaintext.
        let c = ServeConfig::resolve(ServeSettings {
            listen: Some("0.0.0.0:0".into()),
            ra_tls: Some(true),
            dstack_endpoint: Some("/run/dstack.sock".into()),
            ..flags()
        })
        .unwrap();
        let ra = c.ra_tls.unwrap();
        assert_eq!(ra.endpoint.as_deref(), Some("/run/dstack.sock"));
        assert_eq!(
            ra.renew_every,
            Duration::from_secs(defaults::RA_TLS_RENEW_SECS)
        );
        let errors = ServeConfig::resolve(ServeSettings {
            listen: Some("unix:///tmp/v.sock".into()),
            ra_tls: Some(true),
            tls_cert: Some("/nonexistent/c.pem".into()),
            ra_tls_renew_secs: Some(1),
            ..flags()
        })
        .unwrap_err()
        .join("\n");
        for needle in [
            "ra_tls and tls_cert/tls_key: serve one certificate",
            "a unix socket is local already",
            "ra_tls_renew_secs: 1 is below the minimum, 10",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }
    }
}
