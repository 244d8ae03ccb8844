//! The appraisal clock: the system clock, or a fixed time for recorded evidence.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where "now" comes from. Recorded evidence only verifies inside its collateral window,
/// so tests and investigations pin the time; production uses the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The system's wall clock, read at each call (the default).
    #[default]
    System,
    /// A fixed unix time, in seconds.
    Fixed(u64),
}

impl Clock {
    /// Current unix time in seconds.
    pub fn now(self) -> u64 {
        match self {
            Self::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            Self::Fixed(t) => t,
        }
    }
}
