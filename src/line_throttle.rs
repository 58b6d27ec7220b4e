//! Log lines written at most once a second, with a count of those held back.
//!
//! Some WARN lines follow what a client or a recipient does, at its pace: a client that opens
//! connection after connection beyond its limit, a webhook endpoint that is down while hundreds
//! of deliveries wait for it. One line each would fill the log (about a hundred lines a second
//! for one endpoint down, in a soak test) and hide the rest. What is held back is still counted
//! in the metrics, and audited where the audit log says so.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two lines of one kind.
const SPACING: Duration = Duration::from_secs(1);

/// When one kind of line was last written, and how many were held back since.
#[derive(Debug, Default)]
struct Spacing {
    last: Option<Instant>,
    held_back: u64,
}

impl Spacing {
    /// Whether a line may be written at `now`, and if so how many were held back since the
    /// last one.
    fn may_write_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < SPACING)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Lets one kind of log line through at most once a second, and counts the ones held back.
#[derive(Debug, Default)]
pub(crate) struct LineThrottle(Mutex<Spacing>);

impl LineThrottle {
    /// Whether a line may be written at `now`, and if so how many were held back since the
    /// last one.
    pub(crate) fn may_write_at(&self, now: Instant) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .may_write_at(now)
    }
}

/// A [`LineThrottle`] for each of a few keys (a recipient, say): one key's lines do not hold
/// back another's. The keys are the caller's to bound (the registry's partners).
#[derive(Debug, Default)]
pub(crate) struct LineThrottles(Mutex<HashMap<String, Spacing>>);

impl LineThrottles {
    /// Whether a line of `key`'s may be written at `now`, and if so how many of its lines were
    /// held back since its last one.
    pub(crate) fn may_write_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match lines.get_mut(key) {
            Some(spacing) => spacing.may_write_at(now),
            None => lines.entry(key.to_owned()).or_default().may_write_at(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_line_is_written_once_a_second_and_says_how_many_were_held_back() {
        let throttle = LineThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.may_write_at(start), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(
                throttle.may_write_at(start + Duration::from_millis(ms)),
                None
            );
        }
        assert_eq!(
            throttle.may_write_at(start + Duration::from_secs(1)),
            Some(3)
        );
        assert_eq!(
            throttle.may_write_at(start + Duration::from_secs(5)),
            Some(0)
        );
    }

    #[test]
    fn each_keys_lines_are_throttled_on_their_own() {
        let throttles = LineThrottles::default();
        let start = Instant::now();
        assert_eq!(throttles.may_write_at("ma.dgsn", start), Some(0));
        assert_eq!(throttles.may_write_at("airline.at", start), Some(0));
        assert_eq!(
            throttles.may_write_at("ma.dgsn", start + Duration::from_millis(10)),
            None
        );
        assert_eq!(
            throttles.may_write_at("ma.dgsn", start + Duration::from_secs(1)),
            Some(1)
        );
        assert_eq!(
            throttles.may_write_at("airline.at", start + Duration::from_secs(1)),
            Some(0)
        );
    }
}
