//! Rollback protection for leader manifests: the highest epoch accepted per (cluster,
//! signer), for signers the verifier's own policy data pins (`manifest_signers`) only.
//!
//! A caller may name signers it trusts itself (`expected_signers`); a manifest accepted on
//! such a signer alone is not remembered, or any caller could sign a manifest with epoch
//! 2^64-1 under a key of its own and have every genuine manifest of the cluster refused
//! as a rollback. Entries are evicted by age (least recently raised first), never lowest
//! epoch first, so a flood cannot push a genuine epoch out. With a state file the epochs
//! survive a restart: written whole to a temporary file and renamed over it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// (cluster, signer) pairs remembered at most.
pub const MAX_ENTRIES: usize = 10_000;
/// The largest state file read back.
const MAX_STATE_FILE: u64 = 4 * 1024 * 1024;

/// One remembered epoch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seen {
    epoch: u64,
    /// When it was last raised (unix seconds): the oldest goes first.
    at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// `cluster|signer` → the highest accepted epoch.
    epochs: HashMap<String, Seen>,
}

/// Why the manifest epoch file cannot be read ([`Epochs::open`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EpochsError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any epoch file this verifier writes.
    #[error("{}: {len} bytes, more than {MAX_STATE_FILE}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, bytes.
        len: u64,
    },
    /// The file is not an epoch file.
    #[error("{}: not a manifest epoch file: {source}", path.display())]
    NotEpochs {
        /// The file.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Accepted manifest epochs.
#[derive(Debug, Default)]
pub struct Epochs {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

fn key(cluster: &str, signer: &str) -> String {
    format!(
        "{}|{}",
        cluster.to_ascii_lowercase(),
        signer.to_ascii_lowercase()
    )
}

impl Epochs {
    /// Epochs kept in `file` (read now if it exists), or only in memory without one.
    pub fn open(file: Option<PathBuf>) -> Result<Self, EpochsError> {
        let state = match &file {
            Some(path) if path.exists() => read_state(path)?,
            _ => State::default(),
        };
        Ok(Self {
            state: Mutex::new(state),
            file,
        })
    }

    /// The highest epoch accepted for `cluster` from `signer`.
    pub fn highest(&self, cluster: &str, signer: &str) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.epochs.get(&key(cluster, signer)).map(|s| s.epoch)
    }

    /// Remember that `signer`'s manifest of `cluster` with `epoch` was accepted at `now`.
    /// The caller passes only signers the policy data pins.
    pub fn saw(&self, cluster: &str, signer: &str, epoch: u64, now: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(cluster, signer);
        if let Some(s) = state.epochs.get(&k)
            && s.epoch >= epoch
        {
            return;
        }
        if !state.epochs.contains_key(&k)
            && state.epochs.len() >= MAX_ENTRIES
            && let Some(oldest) = state
                .epochs
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone())
        {
            state.epochs.remove(&oldest);
        }
        state.epochs.insert(k, Seen { epoch, at: now });
        if let Some(path) = &self.file
            && let Err(e) = write_state(path, &state)
        {
            tracing::error!(file = %path.display(), error = %e, "cannot save manifest epochs; rollback protection will not survive a restart");
        }
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epochs
            .len()
    }

    /// No (cluster, signer) pair remembered yet: no manifest from a pinned signer accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read_state(path: &Path) -> Result<State, EpochsError> {
    let read = |source| EpochsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_STATE_FILE {
        return Err(EpochsError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let text = std::fs::read(path).map_err(read)?;
    let mut state: State =
        serde_json::from_slice(&text).map_err(|source| EpochsError::NotEpochs {
            path: path.to_path_buf(),
            source,
        })?;
    // A file written by hand or by a larger build: keep the newest within the bound.
    if state.epochs.len() > MAX_ENTRIES {
        let mut all: Vec<(String, Seen)> = state.epochs.drain().collect();
        all.sort_by_key(|(_, s)| std::cmp::Reverse(s.at));
        all.truncate(MAX_ENTRIES);
        state.epochs = all.into_iter().collect();
    }
    Ok(state)
}

fn write_state(path: &Path, state: &State) -> Result<(), String> {
    let json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_per_cluster_and_signer_and_only_rise() {
        let e = Epochs::default();
        e.saw("0xC1", "0xAA", 5, 1);
        e.saw("0xc1", "0xaa", 3, 2);
        assert_eq!(e.highest("0xc1", "0xaa"), Some(5));
        assert_eq!(e.highest("0xc1", "0xbb"), None);
        assert_eq!(e.highest("0xc2", "0xaa"), None);
    }

    #[test]
    fn the_oldest_goes_first_never_the_lowest_epoch() {
        let e = Epochs::default();
        e.saw("genuine", "0xaa", 7, 0);
        for i in 0..MAX_ENTRIES as u64 {
            e.saw(&format!("c{i}"), "0xaa", u64::MAX, 1 + i);
        }
        // The genuine entry was the oldest: gone. But raising it again keeps it newest.
        assert_eq!(e.len(), MAX_ENTRIES);
        assert_eq!(e.highest("genuine", "0xaa"), None);
        let e = Epochs::default();
        for i in 0..MAX_ENTRIES as u64 - 1 {
            e.saw(&format!("c{i}"), "0xaa", u64::MAX, i);
        }
        e.saw("genuine", "0xaa", 7, 1_000_000);
        e.saw("one-more", "0xaa", u64::MAX, 1_000_001);
        assert_eq!(
            e.highest("genuine", "0xaa"),
            Some(7),
            "not the lowest epoch first"
        );
    }

    #[test]
    fn epochs_survive_a_restart_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("manifest-epochs.json");
        let e = Epochs::open(Some(file.clone())).unwrap();
        e.saw("0xc1", "0xaa", 42, 10);
        drop(e);
        let again = Epochs::open(Some(file.clone())).unwrap();
        assert_eq!(again.highest("0xc1", "0xaa"), Some(42));
        std::fs::write(&file, "not json").unwrap();
        assert!(
            Epochs::open(Some(file))
                .unwrap_err()
                .to_string()
                .contains("not a manifest epoch file")
        );
    }
}
