//! The TCB lifecycle documents read beside a quote's collateral: the `early` TCB info of
//! its platform and the list of TCB evaluation data numbers. Both only forecast (the
//! standard collateral decides), so neither can fail an appraisal: a source that does
//! not have them, or fails, leaves the forecast out, and the failure is remembered like
//! a collateral failure so a peer cannot turn each handshake into a fetch.
//!
//! Offline, a collateral directory may hold `<name>.early.json` (the `QuoteCollateralV3`
//! shape; its TCB info is the early one) and `tcbevaluationdatanumbers.json` (the PCS
//! body as served) with `tcbevaluationdatanumbers.issuer_chain.pem`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::pccs::PccsClient;
use super::{Collateral, CollateralError, CollateralKey, CollateralStats};
use crate::clock::Clock;
use crate::evidence::TeeType;
use crate::tcb::{SignedList, SignedTcbInfo};

/// The evaluation numbers file in a collateral directory.
pub const EVAL_NUMBERS_FILE: &str = "tcbevaluationdatanumbers.json";
/// Its issuer chain.
pub const EVAL_NUMBERS_CHAIN_FILE: &str = "tcbevaluationdatanumbers.issuer_chain.pem";
/// The suffix of an early collateral file.
pub const EARLY_SUFFIX: &str = ".early.json";
/// How long a fetched evaluation numbers list is kept (Intel's `nextUpdate` is about 30
/// days out; the list changes when a TCB recovery is published).
pub(super) const NUMBERS_TTL: Duration = Duration::from_secs(6 * 3600);
/// Largest evaluation numbers file read.
const MAX_NUMBERS_FILE: u64 = 256 << 10;

/// Offline, cached and fetched TCB lifecycle documents.
#[derive(Debug)]
pub(super) struct TcbSources {
    early_offline: HashMap<CollateralKey, Arc<SignedTcbInfo>>,
    /// Each with the nextUpdate it states (read before its signature is checked, only to
    /// know when to stop preferring it: a list past it gives way to a fetched one).
    numbers_offline: HashMap<TeeType, (Option<i64>, Arc<SignedList>)>,
    clock: Clock,
    early: moka::future::Cache<CollateralKey, Arc<SignedTcbInfo>>,
    numbers: moka::future::Cache<TeeType, Arc<SignedList>>,
    /// Recent failures (`early` or `numbers`, and the key), for the failure TTL.
    failures: moka::sync::Cache<(bool, CollateralKey), ()>,
}

impl TcbSources {
    pub(super) fn new(capacity: u64, failure_ttl: Duration, clock: Clock) -> Self {
        Self {
            early_offline: HashMap::new(),
            numbers_offline: HashMap::new(),
            clock,
            early: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilNextUpdate { clock })
                .build(),
            numbers: moka::future::Cache::builder()
                .max_capacity(4)
                .time_to_live(NUMBERS_TTL)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(failure_ttl)
                .build(),
        }
    }

    /// Whether a file of a collateral directory is one of these documents rather than a
    /// standard collateral set.
    pub(super) fn owns(path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.ends_with(EARLY_SUFFIX) || name == EVAL_NUMBERS_FILE
    }

    /// Load the early collateral files and the numbers list of a directory.
    pub(super) fn load_dir(
        &mut self,
        dir: &Path,
        paths: &[std::path::PathBuf],
    ) -> Result<(), CollateralError> {
        for path in paths.iter().filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(EARLY_SUFFIX))
        }) {
            let file_err = |detail: String| CollateralError::File {
                path: path.display().to_string(),
                detail,
            };
            let c = Collateral::from_file(path)?;
            let key = c.key().map_err(|e| file_err(e.to_string()))?;
            let mut early = SignedTcbInfo::new(
                c.data.tcb_info.clone(),
                c.data.tcb_info_signature.clone(),
                c.data.tcb_info_issuer_chain.clone(),
            )
            .map_err(|e| file_err(e.to_string()))?;
            early.qe_identity = Some(crate::tcb::SignedDoc {
                json: c.data.qe_identity.clone(),
                signature: c.data.qe_identity_signature.clone(),
                issuer_chain: c.data.qe_identity_issuer_chain.clone(),
            });
            tracing::debug!(path = %path.display(), %key, eval = early.eval_data_number, "loaded an early TCB info");
            self.early_offline.insert(key, Arc::new(early));
        }
        let numbers = dir.join(EVAL_NUMBERS_FILE);
        if numbers.exists() {
            let file_err = |path: &Path, detail: String| CollateralError::File {
                path: path.display().to_string(),
                detail,
            };
            let read = |path: &Path| {
                let len = std::fs::metadata(path)
                    .map_err(|e| file_err(path, e.to_string()))?
                    .len();
                if len > MAX_NUMBERS_FILE {
                    return Err(file_err(
                        path,
                        format!("{len} bytes, at most {MAX_NUMBERS_FILE}"),
                    ));
                }
                std::fs::read(path).map_err(|e| file_err(path, e.to_string()))
            };
            let chain_path = dir.join(EVAL_NUMBERS_CHAIN_FILE);
            let body = read(&numbers)?;
            let chain = String::from_utf8(read(&chain_path)?)
                .map_err(|e| file_err(&chain_path, e.to_string()))?;
            let list = SignedList::new(body, chain);
            self.numbers_offline
                .insert(TeeType::Tdx, (list.stated_next_update(), Arc::new(list)));
        }
        Ok(())
    }

    /// The early TCB info for `key`: offline, cached, or fetched when a PCCS is set.
    pub(super) async fn early(
        &self,
        key: &CollateralKey,
        pccs: Option<&PccsClient>,
        slots: &tokio::sync::Semaphore,
        stats: &CollateralStats,
        disk: Option<&Arc<super::disk::DiskCache>>,
    ) -> Option<Arc<SignedTcbInfo>> {
        if let Some(e) = self.early_offline.get(key) {
            return Some(e.clone());
        }
        let pccs = pccs?;
        if let Some(e) = self.early.get(key).await {
            return Some(e);
        }
        let failed = (true, key.clone());
        if self.failures.contains_key(&failed) {
            return None;
        }
        self.early
            .try_get_with(key.clone(), async {
                if let Some(kept) = disk.and_then(|d| d.take_early(key)) {
                    stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(kept);
                }
                let _slot = slots.acquire().await.ok();
                stats.fetches.fetch_add(1, Ordering::Relaxed);
                let fetched = pccs.fetch_early_tcb(key).await.map(Arc::new);
                if let (Ok(e), Some(d)) = (&fetched, disk) {
                    d.store_early(key, e);
                }
                fetched
            })
            .await
            .map_err(|e| {
                stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, error = %e, "no early TCB info: the next TCB recovery cannot be forecast for this platform");
                self.failures.insert(failed, ());
            })
            .ok()
    }

    /// The evaluation numbers list for `key`'s TEE: offline, cached, or fetched.
    pub(super) async fn numbers(
        &self,
        key: &CollateralKey,
        pccs: Option<&PccsClient>,
        slots: &tokio::sync::Semaphore,
        stats: &CollateralStats,
        disk: Option<&Arc<super::disk::DiskCache>>,
    ) -> Option<Arc<SignedList>> {
        if let Some((next_update, n)) = self.numbers_offline.get(&key.tee) {
            let now = i64::try_from(self.clock.now()).unwrap_or(i64::MAX);
            if next_update.is_none_or(|t| now < t) || pccs.is_none() {
                // Past its nextUpdate with nothing to fetch from, it is still handed on:
                // the claims then leave its dates out.
                return Some(n.clone());
            }
        }
        let pccs = pccs?;
        if let Some(n) = self.numbers.get(&key.tee).await {
            return Some(n);
        }
        let failed = (false, key.clone());
        if self.failures.contains_key(&failed) {
            return None;
        }
        self.numbers
            .try_get_with(key.tee, async {
                if let Some(kept) = disk.and_then(|d| d.take_numbers(key.tee)) {
                    stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(kept);
                }
                let _slot = slots.acquire().await.ok();
                stats.fetches.fetch_add(1, Ordering::Relaxed);
                let fetched = pccs.fetch_eval_numbers(key).await.map(Arc::new);
                if let (Ok(n), Some(d)) = (&fetched, disk) {
                    d.store_numbers(key.tee, n);
                }
                fetched
            })
            .await
            .map_err(|e| {
                stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                // An Intel PCCS has no such route: say so once per failure TTL, quietly.
                tracing::info!(%key, error = %e, "no TCB evaluation numbers: recovery dates are unknown");
                self.failures.insert(failed, ());
            })
            .ok()
    }

    /// Forget what was cached and the failures (offline documents stay).
    pub(super) fn clear(&self) {
        self.early.invalidate_all();
        self.numbers.invalidate_all();
        self.failures.invalidate_all();
    }
}

/// moka expiry: an early TCB info lives until its own next update.
struct UntilNextUpdate {
    clock: Clock,
}

impl moka::Expiry<CollateralKey, Arc<SignedTcbInfo>> for UntilNextUpdate {
    fn expire_after_create(
        &self,
        _key: &CollateralKey,
        value: &Arc<SignedTcbInfo>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = u64::try_from(value.next_update).unwrap_or(0);
        Some(Duration::from_secs(left.saturating_sub(self.clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collateral::{CollateralKey, CollateralStats, PckCa};

    /// The recorded list states nextUpdate 2025-06-26T18:50:21Z.
    const NEXT_UPDATE: u64 = 1_750_963_821;

    fn sources_at(now: u64) -> TcbSources {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pcs");
        let paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let mut s = TcbSources::new(16, Duration::from_secs(30), Clock::Fixed(now));
        s.load_dir(&dir, &paths).unwrap();
        s
    }

    /// An offline list is preferred until its nextUpdate; past it, a PCCS is asked
    /// instead (and without one, the stale list is handed on: its dates are left out of
    /// the claims).
    #[tokio::test]
    async fn a_stale_offline_list_gives_way_to_a_fetch() {
        let key = CollateralKey {
            tee: TeeType::Tdx,
            fmspc: "B0C06F000000".into(),
            ca: PckCa::Platform,
        };
        let slots = tokio::sync::Semaphore::new(1);
        // Nothing listens on port 1: a fetch fails at once.
        let pccs = PccsClient::new("http://127.0.0.1:1", Duration::from_secs(2)).unwrap();
        let offline = |s: &TcbSources| s.numbers_offline.get(&TeeType::Tdx).unwrap().1.clone();

        let current = sources_at(NEXT_UPDATE - 1);
        assert_eq!(
            offline(&current).stated_next_update(),
            Some(NEXT_UPDATE as i64)
        );
        let stats = CollateralStats::default();
        let got = current
            .numbers(&key, Some(&pccs), &slots, &stats, None)
            .await;
        assert!(got.is_some_and(|n| Arc::ptr_eq(&n, &offline(&current))));
        assert_eq!(stats.fetches.load(Ordering::Relaxed), 0);

        let stale = sources_at(NEXT_UPDATE);
        let stats = CollateralStats::default();
        let got = stale.numbers(&key, Some(&pccs), &slots, &stats, None).await;
        assert!(
            got.is_none(),
            "the fetch failed; the stale list is not used"
        );
        assert_eq!(stats.fetches.load(Ordering::Relaxed), 1);

        let got = stale.numbers(&key, None, &slots, &stats, None).await;
        assert!(got.is_some_and(|n| Arc::ptr_eq(&n, &offline(&stale))));
    }
}
