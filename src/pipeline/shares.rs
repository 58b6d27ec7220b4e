//! Fair shares of a bounded resource among the senders: the request bodies being read, the
//! messages being accepted (see [`super::Limits`]).
//!
//! A sender holds at most half of the permits, and the certificates the registry does not
//! know one eighth between them, so that one partner (sending slowly, or sending a flood)
//! cannot take every permit and stop the other partners' messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::UNREGISTERED;

/// `capacity` permits, shared fairly among the senders.
#[derive(Debug)]
pub struct FairShares {
    capacity: usize,
    total: Arc<Semaphore>,
    /// Each sender's share, by partner id (or [`UNREGISTERED`]), made at its first request:
    /// a bounded set, the registry's partners.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One permit: the sender's share and the total's, released when it drops.
#[derive(Debug)]
pub struct SharePermit {
    _own: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl FairShares {
    /// `capacity` permits (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        FairShares {
            capacity,
            total: Arc::new(Semaphore::new(capacity)),
            shares: Mutex::new(HashMap::new()),
        }
    }

    /// Waits at most `within` for a permit of `sender`'s (a partner id, or [`UNREGISTERED`]);
    /// `None` when the wait ran out.
    pub async fn acquire(&self, sender: &str, within: Duration) -> Option<SharePermit> {
        let share = self
            .shares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(sender.to_owned())
            .or_insert_with(|| {
                let share = if sender == UNREGISTERED {
                    self.capacity / 8
                } else {
                    self.capacity / 2
                };
                Arc::new(Semaphore::new(share.max(1)))
            })
            .clone();
        let wait = async {
            let own = share.acquire_owned().await.ok()?;
            let total = self.total.clone().acquire_owned().await.ok()?;
            Some(SharePermit {
                _own: own,
                _total: total,
            })
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_sender_holds_at_most_half_and_the_unregistered_an_eighth() {
        let shares = FairShares::new(16);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(shares.acquire("sn.consulat", SOON).await.unwrap());
        }
        assert!(shares.acquire("sn.consulat", SOON).await.is_none());
        for _ in 0..2 {
            held.push(shares.acquire(UNREGISTERED, SOON).await.unwrap());
        }
        assert!(shares.acquire(UNREGISTERED, SOON).await.is_none());
        // The others still find room, up to the total.
        for _ in 0..6 {
            held.push(shares.acquire("ma.dgsn", SOON).await.unwrap());
        }
        assert!(shares.acquire("ma.interieur", SOON).await.is_none());
        held.pop();
        assert!(shares.acquire("ma.interieur", SOON).await.is_some());
    }
}
