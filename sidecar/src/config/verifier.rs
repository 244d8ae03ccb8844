//! The `[verifier]` section: where the verifier is and how it is trusted. Declared once
//! here and read the same way by the sidecar (its TOML table, flags, environment) and by
//! `forward` (flags, environment): each field is a TOML key, a flag (`--verifier-…`) and a
//! variable ([`super::env`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use teesql_appraisal::local::{LocalSettings, VerifierIdentity};
use teesql_proto::settings::{Env, Problems, first};
use teesql_proto::transport::ServerTrust;

use super::env;

/// Why the way a verifier is trusted cannot be set up ([`VerifierSettings::resolve`]). The
/// messages name the settings as the caller spells them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The CA file or certificate hash settings (both given, or a bad hash).
    #[error(transparent)]
    Transport(#[from] teesql_proto::transport::TransportError),
    /// A trust root for the verifier's identity without an identity policy.
    #[error("{trust_root} / {dev_trust_root} need {policy_dir}")]
    RootWithoutPolicy {
        /// The trust root setting's name.
        trust_root: String,
        /// The development trust root setting's name.
        dev_trust_root: String,
        /// The identity policy setting's name.
        policy_dir: String,
    },
    /// An identity policy and a CA file or certificate hash: two ways to trust.
    #[error("{policy_dir} and {ca_file} / {cert_sha256}: give one way to trust the verifier")]
    TwoWays {
        /// The identity policy setting's name.
        policy_dir: String,
        /// The CA file setting's name.
        ca_file: String,
        /// The certificate hash setting's name.
        cert_sha256: String,
    },
    /// The identity policy (or its trust root, or collateral settings) does not load.
    #[error("{key} {}: {source}", dir.display())]
    IdentityPolicy {
        /// The identity policy setting's name.
        key: String,
        /// The policy directory.
        dir: PathBuf,
        /// Why it does not load (boxed: it is large, and rare).
        #[source]
        source: Box<teesql_appraisal::local::LocalError>,
    },
}

/// A verifier policy hash that is not `sha256:` and 64 hex digits
/// ([`parse_policy_hashes`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{hash:?} is not a policy hash (sha256: and 64 hex digits, as decisions carry it)")]
pub struct BadPolicyHash {
    /// The hash as given.
    pub hash: String,
}

/// Where the verifier is and how it is trusted, before checking.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct VerifierSettings {
    /// Verifier gRPC URL: http://127.0.0.1:PORT (loopback only), https://HOST:PORT or
    /// unix:///PATH; several, comma-separated, are balanced and stand in for each other
    /// [default: http://127.0.0.1:50051; env TEESQL_VERIFIER_URL].
    #[arg(long = "verifier", value_name = "URL")]
    pub url: Option<String>,
    /// Time limit of one decision, milliseconds [default: 5000 for the sidecar, 10000 for
    /// forward; env TEESQL_VERIFIER_TIMEOUT_MS].
    #[arg(long = "verifier-timeout-ms", value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Policy hash decisions must come from (`sha256:<hex>`, as decisions carry it and
    /// the verifier prints it at start); several during a rollout. An endpoint answering
    /// under another is not believed: the next one is asked [default: the first
    /// answer's; env TEESQL_VERIFIER_POLICY_HASHES, comma-separated].
    #[arg(
        long = "verifier-policy-hash",
        value_name = "HASH",
        value_delimiter = ','
    )]
    pub policy_hashes: Option<Vec<String>>,
    /// CA certificates (PEM) an https verifier's certificate must chain to
    /// [env TEESQL_VERIFIER_CA_FILE].
    #[arg(long = "verifier-ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Or the SHA-256 (hex) of the https verifier's certificate
    /// [env TEESQL_VERIFIER_CERT_SHA256].
    #[arg(long = "verifier-cert-sha256", value_name = "HEX")]
    pub cert_sha256: Option<String>,
    /// Or trust the https verifier by its own attestation: its RA-TLS certificate is
    /// appraised here under the purpose `verifier` of this policy profile (pins in
    /// data.teesql.verifier_pins) [env TEESQL_VERIFIER_IDENTITY_POLICY_DIR].
    #[arg(long = "verifier-identity-policy-dir", value_name = "DIR")]
    pub identity_policy_dir: Option<PathBuf>,
    /// A root CA (DER or PEM) for the verifier's quote instead of Intel's
    /// [env TEESQL_VERIFIER_IDENTITY_TRUST_ROOT].
    #[arg(long = "verifier-identity-trust-root", value_name = "FILE")]
    pub identity_trust_root: Option<PathBuf>,
    /// The development root (teesql-dev's PKI), for a verifier on the development agent
    /// [env TEESQL_VERIFIER_IDENTITY_DEV_TRUST_ROOT].
    #[arg(long = "verifier-identity-dev-trust-root", value_name = "FILE")]
    pub identity_dev_trust_root: Option<PathBuf>,
    /// Where the verifier's quote's collateral comes from [default: env
    /// TEESQL_VERIFIER_IDENTITY_PCCS_URL, else TEESQL_PCCS_URL, else Intel PCS].
    #[arg(long = "verifier-identity-pccs-url", value_name = "URL")]
    pub identity_pccs_url: Option<String>,
}

/// The `[verifier]` settings, checked.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The gRPC URL(s) as given, comma-separated when several (default http://127.0.0.1:50051).
    pub url: String,
    /// How an https verifier is trusted (CA file, certificate hash or its attestation);
    /// `None` for a loopback http:// or a unix:// URL.
    pub trust: Option<ServerTrust>,
    /// Time limit of one decision: `timeout_ms`, else the caller's default (5 s for the
    /// sidecar, 10 s for `forward`).
    pub timeout: Duration,
    /// Policy hashes decisions may come from; empty = the first answer's.
    pub policy_hashes: Vec<String>,
}

impl VerifierSettings {
    /// What the environment says (the `TEESQL_VERIFIER_*` variables of [`env`]).
    pub fn from_env(e: &dyn Env, p: &mut Problems) -> Self {
        let path = |name: &str| e.var(name).map(PathBuf::from);
        Self {
            url: e.var(env::VERIFIER_URL),
            timeout_ms: p.env(e, env::VERIFIER_TIMEOUT_MS),
            policy_hashes: e.var(env::VERIFIER_POLICY_HASHES).map(|v| vec![v]),
            ca_file: path(env::VERIFIER_CA_FILE),
            cert_sha256: e.var(env::VERIFIER_CERT_SHA256),
            identity_policy_dir: path(env::VERIFIER_IDENTITY_POLICY_DIR),
            identity_trust_root: path(env::VERIFIER_IDENTITY_TRUST_ROOT),
            identity_dev_trust_root: path(env::VERIFIER_IDENTITY_DEV_TRUST_ROOT),
            identity_pccs_url: e.var(env::VERIFIER_IDENTITY_PCCS_URL),
        }
    }

    /// `self` over `lower`, setting by setting.
    pub fn over(self, lower: Self) -> Self {
        Self {
            url: first([self.url, lower.url]),
            timeout_ms: first([self.timeout_ms, lower.timeout_ms]),
            policy_hashes: first([self.policy_hashes, lower.policy_hashes]),
            ca_file: first([self.ca_file, lower.ca_file]),
            cert_sha256: first([self.cert_sha256, lower.cert_sha256]),
            identity_policy_dir: first([self.identity_policy_dir, lower.identity_policy_dir]),
            identity_trust_root: first([self.identity_trust_root, lower.identity_trust_root]),
            identity_dev_trust_root: first([
                self.identity_dev_trust_root,
                lower.identity_dev_trust_root,
            ]),
            identity_pccs_url: first([self.identity_pccs_url, lower.identity_pccs_url]),
        }
    }

    /// Check everything; `key` spells a setting's name as the caller's user writes it
    /// (`verifier.ca_file` in the sidecar's file, `--verifier-ca-file` for `forward`).
    pub fn check(
        self,
        e: &dyn Env,
        default_timeout: Duration,
        key: &dyn Fn(&str) -> String,
        p: &mut Problems,
    ) -> Option<VerifierConfig> {
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| super::defaults::VERIFIER_URL.into());
        // Read for its deprecation notice; resolve_as reads it again.
        let _ = p.var_renamed(e, env::PCCS_URL, env::PCCS_URL_WAS);
        let trust = self
            .resolve_as(e, key)
            .map_err(|problem| p.push(problem))
            .ok()?;
        if let Err(problem) = teesql_proto::transport::check(&url, trust.as_ref()) {
            p.push(format!("{} {problem}", key("url")));
        }
        let timeout = match self.timeout_ms {
            Some(ms) => Duration::from_millis(p.at_least(&key("timeout_ms"), ms, 1)),
            None => default_timeout,
        };
        let policy_hashes = parse_policy_hashes(&self.policy_hashes.unwrap_or_default())
            .map_err(|problem| p.report(&key("policy_hashes"), problem))
            .unwrap_or_default();
        Some(VerifierConfig {
            url,
            trust,
            timeout,
            policy_hashes,
        })
    }

    /// The trust these settings describe (the identity policy is loaded now, so a bad
    /// profile is a start-up error); collateral from `identity_pccs_url`, else env
    /// `TEESQL_PCCS_URL`, else Intel PCS. Errors name a setting `verifier_<key>`; see
    /// [`Self::resolve_as`].
    pub fn resolve(&self, e: &dyn Env) -> Result<Option<ServerTrust>, TrustError> {
        self.resolve_as(e, &|k| format!("verifier_{k}"))
    }

    /// [`Self::resolve`], with `key` spelling a setting's name.
    pub fn resolve_as(
        &self,
        e: &dyn Env,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<ServerTrust>, TrustError> {
        let pinned =
            ServerTrust::from_settings(self.ca_file.as_deref(), self.cert_sha256.as_deref(), key)?;
        let Some(dir) = &self.identity_policy_dir else {
            if self.identity_trust_root.is_some() || self.identity_dev_trust_root.is_some() {
                return Err(TrustError::RootWithoutPolicy {
                    trust_root: key("identity_trust_root"),
                    dev_trust_root: key("identity_dev_trust_root"),
                    policy_dir: key("identity_policy_dir"),
                });
            }
            return Ok(pinned);
        };
        if pinned.is_some() {
            return Err(TrustError::TwoWays {
                policy_dir: key("identity_policy_dir"),
                ca_file: key("ca_file"),
                cert_sha256: key("cert_sha256"),
            });
        }
        let identity = VerifierIdentity::new(&LocalSettings {
            policy_dirs: vec![dir.clone()],
            trust_root: self.identity_trust_root.clone(),
            dev_trust_root: self.identity_dev_trust_root.clone(),
            pccs_url: first([self.identity_pccs_url.clone(), env::pccs_url(e)]),
            ..LocalSettings::default()
        })
        .map_err(|source| TrustError::IdentityPolicy {
            key: key("identity_policy_dir"),
            dir: dir.clone(),
            source: Box::new(source),
        })?;
        Ok(Some(ServerTrust::Attested(Arc::new(identity))))
    }
}

/// Policy hashes as given (comma-separated or a list): each `sha256:` and 64 hex digits,
/// as `Decision.policy_hash` carries them and `teesql-verifier serve` prints them at start.
pub fn parse_policy_hashes<S: AsRef<str>>(given: &[S]) -> Result<Vec<String>, BadPolicyHash> {
    let mut out = Vec::new();
    for h in given.iter().flat_map(|g| g.as_ref().split(',')) {
        let h = h.trim();
        if h.is_empty() {
            continue;
        }
        let hex = h.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadPolicyHash {
                hash: h.to_string(),
            });
        }
        out.push(format!("sha256:{}", hex.to_ascii_lowercase()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_hashes_are_read_as_decisions_carry_them() {
        let h = "AB".repeat(32);
        assert_eq!(
            parse_policy_hashes(&[format!(" sha256:{h} ,, sha256:{}", "0".repeat(64))]).unwrap(),
            vec![
                format!("sha256:{}", h.to_lowercase()),
                format!("sha256:{}", "0".repeat(64))
            ]
        );
        for bad in [h.clone(), format!("sha256:{}", &h[1..]), "sha256:zz".into()] {
            let e = parse_policy_hashes(std::slice::from_ref(&bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a policy hash"), "{bad}: {e}");
        }
        assert!(parse_policy_hashes::<&str>(&[]).unwrap().is_empty());
    }
}
