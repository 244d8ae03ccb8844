//! The alert rules in `deploy/monitoring/alerts.yml` are valid Prometheus rules, fire when
//! they should (`promtool test rules alerts_test.yml` there), and read metrics the verifier
//! really exports. `promtool` comes with Debian's `prometheus` package (`.ci/run`
//! installs it); without it this test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use teesql_sidecar::metrics::{Metrics as SidecarMetrics, Outcome};
use teesql_tests::cluster::repo_root;
use teesql_verifier::collateral::{CollateralConfig, CollateralProvider};
use teesql_verifier::service::Metrics;
use teesql_verifier::service::metrics::TcbSeen;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/monitoring"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (apt-get install prometheus; .ci/run installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_fire_when_they_should() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("13 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alert_rules_read_metrics_the_verifier_and_sidecar_export() {
    // Offline (no PCCS): the collateral counters are exported all the same, at 0, and
    // the collateral file gives the expiry gauge its `offline` sample.
    let collateral = CollateralProvider::new(&CollateralConfig {
        file: Some(repo_root().join("testdata/dcap/tdx_quote_collateral.json")),
        pccs_url: None,
        ..CollateralConfig::default()
    })
    .unwrap();
    let m = Metrics::new().with_collateral(Arc::new(collateral));
    m.tcb_seen(
        &TcbSeen {
            platform: "B0C06F000000:03030202:11:06010300".into(),
            standard: "UpToDate".into(),
            early: Some("OutOfDate".into()),
            days_until: Some(29),
        },
        1_000,
    );
    // A labelled series appears with its first count: count one of each a rule reads.
    m.decision("client", false, Duration::from_millis(3));
    m.denials("client", ["collateral_expired"]);
    let verifier = m.encode();
    let s = SidecarMetrics::new();
    s.verifier_call(Duration::from_millis(3), false);
    s.renewal(true);
    s.renewal(false);
    s.connection(Outcome::TooMany);
    let sidecar = s.encode();
    let rules = std::fs::read_to_string(repo_root().join("deploy/monitoring/alerts.yml")).unwrap();
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("teesql_") {
            used += 1;
            let exported = if word.starts_with("teesql_sidecar_") {
                &sidecar
            } else {
                &verifier
            };
            assert!(
                exported.contains(&format!("\n{word}")),
                "{word} is not exported:\n{exported}"
            );
        }
    }
    assert!(used >= 2, "{used}");
    assert!(
        verifier.contains("teesql_verifier_tcb_days_until_demotion 29"),
        "{verifier}"
    );
}
