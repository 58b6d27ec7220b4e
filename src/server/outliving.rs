//! Work a request hands to a task of its own, which goes on when the request's client goes
//! away, and which the shutdown waits for.
//!
//! A message is read, processed and logged in a task of the HTTP worker that took its
//! connection, so that a client that leaves mid-way does not stop the message half done (a
//! body cut short must still be refused and audited, an acceptance under way confirmed or
//! withdrawn). But an HTTP worker that has no connection left stops at once when the server
//! stops, and drops the tasks it runs. This module owns the count of such tasks whose request
//! is gone, so that the shutdown lets them finish before it stops the workers.
//!
//! Only tasks whose request is gone are counted: a task whose client is still connected keeps
//! its worker running through the server's graceful stop, and counting it would make every
//! stop under load wait for the last keep-alive request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The task is running and its request waits for it.
const ATTENDED: u8 = 0;
/// The task is running and its request is gone: it is counted.
const LEFT: u8 = 1;
/// The task is over.
const OVER: u8 = 2;

/// The tasks still running whose request is gone.
#[derive(Debug)]
pub struct OutlivingTasks {
    running: watch::Sender<usize>,
}

impl Default for OutlivingTasks {
    fn default() -> Self {
        OutlivingTasks {
            running: watch::Sender::new(0),
        }
    }
}

impl OutlivingTasks {
    /// Runs `work` in a task of the current HTTP worker and waits for its output. When the
    /// returned future is dropped before the task is over (the client went away, and the
    /// server dropped its request), the task runs on and is counted until it is over.
    pub async fn run<F>(self: &Arc<Self>, work: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: Future + 'static,
    {
        let state = Arc::new(AtomicU8::new(ATTENDED));
        let over = TaskOver {
            state: state.clone(),
            tasks: self.clone(),
        };
        let task = actix_web::rt::spawn(async move {
            // Dropped when the work is over, or when the task itself is dropped.
            let _over = over;
            work.await
        });
        let _left = RequestLeft {
            state,
            tasks: self.clone(),
        };
        task.await
    }

    /// How many tasks whose request is gone are still running.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Waits until no task whose request is gone is running, for at most `bound`; says how
    /// many still run.
    pub async fn finished(&self, bound: Duration) -> usize {
        let mut running = self.running.subscribe();
        let _ = tokio::time::timeout(bound, running.wait_for(|n| *n == 0)).await;
        self.running()
    }

    /// Stops the server whose requests run their work here: it stops taking connections, lets
    /// the tasks whose request is gone finish for at most `bound` (their HTTP worker, with no
    /// connection left, would stop at once and drop them), then drains the requests in flight
    /// (actix's graceful stop, bounded by the server's own shutdown timeout). A client that
    /// goes away during that drain still has its work dropped with its worker. Says how many
    /// tasks were still running when `bound` was up.
    pub async fn stop_server(
        &self,
        server: &actix_web::dev::ServerHandle,
        bound: Duration,
    ) -> usize {
        server.pause().await;
        let left = self.finished(bound).await;
        server.stop(true).await;
        left
    }
}

/// Held by the request while it waits for its task: dropped before the task is over, it
/// counts the task.
struct RequestLeft {
    state: Arc<AtomicU8>,
    tasks: Arc<OutlivingTasks>,
}

impl Drop for RequestLeft {
    fn drop(&mut self) {
        if self
            .state
            .compare_exchange(ATTENDED, LEFT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.tasks.running.send_modify(|n| *n += 1);
        }
    }
}

/// Held by the task: dropped when it is over, it uncounts it if it was counted.
struct TaskOver {
    state: Arc<AtomicU8>,
    tasks: Arc<OutlivingTasks>,
}

impl Drop for TaskOver {
    fn drop(&mut self) {
        if self.state.swap(OVER, Ordering::AcqRel) == LEFT {
            self.tasks.running.send_modify(|n| *n -= 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task whose request waits for it is never counted; one whose request is dropped is
    /// counted until it is over, and [`OutlivingTasks::finished`] waits for it.
    #[actix_web::test]
    async fn a_task_is_counted_from_its_request_leaving_until_it_is_over() {
        let tasks = Arc::new(OutlivingTasks::default());
        assert_eq!(tasks.run(async { 7 }).await.unwrap(), 7);
        assert_eq!(tasks.running(), 0);

        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let request = tasks.run(async move {
            let _ = released.await;
        });
        // The request is polled once, so that its task starts, then dropped.
        let mut request = Box::pin(request);
        assert!(futures_util::poll!(&mut request).is_pending());
        drop(request);
        assert_eq!(tasks.running(), 1);
        assert_eq!(tasks.finished(Duration::from_millis(50)).await, 1);
        release.send(()).unwrap();
        assert_eq!(tasks.finished(Duration::from_secs(5)).await, 0);
    }
}
