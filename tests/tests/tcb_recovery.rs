//! A TCB recovery rehearsed end to end (README, "TCB recoveries"), the way Intel's 19→20
//! promotion of August 2026 went: the development platform's PCCS publishes a set that
//! rates the platform `OutOfDate` (its TDX module must rise from SVN 5 to 6) as `early`,
//! then makes it the standard one. Two tenants' applications connect through the sidecar
//! each time; the verifier reads both sets from the PCCS like Intel's.
//!
//! - 45 days before the promotion: every connection is admitted, and each decision warns
//!   `tcb_early_demotion` with the date, the days left and the fix.
//! - On promotion day, with `tcb_grace_days = 30`: no tenant connection is refused; each
//!   decision warns `tcb_grace`.
//! - 31 days after: refused (`28000` to the client), the decision log says
//!   `tcb_out_of_date` and names the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use teesql_devattest::pki::TcbRecovery;
use teesql_tests::tenants::{Setup, SetupOptions, setup_with};

async fn rehearsal(promotion_in_days: i64) -> Setup {
    let mut data = serde_json::Map::new();
    data.insert("tcb_grace_days".into(), json!(30));
    setup_with(SetupOptions {
        tcb_recovery: Some(TcbRecovery::in_days(promotion_in_days)),
        data,
        ..SetupOptions::default()
    })
    .await
    .unwrap()
}

/// Connect acme and globex with their secrets; how many were refused.
async fn connect_tenants(s: &Setup) -> usize {
    let mut refused = 0;
    for (app, user, secret) in [
        (&s.acme, "tenant_acme", &s.acme_secret),
        (&s.globex, "tenant_globex", &s.globex_secret),
    ] {
        match s.connect(app, user, secret).await.unwrap() {
            Ok(c) => {
                let row = c.query_one("SELECT teesql.tenant()", &[]).await.unwrap();
                let tenant: Option<String> = row.get(0);
                assert!(tenant.is_some(), "{user}");
            }
            Err(e) => {
                let db = e.as_db_error().expect("a Postgres error");
                assert_eq!(db.code().code(), "28000", "{db:?}");
                refused += 1;
            }
        }
    }
    refused
}

fn reasons(decision: &Value) -> Vec<(String, String)> {
    decision["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap().to_string(),
                r["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_promotion_every_decision_warns_ahead() {
    let s = rehearsal(45).await;
    assert_eq!(connect_tenants(&s).await, 0);
    let decisions = s.decisions(2).await.unwrap();
    for d in &decisions {
        assert_eq!(d["allow"], true, "{d}");
        let r = reasons(d);
        assert_eq!(r.len(), 1, "{r:?}");
        let (code, message) = &r[0];
        assert_eq!(code, "tcb_early_demotion");
        assert!(
            message.contains("set 18 rates the platform OutOfDate"),
            "{message}"
        );
        assert!(
            message.contains("tdx_module (TDX Module) 5 -> 6"),
            "{message}"
        );
        // The days left, at least 30 ahead.
        let days: i64 = message
            .split("(in ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{message}"));
        assert!((44..=45).contains(&days), "{message}");
    }
    // The report an operator runs on the decision log (`teesql-verifier tcb report`).
    let mut b = teesql_verifier::lifecycle::Builder::default();
    b.read_log(std::io::BufReader::new(
        std::fs::File::open(&s.log).unwrap(),
    ))
    .unwrap();
    let report = b.finish();
    let table = report.table();
    println!("{table}");
    assert_eq!(report.platforms.len(), 1, "{table}");
    assert!(
        table.contains("now:   UpToDate under standard set 17"),
        "{table}"
    );
    assert!(
        table.contains("next:  OutOfDate under early set 18"),
        "{table}"
    );
    assert!(
        table.contains("fix:   tdx_module (TDX Module) 5 -> 6"),
        "{table}"
    );
    assert!(
        table.contains("tenant acme") && table.contains("tenant globex"),
        "{table}"
    );
    let ahead = report.platforms[0].early["days_until"].as_i64().unwrap();
    assert!(ahead >= 30, "{table}");
    // The metrics an alert rule reads (deploy/monitoring/alerts.yml fires under 30 days).
    let metrics = s.cluster.verifier.metrics().encode();
    let days = metric(&metrics, "teesql_verifier_tcb_days_until_demotion");
    assert!((44.0..=45.0).contains(&days), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "teesql_verifier_tcb_platforms{set=\"early\",status=\"OutOfDate\"}"
        ),
        1.0,
        "{metrics}"
    );
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_promotion_day_the_grace_admits_every_tenant_with_a_warning() {
    let s = rehearsal(0).await;
    assert_eq!(connect_tenants(&s).await, 0);
    for d in s.decisions(2).await.unwrap() {
        assert_eq!(d["allow"], true, "{d}");
        let r = reasons(&d);
        assert_eq!(
            r.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
            ["tcb_grace"],
            "{r:?}"
        );
        assert!(r[0].1.contains("standard for 0 days"), "{}", r[0].1);
    }
    let metrics = s.cluster.verifier.metrics().encode();
    assert_eq!(
        metric(
            &metrics,
            "teesql_verifier_tcb_platforms{set=\"standard\",status=\"OutOfDate\"}"
        ),
        1.0,
        "{metrics}"
    );
    // Demoted already: nothing is ahead any more.
    assert!(
        !metrics.contains("teesql_verifier_tcb_days_until_demotion "),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_the_platform_is_refused_with_the_fix() {
    let s = rehearsal(-31).await;
    assert_eq!(connect_tenants(&s).await, 2);
    for d in s.decisions(2).await.unwrap() {
        assert_eq!(d["allow"], false, "{d}");
        let r = reasons(&d);
        let (code, message) = r
            .iter()
            .find(|(c, _)| c == "tcb_out_of_date")
            .unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!(code, "tcb_out_of_date");
        assert!(message.contains("set 18"), "{message}");
        assert!(
            message.contains("tdx_module (TDX Module) 5 -> 6"),
            "{message}"
        );
    }
}
