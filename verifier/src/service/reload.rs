//! Hot reload of policies: on file changes under the policy directories and on SIGHUP.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::DecisionService;

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
    tokio::pin!(shutdown);
    loop {
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
    let mut dirs: BTreeSet<PathBuf> = policies
        .files()
        .iter()
        .filter_map(|f| f.path.parent().map(PathBuf::from))
        .collect();
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
