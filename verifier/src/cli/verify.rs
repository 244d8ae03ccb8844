//! `teesql-verifier verify`: one piece of evidence, one decision, as JSON.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use teesql_proto::settings::{Env, Problems, ProcessEnv};
use teesql_verifier::backend::dcap::TrustRoot;
use teesql_verifier::backend::{BackendConfig, BackendSettings, resolve_backends};
use teesql_verifier::collateral::{CollateralConfig, INTEL_PCS_URL};
use teesql_verifier::evidence::{self, Evidence, EvidenceError, MAX_EVIDENCE_LEN, decode_hex};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::{Clock, DecisionRequest};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("evidence").required(true).args(["quote", "cert", "attestation", "getquote"])))]
pub struct VerifyArgs {
    /// A raw DCAP quote, binary or hex (with or without 0x).
    #[arg(long, value_name = "FILE")]
    quote: Option<PathBuf>,
    /// A dstack RA-TLS certificate or chain (PEM or DER, leaf first).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// A dstack VersionedAttestation (binary, hex, or JSON {"attestation": hex}).
    #[arg(long, value_name = "FILE")]
    attestation: Option<PathBuf>,
    /// A dstack guest agent GetQuote response (JSON).
    #[arg(long, value_name = "FILE")]
    getquote: Option<PathBuf>,
    /// GPU evidence beside the attestation (nvattest's output, the guest agent's
    /// GpuInfo): compared with the `gpu-attestation` event's digest (`app.gpu`). Unsigned.
    #[arg(long, value_name = "FILE")]
    gpu_evidence: Option<PathBuf>,

    /// DCAP collateral JSON to use for this quote (skips every other source).
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// Directory of collateral JSON files, used by TEE, FMSPC and PCK CA.
    #[arg(long, value_name = "DIR")]
    collateral_dir: Option<PathBuf>,
    /// PCCS or Intel PCS to fetch missing collateral from [default: env TEESQL_PCCS_URL (formerly PCCS_URL), else
    /// Intel PCS].
    #[arg(long, value_name = "URL")]
    pccs_url: Option<String>,
    /// Never fetch collateral over the network.
    #[arg(long)]
    offline: bool,
    /// Timeout for each collateral request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    fetch_timeout: u64,

    /// Appraise as of this unix time (recorded evidence only verifies inside its
    /// collateral window). Default: now.
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// Policy profile directory; repeat to merge profiles. Default: ./policies/teesql.
    #[arg(long = "policy-dir", value_name = "DIR")]
    policy_dirs: Vec<PathBuf>,
    /// Which policy decides: quote, sidecar, client, …
    #[arg(long, default_value = "quote")]
    purpose: String,
    /// Report data the quote must carry (hex, up to 64 bytes, zero-padded).
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
    /// Root CA certificate (DER or PEM) to verify quotes against, instead of Intel's
    /// (`tdx.root = "custom"`, or `intel` if it is Intel's).
    #[arg(long, value_name = "FILE", conflicts_with = "dev_trust_root")]
    trust_root: Option<PathBuf>,
    /// Quote backend: dcap, ita, simulator (development only, alone), or a chain tried in
    /// order when one cannot decide, e.g. dcap,ita [default: dcap].
    #[arg(long, value_name = "NAMES")]
    backend: Option<String>,
    /// Intel Trust Authority API base [default: https://api.trustauthority.intel.com].
    #[arg(long, value_name = "URL")]
    ita_url: Option<String>,
    /// Where ITA's token-signing keys are read [default: the region's portal /certs].
    #[arg(long, value_name = "URL")]
    ita_jwks_url: Option<String>,
    /// The issuers ITA tokens may name, comma-separated [default: "Intel Trust Authority"
    /// and the region's portal URL].
    #[arg(long, value_name = "ISS")]
    ita_issuer: Option<String>,
    /// A file holding the ITA API key [default: env INTEL_TRUST_AUTHORITY_API_KEY].
    #[arg(long, value_name = "FILE")]
    ita_api_key_file: Option<PathBuf>,
    /// ITA policy ids (UUIDs, comma-separated) the quote must match.
    #[arg(long, value_name = "UUIDS")]
    ita_policy_ids: Option<String>,
    /// Ask ITA for no token unless every policy matches (PolicyMustMatch).
    #[arg(long)]
    ita_policy_must_match: bool,
    /// AMD certificates laid out like KDS, for SEV-SNP evidence that carries no chain:
    /// DIR/<Product>/cert_chain (ASK then ARK, PEM) and
    /// DIR/<Product>/<hwID hex>/<REPORTED_TCB hex>.der (the VCEK). Nothing is fetched.
    #[arg(long, value_name = "DIR")]
    snp_cert_dir: Option<PathBuf>,
    /// A development root (from `teesql-dev agent --out-dir`) to verify quotes against:
    /// claims say `tdx.root = "dev"`, which only the development profile accepts.
    #[arg(long, value_name = "FILE")]
    dev_trust_root: Option<PathBuf>,
}

pub async fn run(args: VerifyArgs) -> ExitCode {
    match prepare_and_verify(args).await {
        Ok(decision) => {
            match serde_json::to_string_pretty(&decision) {
                Ok(json) => super::out(&format!("{json}\n")),
                Err(e) => return super::usage_error(format!("cannot print the decision: {e}")),
            }
            if decision.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(msg) => super::usage_error(msg),
    }
}

async fn prepare_and_verify(args: VerifyArgs) -> Result<teesql_verifier::Decision, String> {
    let dirs = super::policy_dirs(args.policy_dirs).map_err(|e| e.to_string())?;
    let policies = PolicySet::load(&dirs, DEFAULT_EVAL_LIMIT).map_err(|e| e.to_string())?;

    let mut evidence = read_evidence(
        args.quote.as_deref(),
        args.cert.as_deref(),
        args.attestation.as_deref(),
        args.getquote.as_deref(),
    )?;
    if let Some(p) = &args.gpu_evidence {
        evidence.gpu_evidence = Some(read_bounded(p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let expected = args
        .report_data
        .as_deref()
        .map(|h| decode_hex("--report-data", h, 64))
        .transpose()
        .map_err(|e| e.to_string())?;

    if args.fetch_timeout == 0 {
        return Err("--fetch-timeout: 0 is below the minimum, 1".into());
    }
    let clock = args.now.map(Clock::Fixed).unwrap_or(Clock::System);
    let pccs_url = args
        .pccs_url
        .or_else(|| {
            ProcessEnv
                .var("TEESQL_PCCS_URL")
                .or_else(|| ProcessEnv.var("PCCS_URL"))
        })
        .unwrap_or_else(|| INTEL_PCS_URL.to_string());
    let mut problems = Problems::new();
    let (chain, ita) = resolve_backends(
        &BackendSettings {
            backend: args.backend,
            ita_url: args.ita_url,
            ita_jwks_url: args.ita_jwks_url,
            ita_issuer: args.ita_issuer,
            ita_api_key_file: args.ita_api_key_file,
            ita_policy_ids: args.ita_policy_ids,
            ita_policy_must_match: Some(args.ita_policy_must_match),
        },
        &ProcessEnv,
        &mut problems,
    );
    let chain = problems
        .finish(|| chain)
        .map_err(|errors| errors.join("; "))?;
    let backend = BackendConfig {
        chain,
        ita,
        platform_cache_bytes: teesql_verifier::backend::platform::DEFAULT_PLATFORM_CACHE_BYTES,
        trust_root: TrustRoot::choose(args.trust_root.as_deref(), args.dev_trust_root.as_deref())
            .map_err(|e| e.to_string())?,
        collateral: CollateralConfig {
            file: args.collateral,
            dir: args.collateral_dir,
            pccs_url: (!args.offline).then_some(pccs_url),
            fetch_timeout: Duration::from_secs(args.fetch_timeout),
            cache_capacity: 16,
            clock,
            ..CollateralConfig::default()
        },
    }
    .build()
    .map_err(|e| e.to_string())?;
    let request = DecisionRequest {
        expected_report_data: expected.as_deref(),
        ..DecisionRequest::new(&evidence, &args.purpose, clock.now())
    };
    let appraiser = match args.snp_cert_dir {
        Some(dir) => backend.appraiser.with_snp(
            teesql_verifier::snp::SnpVerifier::default()
                .with_cert_dir(teesql_verifier::snp::CertDir::new(dir)),
        ),
        None => backend.appraiser,
    };
    appraiser
        .decide(&policies, request)
        .await
        .map_err(|e| e.to_string())
}

fn read_evidence(
    quote: Option<&Path>,
    cert: Option<&Path>,
    attestation: Option<&Path>,
    getquote: Option<&Path>,
) -> Result<Evidence, String> {
    let (path, decoded) = if let Some(p) = quote {
        (
            p,
            read_bounded(p)
                .and_then(|b| Ok(Evidence::from_quote(evidence::decode_quote_text(&b)?))),
        )
    } else if let Some(p) = cert {
        (
            p,
            read_bounded(p).and_then(|b| {
                let chain = evidence::decode_cert_chain(&b)?;
                evidence::decode_certificate_der(&chain)
            }),
        )
    } else if let Some(p) = attestation {
        (
            p,
            read_bounded(p).and_then(|b| evidence::decode_attestation_text(&b)),
        )
    } else if let Some(p) = getquote {
        (
            p,
            read_bounded(p).and_then(|b| evidence::decode_getquote_json(&b)),
        )
    } else {
        return Err("give one of --quote, --cert, --attestation, --getquote".into());
    };
    decoded.map_err(|e| format!("{}: {e}", path.display()))
}

/// Read a file, refusing anything larger than the evidence bound before reading it all.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, EvidenceError> {
    let io = |e: std::io::Error| EvidenceError::Invalid(format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_EVIDENCE_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > MAX_EVIDENCE_LEN {
        return Err(EvidenceError::TooLarge {
            what: "evidence file",
            len: buf.len(),
            limit: MAX_EVIDENCE_LEN,
        });
    }
    Ok(buf)
}
