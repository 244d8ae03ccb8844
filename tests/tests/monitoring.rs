//! Every metric the monitoring kit reads exists: each `teesql_*` name in
//! `deploy/monitoring/alerts.yml` and `dashboard.json` is a metric family that the sidecar's
//! or the verifier's `/metrics` of a running `teesql-dev` describes (a `# TYPE` line of the
//! right type), so no alert or panel waits on a metric that was renamed or never exported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use teesql_tests::clients::{psql, start_teesql_dev_with};
use teesql_tests::cluster::repo_root;

/// Every `teesql_[a-z0-9_]+` word of `text` (the regex, as a scan: a name starts where no
/// identifier character precedes it and runs while identifier characters follow).
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("teesql_") {
        let at_word_start = !rest[..i].chars().next_back().is_some_and(ident);
        let word: String = rest[i..].chars().take_while(|c| ident(*c)).collect();
        if at_word_start && word.len() > "teesql_".len() {
            names.insert(word.clone());
        }
        rest = &rest[i + word.len()..];
    }
    names
}

/// The family a sample name belongs to, and the types that family may have: a counter's
/// samples end in `_total`, a histogram's in `_bucket`, `_count`, `_sum`; any other name is
/// the family itself (a gauge, or an info metric).
fn family_of(name: &str) -> (&str, &'static [&'static str]) {
    for (suffix, types) in [
        ("_total", &["counter"][..]),
        ("_bucket", &["histogram"][..]),
        ("_count", &["histogram", "summary"][..]),
        ("_sum", &["histogram", "summary"][..]),
    ] {
        if let Some(family) = name.strip_suffix(suffix) {
            return (family, types);
        }
    }
    (name, &["gauge", "unknown", "info", "stateset"])
}

/// `# TYPE <family> <type>` lines of a Prometheus text page.
fn described(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(f, t)| (f.to_string(), t.trim().to_string()))
        .collect()
}

/// Stops teesql-dev (Ctrl-C, as a user would), also when an assertion fails.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_read_is_exported() {
    let root = repo_root().join("deploy/monitoring");
    let mut names = BTreeSet::new();
    for file in ["alerts.yml", "dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let found = metric_names(&text);
        assert!(!found.is_empty(), "no teesql_ metric in {file}");
        names.extend(found);
    }
    assert!(
        names.len() > 20,
        "only {} names found: {names:?}",
        names.len()
    );

    // As dev_cluster.rs starts it, rehearsing a TCB recovery 30 days ahead: the TCB
    // gauges (platforms by status, days until a demotion) only have samples once a
    // verified quote was judged, and the demotion gauge only while a demotion is ahead.
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("teesql.env");
    let _dev = Dev(start_teesql_dev_with(
        Path::new(env!("CARGO_BIN_EXE_teesql-dev")),
        &env_file,
        Stdio::null(),
        &["--tcb-recovery-in-days", "30"],
    )
    .await
    .unwrap());
    let env: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // A connection through the sidecar (mode D), so per-connection series exist too, and
    // one through the mode A forwarder, which has the verifier judge the sidecar's quote
    // (DCAP: collateral fetched from the dev PCCS, the platform's TCB standing noted).
    for dsn in [&env["DATABASE_URL"], &env["TEESQL_FORWARD_URL"]] {
        let o = psql(dsn, &["-c", "SELECT 1"]).await;
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "1",
            "{dsn}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    let sidecar = scrape(&format!(
        "http://{}:{}/metrics",
        env["TEESQL_HOST"], env["TEESQL_HTTP_PORT"]
    ))
    .await;
    let verifier = scrape(&env["TEESQL_VERIFIER_METRICS_URL"]).await;
    let (sidecar_types, verifier_types) = (described(&sidecar), described(&verifier));
    assert!(
        sidecar_types
            .keys()
            .all(|f| f.starts_with("teesql_sidecar_")),
        "{sidecar}"
    );
    assert!(
        verifier_types
            .keys()
            .all(|f| f.starts_with("teesql_verifier_")),
        "{verifier}"
    );

    let mut missing = Vec::new();
    for name in &names {
        let (family, types) = family_of(name);
        let found = sidecar_types
            .get(family)
            .or_else(|| verifier_types.get(family));
        match found {
            Some(t) if types.contains(&t.as_str()) => {}
            Some(t) => missing.push(format!("{name}: {family} is a {t}, not {types:?}")),
            None => missing.push(format!("{name}: no # TYPE {family}")),
        }
    }
    assert!(
        missing.is_empty(),
        "read by deploy/monitoring but not exported:\n{}\n\nsidecar:\n{sidecar}\nverifier:\n{verifier}",
        missing.join("\n")
    );

    // The conditional samples are really there: the demotion 30 days ahead, and the
    // expiry of the collateral fetched from the dev PCCS.
    let days = verifier
        .lines()
        .find_map(|l| l.strip_prefix("teesql_verifier_tcb_days_until_demotion "))
        .unwrap_or_else(|| panic!("no demotion ahead:\n{verifier}"));
    assert!(matches!(days.trim(), "29" | "30"), "{days}");
    assert!(
        verifier.lines().any(|l| l
            .starts_with("teesql_verifier_collateral_expiry_timestamp_seconds{source=\"pccs\"} ")),
        "{verifier}"
    );
    // Families whose series only come with their first count are described before it.
    for family in ["teesql_verifier_denials", "teesql_verifier_policy_reloads"] {
        assert_eq!(
            verifier_types.get(family).map(String::as_str),
            Some("counter"),
            "{verifier}"
        );
    }
    for family in [
        "teesql_sidecar_sessions_revoked",
        "teesql_sidecar_certificate_renewals",
    ] {
        assert_eq!(
            sidecar_types.get(family).map(String::as_str),
            Some("counter"),
            "{sidecar}"
        );
    }
    // Labelled series created at 0 from the start, so rate() sees their first count.
    for series in [
        "teesql_sidecar_pool_checkouts_total{result=\"hit\"}",
        "teesql_sidecar_pool_returns_total{result=\"full_total\"}",
        "teesql_sidecar_sessions_rejudged_total{result=\"revoked\"}",
    ] {
        assert!(
            sidecar.lines().any(|l| l.starts_with(series)),
            "{series} missing:\n{sidecar}"
        );
    }
}

#[test]
fn names_are_found_as_whole_words_and_mapped_to_their_family() {
    let names = metric_names(
        "expr: rate(teesql_sidecar_x_total[5m]) / my_teesql_y + {\"teesql_verifier_z_bucket\"} teesql_",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["teesql_sidecar_x_total", "teesql_verifier_z_bucket"]
    );
    assert_eq!(family_of("teesql_a_total").0, "teesql_a");
    assert_eq!(family_of("teesql_a_seconds_count").0, "teesql_a_seconds");
    assert_eq!(
        family_of("teesql_sidecar_sessions").0,
        "teesql_sidecar_sessions"
    );
    assert!(family_of("teesql_sidecar_sessions").1.contains(&"gauge"));
}
