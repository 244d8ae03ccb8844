//! `teesql-verifier token …`: check a decision token as a relying party would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use teesql_proto::settings::{Env, ProcessEnv};
use teesql_verifier::http::{BodyError, error_chain, read_bounded};
use teesql_verifier::local::{LocalSettings, VerifierIdentity};
use teesql_verifier::service::token;

/// Largest JWKS read (a verifier publishes one or two keys, each perhaps with a quote and
/// its event log).
const MAX_JWKS: usize = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Check a decision token (Decision.token, an EAR) against the verifier's JWKS and
    /// print its claims as JSON.
    ///
    /// Exit status: 0 the token verifies, is current and records an allowed decision; 1 it
    /// does not verify (altered, another key, expired, wrong issuer) or records a denied
    /// one (with --signature-only, any valid token is 0); 2 unusable input.
    Verify {
        /// The token (compact JWS), or `-` to read it from stdin.
        token: String,
        /// The verifier's JWKS: its `/.well-known/jwks.json` URL, or a file.
        #[arg(long, value_name = "URL|FILE")]
        jwks: String,
        /// The `iss` the token must name [default: any].
        #[arg(long, value_name = "ISS")]
        issuer: Option<String>,
        /// Check as of this unix time instead of the clock.
        #[arg(long, value_name = "UNIX")]
        now: Option<u64>,
        /// Only check the signature and validity: exit 0 for a valid token of a denied
        /// decision too.
        #[arg(long)]
        signature_only: bool,
        /// Also require the signing key to be bound to a verifier's quote (a verifier
        /// serving with --ra-tls publishes it in the JWKS) and appraise that quote here
        /// under the purpose `verifier` of --policy-dir (pins in data.teesql.verifier_pins).
        #[arg(long)]
        attested: bool,
        /// Policy profile for --attested [default: ./policies/teesql].
        #[arg(long = "policy-dir", value_name = "DIR", requires = "attested")]
        policy_dirs: Vec<PathBuf>,
        /// Root CA for the verifier's quote instead of Intel's (--attested).
        #[arg(long, value_name = "FILE", requires = "attested")]
        trust_root: Option<PathBuf>,
        /// The development root, for a verifier on the development agent (--attested).
        #[arg(long, value_name = "FILE", requires = "attested")]
        dev_trust_root: Option<PathBuf>,
        /// PCCS or Intel PCS for the quote's collateral (--attested) [default: env TEESQL_PCCS_URL (formerly PCCS_URL),
        /// else Intel PCS].
        #[arg(long, value_name = "URL", requires = "attested")]
        pccs_url: Option<String>,
    },
}

pub async fn run(cmd: TokenCommand) -> ExitCode {
    let TokenCommand::Verify {
        token,
        jwks,
        issuer,
        now,
        signature_only,
        attested,
        policy_dirs,
        trust_root,
        dev_trust_root,
        pccs_url,
    } = cmd;
    let token = if token == "-" {
        let mut s = String::new();
        use std::io::Read;
        if let Err(e) = std::io::stdin()
            .take(MAX_JWKS as u64)
            .read_to_string(&mut s)
        {
            return super::usage_error(format!("stdin: {e}"));
        }
        s.trim().to_string()
    } else {
        token
    };
    let jwks = match read_jwks(&jwks).await {
        Ok(j) => j,
        Err(e) => return super::usage_error(format!("--jwks {e}")),
    };
    let now = now.unwrap_or_else(|| teesql_verifier::Clock::System.now());
    let verified = token::verify(&token, &jwks, issuer.as_deref(), now);
    if attested && verified.is_ok() {
        let local = match super::policy_dirs(policy_dirs)
            .map_err(|e| e.to_string())
            .and_then(|dirs| {
                VerifierIdentity::new(&LocalSettings {
                    policy_dirs: dirs,
                    trust_root,
                    dev_trust_root,
                    pccs_url: pccs_url.or_else(|| {
                        ProcessEnv
                            .var("TEESQL_PCCS_URL")
                            .or_else(|| ProcessEnv.var("PCCS_URL"))
                    }),
                    ..LocalSettings::default()
                })
                .map_err(|e| e.to_string())
            }) {
            Ok(l) => l,
            Err(e) => return super::usage_error(e),
        };
        match local.appraise_token_signer(&token, &jwks).await {
            Ok(who) => eprintln!("teesql-verifier: signed by an attested verifier: {who}"),
            Err(e) => {
                eprintln!("teesql-verifier: the token's signer is not an attested verifier: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match verified {
        Ok(claims) => {
            super::out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&claims).unwrap_or_default()
            ));
            let decision = &claims[token::PRIVATE_CLAIM];
            if signature_only || decision["allow"] == true {
                return ExitCode::SUCCESS;
            }
            let reasons: Vec<&str> = decision["reasons"]
                .as_array()
                .map(|r| r.iter().filter_map(|c| c.as_str()).collect())
                .unwrap_or_default();
            eprintln!(
                "teesql-verifier: the token is valid but records a denied decision ({}); --signature-only checks only the signature",
                if reasons.is_empty() {
                    "no reason given".to_string()
                } else {
                    reasons.join(", ")
                }
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("teesql-verifier: the decision token is not valid: {e}");
            ExitCode::from(1)
        }
    }
}

async fn read_jwks(source: &str) -> Result<String, String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let mut resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?
            .get(source)
            .send()
            .await
            .map_err(|e| format!("{source}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{source}: HTTP {}", resp.status().as_u16()));
        }
        // Read no further than the bound: the URL may name anyone.
        let body = read_bounded(&mut resp, MAX_JWKS)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => format!("{source}: more than {MAX_JWKS} bytes"),
                BodyError::Transport(e) => format!("{source}: {}", error_chain(&e)),
            })?;
        String::from_utf8(body).map_err(|_| format!("{source}: not UTF-8"))
    } else {
        let path = PathBuf::from(source);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{source}: {e}"))?;
        if meta.len() > MAX_JWKS as u64 {
            return Err(format!("{source}: more than {MAX_JWKS} bytes"));
        }
        std::fs::read_to_string(&path).map_err(|e| format!("{source}: {e}"))
    }
}
