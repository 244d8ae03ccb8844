//! The collateral cache directory (`--collateral-cache-dir`): what was fetched from the
//! PCS/PCCS, written there so that a restarted verifier does not ask Intel again (PCS
//! rate-limits) and keeps working while the PCCS is down.
//!
//! One JSON file per collateral set (`standard-<tee>-<fmspc>-<ca>.json`), early TCB info
//! (`early-…`) and evaluation numbers list (`numbers-<tee>.json`), each with the unix
//! time it was fetched; written to a temporary file and renamed, so a crash leaves the
//! old file or the new one. Read once at start: a file is used only while it is valid
//! (collateral within its window, an early TCB info before its next update, a numbers
//! list for the time a fetched one is kept) and goes through the same verification as a
//! fetched one — the cache is a copy of what the network said, never a trust anchor. A
//! file that cannot be read is skipped with a warning (it is a cache, not
//! configuration). The directory is bounded in bytes: past the bound, the oldest files
//! go.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};

use super::{Collateral, CollateralKey, MAX_COLLATERAL_FILE};
use crate::clock::Clock;
use crate::evidence::TeeType;
use crate::tcb::{SignedDoc, SignedList, SignedTcbInfo};

/// One file of the directory.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Standard {
        fetched_at: u64,
        collateral: QuoteCollateralV3,
    },
    Early {
        fetched_at: u64,
        tcb_info: String,
        signature: String,
        issuer_chain: String,
        qe_identity: Option<Doc>,
    },
    Numbers {
        fetched_at: u64,
        tee: String,
        body: String,
        issuer_chain: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Doc {
    json: String,
    signature: String,
    issuer_chain: String,
}

/// What the directory held at start, taken out as it is used.
#[derive(Default)]
struct Warm {
    standard: HashMap<CollateralKey, Arc<Collateral>>,
    early: HashMap<CollateralKey, Arc<SignedTcbInfo>>,
    numbers: HashMap<TeeType, (u64, Arc<SignedList>)>,
}

/// The cache directory.
pub(super) struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    clock: Clock,
    /// How long a fetched evaluation numbers list is kept.
    numbers_ttl: Duration,
    warm: Mutex<Warm>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn file_name(kind: &str, key: &CollateralKey) -> String {
    format!(
        "{kind}-{}-{}-{}.json",
        tee_name(key.tee),
        key.fmspc.to_ascii_lowercase(),
        key.ca.as_str().to_ascii_lowercase()
    )
}

fn tee_name(tee: TeeType) -> &'static str {
    match tee {
        TeeType::Tdx => "tdx",
        TeeType::Sgx => "sgx",
    }
}

impl DiskCache {
    /// Open (creating it, owner-only) and read `dir`.
    pub(super) fn open(
        dir: &Path,
        max_bytes: u64,
        clock: Clock,
        numbers_ttl: Duration,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            clock,
            numbers_ttl,
            warm: Mutex::new(Warm::default()),
        };
        cache.load()?;
        Ok(cache)
    }

    fn load(&self) -> Result<(), String> {
        let now = self.clock.now();
        let mut warm = Warm::default();
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_cache_file(p))
            .collect();
        paths.sort();
        for path in paths {
            match read_entry(&path, now, self.numbers_ttl) {
                Ok(Some(Loaded::Standard(key, c))) => {
                    warm.standard.insert(key, c);
                }
                Ok(Some(Loaded::Early(key, e))) => {
                    warm.early.insert(key, e);
                }
                Ok(Some(Loaded::Numbers(tee, at, n))) => {
                    warm.numbers.insert(tee, (at, n));
                }
                Ok(None) => {
                    tracing::debug!(path = %path.display(), "cached collateral is out of date; it will be fetched again");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable file in the collateral cache directory");
                }
            }
        }
        tracing::info!(
            dir = %self.dir.display(),
            collateral = warm.standard.len(),
            early = warm.early.len(),
            numbers = warm.numbers.len(),
            "collateral cache directory loaded"
        );
        *self.warm.lock().unwrap_or_else(|p| p.into_inner()) = warm;
        Ok(())
    }

    /// The set kept for `key`, when it is still valid now (taken out: from here on the
    /// memory cache holds it).
    pub(super) fn take_standard(&self, key: &CollateralKey) -> Option<Arc<Collateral>> {
        let now = self.clock.now();
        let c = self.warm_lock().standard.remove(key)?;
        (c.window.not_before <= now && now < c.window.not_after).then_some(c)
    }

    /// The early TCB info kept for `key`, before its next update.
    pub(super) fn take_early(&self, key: &CollateralKey) -> Option<Arc<SignedTcbInfo>> {
        let now = i64::try_from(self.clock.now()).unwrap_or(i64::MAX);
        let e = self.warm_lock().early.remove(key)?;
        (now < e.next_update).then_some(e)
    }

    /// The evaluation numbers list kept for `tee`, within the time a fetched one is kept.
    pub(super) fn take_numbers(&self, tee: TeeType) -> Option<Arc<SignedList>> {
        let now = self.clock.now();
        let (at, n) = self.warm_lock().numbers.remove(&tee)?;
        (now < at.saturating_add(self.numbers_ttl.as_secs())).then_some(n)
    }

    fn warm_lock(&self) -> std::sync::MutexGuard<'_, Warm> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep fetched collateral (in the background: the caller does not wait on the disk).
    pub(super) fn store_standard(self: &Arc<Self>, key: &CollateralKey, c: &Collateral) {
        let entry = Entry::Standard {
            fetched_at: self.clock.now(),
            collateral: c.data.clone(),
        };
        self.store(file_name("standard", key), entry);
    }

    /// Keep a fetched early TCB info.
    pub(super) fn store_early(self: &Arc<Self>, key: &CollateralKey, e: &SignedTcbInfo) {
        let entry = Entry::Early {
            fetched_at: self.clock.now(),
            tcb_info: e.tcb_info.clone(),
            signature: hex::encode(&e.signature),
            issuer_chain: e.issuer_chain.clone(),
            qe_identity: e.qe_identity.as_ref().map(|d| Doc {
                json: d.json.clone(),
                signature: hex::encode(&d.signature),
                issuer_chain: d.issuer_chain.clone(),
            }),
        };
        self.store(file_name("early", key), entry);
    }

    /// Keep a fetched evaluation numbers list.
    pub(super) fn store_numbers(self: &Arc<Self>, tee: TeeType, n: &SignedList) {
        let Ok(body) = String::from_utf8(n.body.clone()) else {
            return;
        };
        let entry = Entry::Numbers {
            fetched_at: self.clock.now(),
            tee: tee_name(tee).to_string(),
            body,
            issuer_chain: n.issuer_chain.clone(),
        };
        self.store(format!("numbers-{}.json", tee_name(tee)), entry);
    }

    fn store(self: &Arc<Self>, name: String, entry: Entry) {
        let me = self.clone();
        let write = move || {
            if let Err(e) = me.write(&name, &entry) {
                tracing::warn!(dir = %me.dir.display(), file = %name, error = %e, "cannot write to the collateral cache directory; a restart will fetch this collateral again");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(write);
            }
            Err(_) => write(),
        }
    }

    fn write(&self, name: &str, entry: &Entry) -> Result<(), String> {
        let bytes = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_COLLATERAL_FILE {
            return Err(format!(
                "{} bytes, more than {MAX_COLLATERAL_FILE}",
                bytes.len()
            ));
        }
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        self.bound()
    }

    /// Remove the oldest files until the directory's JSON files fit the byte bound.
    fn bound(&self) -> Result<(), String> {
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .filter(|e| is_cache_file(&e.path()))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "collateral cache directory over its bound; removed the oldest file");
                total -= len;
            }
        }
        Ok(())
    }
}

enum Loaded {
    Standard(CollateralKey, Arc<Collateral>),
    Early(CollateralKey, Arc<SignedTcbInfo>),
    Numbers(TeeType, u64, Arc<SignedList>),
}

/// A file this cache wrote (`standard-`, `early-`, `numbers-` … `.json`): the only ones it
/// reads, counts against its bound, or removes.
fn is_cache_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".json")
        && ["standard-", "early-", "numbers-"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// One file, or `None` when it is out of date. Opened once: a regular file, read at most
/// to the size bound (a FIFO or a link to a device is refused, not waited on).
fn read_entry(path: &Path, now: u64, numbers_ttl: Duration) -> Result<Option<Loaded>, String> {
    use std::io::Read;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| e.to_string())?
        .take(MAX_COLLATERAL_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_COLLATERAL_FILE {
        return Err(format!("more than {MAX_COLLATERAL_FILE} bytes"));
    }
    let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let unhex = |s: &str| hex::decode(s).map_err(|e| e.to_string());
    Ok(match entry {
        Entry::Standard { collateral, .. } => {
            let c = Collateral::new(collateral).map_err(|e| e.to_string())?;
            if now >= c.window.not_after {
                return Ok(None);
            }
            let key = c.key().map_err(|e| e.to_string())?;
            Some(Loaded::Standard(key, Arc::new(c)))
        }
        Entry::Early {
            tcb_info,
            signature,
            issuer_chain,
            qe_identity,
            ..
        } => {
            let mut e = SignedTcbInfo::new(tcb_info, unhex(&signature)?, issuer_chain)
                .map_err(|e| e.to_string())?;
            if let Some(d) = qe_identity {
                e.qe_identity = Some(SignedDoc {
                    json: d.json,
                    signature: unhex(&d.signature)?,
                    issuer_chain: d.issuer_chain,
                });
            }
            if i64::try_from(now).unwrap_or(i64::MAX) >= e.next_update {
                return Ok(None);
            }
            // The early set's key is its platform's: the file name says which, the
            // content must agree (an FMSPC inside the TCB info).
            let key = key_of_file(path).ok_or("not a cache file name")?;
            if !e.tcb_info.contains(&format!("\"{}\"", key.fmspc))
                && !e
                    .tcb_info
                    .to_ascii_lowercase()
                    .contains(&format!("\"{}\"", key.fmspc.to_ascii_lowercase()))
            {
                return Err(format!("its TCB info is not for FMSPC {}", key.fmspc));
            }
            Some(Loaded::Early(key, Arc::new(e)))
        }
        Entry::Numbers {
            fetched_at,
            tee,
            body,
            issuer_chain,
        } => {
            // The fetch time is the file's word, not signed: never later than now.
            let fetched_at = fetched_at.min(now);
            if now >= fetched_at.saturating_add(numbers_ttl.as_secs()) {
                return Ok(None);
            }
            let tee = tee_of(&tee).ok_or_else(|| format!("unknown TEE {tee:?}"))?;
            Some(Loaded::Numbers(
                tee,
                fetched_at,
                Arc::new(SignedList::new(body.into_bytes(), issuer_chain)),
            ))
        }
    })
}

/// The key an `early-<tee>-<fmspc>-<ca>.json` file is for.
fn key_of_file(path: &Path) -> Option<CollateralKey> {
    let stem = path.file_stem()?.to_str()?;
    let mut parts = stem.strip_prefix("early-")?.split('-');
    let tee = tee_of(parts.next()?)?;
    let fmspc = parts.next()?.to_ascii_uppercase();
    let ca = match parts.next()? {
        "processor" => super::PckCa::Processor,
        "platform" => super::PckCa::Platform,
        _ => return None,
    };
    Some(CollateralKey { tee, fmspc, ca })
}

fn tee_of(name: &str) -> Option<TeeType> {
    match name {
        "tdx" => Some(TeeType::Tdx),
        "sgx" => Some(TeeType::Sgx),
        _ => None,
    }
}
