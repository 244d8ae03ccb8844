//! Measurements the benchmarks share, each with the baseline it is judged against measured
//! in the same call: `cargo bench -p teesql-verifier --bench platform` and `--bench
//! service` print them in detail, `teesql-bench` in its one table of goals. Timings are of
//! one call each; compare them only within one run (these machines are shared and noisy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dcap_qvl::QuoteCollateralV3;

use crate::backend::dcap::{DcapBackend, TrustRoot};
use crate::collateral::{Collateral, CollateralConfig, CollateralProvider};
use crate::evidence::Quote;
use crate::service::config::{ServeConfig, ServeSettings};
use crate::service::{DecisionService, QuoteInput, TokenRequest};

/// The clock the recorded Intel quote and its collateral are appraised at (inside the
/// collateral's window; testdata/README.md).
pub const RECORDED_NOW: u64 = 1_751_000_000;

/// `n` timings of `f`, which is given the call's index.
pub fn time(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Vec<Duration>> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i)?;
            Ok(t.elapsed())
        })
        .collect()
}

/// The median of `samples`; zero for none.
pub fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The recorded Intel TDX quote and its collateral (`testdata/dcap`) under `repo`.
pub fn recorded_intel(repo: &Path) -> Result<(Quote, Collateral)> {
    let dir = repo.join("testdata/dcap");
    let bytes = std::fs::read(dir.join("tdx_quote"))
        .with_context(|| format!("{}", dir.join("tdx_quote").display()))?;
    let quote = crate::evidence::decode_quote_bytes(&bytes)?;
    let collateral = Collateral::from_file(&dir.join("tdx_quote_collateral.json"))?;
    Ok((quote, collateral))
}

/// A full DCAP verification of a platform never seen, against dcap-qvl's own `verify` of
/// the same quote and collateral: `(ours, dcap_qvl)`, `n` timings each, dcap-qvl's first.
///
/// Each of our verifications has a backend of its own, made before the timing, so that
/// nothing of the platform is known (its TCB standings are kept per backend) and no
/// platform cache serves it. The collateral set is shared, as a verifier shares it between
/// platforms: its own signatures are checked by the first verification with it.
pub fn never_seen_platform(
    quote: &Quote,
    collateral: &Collateral,
    now: u64,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    // A tenth more of each first, untimed: caches and branch predictors warm.
    let warm = n / 10 + 1;
    let intel = dcap_qvl::verify::QuoteVerifier::new_prod();
    let qvl = |_| -> Result<()> {
        intel.verify(quote.raw(), &collateral.data, now)?;
        Ok(())
    };
    time(warm, qvl)?;
    let dcap_qvl = time(n, qvl)?;
    let provider = Arc::new(CollateralProvider::new(&CollateralConfig {
        pccs_url: None,
        ..CollateralConfig::default()
    })?);
    let fresh: Vec<DcapBackend> = (0..warm + n)
        .map(|_| DcapBackend::new(TrustRoot::intel(), provider.clone()))
        .collect();
    let ours = |i: usize| -> Result<()> {
        let facts = fresh[i].verify_with(quote, collateral, now);
        ensure!(
            facts.verified,
            "the recorded quote did not verify: {:?}",
            facts.error
        );
        Ok(())
    };
    time(warm, ours)?;
    let ours = time(n, |i| ours(warm + i))?;
    Ok((ours, dcap_qvl))
}

/// The verifier's settings for the decision measurements, over `extra`: the production
/// policy profile (`policies/teesql`), the recorded collateral, offline, no decision log,
/// the clock pinned at [`RECORDED_NOW`].
pub fn service_config(repo: &Path, extra: ServeSettings) -> Result<ServeConfig> {
    ServeConfig::resolve(ServeSettings {
        policy_dirs: Some(vec![repo.join("policies/teesql")]),
        collateral_file: Some(repo.join("testdata/dcap/tdx_quote_collateral.json")),
        offline: Some(true),
        decision_log: Some("off".into()),
        now: Some(RECORDED_NOW),
        ..extra
    })
    .map_err(|errors| anyhow::anyhow!("the verifier's settings: {}", errors.join("; ")))
}

/// A decision as a Trustee-style service makes it: nothing is kept between requests (a
/// fresh policy engine, the policy parsed, dcap-qvl's full verification, the claims read,
/// the policy evaluated). The baseline of the warm decision.
#[derive(Debug)]
pub struct TrusteeStyle {
    policy_files: Vec<(String, String)>,
    data: String,
    claims: PathBuf,
}

impl TrusteeStyle {
    /// The production policy profile's files under `repo`, and the recorded quote's claims
    /// (`verifier/tests/golden/claims-tdx-quote.json`), read per decision.
    pub fn load(repo: &Path) -> Result<Self> {
        let policy_files = ["lib", "quote", "sidecar", "client", "manifest", "report"]
            .iter()
            .map(|f| {
                let p = repo.join(format!("policies/teesql/{f}.rego"));
                let src = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
                Ok((p.display().to_string(), src))
            })
            .collect::<Result<_>>()?;
        let data = std::fs::read_to_string(repo.join("policies/teesql/data.json"))?;
        Ok(Self {
            policy_files,
            data,
            claims: repo.join("verifier/tests/golden/claims-tdx-quote.json"),
        })
    }

    /// One decision on `quote`: whether it is allowed.
    pub fn decide(&self, quote: &[u8], collateral: &QuoteCollateralV3, now: u64) -> Result<bool> {
        let verified = dcap_qvl::verify::QuoteVerifier::new_prod()
            .verify_with_policy(
                quote,
                collateral,
                now,
                &dcap_qvl::QuotePolicy::claims_only(now),
            )
            .is_ok();
        let mut engine = regorus::Engine::new();
        for (path, src) in &self.policy_files {
            engine.add_policy(path.clone(), src.clone())?;
        }
        engine.add_data_json(&self.data)?;
        engine.set_input_json(&std::fs::read_to_string(&self.claims)?)?;
        let allow = engine.eval_rule("data.teesql.quote.allow".into())?;
        engine.eval_rule("data.teesql.quote.deny".into())?;
        Ok(verified && allow == regorus::Value::Bool(true))
    }
}

/// `n` warm decisions in process on `quote` (after one that caches its appraisal), each
/// with a signed token when `signed`; with the wall time of the `n`.
pub async fn warm_decisions(
    service: &DecisionService,
    quote: &[u8],
    n: usize,
    signed: bool,
) -> Result<(Vec<Duration>, Duration)> {
    let request = || QuoteInput::Quote {
        quote: quote.to_vec(),
        event_log: String::new(),
    };
    service.verify_quote("quote", request(), None).await?;
    let wall = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let d = service
            .verify_quote_with(
                "quote",
                request(),
                None,
                TokenRequest::default().with_sign(signed),
            )
            .await?;
        samples.push(t.elapsed());
        ensure!(
            d.cached && d.allow && d.token.is_empty() != signed,
            "a warm decision was not the cached, allowed one asked for"
        );
    }
    Ok((samples, wall.elapsed()))
}
