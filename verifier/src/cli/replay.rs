//! `teesql-verifier policy replay`: recorded evidence re-appraised under a new policy
//! profile and/or Intel's early TCB set, listing every identity whose decision changes,
//! so a rollout (of a policy, or of Intel's next TCB set) can be gated in CI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;
use teesql_verifier::lifecycle::as_if_promoted;
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet, Verdict};

use super::tcb_cmd::{AppraisalArgs, read_evidence_dir};

/// Exit status when an allowed identity would be denied.
const ALLOW_TO_DENY: u8 = 3;

/// Which TCB set the new decisions are made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcbSet {
    /// Intel's standard set, as the evidence is appraised today.
    Standard,
    /// Intel's early set, as if it had become the standard one today.
    Early,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A directory of evidence files (quotes, RA-TLS certificates, attestations, GetQuote
    /// responses), e.g. what the sidecars' `/attestation` and clients presented.
    #[arg(long, value_name = "DIR")]
    evidence_dir: PathBuf,
    /// The new policy profile; repeat to merge profiles.
    #[arg(long = "policy-dir", value_name = "DIR", required = true)]
    policy_dirs: Vec<PathBuf>,
    /// The profile deciding today [default: ./policies/teesql].
    #[arg(long = "baseline-policy-dir", value_name = "DIR")]
    baseline_dirs: Vec<PathBuf>,
    /// Decide the new decisions under this TCB set.
    #[arg(long, value_enum, default_value = "standard")]
    tcb_set: TcbSet,
    /// Which policy decides: quote, sidecar, client, …
    #[arg(long, default_value = "quote")]
    purpose: String,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    appraisal: AppraisalArgs,
}

/// One decision before and after.
#[derive(Debug, Serialize)]
struct Outcome {
    allow: bool,
    codes: Vec<String>,
}

impl From<&Verdict> for Outcome {
    fn from(v: &Verdict) -> Self {
        Self {
            allow: v.allow,
            codes: v.told().iter().map(|r| r.code.clone()).collect(),
        }
    }
}

/// An identity whose decision changes.
#[derive(Debug, Serialize)]
struct Change {
    file: String,
    app_id: Option<String>,
    compose_hash: Option<String>,
    before: Outcome,
    after: Outcome,
}

#[derive(Debug, Serialize)]
struct Replay {
    evidence: usize,
    allow_to_deny: usize,
    deny_to_allow: usize,
    changes: Vec<Change>,
}

pub async fn run(args: ReplayArgs) -> ExitCode {
    let replay = match replay(&args).await {
        Ok(r) => r,
        Err(e) => return super::usage_error(e),
    };
    if args.json {
        super::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&replay).unwrap_or_default()
        ));
    } else {
        let mut out = String::new();
        for c in &replay.changes {
            let word = |o: &Outcome| if o.allow { "allow" } else { "deny" };
            out.push_str(&format!(
                "{} -> {}  {}  app_id {} compose_hash {}  ({})\n",
                word(&c.before),
                word(&c.after),
                c.file,
                c.app_id.as_deref().unwrap_or("-"),
                c.compose_hash.as_deref().unwrap_or("-"),
                c.after.codes.join(", "),
            ));
        }
        out.push_str(&format!(
            "{} evidence files; {} allow -> deny, {} deny -> allow\n",
            replay.evidence, replay.allow_to_deny, replay.deny_to_allow
        ));
        super::out(&out);
    }
    if replay.allow_to_deny > 0 {
        ExitCode::from(ALLOW_TO_DENY)
    } else {
        ExitCode::SUCCESS
    }
}

async fn replay(args: &ReplayArgs) -> Result<Replay, String> {
    let load =
        |dirs: &[PathBuf]| PolicySet::load(dirs, DEFAULT_EVAL_LIMIT).map_err(|e| e.to_string());
    let baseline =
        load(&super::policy_dirs(args.baseline_dirs.clone()).map_err(|e| e.to_string())?)?;
    let new = load(&args.policy_dirs)?;
    for (name, set) in [("baseline", &baseline), ("new", &new)] {
        if !set.purposes().iter().any(|p| p == &args.purpose) {
            return Err(format!(
                "the {name} profile has no purpose {:?}",
                args.purpose
            ));
        }
    }
    let appraiser = args.appraisal.appraiser().map_err(|e| e.to_string())?;
    let now = args.appraisal.clock().now();
    let evidence = read_evidence_dir(&args.evidence_dir).map_err(|e| e.to_string())?;
    let mut replay = Replay {
        evidence: evidence.len(),
        allow_to_deny: 0,
        deny_to_allow: 0,
        changes: Vec::new(),
    };
    for (path, ev) in evidence {
        let appraised = appraiser.appraise(&ev, now, None).await;
        let (app_id, compose_hash) = appraised
            .app
            .as_ref()
            .map(|a| (a.app_id.clone(), a.compose_hash.clone()))
            .unwrap_or_default();
        let claims = serde_json::to_value(appraised.into_claims(&args.purpose, now, None))
            .map_err(|e| e.to_string())?;
        let later = match args.tcb_set {
            TcbSet::Early => as_if_promoted(&claims).unwrap_or_else(|| claims.clone()),
            TcbSet::Standard => claims.clone(),
        };
        let decide = |set: &PolicySet, c: &serde_json::Value| {
            set.evaluate(&args.purpose, c)
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let (before, after) = (decide(&baseline, &claims)?, decide(&new, &later)?);
        if before.allow == after.allow {
            continue;
        }
        if before.allow {
            replay.allow_to_deny += 1;
        } else {
            replay.deny_to_allow += 1;
        }
        replay.changes.push(Change {
            file: path.display().to_string(),
            app_id,
            compose_hash,
            before: (&before).into(),
            after: (&after).into(),
        });
    }
    Ok(replay)
}
