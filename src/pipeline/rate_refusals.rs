//! The audit of rate-limited refusals: one summary a sender per interval, not one entry a
//! message.
//!
//! A message over its sender's rate limit is answered `429` without being read. Auditing
//! each one as an entry of its own would let a sender over its limit drive the log's synced
//! appends, and grow the permanent log, as fast as it can send: the very load the limit is
//! there to refuse. So each refusal is tallied here, per rate-limit key (a partner id, or
//! [`super::UNREGISTERED`]), and each tally is audited as one `rejected` fact with reason
//! `rate-limited` and the number of messages it stands for (`count`). The gateway audits the
//! tallies about once a second and when it stops (see [`super::Gateway::audit_rate_refusals`]).
//!
//! The summary's `native` commitment is over the SHA-256 digests of the refused bodies,
//! sorted and concatenated, so that a sender who kept what it sent can show which of its
//! messages a summary stands for, without the gateway keeping any of them. A tally holds at
//! most [`MAX_DIGESTS`] digests, so that the commitment stays within a fact's payload bound;
//! a full tally is set aside, whole, for the next audit, and a new one begins.

use crate::audit::leaf::{Fact, Kind, Personal, Transport, limits};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The most refusals one summary stands for: their digests fill a fact's largest payload.
pub const MAX_DIGESTS: usize = limits::PAYLOAD_LEN / 32;

/// The refusals of one sender since its last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The rate-limit key: a partner id, or [`super::UNREGISTERED`].
    pub sender: String,
    /// When the first of them was refused.
    pub since: DateTime<Utc>,
    /// The SHA-256 digest of each refused body, in the order refused.
    pub digests: Vec<[u8; 32]>,
}

impl Tally {
    /// The `rejected` summary of these refusals, kept under `case` (the sender's refusal
    /// case), dated `now`.
    pub fn fact(&self, case: String, now: DateTime<Utc>) -> Fact {
        let mut sorted = self.digests.clone();
        sorted.sort_unstable();
        let mut fact = Fact::new(Kind::Rejected, now);
        fact.sender = Some(self.sender.clone());
        fact.transport = Some(Transport::Rest);
        fact.reason = Some("rate-limited".to_owned());
        fact.count = Some(self.digests.len() as u64);
        fact.case_id = Some(case);
        fact.personal = Personal {
            native: Some(sorted.concat()),
            commit_only: true,
            ..Personal::default()
        };
        fact
    }
}

/// The rate-limited refusals not yet audited.
#[derive(Debug, Default)]
pub struct RateRefusals {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The open tally of each sender.
    open: HashMap<String, Tally>,
    /// Tallies closed (full, or put back after a failed audit), oldest first.
    closed: VecDeque<Tally>,
}

impl RateRefusals {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves at worst a tally one refusal short; the
        // tallies are still worth auditing.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tallies one refused body of `sender`'s.
    pub fn record(&self, sender: &str, body: &[u8], now: DateTime<Utc>) {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let mut state = self.state();
        let State { open, closed } = &mut *state;
        let tally = open.entry(sender.to_owned()).or_insert_with(|| Tally {
            sender: sender.to_owned(),
            since: now,
            digests: Vec::new(),
        });
        tally.digests.push(digest);
        if tally.digests.len() >= MAX_DIGESTS
            && let Some(full) = open.remove(sender)
        {
            closed.push_back(full);
        }
    }

    /// Takes every tally, closed ones first, leaving nothing behind.
    pub fn take(&self) -> Vec<Tally> {
        let mut state = self.state();
        let mut all: Vec<Tally> = state.closed.drain(..).collect();
        let mut open: Vec<Tally> = state.open.drain().map(|(_, tally)| tally).collect();
        open.sort_by_key(|tally| tally.since);
        all.extend(open);
        all
    }

    /// Puts back tallies that could not be audited, to be audited first next time.
    pub fn restore(&self, tallies: Vec<Tally>) {
        let mut state = self.state();
        for tally in tallies.into_iter().rev() {
            state.closed.push_front(tally);
        }
    }

    /// How many refusals wait to be audited.
    pub fn pending(&self) -> usize {
        let state = self.state();
        state
            .open
            .values()
            .chain(&state.closed)
            .map(|t| t.digests.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        format!("2026-11-29T10:00:{second:02}Z").parse().unwrap()
    }

    #[test]
    fn a_summary_counts_and_commits_to_every_refused_body() {
        let refusals = RateRefusals::default();
        refusals.record("iom.sn", b"second", at(2));
        refusals.record("iom.sn", b"first", at(3));
        refusals.record("ma.interieur", b"other", at(1));
        assert_eq!(refusals.pending(), 3);
        let tallies = refusals.take();
        assert_eq!(refusals.pending(), 0);
        let senders: Vec<&str> = tallies.iter().map(|t| t.sender.as_str()).collect();
        assert_eq!(senders, ["ma.interieur", "iom.sn"], "oldest first");
        let fact = tallies[1].fact("refused/iom.sn".into(), at(4));
        fact.validate().unwrap();
        assert_eq!(fact.kind, Kind::Rejected);
        assert_eq!(fact.count, Some(2));
        assert_eq!(fact.reason.as_deref(), Some("rate-limited"));
        assert_eq!(fact.sender.as_deref(), Some("iom.sn"));
        assert!(fact.personal.commit_only);
        let mut digests: Vec<[u8; 32]> = [b"first".as_slice(), b"second"]
            .iter()
            .map(|b| Sha256::digest(b).into())
            .collect();
        digests.sort_unstable();
        assert_eq!(fact.personal.native, Some(digests.concat()));
    }

    #[test]
    fn a_full_tally_is_set_aside_and_a_new_one_begins() {
        let refusals = RateRefusals::default();
        for _ in 0..MAX_DIGESTS + 1 {
            refusals.record("iom.sn", b"again", at(0));
        }
        let tallies = refusals.take();
        let sizes: Vec<usize> = tallies.iter().map(|t| t.digests.len()).collect();
        assert_eq!(sizes, [MAX_DIGESTS, 1]);
        // The full one's commitment is within a fact's bounds.
        tallies[0]
            .fact("refused/iom.sn".into(), at(1))
            .validate()
            .unwrap();
    }

    #[test]
    fn tallies_put_back_come_first_and_lose_nothing() {
        let refusals = RateRefusals::default();
        refusals.record("iom.sn", b"one", at(0));
        let failed = refusals.take();
        refusals.record("iom.sn", b"two", at(5));
        refusals.restore(failed);
        let tallies = refusals.take();
        let counts: Vec<(DateTime<Utc>, usize)> =
            tallies.iter().map(|t| (t.since, t.digests.len())).collect();
        assert_eq!(counts, [(at(0), 1), (at(5), 1)]);
    }
}
