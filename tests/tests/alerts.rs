//! The alert rules in `deploy/alerts.yml` are valid Prometheus rules, fire when they
//! should (`promtool test rules deploy/alerts_test.yml`), and read metrics the verifier
//! really exports. `promtool` comes with Debian's `prometheus` package (`.ci/run`
//! installs it); without it this test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use teesql_tests::cluster::repo_root;
use teesql_verifier::service::Metrics;
use teesql_verifier::service::metrics::TcbSeen;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy"))
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
    assert!(checked.contains("2 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alert_rules_read_metrics_the_verifier_exports() {
    let m = Metrics::new();
    m.tcb_seen(
        &TcbSeen {
            platform: "B0C06F000000:03030202:11:06010300".into(),
            standard: "UpToDate".into(),
            early: Some("OutOfDate".into()),
            days_until: Some(29),
        },
        1_000,
    );
    let exported = m.encode();
    let rules = std::fs::read_to_string(repo_root().join("deploy/alerts.yml")).unwrap();
    let mut used = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("teesql_") {
            used += 1;
            assert!(
                exported.contains(&format!("\n{word}")),
                "{word} is not exported:\n{exported}"
            );
        }
    }
    assert!(used >= 2, "{used}");
    assert!(
        exported.contains("teesql_verifier_tcb_days_until_demotion 29"),
        "{exported}"
    );
}
