//! `forward`'s settings: flags over the environment, each checked, every problem
//! reported at once.

use std::net::SocketAddr;
use std::time::Duration;

use teesql_proto::settings::Env;
use teesql_proto::transport::ServerTrust;

/// How the forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Where local clients connect (plaintext; loopback).
    pub listen: SocketAddr,
    /// The sidecar, `host:port`; `None` = the leader the manifest names.
    pub to: Option<String>,
    /// TLS server name (SNI); default: the host dialled, when it is a name.
    pub server_name: Option<String>,
    /// Verifier gRPC URL(s), comma-separated when several (`--verifier`, `TEESQL_VERIFIER_URL`).
    pub verifier_url: String,
    /// How an https verifier is trusted; `None` for a loopback http:// or a unix:// URL.
    pub verifier_trust: Option<ServerTrust>,
    /// Time limit of one decision.
    pub verifier_timeout: Duration,
    /// Policy hashes the verifier's decisions may come from; empty = the first answer's.
    pub verifier_policy_hashes: Vec<String>,
    /// Which policy judges the server [default: client].
    pub purpose: String,
    /// MRTDs the application expects (hex), checked on top of the policy's pins.
    pub expected_mrtds: Vec<String>,
    /// Compose hashes the application expects of the server (hex).
    pub expected_compose_hashes: Vec<String>,
    /// App ids the application expects of the server (hex).
    pub expected_app_ids: Vec<String>,
    /// Answer a server's request for a cleartext or MD5 password (the cluster secret!)
    /// instead of refusing it. Off by default: only SCRAM-SHA-256 is relayed.
    pub allow_cleartext_upstream: bool,
    /// A signed leader manifest to check the server against (and to find it by).
    pub manifest: Option<ManifestSource>,
    /// Manifest signers this application trusts (`0x` + 40 hex).
    pub manifest_signers: Vec<String>,
    /// DNS server for the manifest lookup; `None` = the system's resolver.
    pub dns_server: Option<SocketAddr>,
    /// Time for a TCP connect plus TLS handshake to the sidecar ([`CONNECT_TIMEOUT`], 10 s).
    pub connect_timeout: Duration,
    /// Renew the client certificate this often.
    pub renew_every: Duration,
}

/// Where the leader manifest comes from.
#[derive(Debug, Clone)]
pub enum ManifestSource {
    /// A TXT record given as text.
    Txt(String),
    /// Resolve `_teesql-leader.<domain>` in DNS for every connection.
    Dns(String),
}

/// The forwarder's settings as given by flags, before checking; `resolve` adds the
/// environment (`TEESQL_VERIFIER_URL`, `EXPECTED_MRTD`) under them.
#[derive(Debug, Clone, Default)]
pub struct ForwardSettings {
    /// [default: `DEFAULT_LISTEN`]
    pub listen: Option<String>,
    /// `--to`: the sidecar, `HOST:PORT`; `None` needs a manifest to find the leader.
    pub to: Option<String>,
    /// `--server-name`: the TLS SNI to send; `None` = the host dialled.
    pub server_name: Option<String>,
    /// Where the verifier is and how it is trusted (`--verifier`, `--verifier-ca-file`,
    /// …), over the environment (`TEESQL_VERIFIER_URL`, `TEESQL_VERIFIER_CA_FILE`, …).
    pub verifier: crate::config::VerifierSettings,
    /// [default: `DEFAULT_PURPOSE`]
    pub purpose: Option<String>,
    /// As given: 96 hex digits each, optional `0x`, any case; blanks ignored
    /// [default: env EXPECTED_MRTD, comma-separated].
    pub expected_mrtds: Vec<String>,
    /// 64 hex digits each, optional `0x`.
    pub expected_compose_hashes: Vec<String>,
    /// 40 hex digits each, optional `0x`.
    pub expected_app_ids: Vec<String>,
    /// `--allow-cleartext-upstream`: relay a server's cleartext or MD5 password request
    /// (off: only SCRAM-SHA-256 is relayed).
    pub allow_cleartext_upstream: bool,
    /// Start even though nothing beyond MRTDs identifies the server (the verifier's own
    /// policy is trusted to pin it).
    pub allow_unpinned_server: bool,
    /// `--manifest-domain`: look the signed manifest up at `_teesql-leader.<domain>` (DNS TXT).
    pub manifest_domain: Option<String>,
    /// `--manifest-txt`: the manifest's TXT record as text; excludes `manifest_domain`.
    pub manifest_txt: Option<String>,
    /// `--manifest-signer`, repeatable: `0x` + 40 hex digits each, any case.
    pub manifest_signers: Vec<String>,
    /// `IP` or `IP:PORT` (port 53 when omitted).
    pub dns_server: Option<String>,
}

/// Where local clients connect by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// The policy that judges the server by default.
pub const DEFAULT_PURPOSE: &str = "client";
/// Time limit of one decision of the verifier (a cold appraisal may fetch collateral).
pub const VERIFIER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connect plus TLS handshake to the sidecar may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the forwarder's client certificate is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(3600);
/// The flag a `[verifier]` setting is given by on `forward`'s command line.
fn verifier_flag(key: &str) -> String {
    match key {
        "url" => "--verifier".into(),
        "policy_hashes" => "--verifier-policy-hash".into(),
        k => format!("--verifier-{}", k.replace('_', "-")),
    }
}

/// Local connections open at once; more get `53300`.
pub const MAX_CONNECTIONS: usize = 1000;
/// On shutdown, how long open sessions may take to end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Most TXT records considered at `_teesql-leader.<domain>`.
pub const MAX_MANIFEST_RECORDS: usize = 16;

impl ForwardSettings {
    /// Check every setting, with `env` under the flags; all problems are reported at once.
    pub fn resolve(self, env: &dyn Env) -> Result<ForwardConfig, Vec<String>> {
        let mut errors = Vec::new();
        let listen_s = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s
            .parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("--listen {listen_s:?}: {e} (expected ip:port)")))
            .ok();
        let purpose = self.purpose.unwrap_or_else(|| DEFAULT_PURPOSE.to_string());
        let given_mrtds = if self.expected_mrtds.is_empty() {
            env.var(crate::config::env::EXPECTED_MRTD)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            self.expected_mrtds
        };
        let expected_mrtds = hex_pins("expected MRTD", &given_mrtds, 48, &mut errors);
        let expected_compose_hashes = hex_pins(
            "--expected-compose-hash",
            &self.expected_compose_hashes,
            32,
            &mut errors,
        );
        let expected_app_ids =
            hex_pins("--expected-app-id", &self.expected_app_ids, 20, &mut errors);
        let mut manifest_signers = Vec::new();
        for s in &self.manifest_signers {
            let hex = s.trim().trim_start_matches("0x").trim_start_matches("0X");
            if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "--manifest-signer {s:?}: must be 0x + 40 hex digits"
                ));
            }
            manifest_signers.push(format!("0x{}", hex.to_ascii_lowercase()));
        }
        let manifest = match (self.manifest_txt, self.manifest_domain) {
            (Some(_), Some(_)) => {
                errors.push("--manifest-txt and --manifest-domain: give one, not both".into());
                None
            }
            (Some(t), None) => Some(ManifestSource::Txt(t)),
            (None, Some(d)) if d.trim().trim_matches('.').is_empty() => {
                errors.push("--manifest-domain: empty".into());
                None
            }
            (None, Some(d)) => Some(ManifestSource::Dns(d.trim().to_string())),
            (None, None) => None,
        };
        // An MRTD names the dstack OS image, which every CVM on that image shares: it does
        // not say which application (which database) answers. Something must.
        if expected_compose_hashes.is_empty()
            && expected_app_ids.is_empty()
            && manifest_signers.is_empty()
            && !self.allow_unpinned_server
        {
            errors.push(
                "nothing identifies the server beyond its OS image: give --expected-compose-hash, --expected-app-id or --manifest-signer (an MRTD alone is shared by every CVM on that image), or --allow-unpinned-server if the verifier's policy pins the server itself".into(),
            );
        }
        if self.to.is_none() && manifest.is_none() {
            errors.push(
                "no server: give --to HOST:PORT, or --manifest-domain (or --manifest-txt) to reach the leader its signed manifest names".into(),
            );
        }
        if let Some(to) = &self.to
            && !to.contains(':')
        {
            errors.push(format!("--to {to:?}: expected HOST:PORT"));
        }
        let dns_server = match self.dns_server.as_deref() {
            None => None,
            Some(text) => match parse_dns_server(text) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let mut p = teesql_proto::settings::Problems::new();
        let verifier = self
            .verifier
            .over(crate::config::VerifierSettings::from_env(env, &mut p))
            .check(env, VERIFIER_TIMEOUT, &verifier_flag, &mut p);
        errors.extend(p.into_vec());
        let (Some(listen), Some(verifier), true) = (listen, verifier, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(ForwardConfig {
            listen,
            to: self.to,
            server_name: self.server_name,
            verifier_url: verifier.url,
            verifier_trust: verifier.trust,
            verifier_timeout: verifier.timeout,
            verifier_policy_hashes: verifier.policy_hashes,
            purpose,
            expected_mrtds,
            expected_compose_hashes,
            expected_app_ids,
            allow_cleartext_upstream: self.allow_cleartext_upstream,
            manifest,
            manifest_signers,
            dns_server,
            connect_timeout: CONNECT_TIMEOUT,
            renew_every: RENEW_EVERY,
        })
    }
}

/// Hex pins of `bytes` bytes each: optional `0x`, any case, blanks ignored; lower-cased.
fn hex_pins(what: &str, given: &[String], bytes: usize, errors: &mut Vec<String>) -> Vec<String> {
    given
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .map(|m| {
            let hex = m
                .trim_start_matches("0x")
                .trim_start_matches("0X")
                .to_ascii_lowercase();
            if hex.len() != 2 * bytes || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "{what} {m:?}: must be {} hex digits ({bytes} bytes)",
                    2 * bytes
                ));
            }
            hex
        })
        .collect()
}

fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("--dns-server {text:?}: expected IP or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: &teesql_proto::settings::NoEnv = &teesql_proto::settings::NoEnv;

    fn settings() -> ForwardSettings {
        ForwardSettings {
            to: Some("db.example.com:5433".into()),
            verifier: crate::config::VerifierSettings {
                url: Some("http://127.0.0.1:50051".into()),
                ..Default::default()
            },
            expected_compose_hashes: vec![format!("0x{}", "C1".repeat(32))],
            ..ForwardSettings::default()
        }
    }

    #[test]
    fn an_mrtd_alone_does_not_identify_the_server() {
        let mrtd_only = || ForwardSettings {
            expected_compose_hashes: vec![],
            expected_mrtds: vec!["ab".repeat(48)],
            ..settings()
        };
        let errors = mrtd_only().resolve(NO_ENV).unwrap_err();
        assert!(
            errors[0].contains("nothing identifies the server beyond its OS image"),
            "{errors:?}"
        );
        for ok in [
            ForwardSettings {
                expected_app_ids: vec!["a1".repeat(20)],
                ..mrtd_only()
            },
            ForwardSettings {
                manifest_signers: vec![format!("0x{}", "cd".repeat(20))],
                ..mrtd_only()
            },
            ForwardSettings {
                allow_unpinned_server: true,
                ..mrtd_only()
            },
        ] {
            ok.resolve(NO_ENV).unwrap();
        }
        let c = settings().resolve(NO_ENV).unwrap();
        assert_eq!(c.expected_compose_hashes, ["c1".repeat(32)]);
        let errors = ForwardSettings {
            expected_compose_hashes: vec!["c1".repeat(31)],
            expected_app_ids: vec!["zz".repeat(20)],
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("--expected-compose-hash"), "{errors}");
        assert!(errors.contains("--expected-app-id"), "{errors}");
    }

    #[test]
    fn settings_resolve_with_defaults_and_normalised_pins() {
        let c = ForwardSettings {
            expected_mrtds: vec![format!("0X{}", "AB".repeat(48)), " ".into()],
            manifest_signers: vec![format!("0x{}", "CD".repeat(20))],
            manifest_domain: Some("db.example.com".into()),
            dns_server: Some("127.0.0.1:5353".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert_eq!(c.expected_mrtds, ["ab".repeat(48)]);
        assert_eq!(c.manifest_signers, [format!("0x{}", "cd".repeat(20))]);
        assert_eq!(c.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert!(matches!(c.manifest, Some(ManifestSource::Dns(ref d)) if d == "db.example.com"));
        assert_eq!(c.connect_timeout, CONNECT_TIMEOUT);
        let c = ForwardSettings {
            dns_server: Some("10.0.0.53".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert_eq!(c.dns_server, Some("10.0.0.53:53".parse().unwrap()));
    }

    #[test]
    fn a_manifest_domain_alone_names_the_server() {
        let c = ForwardSettings {
            to: None,
            manifest_domain: Some("db.example.com".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert!(c.to.is_none());
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let errors = ForwardSettings {
            to: None,
            verifier: crate::config::VerifierSettings {
                url: Some("grpc://x".into()),
                ..Default::default()
            },
            expected_mrtds: vec!["abc".into()],
            manifest_signers: vec!["0x12".into()],
            dns_server: Some("dns.example".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "no server: give --to",
            "--verifier \"grpc://x\"",
            "expected MRTD \"abc\"",
            "--manifest-signer \"0x12\"",
            "--dns-server \"dns.example\"",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        let errors = ForwardSettings {
            to: Some("no-port".into()),
            manifest_domain: Some("a".into()),
            manifest_txt: Some("v=1".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err();
        let all = errors.join("\n");
        assert!(
            all.contains("--to \"no-port\": expected HOST:PORT"),
            "{all}"
        );
        assert!(all.contains("give one, not both"), "{all}");
    }

    #[test]
    fn the_environment_fills_what_flags_leave_out() {
        let mrtd = "ab".repeat(48);
        let env = [
            ("TEESQL_VERIFIER_URL", "https://10.0.0.1:50051"),
            ("TEESQL_VERIFIER_CERT_SHA256", &*"cd".repeat(32)),
            ("EXPECTED_MRTD", &*format!("{mrtd}, ")),
        ];
        let c = ForwardSettings {
            verifier: Default::default(),
            ..settings()
        }
        .resolve(&env)
        .unwrap();
        assert_eq!(c.verifier_url, "https://10.0.0.1:50051");
        assert_eq!(c.verifier_trust, Some(ServerTrust::CertSha256([0xcd; 32])));
        assert_eq!(c.expected_mrtds, [mrtd]);
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.purpose, DEFAULT_PURPOSE);
        assert_eq!(c.verifier_timeout, VERIFIER_TIMEOUT);
        // Flags win over the environment.
        let c = ForwardSettings {
            expected_mrtds: vec!["cd".repeat(48)],
            ..settings()
        }
        .resolve(&[env[0], env[2]])
        .unwrap();
        assert_eq!(c.verifier_url, "http://127.0.0.1:50051");
        assert_eq!(c.expected_mrtds, ["cd".repeat(48)]);
        // A bad listen address is named with the rest.
        let errors = ForwardSettings {
            listen: Some("6432".into()),
            ..settings()
        }
        .resolve(&[("EXPECTED_MRTD", "xyz")])
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("--listen \"6432\""), "{errors}");
        assert!(errors.contains("expected MRTD \"xyz\""), "{errors}");
    }
}
