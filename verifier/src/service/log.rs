//! The decision log: one JSON line per decision, written off the request path.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use super::PeerSummary;
use crate::policy::Reason;

/// One decision, as logged. Holds no secrets: the verifier never sees any.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Unix seconds.
    pub time: u64,
    pub purpose: String,
    pub peer: PeerSummary,
    pub allow: bool,
    pub reasons: Vec<Reason>,
    pub policy_hash: String,
    pub cached: bool,
    pub latency_us: u64,
}

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
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
    tx: Option<mpsc::Sender<DecisionRecord>>,
    dropped: AtomicU64,
}

impl DecisionLog {
    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Start the writer task (needs a tokio runtime). A file is opened for appending now,
    /// so a bad path is reported at start-up.
    pub fn start(target: &LogTarget) -> std::io::Result<Self> {
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
        let (tx, mut rx) = mpsc::channel::<DecisionRecord>(QUEUE);
        std::thread::Builder::new()
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
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn record(&self, rec: DecisionRecord) {
        if let Some(tx) = &self.tx
            && tx.try_send(rec).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
