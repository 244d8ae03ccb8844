//! Prometheus metrics of the verifier, served on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use teesql_proto::runtime::Described;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::platform::PlatformCache;
use crate::collateral::CollateralProvider;

type Labels = Vec<(&'static str, String)>;

/// Every metric the verifier exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<Labels, Counter>,
    denials: Denials,
    latency: Family<Labels, Histogram>,
    cache: Family<Labels, Counter>,
    cache_bytes: Family<Labels, Gauge>,
    reloads: Family<Labels, Counter>,
    policy_info: Family<Labels, Gauge>,
    log_dropped: Counter,
    tcb: TcbGauges,
}

/// A platform's TCB standing as one decision saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbSeen {
    /// `FMSPC:CPUSVN:PCESVN:TEE_TCB_SVN`: what TCB level matching depends on.
    pub platform: String,
    /// Its status under Intel's standard set.
    pub standard: String,
    /// Its status under the early set, when a newer one was read.
    pub early: Option<String>,
    /// Days until the early set becomes the standard one, when known.
    pub days_until: Option<i64>,
}

/// Most platforms the TCB gauges remember (each a few hundred bytes).
const MAX_TCB_PLATFORMS: usize = 4096;
/// A platform not seen for this long no longer counts.
const TCB_SEEN_WINDOW_SECS: u64 = 24 * 3600;

/// The TCB gauges and the platforms they are computed from.
#[derive(Debug, Default)]
struct TcbGauges {
    seen: std::sync::Mutex<std::collections::HashMap<String, (TcbSeen, u64)>>,
    platforms: Family<Labels, Gauge>,
    days_until_demotion: Family<Labels, Gauge>,
}

/// Longest reason code counted under its own `reason` label.
const MAX_REASON_LABEL_BYTES: usize = 64;
/// Most distinct reason codes counted under their own `reason` label; later ones count
/// as `other`.
const MAX_REASON_LABELS: usize = 256;

/// `teesql_verifier_denials_total{purpose,reason}` and the reason codes it has a label
/// for. Reason codes come from the policies, a bounded set, but a policy could make
/// them up from input: the label's cardinality is bounded here all the same.
#[derive(Debug, Default)]
struct Denials {
    family: Family<Labels, Counter>,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Denials {
    /// The `reason` label for `code`: itself, or `other` when it is longer than
    /// [`MAX_REASON_LABEL_BYTES`] or not among the first [`MAX_REASON_LABELS`] codes.
    fn label(&self, code: &str) -> String {
        if code.len() > MAX_REASON_LABEL_BYTES {
            return "other".into();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(code) {
            return code.to_string();
        }
        if seen.len() >= MAX_REASON_LABELS {
            return "other".into();
        }
        seen.insert(code.to_string());
        code.to_string()
    }
}

/// Statuses that mean a platform is (or would be) refused by Intel's TCB.
fn demoted(status: &str) -> bool {
    status.starts_with("OutOfDate") || status == "Revoked"
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered under the `teesql_verifier_` prefix, all at zero; add
    /// the collateral and platform counters with [`Self::with_collateral`] and
    /// [`Self::with_platforms`].
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("teesql_verifier");
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions made, by purpose and outcome (allow, deny)",
            decisions.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 10 µs … ~10 s
            Histogram::new(exponential_buckets(0.000_01, 2.5, 16))
        });
        let denials = Denials::default();
        registry.register(
            "denials",
            "Reason codes of denied decisions, by purpose and reason (one count per reason code of a denial; codes over 64 bytes or beyond the first 256 distinct ones count as other)",
            Described(denials.family.clone()),
        );
        registry.register(
            "decision_duration_seconds",
            "Time to decide, from request to decision, by purpose",
            latency.clone(),
        );
        let cache = Family::<Labels, Counter>::default();
        registry.register(
            "appraisal_cache",
            "Appraisal cache lookups, by result (hit, miss)",
            cache.clone(),
        );
        let cache_bytes = Family::<Labels, Gauge>::default();
        registry.register(
            "appraisal_cache_bytes",
            "Bytes the appraisal cache holds, by tier (verified: appraisals of verified quotes; unverified: everything else)",
            cache_bytes.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads, by result (ok, rejected)",
            Described(reloads.clone()),
        );
        let tcb = TcbGauges::default();
        registry.register(
            "tcb_platforms",
            "Platforms seen in the last 24 hours, by TCB evaluation data set (standard, early) and their TCB status under it",
            tcb.platforms.clone(),
        );
        registry.register(
            "tcb_days_until_demotion",
            "Fewest days until Intel's early TCB set becomes the standard one and demotes a platform seen in the last 24 hours (absent when none would be)",
            tcb.days_until_demotion.clone(),
        );
        let policy_info = Family::<Labels, Gauge>::default();
        registry.register(
            "policy_info",
            "The policy set serving (value 1), labelled by its hash",
            policy_info.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision log lines dropped because the writer was a whole queue behind",
            log_dropped.clone(),
        );
        Self {
            registry,
            log_dropped,
            tcb,
            decisions,
            denials,
            latency,
            cache,
            cache_bytes,
            reloads,
            policy_info,
        }
    }

    /// Also export the collateral counters of `provider`, and the earliest expiry of
    /// the collateral it holds (`collateral_expiry_timestamp_seconds{source}`, read at
    /// scrape time).
    pub fn with_collateral(mut self, provider: Arc<CollateralProvider>) -> Self {
        self.registry
            .register_collector(Box::new(CollateralExpiry(provider.clone())));
        self.registry.register_collector(Box::new(Counters(move || {
            let s = &provider.stats;
            vec![
                (
                    "collateral_fetches",
                    "Collateral fetches from the PCCS / Intel PCS",
                    s.fetches.load(Ordering::Relaxed),
                ),
                (
                    "collateral_fetch_failures",
                    "Collateral fetches that failed (down, timeout, bad response)",
                    s.fetch_failures.load(Ordering::Relaxed),
                ),
                (
                    "collateral_cache_hits",
                    "Collateral served from the cache",
                    s.cache_hits.load(Ordering::Relaxed),
                ),
                (
                    "collateral_failures_reused",
                    "Collateral requests answered with a recent fetch failure instead of a new fetch (the quote was refused; failures are remembered for the failure TTL)",
                    s.failures_reused.load(Ordering::Relaxed),
                ),
            ]
        })));
        self
    }

    /// Also export the platform cache's counters, when there is one.
    pub fn with_platforms(mut self, platforms: Option<Arc<PlatformCache>>) -> Self {
        if let Some(platforms) = platforms {
            self.registry.register_collector(Box::new(Counters(move || {
                let s = &platforms.stats;
                vec![
                    (
                        "platform_cache_hits",
                        "TDX quotes from a known platform: only their own signature checked",
                        s.hits.load(Ordering::Relaxed),
                    ),
                    (
                        "platform_cache_misses",
                        "TDX quotes that needed the full DCAP verification",
                        s.misses.load(Ordering::Relaxed),
                    ),
                ]
            })));
        }
        self
    }

    /// Count a decision by `purpose` and `outcome` (`allow`, `deny`) in
    /// `teesql_verifier_decisions_total`, and observe its latency in
    /// `teesql_verifier_decision_duration_seconds`.
    pub fn decision(&self, purpose: &str, allow: bool, latency: Duration) {
        let outcome = if allow { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&vec![
                ("purpose", purpose.to_string()),
                ("outcome", outcome.into()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("purpose", purpose.to_string())])
            .observe(latency.as_secs_f64());
    }

    /// Count each reason code of a denied decision by `purpose` in
    /// `teesql_verifier_denials_total{purpose,reason}` (one count per code; the
    /// label's values are bounded, see [`Denials::label`]).
    pub fn denials<'a>(&self, purpose: &str, codes: impl IntoIterator<Item = &'a str>) {
        for code in codes {
            let reason = self.denials.label(code);
            self.denials
                .family
                .get_or_create(&vec![("purpose", purpose.to_string()), ("reason", reason)])
                .inc();
        }
    }

    /// Count an appraisal cache lookup, `result` `hit` or `miss`
    /// (`teesql_verifier_appraisal_cache_total`).
    pub fn appraisal_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// Set `teesql_verifier_appraisal_cache_bytes` for both tiers (`verified`,
    /// `unverified`), in bytes.
    pub fn appraisal_cache_bytes(&self, verified: u64, unverified: u64) {
        for (tier, bytes) in [("verified", verified), ("unverified", unverified)] {
            self.cache_bytes
                .get_or_create(&vec![("tier", tier.into())])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Count one decision log line dropped (`teesql_verifier_decision_log_dropped_total`).
    pub fn decision_log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Count a policy reload, `result` `ok` or `rejected` (the old set kept serving)
    /// (`teesql_verifier_policy_reloads_total`).
    pub fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.reloads
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// Make `hash` the one `teesql_verifier_policy_info{hash}` series at 1, dropping the
    /// previous set's.
    pub fn policy_loaded(&self, hash: &str) {
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&vec![("hash", hash.to_string())])
            .set(1);
    }

    /// Note a platform's TCB standing (every decision on a verified `dcap` quote). The
    /// gauges are recomputed when a platform is new or its standing changed, and at
    /// most once a minute otherwise.
    /// Returns whether a platform seen before now has another status under the standard
    /// set (new collateral changed it): sessions that rest on it are judged again.
    pub fn tcb_seen(&self, seen: &TcbSeen, now: u64) -> bool {
        let Ok(mut map) = self.tcb.seen.lock() else {
            return false;
        };
        let mut status_changed = false;
        let changed = match map.get_mut(&seen.platform) {
            Some((old, at)) => {
                let stale = now.saturating_sub(*at) >= 60;
                let changed = old != seen;
                status_changed = old.standard != seen.standard;
                *old = seen.clone();
                *at = now;
                changed || stale
            }
            None => {
                if map.len() >= MAX_TCB_PLATFORMS
                    && let Some(oldest) = map
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
                map.insert(seen.platform.clone(), (seen.clone(), now));
                true
            }
        };
        if !changed {
            return false;
        }
        map.retain(|_, (_, at)| now.saturating_sub(*at) < TCB_SEEN_WINDOW_SECS);
        self.tcb.platforms.clear();
        self.tcb.days_until_demotion.clear();
        let mut fewest: Option<i64> = None;
        for (s, _) in map.values() {
            self.tcb
                .platforms
                .get_or_create(&vec![
                    ("set", "standard".into()),
                    ("status", s.standard.clone()),
                ])
                .inc();
            if let Some(early) = &s.early {
                self.tcb
                    .platforms
                    .get_or_create(&vec![("set", "early".into()), ("status", early.clone())])
                    .inc();
                if demoted(early)
                    && !demoted(&s.standard)
                    && let Some(days) = s.days_until
                {
                    fewest = Some(fewest.map_or(days, |f| f.min(days)));
                }
            }
        }
        if let Some(days) = fewest {
            self.tcb
                .days_until_demotion
                .get_or_create(&Vec::new())
                .set(days);
        }
        status_changed
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Counters read at scrape time from shared atomics: (name, help, value) each.
struct Counters<F>(F);

impl<F> std::fmt::Debug for Counters<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl<F> Collector for Counters<F>
where
    F: Fn() -> Vec<(&'static str, &'static str, u64)> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in (self.0)() {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

/// `teesql_verifier_collateral_expiry_timestamp_seconds{source}`: the earliest
/// `not_after` of the collateral a provider holds, by source, read at scrape time. The
/// family is always described; a source holding nothing has no sample.
struct CollateralExpiry(Arc<CollateralProvider>);

impl std::fmt::Debug for CollateralExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CollateralExpiry")
    }
}

impl Collector for CollateralExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "collateral_expiry_timestamp_seconds",
            "Earliest expiry (next update, unix seconds) of the collateral the verifier holds, by source (offline: the collateral file or directory, never refreshed; pccs: the cache of fetched collateral); absent for a source holding none. Past it, quotes are refused with collateral_expired",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (source, not_after) in self.0.earliest_expiry() {
            let labels = [("source", source)];
            let gauge = ConstGauge::new(i64::try_from(not_after).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(standard: &str, early: Option<&str>, days: Option<i64>) -> TcbSeen {
        TcbSeen {
            platform: "00806F050000:0303:11:0501".into(),
            standard: standard.into(),
            early: early.map(str::to_string),
            days_until: days,
        }
    }

    #[test]
    fn a_platform_whose_standard_status_changes_is_reported_once() {
        let m = Metrics::new();
        // First sight: no change to report (nothing rested on an older status).
        assert!(!m.tcb_seen(&seen("UpToDate", Some("OutOfDate"), Some(40)), 100));
        assert!(!m.tcb_seen(&seen("UpToDate", Some("OutOfDate"), Some(39)), 200));
        let text = m.encode();
        assert!(
            text.contains("teesql_verifier_tcb_days_until_demotion 39"),
            "{text}"
        );
        // New collateral: the standard set now demotes it.
        assert!(m.tcb_seen(&seen("OutOfDate", None, None), 300));
        assert!(!m.tcb_seen(&seen("OutOfDate", None, None), 400));
        let text = m.encode();
        assert!(
            text.contains("teesql_verifier_tcb_platforms{set=\"standard\",status=\"OutOfDate\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("teesql_verifier_tcb_days_until_demotion "),
            "{text}"
        );
    }

    #[test]
    fn denial_reasons_are_counted_with_a_bounded_label() {
        let m = Metrics::new();
        // Described before the first denial, without samples.
        let text = m.encode();
        assert!(
            text.contains("# TYPE teesql_verifier_denials counter"),
            "{text}"
        );
        assert!(!text.contains("teesql_verifier_denials_total"), "{text}");
        m.denials("client", ["tcb_out_of_date", "mrtd_not_allowed"]);
        m.denials("client", ["tcb_out_of_date"]);
        m.denials("client", [&*"x".repeat(65)]);
        for i in 0..MAX_REASON_LABELS + 10 {
            m.denials("server", [format!("made_up_{i}").as_str()]);
        }
        let text = m.encode();
        assert!(
            text.contains("# TYPE teesql_verifier_denials counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "teesql_verifier_denials_total{purpose=\"client\",reason=\"tcb_out_of_date\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("teesql_verifier_denials_total{purpose=\"client\",reason=\"other\"} 1"),
            "{text}"
        );
        // 2 codes seen first (the long one is not kept), then 254 of the 266 made-up ones;
        // the last 12 count as other.
        assert!(
            text.contains("teesql_verifier_denials_total{purpose=\"server\",reason=\"other\"} 12"),
            "{text}"
        );
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("teesql_verifier_denials_total{"))
            .count();
        assert_eq!(labelled, MAX_REASON_LABELS + 2, "{text}");
    }

    #[test]
    fn collateral_expiry_and_reused_failures_are_exported() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/dcap");
        let provider = CollateralProvider::new(&crate::collateral::CollateralConfig {
            file: Some(dir.join("tdx_quote_collateral.json")),
            pccs_url: None,
            ..crate::collateral::CollateralConfig::default()
        })
        .unwrap();
        let text = Metrics::new().with_collateral(Arc::new(provider)).encode();
        // testdata/README.md: the recorded collateral's window ends at 1752919235.
        assert!(
            text.contains(
                "teesql_verifier_collateral_expiry_timestamp_seconds{source=\"offline\"} 1752919235"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE teesql_verifier_collateral_expiry_timestamp_seconds gauge"),
            "{text}"
        );
        assert!(!text.contains("source=\"pccs\""), "{text}");
        assert!(
            text.contains("teesql_verifier_collateral_failures_reused_total 0"),
            "{text}"
        );
        // No collateral held: the family is described, without samples.
        let empty = CollateralProvider::new(&crate::collateral::CollateralConfig {
            pccs_url: None,
            ..crate::collateral::CollateralConfig::default()
        })
        .unwrap();
        let text = Metrics::new().with_collateral(Arc::new(empty)).encode();
        assert!(
            text.contains("# TYPE teesql_verifier_collateral_expiry_timestamp_seconds gauge"),
            "{text}"
        );
        assert!(
            !text.contains("teesql_verifier_collateral_expiry_timestamp_seconds{"),
            "{text}"
        );
    }
}
