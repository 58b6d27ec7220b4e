//! The audit of refusals that are summarised rather than logged one by one: messages over their
//! sender's rate limit, and client certificates that the TLS handshake refuses.
//!
//! Both are refused before anything else is done with them, and both can be sent as fast as
//! a client can send: a message over its sender's limit is answered `429` without being
//! decoded, and a handshake is refused before any request. Auditing each as an entry of its
//! own would let that client drive the log's synced appends, and grow the permanent log, as
//! fast as it can send: the very load the limit is there to refuse, and the very client the
//! handshake keeps out. So each refusal is tallied here, per sender, reason and transport, and each
//! tally is audited as one `rejected` fact with that reason and the number of refusals it
//! stands for (`count`). The gateway audits the tallies about once a second and when it
//! stops (see [`super::Gateway::audit_refusal_summaries`]).
//!
//! - **Rate-limited messages** are tallied under their sender (a partner id, or for a
//!   certificate the registry does not know its fingerprint) with reason `rate-limited`, and
//!   each refusal's digest is the SHA-256 of the refused body (of the bytes received). At most
//!   [`MAX_CERTIFICATE_TALLIES`] certificates the registry does not know have tallies of their
//!   own at once; the others' refusals are tallied together (see
//!   [`RefusalSummaries::record_for_certificate`]), so that whoever can have the partner CA
//!   issue many certificates cannot make one summary of each.
//! - **Refused certificates** are tallied under [`super::UNVERIFIED`] with the handshake's
//!   reason (`certificate-revoked`, `certificate-expired`, ... see
//!   [`crate::tls::CertificateRefusal`]), and each refusal's digest is the SHA-256 of the
//!   certificate (DER): its fingerprint. A handshake without any certificate is not seen, so
//!   not tallied.
//! - **AMQP messages refused before the pipeline** (no `user_id`, another partner's, unreadable
//!   headers) over the rate of the partner their broker user names are tallied under that
//!   partner (or [`super::UNREGISTERED`]) with their own reason, transport `amqp`; they are
//!   dead-lettered, not refused to a client.
//!
//! The summary's `native` commitment is over the digests, sorted and concatenated, so that a
//! sender who kept what it sent can show which of its messages or certificates a summary
//! stands for, without the gateway keeping any of them. Memory is bounded whatever a client
//! does and however long the log is unavailable: each sender and reason has one tally, which
//! keeps the digests of its first [`MAX_DIGESTS`] refusals (so that the commitment stays
//! within a fact's payload bound) and only counts the others; the reasons are a fixed set, and
//! the senders the registry's partners and [`MAX_CERTIFICATE_TALLIES`] certificates.

use crate::audit::leaf::{Fact, Kind, Personal, Transport, limits};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// The most refusals whose digests one summary commits to: they fill a fact's largest
/// payload. A summary that stands for more counts them all and commits to these first ones.
pub const MAX_DIGESTS: usize = limits::PAYLOAD_LEN / 32;

/// The most certificates the registry does not know that have tallies of their own at once.
pub const MAX_CERTIFICATE_TALLIES: usize = 16;

/// The reason code of a message refused for its sender's rate limit.
pub const RATE_LIMITED: &str = "rate-limited";

/// The refusals of one sender, for one reason, since their last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// A partner id, or the fingerprint of a certificate the registry does not know, or
    /// [`super::UNVERIFIED`] for refused certificates.
    pub sender: String,
    /// The reason code: [`RATE_LIMITED`], a refused certificate's, or that of an AMQP message
    /// refused before the pipeline over its sender's rate.
    pub reason: &'static str,
    /// The transport the refused messages (or certificates) came by.
    pub transport: Transport,
    /// When the first of them was refused.
    pub since: DateTime<Utc>,
    /// How many were refused.
    pub count: u64,
    /// The SHA-256 digest of each of the first [`MAX_DIGESTS`] refused bodies or
    /// certificates, in the order refused.
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
        fact.transport = Some(self.transport);
        fact.reason = Some(self.reason.to_owned());
        fact.count = Some(self.count);
        fact.case_id = Some(case);
        fact.personal = Personal {
            native: Some(sorted.concat()),
            commit_only: true,
            ..Personal::default()
        };
        fact
    }

    /// Adds `other`'s refusals (of the same sender and reason, refused after these) to these.
    fn merge(&mut self, other: Tally) {
        self.since = self.since.min(other.since);
        self.count += other.count;
        let room = MAX_DIGESTS.saturating_sub(self.digests.len());
        self.digests.extend(other.digests.into_iter().take(room));
    }
}

/// What a tally counts refusals by: sender, reason and transport.
type Key = (String, &'static str, Transport);

/// The refusals not yet audited, one tally per sender, reason and transport.
#[derive(Debug, Default)]
pub struct RefusalSummaries {
    tallies: Mutex<HashMap<Key, Tally>>,
}

impl RefusalSummaries {
    fn tallies(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Tally>> {
        // A panic while the lock was held leaves at worst a tally one refusal short; the
        // tallies are still worth auditing.
        self.tallies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tallies one refusal of `sender`'s for `reason`, of what came by `transport`: `refused` is
    /// the refused body, or the refused certificate (DER).
    pub fn record(
        &self,
        sender: &str,
        reason: &'static str,
        transport: Transport,
        refused: &[u8],
        now: DateTime<Utc>,
    ) {
        // Hashed before the lock is taken: refused bodies may be up to the size limit.
        let digest: [u8; 32] = Sha256::digest(refused).into();
        tally_in(&mut self.tallies(), sender, reason, transport, digest, now);
    }

    /// Tallies one refusal of a certificate the registry does not know (by its `fingerprint`),
    /// as [`RefusalSummaries::record`] does, under its fingerprint while fewer than
    /// [`MAX_CERTIFICATE_TALLIES`] such certificates have tallies, and else under `shared`,
    /// the sender all such certificates stand for.
    pub fn record_for_certificate(
        &self,
        fingerprint: &str,
        shared: &str,
        reason: &'static str,
        transport: Transport,
        refused: &[u8],
        now: DateTime<Utc>,
    ) {
        let digest: [u8; 32] = Sha256::digest(refused).into();
        let mut tallies = self.tallies();
        let own = tallies.contains_key(&(fingerprint.to_owned(), reason, transport))
            || tallies
                .keys()
                .filter(|(sender, ..)| sender.starts_with(crate::tls::FINGERPRINT_PREFIX))
                .count()
                < MAX_CERTIFICATE_TALLIES;
        let sender = if own { fingerprint } else { shared };
        tally_in(&mut tallies, sender, reason, transport, digest, now);
    }

    /// Takes every tally, oldest first, leaving none behind.
    #[cfg(test)]
    fn take(&self) -> Vec<Tally> {
        self.take_due(|_| true)
    }

    /// Takes the tallies that `due` says are due, oldest first, leaving the others.
    pub fn take_due(&self, due: impl Fn(&Tally) -> bool) -> Vec<Tally> {
        let mut tallies = self.tallies();
        let keys: Vec<Key> = tallies
            .iter()
            .filter(|(_, tally)| due(tally))
            .map(|(key, _)| key.clone())
            .collect();
        let mut taken: Vec<Tally> = keys.iter().filter_map(|key| tallies.remove(key)).collect();
        taken.sort_by_key(|tally| tally.since);
        taken
    }

    /// Puts back tallies that could not be audited, each with what its sender was refused
    /// since, for the same reason, added after it (so that the digests kept are still those of
    /// the first refusals).
    pub fn restore(&self, tallies: Vec<Tally>) {
        let mut open = self.tallies();
        for mut tally in tallies {
            let key = (tally.sender.clone(), tally.reason, tally.transport);
            if let Some(newer) = open.remove(&key) {
                tally.merge(newer);
            }
            open.insert(key, tally);
        }
    }

    /// How many refusals wait to be audited.
    pub fn pending(&self) -> u64 {
        self.tallies().values().map(|t| t.count).sum()
    }
}

/// Adds one refusal, whose digest is `digest`, to the tally of `sender`, `reason` and
/// `transport` in `tallies`.
fn tally_in(
    tallies: &mut HashMap<Key, Tally>,
    sender: &str,
    reason: &'static str,
    transport: Transport,
    digest: [u8; 32],
    now: DateTime<Utc>,
) {
    let tally = tallies
        .entry((sender.to_owned(), reason, transport))
        .or_insert_with(|| Tally {
            sender: sender.to_owned(),
            reason,
            transport,
            since: now,
            count: 0,
            digests: Vec::new(),
        });
    tally.count += 1;
    if tally.digests.len() < MAX_DIGESTS {
        tally.digests.push(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        format!("2026-11-29T10:00:{second:02}Z").parse().unwrap()
    }

    fn digest(body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }

    #[test]
    fn a_bounded_number_of_unknown_certificates_have_tallies_of_their_own() {
        let refusals = RefusalSummaries::default();
        let certificates = MAX_CERTIFICATE_TALLIES + 4;
        for n in 0..certificates {
            // Each twice: a certificate with a tally keeps it.
            for _ in 0..2 {
                refusals.record_for_certificate(
                    &format!("sha256:{n:064x}"),
                    "unregistered",
                    RATE_LIMITED,
                    Transport::Rest,
                    b"body",
                    at(1),
                );
            }
        }
        let tallies = refusals.take();
        assert_eq!(tallies.len(), MAX_CERTIFICATE_TALLIES + 1);
        let shared: Vec<&Tally> = tallies
            .iter()
            .filter(|tally| tally.sender == "unregistered")
            .collect();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].count, 8);
        assert!(
            tallies
                .iter()
                .filter(|tally| tally.sender != "unregistered")
                .all(|tally| tally.count == 2)
        );
        // Once audited, the next certificates have tallies of their own again.
        refusals.record_for_certificate(
            "sha256:ff",
            "unregistered",
            RATE_LIMITED,
            Transport::Rest,
            b"body",
            at(2),
        );
        assert_eq!(refusals.take()[0].sender, "sha256:ff");
    }

    #[test]
    fn a_summary_counts_and_commits_to_every_refused_body() {
        let refusals = RefusalSummaries::default();
        refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"second", at(2));
        refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"first", at(3));
        refusals.record(
            "ma.interieur",
            RATE_LIMITED,
            Transport::Rest,
            b"other",
            at(1),
        );
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
        let mut digests = [digest(b"first"), digest(b"second")];
        digests.sort_unstable();
        assert_eq!(fact.personal.native, Some(digests.concat()));
    }

    #[test]
    fn each_reason_of_a_sender_has_its_own_summary() {
        let refusals = RefusalSummaries::default();
        refusals.record(
            "unverified",
            "certificate-revoked",
            Transport::Rest,
            b"cert one",
            at(1),
        );
        refusals.record(
            "unverified",
            "certificate-expired",
            Transport::Rest,
            b"cert two",
            at(2),
        );
        refusals.record(
            "unverified",
            "certificate-revoked",
            Transport::Rest,
            b"cert one",
            at(3),
        );
        let tallies = refusals.take();
        let summary: Vec<(&str, u64)> = tallies.iter().map(|t| (t.reason, t.count)).collect();
        assert_eq!(
            summary,
            [("certificate-revoked", 2), ("certificate-expired", 1)]
        );
        let fact = tallies[0].fact("refused/unverified".into(), at(4));
        fact.validate().unwrap();
        assert_eq!(fact.reason.as_deref(), Some("certificate-revoked"));
        assert_eq!(
            fact.personal.native,
            Some([digest(b"cert one"), digest(b"cert one")].concat())
        );
        // Put back, each merges only with newer refusals for its own reason.
        refusals.record(
            "unverified",
            "certificate-expired",
            Transport::Rest,
            b"cert three",
            at(5),
        );
        refusals.restore(tallies);
        let summary: Vec<(&str, u64)> = refusals
            .take()
            .iter()
            .map(|t| (t.reason, t.count))
            .collect();
        assert_eq!(
            summary,
            [("certificate-revoked", 2), ("certificate-expired", 2)]
        );
    }

    #[test]
    fn past_the_digest_bound_refusals_are_counted_only() {
        let refusals = RefusalSummaries::default();
        for _ in 0..MAX_DIGESTS + 5 {
            refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"again", at(0));
        }
        let tallies = refusals.take();
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies[0].count, MAX_DIGESTS as u64 + 5);
        assert_eq!(tallies[0].digests.len(), MAX_DIGESTS);
        // The commitment is within a fact's bounds.
        tallies[0]
            .fact("refused/iom.sn".into(), at(1))
            .validate()
            .unwrap();
    }

    #[test]
    fn tallies_put_back_merge_with_newer_ones_and_lose_nothing() {
        let refusals = RefusalSummaries::default();
        refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"one", at(0));
        refusals.record("iom.ma", RATE_LIMITED, Transport::Rest, b"two", at(1));
        let failed = refusals.take();
        refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"three", at(5));
        refusals.restore(failed);
        assert_eq!(refusals.pending(), 3);
        let tallies = refusals.take();
        let summary: Vec<(&str, DateTime<Utc>, u64, usize)> = tallies
            .iter()
            .map(|t| (t.sender.as_str(), t.since, t.count, t.digests.len()))
            .collect();
        assert_eq!(summary, [("iom.sn", at(0), 2, 2), ("iom.ma", at(1), 1, 1)]);
        // The older refusals' digests come first, so that a full tally keeps the first ones.
        assert_eq!(tallies[0].digests, [digest(b"one"), digest(b"three")]);
    }

    #[test]
    fn a_tally_put_back_again_and_again_stays_bounded() {
        let refusals = RefusalSummaries::default();
        for round in 0..3 {
            for _ in 0..MAX_DIGESTS {
                refusals.record("iom.sn", RATE_LIMITED, Transport::Rest, b"flood", at(round));
            }
            let failed = refusals.take();
            refusals.restore(failed);
        }
        let tallies = refusals.take();
        assert_eq!(tallies.len(), 1);
        assert_eq!(tallies[0].count, 3 * MAX_DIGESTS as u64);
        assert_eq!(tallies[0].digests.len(), MAX_DIGESTS);
    }
}
