//! The decision log: one JSON line per decision, written off the request path.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::thread::JoinHandle;

use serde::Serialize;
use tokio::sync::mpsc;

use super::PeerSummary;
use crate::policy::{Grants, Reason};

/// One decision, as logged. Holds no secrets: the verifier never sees any.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Unix seconds.
    pub time: u64,
    /// The decision's id: the caller's (a sidecar's session id), or one the verifier
    /// made; the same id is in the caller's log lines about that connection.
    pub decision_id: String,
    /// The policy purpose decided for (the request's purpose).
    pub purpose: String,
    /// The peer judged: address, user, database and SNI when given, evidence kind,
    /// subject, MRTD, app id.
    pub peer: PeerSummary,
    /// The decision.
    pub allow: bool,
    /// Why it denies (code and message); empty when allowed.
    pub reasons: Vec<Reason>,
    /// What the policy granted (allowed decisions that grant something).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
    /// `sha256:<hex>` of the policy set that decided.
    pub policy_hash: String,
    /// The OPA bundle revision of that set; left out for directories.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy_revision: String,
    /// The evidence's appraisal came from the cache.
    pub cached: bool,
    /// Microseconds from the start of the decision (cache lookup or appraisal) to its
    /// verdict and signature.
    pub latency_us: u64,
}

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// No decision log (`off` or empty).
    Off,
    /// Standard output (`stdout` or `-`; the default).
    Stdout,
    /// Any other value: a file, created if missing and appended to.
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

/// Queue capacity: a burst beyond this drops lines (counted) rather than slow decisions.
const QUEUE: usize = 8192;

/// A handle to the decision log writer.
#[derive(Debug)]
pub struct DecisionLog {
    /// `None` once closed.
    tx: RwLock<Option<mpsc::Sender<DecisionRecord>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl DecisionLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            tx: RwLock::new(None),
            writer: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    /// Start the writer task (needs a tokio runtime). A file is opened for appending now,
    /// so a bad path is reported at start-up.
    pub fn start(target: &LogTarget) -> std::io::Result<Self> {
        Self::start_with_queue(target, QUEUE)
    }

    fn start_with_queue(target: &LogTarget, queue: usize) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(Self::off()),
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<DecisionRecord>(queue);
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                while let Some(rec) = rx.blocking_recv() {
                    if let Ok(mut line) = serde_json::to_vec(&rec) {
                        line.push(b'\n');
                        if out.write_all(&line).is_err() {
                            break;
                        }
                    }
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
                let _ = out.flush();
            })?;
        Ok(Self {
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a line. `false` when it was dropped: the writer is behind by a whole queue
    /// (a warning says so, at 1, 2, 4, 8… lines dropped), or the log is closed.
    pub fn record(&self, rec: DecisionRecord) -> bool {
        let tx = self.tx.read().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return true; // off, or closed at shutdown: nothing is expected
        };
        if tx.try_send(rec).is_ok() {
            return true;
        }
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n,
                "decision log: the writer is behind by {QUEUE} lines; lines are being dropped"
            );
        }
        false
    }

    /// Stop taking lines and wait until every line queued so far is written and
    /// flushed. Decisions made afterwards are not logged.
    pub fn close(&self) {
        self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer
            && w.join().is_err()
        {
            tracing::error!("decision log writer panicked; some lines may be missing");
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DecisionRecord {
        DecisionRecord {
            time: 1,
            decision_id: "0123456789abcdef".into(),
            purpose: "quote".into(),
            peer: PeerSummary::default(),
            allow: true,
            reasons: Vec::new(),
            grants: None,
            policy_hash: "sha256:00".into(),
            policy_revision: String::new(),
            cached: false,
            latency_us: 1,
        }
    }

    /// A writer stuck on a pipe nobody reads: past the queue, lines are dropped and
    /// counted; once the pipe is read, closing writes out every queued line.
    #[test]
    fn a_full_queue_drops_and_counts_and_close_writes_out_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut pipe = std::fs::File::open(&fifo).unwrap();
                go_rx.recv().unwrap();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
                text
            })
        };
        let log = DecisionLog::start_with_queue(&LogTarget::File(fifo), 4).unwrap();
        let mut queued = 0;
        // A pipe holds 64 KiB; lines are ~150 bytes: a few thousand fill it and the queue.
        for _ in 0..5000 {
            if log.record(record()) {
                queued += 1;
            }
        }
        assert!(log.dropped() > 0);
        assert_eq!(queued + log.dropped(), 5000);
        go_tx.send(()).unwrap();
        log.close();
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count() as u64, queued);
        // Closed: later lines are not expected, and not counted as dropped.
        let dropped = log.dropped();
        assert!(log.record(record()));
        assert_eq!(log.dropped(), dropped);
    }
}
