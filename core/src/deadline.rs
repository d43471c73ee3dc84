//! Deadlines from caller-given durations.
//!
//! A timeout too long for the clock (`Duration::MAX`, or 1e20 seconds from
//! Python, a common stand-in for "no timeout") means no deadline, rather
//! than a panic in `Instant + Duration`.

use std::time::{Duration, Instant};

/// `now + t`; `None` (never) when the clock cannot hold that instant.
pub(crate) fn after(t: Duration) -> Option<Instant> {
    Instant::now().checked_add(t)
}

/// The earlier of two deadlines, `None` being never.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
