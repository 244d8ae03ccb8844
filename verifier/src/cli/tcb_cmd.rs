//! `teesql-verifier tcb report`: which platforms Intel's next TCB set will demote, when,
//! and what fixes them (README, "TCB recoveries").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use teesql_verifier::Clock;
use teesql_verifier::appraise::Appraiser;
use teesql_verifier::backend::dcap::TrustRoot;
use teesql_verifier::backend::{BackendConfig, BackendError};
use teesql_verifier::claims::AppraisedEvidence;
use teesql_verifier::collateral::{CollateralConfig, INTEL_PCS_URL};
use teesql_verifier::evidence::{self, Evidence};
use teesql_verifier::lifecycle::{Builder, Identity};
use teesql_verifier::service::TcbRecord;

/// Most evidence files read from one directory.
const MAX_FILES: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum TcbCommand {
    /// For each platform seen (FMSPC and TCB SVNs) and each identity seen on it (app id,
    /// compose hash, tenant): its TCB status now, under Intel's early set, the day that
    /// changes and what fixes it. Most urgent first.
    ///
    /// From a decision log (`serve --decision-log FILE`) or a directory of evidence
    /// (quotes, RA-TLS certificates, attestations, GetQuote responses), appraised here.
    Report(ReportArgs),
}

/// Where the verifier gets collateral and which root it trusts, for appraising files.
#[derive(Debug, Clone, Args)]
pub struct AppraisalArgs {
    /// Directory of collateral JSON files (`<name>.early.json` for early sets,
    /// `tcbevaluationdatanumbers.json` for the recovery dates), used before the PCCS.
    #[arg(long, value_name = "DIR")]
    pub collateral_dir: Option<PathBuf>,
    /// PCCS or Intel PCS for collateral and the early set [default: env TEESQL_PCCS_URL,
    /// else Intel PCS].
    #[arg(long, value_name = "URL")]
    pub pccs_url: Option<String>,
    /// Never fetch over the network.
    #[arg(long)]
    pub offline: bool,
    /// Root CA (DER or PEM) to verify quotes against instead of Intel's.
    #[arg(long, value_name = "FILE", conflicts_with = "dev_trust_root")]
    pub trust_root: Option<PathBuf>,
    /// The development root (`teesql-dev agent --out-dir`).
    #[arg(long, value_name = "FILE")]
    pub dev_trust_root: Option<PathBuf>,
    /// Appraise as of this unix time [default: now].
    #[arg(long, value_name = "UNIX")]
    pub now: Option<u64>,
}

impl AppraisalArgs {
    /// A DCAP appraiser for these settings.
    pub fn appraiser(&self) -> Result<Appraiser, BackendError> {
        use teesql_proto::settings::{Env, ProcessEnv};
        let pccs_url = self
            .pccs_url
            .clone()
            .or_else(|| ProcessEnv.var("TEESQL_PCCS_URL"))
            .unwrap_or_else(|| INTEL_PCS_URL.to_string());
        let backend = BackendConfig::dcap(
            TrustRoot::choose(self.trust_root.as_deref(), self.dev_trust_root.as_deref())?,
            CollateralConfig {
                dir: self.collateral_dir.clone(),
                pccs_url: (!self.offline).then_some(pccs_url),
                fetch_timeout: Duration::from_secs(10),
                clock: self.clock(),
                ..CollateralConfig::default()
            },
        )
        .build()?;
        Ok(backend.appraiser)
    }

    /// The appraisal clock.
    pub fn clock(&self) -> Clock {
        self.now.map(Clock::Fixed).unwrap_or(Clock::System)
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["evidence_dir", "decision_log"])))]
pub struct ReportArgs {
    /// A decision log written by `serve` (JSON lines; each line's `peer.tcb`).
    #[arg(long, value_name = "FILE")]
    decision_log: Option<PathBuf>,
    /// A directory of evidence files to appraise (every regular file in it).
    #[arg(long, value_name = "DIR")]
    evidence_dir: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    appraisal: AppraisalArgs,
}

pub async fn run(cmd: TcbCommand) -> ExitCode {
    match cmd {
        TcbCommand::Report(args) => match report(&args).await {
            Ok(r) => {
                if args.json {
                    super::out(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&r).unwrap_or_default()
                    ));
                } else {
                    super::out(&r.table());
                }
                ExitCode::SUCCESS
            }
            Err(e) => super::usage_error(e),
        },
    }
}

async fn report(args: &ReportArgs) -> Result<teesql_verifier::lifecycle::Report, String> {
    let mut b = Builder::default();
    if let Some(log) = &args.decision_log {
        let file = std::fs::File::open(log).map_err(|e| format!("{}: {e}", log.display()))?;
        b.read_log(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: {e}", log.display()))?;
    }
    if let Some(dir) = &args.evidence_dir {
        let appraiser = args.appraisal.appraiser().map_err(|e| e.to_string())?;
        let now = args.appraisal.clock().now();
        for (path, evidence) in read_evidence_dir(dir).map_err(|e| e.to_string())? {
            let appraised = appraiser.appraise(&evidence, now, None).await;
            match observation(&appraised) {
                Some((tcb, identity)) => b.observe(&tcb, identity, 0),
                None => eprintln!(
                    "teesql-verifier: {}: no TCB facts (not a dcap-verified TDX quote: {})",
                    path.display(),
                    appraised
                        .tdx
                        .as_ref()
                        .and_then(|t| t.error.clone())
                        .unwrap_or_else(|| "no quote".into())
                ),
            }
        }
    }
    Ok(b.finish())
}

/// What the report needs of an appraisal: `{status, …tdx.tcb}` and the identity.
pub fn observation(a: &AppraisedEvidence) -> Option<(serde_json::Value, Identity)> {
    let tdx = a.tdx.as_ref()?;
    let record = TcbRecord {
        status: tdx.tcb_status.clone()?,
        claims: tdx.tcb.clone()?,
    };
    let identity = Identity {
        app_id: a.app.as_ref().and_then(|x| x.app_id.clone()),
        compose_hash: a.app.as_ref().and_then(|x| x.compose_hash.clone()),
        tenant: None,
    };
    Some((serde_json::to_value(record).ok()?, identity))
}

/// Why a directory of evidence cannot be read ([`read_evidence_dir`]); each message
/// names the directory or file.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceDirError {
    /// The directory cannot be listed.
    #[error("{}: {source}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// More files than a report reads.
    #[error("{}: more than {MAX_FILES} files", dir.display())]
    TooMany {
        /// The directory.
        dir: PathBuf,
    },
    /// A file that cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: teesql_verifier::evidence::EvidenceError,
    },
    /// A file that is no evidence.
    #[error(
        "{}: not a quote, RA-TLS certificate, attestation or GetQuote response",
        path.display()
    )]
    NotEvidence {
        /// The file.
        path: PathBuf,
    },
}

/// Every regular file of `dir` (sorted), decoded as whichever evidence it is: a GetQuote
/// response, an attestation, a certificate chain or a quote. A file that is none of
/// them is an error naming it.
pub fn read_evidence_dir(dir: &Path) -> Result<Vec<(PathBuf, Evidence)>, EvidenceDirError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EvidenceDirError::List {
            dir: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .take(MAX_FILES + 1)
        .collect();
    if paths.len() > MAX_FILES {
        return Err(EvidenceDirError::TooMany {
            dir: dir.to_path_buf(),
        });
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = match super::verify::read_bounded(&p) {
                Ok(b) => b,
                Err(source) => return Err(EvidenceDirError::Read { path: p, source }),
            };
            match decode_any(&bytes) {
                Some(ev) => Ok((p, ev)),
                None => Err(EvidenceDirError::NotEvidence { path: p }),
            }
        })
        .collect()
}

fn decode_any(bytes: &[u8]) -> Option<Evidence> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim_start);
    if text.is_some_and(|t| t.starts_with("-----BEGIN")) {
        let chain = evidence::decode_cert_chain(bytes).ok()?;
        return evidence::decode_certificate_der(&chain).ok();
    }
    if text.is_some_and(|t| t.starts_with('{')) {
        return evidence::decode_getquote_json(bytes)
            .or_else(|_| evidence::decode_attestation_text(bytes))
            .ok();
    }
    evidence::decode_quote_text(bytes)
        .map(Evidence::from_quote)
        .or_else(|_| evidence::decode_attestation_text(bytes))
        .ok()
}
