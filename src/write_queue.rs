//! A bounded queue from many senders to one writer thread (the store's writer, the audit
//! log's), which async tasks wait on without blocking their thread.
//!
//! The writers are plain threads that take what is queued in groups (one commit, one sync for
//! many writes), so their end is a [`std::sync::mpsc`] receiver with its `recv_timeout`. The
//! senders are mostly tasks on the HTTP workers' single-threaded runtimes: a blocking send
//! into a full queue would stop every connection of that worker until the writer caught up
//! (a disk that stalls, for instance). [`WriteQueue::send`] therefore never blocks: when the
//! queue is full, the task waits for a [`Notify`] that the writer's end signals each time it
//! takes something. Threads that may block (the command line, the settling at start-up) use
//! [`WriteQueue::send_blocking`].

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use tokio::sync::Notify;

/// The writer's end is gone: the writer stopped, or the queue was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The senders' end of a write queue; cloned for each sender.
pub struct WriteQueue<T> {
    tx: SyncSender<T>,
    room: Arc<Notify>,
}

impl<T> Clone for WriteQueue<T> {
    fn clone(&self) -> Self {
        WriteQueue {
            tx: self.tx.clone(),
            room: self.room.clone(),
        }
    }
}

/// The writer's end of a write queue.
pub struct WriteQueueReceiver<T> {
    /// Always `Some` but in `drop`, which must close the channel before it wakes the senders.
    rx: Option<Receiver<T>>,
    room: Arc<Notify>,
}

/// A queue that holds at most `capacity` items (at least one).
pub fn write_queue<T>(capacity: usize) -> (WriteQueue<T>, WriteQueueReceiver<T>) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let room = Arc::new(Notify::new());
    (
        WriteQueue {
            tx,
            room: room.clone(),
        },
        WriteQueueReceiver { rx: Some(rx), room },
    )
}

impl<T> WriteQueue<T> {
    /// Queues `item`, waiting (without blocking the thread) while the queue is full.
    pub async fn send(&self, mut item: T) -> Result<(), Closed> {
        // Most sends find room: they queue without registering as waiters (a lock taken and
        // released on the notifier).
        match self.tx.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(back)) => item = back,
            Err(TrySendError::Disconnected(_)) => return Err(Closed),
        }
        loop {
            // Registered before the attempt, so that room made between a full attempt and
            // the wait still wakes this sender.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    item = back;
                    room.await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
        }
    }

    /// Queues `item` without waiting for room, for a write nobody waits for: when the queue
    /// is full, a task of its own (on the current runtime) waits for room and queues it, so
    /// that the caller's future can be dropped without losing the write. Outside a runtime,
    /// the thread blocks instead.
    pub fn send_detached(&self, item: T) -> Result<(), Closed>
    where
        T: Send + 'static,
    {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(Closed),
            Err(TrySendError::Full(item)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let queue = self.clone();
                    runtime.spawn(async move {
                        if queue.send(item).await.is_err() {
                            tracing::warn!("a queued write found its writer gone");
                        }
                    });
                    Ok(())
                }
                Err(_) => self.send_blocking(item),
            },
        }
    }

    /// Queues `item`, blocking the thread while the queue is full. Not for async tasks.
    pub fn send_blocking(&self, item: T) -> Result<(), Closed> {
        self.tx.send(item).map_err(|_| Closed)
    }
}

impl<T> WriteQueueReceiver<T> {
    /// Waits for the next item; `None` once every sender is gone.
    pub fn recv(&self) -> Option<T> {
        let item = self.rx().recv().ok();
        self.made_room(item.is_some());
        item
    }

    /// Waits at most `timeout` for the next item.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let item = self.rx().recv_timeout(timeout);
        self.made_room(item.is_ok());
        item
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let item = self.rx().try_recv();
        self.made_room(item.is_ok());
        item
    }

    fn rx(&self) -> &Receiver<T> {
        self.rx
            .as_ref()
            .expect("the channel is only closed when the receiver drops")
    }

    fn made_room(&self, took: bool) {
        if took {
            self.room.notify_waiters();
        }
    }
}

impl<T> Drop for WriteQueueReceiver<T> {
    /// Closes the channel, then wakes the senders waiting for room, so that they find it
    /// closed (woken before, one could find the queue still full and wait again, for good).
    fn drop(&mut self) {
        drop(self.rx.take());
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    /// A sender that finds the queue full leaves its thread to the other tasks: on a
    /// single-threaded runtime (an HTTP worker's), a ticker goes on ticking while the sender
    /// waits, and the sender's item is queued once the writer takes one.
    #[test]
    fn a_full_queue_does_not_block_the_senders_thread() {
        let (queue, writer) = write_queue::<u32>(1);
        queue.send_blocking(1).unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let seen = ticks.clone();
        let writer = std::thread::spawn(move || {
            // Takes the first item only once the runtime has ticked while the second waits.
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let ticked = seen.load(Ordering::SeqCst);
            let first = writer.recv().unwrap();
            let second = writer.recv_timeout(Duration::from_secs(10)).unwrap();
            (ticked, first, second)
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ticker = tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            queue.send(2).await.unwrap();
            ticker.abort();
        });
        let (ticked, first, second) = writer.join().unwrap();
        assert!(
            ticked >= 5,
            "the runtime ticked {ticked} times while the send waited"
        );
        assert_eq!((first, second), (1, 2));
    }

    /// Room made between a sender's full attempt and its wait is not missed: many senders
    /// through a queue of one all get their items in.
    #[test]
    fn every_waiting_sender_gets_its_item_in() {
        let (queue, writer) = write_queue::<u32>(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let senders: Vec<_> = (0..200)
            .map(|i| {
                let queue = queue.clone();
                runtime.spawn(async move { queue.send(i).await })
            })
            .collect();
        drop(queue);
        let mut taken = Vec::new();
        while let Some(item) = writer.recv() {
            taken.push(item);
            if taken.len() == 200 {
                break;
            }
        }
        for sender in senders {
            assert_eq!(runtime.block_on(sender).unwrap(), Ok(()));
        }
        taken.sort_unstable();
        assert_eq!(taken, (0..200).collect::<Vec<_>>());
    }

    /// A sender waiting for room when the writer's end goes finds the queue closed, every time.
    #[test]
    fn a_sender_waiting_for_room_learns_that_the_writer_is_gone() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..200 {
            let (queue, writer) = write_queue::<u32>(1);
            queue.send_blocking(1).unwrap();
            let waiting = runtime.spawn(async move { queue.send(2).await });
            std::thread::yield_now();
            drop(writer);
            let outcome = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), waiting).await });
            assert_eq!(outcome.expect("the sender is told").unwrap(), Err(Closed));
        }
    }

    #[test]
    fn a_queue_whose_writer_is_gone_is_closed() {
        let (queue, writer) = write_queue::<u32>(1);
        drop(writer);
        assert_eq!(queue.send_blocking(1), Err(Closed));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(queue.send(1)), Err(Closed));
    }
}
