//! Shared by the verifier targets: run what the verifier does with decoded evidence
//! before any policy sees it (event log replay, app identity, claims), so the fuzzers
//! reach the code that consumes parsed peer data, not just the parsers.
#![allow(dead_code)]

use teesql_appraisal::backend::platform::{PlatformKey, signature_verifies};
use teesql_appraisal::backend::{QuoteFacts, TrustRootKind, VerifyErrorCode};
use teesql_appraisal::claims::AppraisedEvidence;
use teesql_appraisal::collateral::key_for_quote;
use teesql_appraisal::eventlog::{AppIdentity, RuntimeEvent, replay_rtmr3};
use teesql_appraisal::evidence::{Evidence, EventLog, Quote};

/// The quote accessors the claims and the collateral lookup use.
pub fn exercise_quote(q: &Quote) {
    let _ = q.version();
    let _ = q.tee_type();
    let _ = q.report_data();
    let _ = q.raw().len();
    if let Some(td) = q.td_report() {
        let _ = td.debug();
    }
    // Which collateral the quote needs: parses the PCK certificate the quote embeds.
    trace("key_for_quote", &key_for_quote(q));
    // The platform cache's view: where the signature and key sit, the key's digest, and
    // the one check a known platform's quote gets.
    if let Some(key) = PlatformKey::of(b"root", q) {
        let _ = signature_verifies(q, &key);
    }
}

/// RTMR3 replay and the app identity of runtime events.
pub fn exercise_events(events: &[RuntimeEvent]) {
    let _ = replay_rtmr3(events);
    let _ = AppIdentity::from_events(events);
    for e in events {
        let _ = e.digest();
    }
}

pub fn exercise_event_log(log: &EventLog) {
    let r = log.rtmr3_events();
    trace("rtmr3_events", &r);
    if let Ok(events) = r {
        exercise_events(&events);
    }
}

/// Everything the verifier derives from decoded evidence: quote accessors, event log
/// replay, and the claims document (serialized, as policies receive it).
pub fn exercise_evidence(ev: &Evidence) {
    if let Some(q) = &ev.quote {
        exercise_quote(q);
    }
    if let Some(log) = &ev.event_log {
        exercise_event_log(log);
    }
    // SEV-SNP: the whole offline appraisal (chain, signature, VCEK rules) on any bytes.
    let snp = ev
        .snp
        .as_ref()
        .map(|s| teesql_appraisal::snp::SnpVerifier::default().appraise(s, 1_781_658_304));
    let _ = serde_json::to_vec(&snp);
    let facts = QuoteFacts {
        tcb_status: Some("UpToDate".into()),
        ..QuoteFacts::new("fuzz", TrustRootKind::Intel).failed(VerifyErrorCode::Other, "fuzz")
    };
    for (facts, expected) in [(Some(&facts), Some(&[0u8; 64][..])), (None, None)] {
        let appraised = AppraisedEvidence::build_with_snp(ev, facts, snp.clone(), expected);
        let _ = appraised.measured();
        let claims = appraised.into_claims("fuzz", 0, None);
        let _ = serde_json::to_vec(&claims);
    }
}

static TRACE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("TEESQL_FUZZ_TRACE").is_some());

/// With `TEESQL_FUZZ_TRACE=1` in the environment, print what a decoder returned (to
/// check by hand that seeds reach the success paths: run the target on one input).
pub fn trace<T: std::fmt::Debug, E: std::fmt::Display>(what: &str, r: &Result<T, E>) {
    if *TRACE {
        match r {
            Ok(_) => eprintln!("[trace] {what}: ok"),
            Err(e) => eprintln!("[trace] {what}: error: {e}"),
        }
    }
}
