//! `teesql-verifier config check`: the configuration `serve` would run with, resolved the
//! same way ([`super::serve::resolve`]) and put through the checks `serve` makes before it
//! listens, printed with every secret as `<set>`; or every problem.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use teesql_proto::settings::shown::{
    Lines, SET, UNSET, list, path_or_unset, quote, quote_path, url,
};
use teesql_verifier::Clock;
use teesql_verifier::backend::BackendKind;
use teesql_verifier::policy::PolicySet;
use teesql_verifier::service::LogTarget;
use teesql_verifier::service::bundles::BundleLocation;
use teesql_verifier::service::config::{AdminAccess, ServeConfig, ServeSettings, defaults};

use super::serve::{Resolved, ServeArgs, resolve};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Resolve --config FILE, the environment and the flags exactly as `serve` would,
    /// and check what `serve` checks before it listens: the policy profiles compile, the
    /// TLS, signing and trust root files load, the collateral files parse, the decision
    /// log can be written. Nothing is bound and the guest agent is not asked.
    ///
    /// Prints the resolved settings (secrets as <set> or <unset>, never their values),
    /// then `configuration OK`. Exit status: 0 the configuration is good, 2 it is not:
    /// every problem on stderr, one per line.
    Check(Box<ServeArgs>),
}

pub async fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check(args) => check(resolve(*args)),
    }
}

fn check(resolved: Resolved) -> ExitCode {
    let mut problems = Vec::new();
    let policies = match &resolved.config {
        Ok(config) => {
            let policies = match &config.bundle {
                // A bundle file is read and compiled as `serve` will; a bundle URL is
                // not fetched (no network here).
                Some(b) => match &b.location {
                    BundleLocation::File(_) => b
                        .fetch_blocking(config.eval_limit)
                        .map(Some)
                        .map_err(|e| problems.push(e.to_string()))
                        .ok(),
                    BundleLocation::Url(_) => Some(None),
                },
                None => {
                    load_policies(&config.policy_dirs, config.eval_limit, &mut problems).map(Some)
                }
            };
            // What Verifier::start builds next: the backend (collateral files and
            // directories read, HTTP clients made; nothing fetched) and the decision log.
            if let Err(e) = config.backend.build() {
                problems.push(e.to_string());
            }
            if let Err(e) = decision_log_writable(&config.decision_log) {
                problems.push(e);
            }
            policies
        }
        Err(errors) => {
            problems.extend(errors.iter().cloned());
            // The profiles are checked too when all their directories exist (a missing
            // one is among the problems already).
            let dirs = resolved
                .settings
                .policy_dirs
                .clone()
                .unwrap_or_else(|| vec![PathBuf::from(defaults::POLICY_DIR)]);
            let from_bundle = resolved.settings.policy_bundle.is_some()
                || resolved.settings.policy_bundle_url.is_some();
            if !from_bundle && dirs.iter().all(|d| d.is_dir()) {
                let eval_ms = resolved
                    .settings
                    .eval_timeout_ms
                    .filter(|ms| *ms > 0)
                    .unwrap_or(defaults::EVAL_TIMEOUT_MS);
                load_policies(
                    &dirs,
                    std::time::Duration::from_millis(eval_ms),
                    &mut problems,
                );
            }
            None
        }
    };
    match (&resolved.config, policies) {
        (Ok(config), Some(policies)) if problems.is_empty() => {
            super::out(&render(&resolved, config, policies.as_ref()));
            super::out("\nconfiguration OK\n");
            ExitCode::SUCCESS
        }
        _ => {
            // One line each; a policy's compiler diagnostic keeps its lines, indented.
            for p in &problems {
                eprintln!("teesql-verifier: {}", p.trim_end().replace('\n', "\n    "));
            }
            eprintln!("teesql-verifier: {} problem(s)", problems.len().max(1));
            ExitCode::from(2)
        }
    }
}

/// The policy profiles, compiled as `serve` compiles them.
fn load_policies(
    dirs: &[PathBuf],
    eval_limit: std::time::Duration,
    problems: &mut Vec<String>,
) -> Option<PolicySet> {
    PolicySet::load(dirs, eval_limit)
        .map_err(|e| problems.push(e.to_string()))
        .ok()
}

/// Whether `serve` can append to a decision log file. A file that does not exist yet is
/// created, as `serve` would, and removed again.
fn decision_log_writable(target: &LogTarget) -> Result<(), String> {
    let LogTarget::File(path) = target else {
        return Ok(());
    };
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("decision_log {}: {e}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The settings as `key = value` lines (the TOML keys of `--config`), grouped under
/// comments; secrets as `<set>` or `<unset>`.
fn render(resolved: &Resolved, c: &ServeConfig, policies: Option<&PolicySet>) -> String {
    let s: &ServeSettings = &resolved.settings;
    let mut o = Lines::default();
    o.comment(&match &resolved.file {
        Some(f) => format!(
            "teesql-verifier serve: --config {}, then the environment, then flags",
            f.display()
        ),
        None => "teesql-verifier serve: no --config file; the environment, then flags".into(),
    });
    o.comment("secrets are shown as <set> or <unset>, never their values");

    o.section("gRPC");
    o.kv("listen", quote(&c.listen.to_string()));
    o.kv("insecure_plaintext", s.insecure_plaintext.unwrap_or(false));
    o.kv("tls_cert", path_or_unset(s.tls_cert.as_deref()));
    o.kv("tls_key", path_or_unset(s.tls_key.as_deref()));
    o.kv("ra_tls", c.ra_tls.is_some());
    if let Some(ra) = &c.ra_tls {
        o.note(
            "dstack_endpoint",
            ra.endpoint
                .as_deref()
                .map(url)
                .unwrap_or_else(|| UNSET.into()),
            "DSTACK_SIMULATOR_ENDPOINT, else /var/run/dstack.sock",
        );
        o.kv("ra_tls_renew_secs", ra.renew_every.as_secs());
    }
    o.kv("reflection", c.reflection);
    o.kv("max_message_kib", c.max_message_bytes / 1024);
    o.kv("concurrency_per_connection", c.concurrency_per_connection);
    o.kv("request_timeout_secs", c.request_timeout.as_secs());
    o.kv(
        "metrics_listen",
        c.metrics_listen
            .map(|a| quote(&a.to_string()))
            .unwrap_or_else(|| quote("off")),
    );

    o.section("PolicyAdmin");
    o.kv(
        "admin_token_file",
        path_or_unset(s.admin_token_file.as_deref()),
    );
    match c.admin {
        AdminAccess::Token(_) => o.note("admin_token", SET, "callers must present it"),
        AdminAccess::LocalOnly => o.note(
            "admin_token",
            UNSET,
            "PolicyAdmin answers the unix socket and loopback only",
        ),
    }

    o.section("decisions");
    match &c.bundle {
        None => o.kv(
            "policy_dir",
            list(c.policy_dirs.iter().map(|d| d.display().to_string())),
        ),
        Some(b) => {
            match &b.location {
                BundleLocation::File(p) => o.kv("policy_bundle", quote_path(p)),
                BundleLocation::Url(u) => {
                    o.kv("policy_bundle_url", url(u));
                    o.kv("policy_bundle_poll_secs", b.poll.as_secs());
                }
            }
            o.kv(
                "bundle_verification_key",
                path_or_unset(s.bundle_verification_key.as_deref()),
            );
            o.kv(
                "bundle_verification_scope",
                s.bundle_verification_scope
                    .as_deref()
                    .map(quote)
                    .unwrap_or_else(|| UNSET.into()),
            );
        }
    }
    match policies {
        Some(p) => o.comment(&format!(
            "policy {} loaded: purposes {}",
            p.hash(),
            p.purposes().join(", ")
        )),
        None => o.comment("the bundle is downloaded at start: not checked here"),
    }
    o.kv("eval_timeout_ms", c.eval_limit.as_millis());
    o.kv("sign_decisions", c.signer.is_some());
    if c.signer.is_some() {
        match &s.signing_key {
            Some(p) => o.note("signing_key", quote_path(p), "key <set>"),
            None => o.note("signing_key", UNSET, "a key generated at start"),
        }
        o.kv(
            "token_issuer",
            quote(
                s.token_issuer
                    .as_deref()
                    .unwrap_or(teesql_verifier::service::token::DEFAULT_ISSUER),
            ),
        );
    }
    o.kv(
        "decision_log",
        quote(&match &c.decision_log {
            LogTarget::Off => "off".to_string(),
            LogTarget::Stdout => "stdout".to_string(),
            LogTarget::File(p) => p.display().to_string(),
        }),
    );

    o.section("quotes");
    o.kv("backend", quote(&c.backend.chain_name()));
    o.kv("trust_root", path_or_unset(s.trust_root.as_deref()));
    o.kv("dev_trust_root", path_or_unset(s.dev_trust_root.as_deref()));
    o.comment(&format!(
        "quotes are verified against the {} root",
        c.backend.trust_root.kind().as_str()
    ));
    o.kv("snp_dev_ark", path_or_unset(s.snp_dev_ark.as_deref()));
    o.comment(match &c.snp.dev_ark {
        Some(_) => "SEV-SNP reports are verified against the development ARK (snp.root = dev)",
        None => "SEV-SNP reports are verified against AMD's pinned ARKs",
    });
    o.kv("snp_cert_dir", path_or_unset(c.snp.cert_dir.as_deref()));
    match &c.snp.kds_url {
        Some(u) => o.kv("kds_url", url(u)),
        None => o.note(
            "kds_url",
            UNSET,
            "offline: VCEKs only from evidence or snp_cert_dir",
        ),
    }
    o.kv("platform_cache_kib", c.backend.platform_cache_bytes / 1024);
    o.kv("cache_max_mib", c.options.cache_max_bytes >> 20);
    o.kv("cache_max_ttl_secs", c.options.cache_max_ttl.as_secs());

    o.section("collateral");
    let collateral = &c.backend.collateral;
    o.kv("offline", collateral.pccs_url.is_none());
    match &collateral.pccs_url {
        Some(u) => o.kv("pccs_url", url(u)),
        None => o.note("pccs_url", UNSET, "offline: nothing is fetched"),
    }
    o.kv("collateral_dir", path_or_unset(collateral.dir.as_deref()));
    o.kv("collateral_file", path_or_unset(collateral.file.as_deref()));
    o.kv("fetch_timeout_secs", collateral.fetch_timeout.as_secs());

    o.section("Intel Trust Authority");
    match &c.backend.ita {
        Some(ita) if c.backend.chain.contains(&BackendKind::Ita) => {
            o.kv("ita_url", url(&ita.api_url));
            o.kv("ita_jwks_url", url(&ita.jwks_url));
            o.kv("ita_issuer", list(ita.issuers.iter().cloned()));
            match &s.ita_api_key_file {
                Some(p) => {
                    o.kv("ita_api_key_file", quote_path(p));
                    o.note("ita_api_key", SET, "from ita_api_key_file");
                }
                None => {
                    o.kv("ita_api_key_file", UNSET);
                    o.note("ita_api_key", SET, "from INTEL_TRUST_AUTHORITY_API_KEY");
                }
            }
            o.kv("ita_policy_ids", list(ita.policy_ids.iter().cloned()));
            o.kv("ita_policy_must_match", ita.policy_must_match);
        }
        _ => o.comment("not used: the backend has no ita"),
    }

    o.section("state");
    o.kv(
        "state_dir",
        path_or_unset(
            c.options
                .manifest_epochs_file
                .as_deref()
                .and_then(Path::parent),
        ),
    );
    match c.options.clock {
        Clock::Fixed(t) => o.note("now", t, "decisions as of this fixed time"),
        Clock::System => o.note("now", UNSET, "the system clock"),
    }
    o.finish()
}
