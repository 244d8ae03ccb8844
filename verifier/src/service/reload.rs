//! Hot reload of policies: on file changes under the policy directories and on SIGHUP.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::DecisionService;
use crate::policy::{PolicyError, PolicySet};

/// Changes closer together than this are one reload (editors write files in steps).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watch the policy directories (and their bases) and reload on change or SIGHUP, until
/// `shutdown` completes.
pub async fn run(service: Arc<DecisionService>, shutdown: impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher_tx = tx.clone();
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = watcher_tx.send(());
            }
        },
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch policy files; reload with SIGHUP or the PolicyAdmin API");
            None
        }
    };
    let mut watched = BTreeSet::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, &service, &mut watched);
    }

    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // A bundle URL is polled; the first poll is one interval after start.
    let poll = service.bundle().and_then(|b| match b.location {
        super::bundles::BundleLocation::Url(_) => Some(b.poll),
        super::bundles::BundleLocation::File(_) => None,
    });
    let mut ticks = poll.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    tokio::pin!(shutdown);
    loop {
        let tick = async {
            match ticks.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut shutdown => return,
            Some(()) = rx.recv() => {
                // Let a burst of writes settle.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                tracing::info!("policy files changed; reloading");
            }
            _ = hangup => tracing::info!("SIGHUP; reloading policies"),
            _ = tick => tracing::debug!("polling the policy bundle"),
        }
        // Errors are logged and counted by `reload`; the old set keeps serving.
        let _ = service.reload().await;
        if let Some(w) = watcher.as_mut() {
            rewatch(w, &service, &mut watched);
        }
    }
}

/// Watch every directory that holds a file of the serving set (profiles and bases).
fn rewatch(w: &mut impl Watcher, service: &DecisionService, watched: &mut BTreeSet<PathBuf>) {
    let policies = service.policies();
    let mut dirs: BTreeSet<PathBuf> = match service.bundle().map(|b| &b.location) {
        // A bundle file: its directory (an atomic replace is a rename there).
        Some(super::bundles::BundleLocation::File(f)) => f
            .canonicalize()
            .ok()
            .and_then(|f| f.parent().map(PathBuf::from))
            .into_iter()
            .collect(),
        Some(super::bundles::BundleLocation::Url(_)) => BTreeSet::new(),
        None => policies
            .files()
            .iter()
            .filter_map(|f| f.path.parent().map(PathBuf::from))
            .collect(),
    };
    dirs.extend(policies.dirs().iter().filter_map(|d| d.canonicalize().ok()));
    for d in dirs.difference(watched) {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch policy directory");
        }
    }
    *watched = dirs;
}

/// Keep a service's policies fresh in the background (for embedding and tests).
pub fn spawn(service: Arc<DecisionService>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(service, std::future::pending()))
}

impl DecisionService {
    /// Load the policy set again from its directories and swap it in atomically. A set
    /// that fails to load or compile is rejected and the current one keeps serving.
    pub async fn reload(&self) -> Result<(String, bool), PolicyError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.policies.load_full();
        let dirs = current.dirs().to_vec();
        let limit = current.eval_limit();
        let mut etag = None;
        let loaded = match &self.bundle {
            Some(bundle) => match bundle.fetch(limit).await {
                // The server has nothing newer than what serves.
                Ok(None) => return Ok((current.hash().to_string(), false)),
                Ok(Some(fetched)) => {
                    etag = fetched.etag;
                    Ok(fetched.set)
                }
                Err(e) => Err(e),
            },
            None => tokio::task::spawn_blocking(move || PolicySet::load(&dirs, limit))
                .await
                .map_err(|e| PolicyError::Load {
                    path: "(reload)".into(),
                    detail: e.to_string(),
                })?,
        };
        // A set that no longer decides a purpose the serving set decides would turn every
        // such request into an error: refuse it like a set that does not compile.
        let loaded = loaded.and_then(|set| {
            let keeps = set.purposes();
            let dropped: Vec<String> = current
                .purposes()
                .into_iter()
                .filter(|p| !keeps.contains(p))
                .collect();
            if dropped.is_empty() {
                Ok(set)
            } else {
                Err(PolicyError::Load {
                    path: current
                        .dirs()
                        .first()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    detail: format!(
                        "the new set no longer decides {} (package teesql.<purpose> missing); restart to remove a purpose",
                        dropped.join(", ")
                    ),
                })
            }
        });
        match loaded {
            Ok(set) => {
                let hash = set.hash().to_string();
                let revision = set.revision().unwrap_or_default().to_string();
                let changed = hash != current.hash();
                if changed {
                    self.policies.store(Arc::new(set));
                    self.policy_hash
                        .send_modify(|(serving, _)| *serving = hash.clone());
                    tracing::info!(policy.hash = %hash, policy.revision = %revision, previous = %current.hash(), "policies reloaded");
                } else {
                    tracing::debug!(policy.hash = %hash, "policies unchanged");
                }
                // Taken (or the same as serving): the next poll asks about this one.
                if let Some(bundle) = &self.bundle {
                    bundle.taken(etag);
                }
                self.metrics.policy_reload(true);
                self.metrics.policy_loaded(&hash);
                Ok((hash, changed))
            }
            Err(e) => {
                tracing::error!(error = %e, serving = %current.hash(), "policy reload rejected; the current policies keep serving");
                self.metrics.policy_reload(false);
                Err(e)
            }
        }
    }
}
