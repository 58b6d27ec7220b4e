//! Push delivery from the durable outbox: retry policy and the webhook worker.
//!
//! This module owns what happens to a delivery after the pipeline made it durable: when it is
//! tried, how long to wait after a failure (exponential backoff with jitter, or the
//! recipient's `Retry-After`), when to give up (dead letter), and the audit entry of every
//! attempt and outcome. Pull deliveries (the inbox) are served by the REST routes; AMQP
//! deliveries by the AMQP transport, with the same [`RetryPolicy`].

pub mod webhook;

use crate::audit::{AuditLog, Kind};
use crate::config::DeliverySettings;
use crate::pipeline::Gateway;
use crate::store::{Channel, DEAD_LETTER_PAGE, Delivery, DeliveryUpdate, DueLook, StoreError};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::task::JoinSet;

/// What one push attempt came to, whatever the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The recipient has it (a `2xx`, or a clean publisher confirm).
    Delivered,
    /// A failure that may pass: try again, after `asked` if the recipient said when.
    Retry {
        /// Why, a short code (`webhook.http-503`, `amqp.nack`).
        code: String,
        /// The recipient's `Retry-After`, if any.
        asked: Option<Duration>,
    },
    /// A failure that retrying cannot mend: dead-letter it.
    Dead {
        /// Why, a short code.
        code: String,
    },
    /// Nothing was sent: the recipient has no endpoint on the delivery's channel. Dead-letter
    /// it without counting an attempt.
    Unsendable {
        /// Why, a short code.
        code: String,
    },
}

/// How long a delivery whose attempt could not be recorded waits before it is tried again.
pub const HOLD_BACK: Duration = Duration::from_secs(5);

/// How long a due delivery whose record cannot be read back is left aside before the worker
/// looks at it again (and reports it again).
pub const UNREADABLE_HOLD: Duration = Duration::from_secs(600);

/// Whether an attempt could be recorded now: the store and the audit log are both working.
/// The push workers attempt nothing while they are not, since an attempt that cannot be
/// recorded would be made again.
pub fn can_record(gateway: &Gateway) -> bool {
    gateway.store.is_open() && gateway.log.is_healthy()
}

/// A push worker's look at its line (see [`crate::store::Store::due_for`]), read off the
/// async threads: it reads the bodies it takes, from disk when they are not cached, and the
/// thread it would otherwise hold drives the calls under way.
pub async fn look_at_line(
    gateway: &Gateway,
    channel: Channel,
    now_ms: u64,
    skip: HashSet<u64>,
    room: usize,
    turn: String,
    allowance: impl FnMut(&str) -> usize + Send + 'static,
) -> Result<DueLook, StoreError> {
    let store = gateway.store.clone();
    tokio::task::spawn_blocking(move || {
        store.due_for(channel, now_ms, &skip, room, &turn, allowance)
    })
    .await
    .map_err(|e| {
        StoreError::Database(format!(
            "the look at the outbox ended: {}",
            crate::error_text::task_failure(&e)
        ))
    })?
}

/// Whether `log` refuses to record anything of `delivery`'s case, its key lost.
pub fn case_key_lost(log: &AuditLog, delivery: &Delivery) -> bool {
    delivery
        .case_id
        .as_deref()
        .is_some_and(|case| log.case_key_lost(case))
}

/// The deliveries a push worker holds back because their last attempt could not be recorded
/// (see [`record_attempt`]), each until [`HOLD_BACK`] has passed, so that a recipient does not
/// get the same delivery in a tight loop.
#[derive(Debug, Default)]
pub struct HeldBack(HashMap<u64, Instant>);

impl HeldBack {
    /// Holds `id` back from now.
    pub fn hold(&mut self, id: u64) {
        self.0.insert(id, Instant::now() + HOLD_BACK);
    }

    /// Sets aside the due deliveries whose records cannot be read back (damaged), reporting
    /// each, so that the others on the channel still go out. They stay in line, unsent, and
    /// are reported again every [`UNREADABLE_HOLD`] until the store is repaired.
    pub fn set_aside_unreadable(&mut self, unreadable: &[(u64, String)], channel: &'static str) {
        for (id, why) in unreadable {
            tracing::error!(delivery = id, channel, error = %why, "a due delivery cannot be read back from the store; it stays in line, unsent, and the others go on");
            self.0.insert(*id, Instant::now() + UNREADABLE_HOLD);
        }
    }

    /// Sets aside, out of `taken`, the due deliveries whose attempt the audit log would refuse
    /// to record while it records others: their case's key was lost (see
    /// [`crate::audit::AuditLog::case_key_lost`]). Each is reported, stays in line, unsent (an
    /// attempt that cannot be recorded would be made again and again), and is looked at again
    /// every [`UNREADABLE_HOLD`] until the key file is restored.
    pub fn set_aside_unrecordable(
        &mut self,
        taken: &mut Vec<Delivery>,
        gateway: &Gateway,
        channel: &'static str,
    ) {
        taken.retain(|delivery| {
            if !case_key_lost(&gateway.log, delivery) {
                return true;
            }
            tracing::error!(
                delivery = delivery.id,
                channel,
                "a due delivery's case has entries in the audit log but no key in its key file \
                 (private/keys/cases.keys, restored from an older copy?): its attempt could not \
                 be recorded, so it stays in line, unsent, until the file is restored"
            );
            self.0.insert(delivery.id, Instant::now() + UNREADABLE_HOLD);
            false
        });
    }

    /// What a worker attempts of its look at `channel`'s line: the deliveries taken, once the
    /// unreadable and the unrecordable are set aside (each reported), and when the next
    /// delivery falls due. `turn` moves on to the recipient the look ended with.
    pub fn sort_look(
        &mut self,
        mut look: DueLook,
        gateway: &Gateway,
        channel: Channel,
        turn: &mut String,
    ) -> (Vec<Delivery>, Option<u64>) {
        self.set_aside_unreadable(&look.unreadable, channel.name());
        self.set_aside_unrecordable(&mut look.taken, gateway, channel.name());
        if let Some(last) = look.last {
            *turn = last;
        }
        (look.taken, look.next_ms)
    }

    /// Takes `id` out of flight once the task attempting it has ended: `recorded` is whether
    /// its attempt is on record (`None` when the task failed). One not on record may have
    /// reached the recipient or not, so it is held back before it is attempted again.
    pub fn settle(&mut self, in_flight: &mut HashSet<u64>, id: u64, recorded: Option<bool>) {
        in_flight.remove(&id);
        if recorded != Some(true) {
            self.hold(id);
        }
    }

    /// Lets go of those whose time is up, and returns `also` with the ids still held: what the
    /// worker must not take from the outbox.
    pub fn and(&mut self, also: &HashSet<u64>) -> HashSet<u64> {
        let now = Instant::now();
        self.0.retain(|_, until| *until > now);
        also.iter().chain(self.0.keys()).copied().collect()
    }

    /// How long a push worker waits before it looks at its line again, unless an attempt
    /// ends or a new delivery comes first: until `next_ms` (the next due time its look found,
    /// ms since the epoch), or, while attempts can be recorded (`recordable`), until the first
    /// delivery held back is let go (10 ms at least); a second at most.
    pub fn until_next_look(&self, next_ms: Option<u64>, recordable: bool) -> Duration {
        let mut wait = Duration::from_secs(1);
        if let Some(at) = next_ms {
            let from_now = at.saturating_sub(due_in(Duration::ZERO));
            wait = wait.min(Duration::from_millis(from_now));
        }
        if recordable && let Some(until) = self.0.values().min() {
            let released = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            wait = wait.min(released);
        }
        wait
    }
}

/// Starts listening for `released` (the outbox's new deliveries) before a push worker reads
/// its line, so that a delivery released meanwhile wakes the worker at once.
pub fn listen(released: &Notify) -> Pin<Box<Notified<'_>>> {
    let mut notified = Box::pin(released.notified());
    notified.as_mut().enable();
    notified
}

/// Tasks that each work on one delivery, keyed, so that a task that fails (panics) still gives
/// its key back: the worker then lets go of its delivery instead of keeping it in flight, and
/// it is attempted again.
pub struct KeyedTasks<K, T> {
    set: JoinSet<T>,
    keys: HashMap<tokio::task::Id, K>,
}

impl<K, T: Send + 'static> Default for KeyedTasks<K, T> {
    fn default() -> Self {
        KeyedTasks {
            set: JoinSet::new(),
            keys: HashMap::new(),
        }
    }
}

impl<K, T: Send + 'static> KeyedTasks<K, T> {
    /// Runs `task` for `key`.
    pub fn spawn(&mut self, key: K, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.keys.insert(handle.id(), key);
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next task to end, with its key; `None` in place of its output if it failed.
    pub async fn join_next(&mut self) -> Option<(K, Option<T>)> {
        let done = self.set.join_next_with_id().await?;
        self.keyed(done)
    }

    /// A task that has already ended, if any.
    pub fn try_join_next(&mut self) -> Option<(K, Option<T>)> {
        let done = self.set.try_join_next_with_id()?;
        self.keyed(done)
    }

    fn keyed(
        &mut self,
        done: Result<(tokio::task::Id, T), tokio::task::JoinError>,
    ) -> Option<(K, Option<T>)> {
        let (id, output) = match done {
            Ok((id, output)) => (id, Some(output)),
            Err(error) => {
                tracing::error!(
                    error = crate::error_text::task_failure(&error),
                    "a delivery task failed"
                );
                (error.id(), None)
            }
        };
        self.keys.remove(&id).map(|key| (key, output))
    }
}

/// Takes the ids of erased cases off the store's records (see [`crate::store::Store::forget_case_ids`]),
/// once the deliveries of every erased case are withdrawn ([`withdraw_erased`], which finds them
/// by case id), and returns how many records were changed. Runs at start, after
/// [`withdraw_erased`] and before the delivery workers, and reads every record, so only once a
/// further case is erased; a record that cannot be read back makes it run again at the next
/// start, until the store is repaired.
pub fn forget_erased_case_ids(gateway: &Gateway) -> anyhow::Result<usize> {
    let erased = gateway.log.erased_cases()?;
    if erased <= gateway.store.case_ids_forgotten()?
        || erased > gateway.store.erasures_withdrawn()?
    {
        return Ok(0);
    }
    let mut erased_cases = std::collections::HashSet::new();
    for case in gateway.store.recorded_case_ids()? {
        if gateway.log.is_case_erased(&case)? {
            erased_cases.insert(case);
        }
    }
    let forgotten = gateway.store.forget_case_ids(&erased_cases)?;
    if forgotten.unreadable_records == 0 && forgotten.unreadable_deliveries.is_empty() {
        gateway.store.mark_case_ids_forgotten(erased)?;
    } else {
        tracing::error!(
            records = forgotten.unreadable_records,
            deliveries = ?forgotten.unreadable_deliveries,
            "records that cannot be read back were passed over when taking erased cases' ids off \
             the store; it runs again at the next start"
        );
    }
    Ok(forgotten.records + forgotten.deliveries)
}

/// Takes out of line the deliveries of erased cases that still hold a body, and returns how
/// many.
///
/// A case is erased with the gateway stopped (`passerelle audit erase`); its deliveries still
/// waiting would go out with the erased data, and no attempt of theirs could be audited; its
/// dead letters could be put back in line, and would keep that data in the store. Each is
/// audited first (`dead_lettered`, reason `case-erased`, without the case), then kept as a
/// dead letter whose body is deleted and which cannot be redelivered. Completed deliveries
/// hold no body (the store deletes it on completion). The case's file is deleted too. Runs at
/// start, before the delivery workers.
///
/// It reads every waiting delivery and dead letter, so it runs only when a case was erased
/// since it last ran to its end (the store keeps the count of erased cases it has seen): an
/// erased case takes no new message, and its dead letters cannot be put back in line, so
/// nothing of it comes back once withdrawn.
pub async fn withdraw_erased(gateway: &Gateway) -> anyhow::Result<usize> {
    let mut withdrawn = 0;
    let erased = gateway.log.erased_cases()?;
    // An erased case's file goes too (the steps seen, its bookings' destinations): with its
    // own count, so that the files of cases erased before files were deleted go as well.
    if erased > gateway.store.case_files_forgotten()? {
        for case in gateway.store.cases_on_file()? {
            if gateway.log.is_case_erased(&case)? {
                gateway.store.forget_case_file(&case).await?;
            }
        }
        gateway.store.mark_case_files_forgotten(erased)?;
    }
    if erased <= gateway.store.erasures_withdrawn()? {
        return Ok(withdrawn);
    }
    let mut with_bodies = gateway.store.waiting()?;
    let mut after = 0;
    loop {
        let page = gateway.store.dead_letters(after, DEAD_LETTER_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        with_bodies.extend(page.into_iter().filter(Delivery::holds_body));
    }
    for delivery in with_bodies {
        let Some(case) = delivery.case_id.as_deref() else {
            continue;
        };
        if !gateway.log.is_case_erased(case)? {
            continue;
        }
        gateway
            .audit_erased_delivery(&delivery)
            .await
            .map_err(|refusal| {
                anyhow::anyhow!("auditing a delivery of an erased case: {refusal}")
            })?;
        gateway
            .store
            .update(delivery.id, DeliveryUpdate::Erased)
            .await?;
        withdrawn += 1;
    }
    // A delivery whose record cannot be read back was passed over: it may be an erased case's,
    // with its body. The sweep runs again at the next start, until the store is repaired.
    let unreadable = gateway.store.unreadable_listed()?;
    if unreadable.is_empty() {
        gateway.store.mark_erasures_withdrawn(erased)?;
    } else {
        tracing::error!(
            deliveries = ?unreadable,
            "deliveries whose record cannot be read back were passed over by the withdrawal of \
             erased cases' deliveries; it runs again at the next start"
        );
    }
    Ok(withdrawn)
}

/// The error code of an inbox delivery dead-lettered at start because the registry no longer
/// gives its recipient an inbox: redelivering it sends it by the recipient's mode now.
pub const NOT_AN_INBOX_RECIPIENT: &str = "inbox.not-an-inbox-recipient";
/// The error code of a webhook delivery whose recipient the registry no longer gives a
/// webhook (dead-lettered at start, or by the webhook worker).
pub const NO_WEBHOOK_ENDPOINT: &str = "webhook.no-endpoint";
/// The error code of an AMQP delivery whose recipient the registry no longer gives AMQP
/// delivery (dead-lettered at start, or by the AMQP publisher).
pub const NOT_AN_AMQP_RECIPIENT: &str = "amqp.not-an-amqp-recipient";

/// Dead-letters the deliveries still waiting on a channel that the registry no longer gives
/// their recipient: an inbox (listed or not, not acknowledged; [`NOT_AN_INBOX_RECIPIENT`]), a
/// webhook ([`NO_WEBHOOK_ENDPOINT`]) or an AMQP queue ([`NOT_AN_AMQP_RECIPIENT`]), whether the
/// recipient was given another delivery mode, none (an auditor), or was taken out of the
/// registry. A delivery goes out only by its recipient's mode of now: an operator redelivers
/// these dead letters (by that mode) or discards them, and so can withdraw what waited after a
/// change of need-to-know, before any of it goes out (the push workers, which would find the
/// same at each delivery's due time, have not started: a webhook delivery waiting out its
/// back-off would otherwise go out if the mode were changed back before it came due). Each is
/// audited first (`dead_lettered`), then recorded. Runs at start, before anything is served.
pub async fn bury_stray_deliveries(gateway: &Gateway) -> anyhow::Result<usize> {
    let mut buried = 0;
    let mut moved = gateway.store.inbox_recipients()?;
    moved.retain(|recipient| gateway.channel_of(recipient) != Some(Channel::Inbox));
    for recipient in moved {
        let mut after = 0;
        loop {
            let page = gateway.store.inbox(&recipient, after, DEAD_LETTER_PAGE)?;
            for (delivery, why) in &page.unreadable {
                tracing::error!(
                    delivery,
                    error = %why,
                    "an inbox delivery's record cannot be read back; it stays in the inbox of \
                     a partner that no longer has one"
                );
            }
            let Some(last) = page.last_seen else { break };
            after = last;
            for delivery in page.deliveries {
                buried += usize::from(bury(gateway, &delivery, NOT_AN_INBOX_RECIPIENT).await?);
            }
        }
    }
    for (channel, code) in [
        (Channel::Webhook, NO_WEBHOOK_ENDPOINT),
        (Channel::Amqp, NOT_AN_AMQP_RECIPIENT),
    ] {
        let mut moved = gateway.store.push_recipients(channel)?;
        moved.retain(|recipient| gateway.channel_of(recipient) != Some(channel));
        for recipient in moved {
            for delivery in gateway.store.waiting_on(channel, &recipient)? {
                buried += usize::from(bury(gateway, &delivery, code).await?);
            }
        }
    }
    Ok(buried)
}

/// Dead-letters one waiting delivery at start, for `code`: audited, then recorded. One whose
/// case the audit log cannot record (its key lost) is left waiting, reported, and `false`:
/// one case's lost key does not stop the start.
async fn bury(gateway: &Gateway, delivery: &Delivery, code: &str) -> anyhow::Result<bool> {
    if case_key_lost(&gateway.log, delivery) {
        tracing::error!(
            delivery = delivery.id,
            channel = delivery.channel.name(),
            "a delivery waiting on a channel its recipient no longer has is left in line: its \
             case has entries in the audit log but no key in its key file \
             (private/keys/cases.keys), so its dead-lettering could not be recorded"
        );
        return Ok(false);
    }
    gateway
        .audit_delivery(delivery, Kind::DeadLettered, Some(code.into()))
        .await
        .map_err(|refusal| {
            anyhow::anyhow!(
                "auditing a delivery dead-lettered for its recipient's new delivery mode: \
                 {refusal}"
            )
        })?;
    let dead = gateway
        .store
        .update(
            delivery.id,
            DeliveryUpdate::Dead {
                error: code.into(),
                attempted: false,
            },
        )
        .await?;
    delivery_step(&gateway.metrics, &dead, "dead");
    Ok(true)
}

/// Counts one step of a delivery (`delivered`, `acknowledged`, `retry`, `dead`, `discarded`)
/// and logs it, together, once the store holds it (`delivery` as it now stands). The line
/// names the delivery's message by its source and event id (the pair that names a message:
/// two senders may use the same reference) and its type. A dead letter is a WARN line (an
/// operator must act); every other step an INFO line, `delivery attempt` for the channel's
/// own steps.
pub fn delivery_step(
    metrics: &crate::metrics::Metrics,
    delivery: &Delivery,
    outcome: &'static str,
) {
    let d = delivery;
    let channel = d.channel.name();
    metrics.delivery(&d.recipient, channel, outcome);
    // The record keeps the last failure's code: a step that is no failure is logged without.
    let error = d.last_error.as_deref().unwrap_or_default();
    match outcome {
        "dead" => tracing::warn!(
            delivery = d.id, channel, recipient = %d.recipient, source = %d.source,
            event_id = %d.event_id, event_type = %d.event_type, outcome, error,
            attempts = d.attempts, "delivery dead-lettered"
        ),
        "retry" => tracing::info!(
            delivery = d.id, channel, recipient = %d.recipient, source = %d.source,
            event_id = %d.event_id, event_type = %d.event_type, outcome, error,
            attempts = d.attempts, "delivery attempt"
        ),
        "discarded" => tracing::info!(
            delivery = d.id, channel, recipient = %d.recipient, source = %d.source,
            event_id = %d.event_id, event_type = %d.event_type, outcome, "dead letter discarded"
        ),
        _ => tracing::info!(
            delivery = d.id, channel, recipient = %d.recipient, source = %d.source,
            event_id = %d.event_id, event_type = %d.event_type, outcome,
            attempts = d.attempts, "delivery attempt"
        ),
    }
}

/// Records a push attempt: audits it first (so that the evidence is never behind the
/// state), then changes the delivery in the store under the retry policy, and counts it.
/// When the audit append fails, the delivery is put back in line for a second later and
/// nothing else changes (the attempt is not counted against the retry policy). Returns the
/// delivery as it now stands, when recorded; `None` tells the caller that the attempt is not
/// on record, and that it should hold the delivery back rather than try it again at once.
pub async fn record_attempt(
    gateway: &Gateway,
    policy: &RetryPolicy,
    delivery: &Delivery,
    attempt: Attempt,
    channel: &'static str,
) -> Option<Delivery> {
    let (update, kind, reason, label) = match attempt {
        Attempt::Delivered => (
            DeliveryUpdate::Delivered,
            Kind::Delivered,
            None,
            "delivered",
        ),
        Attempt::Retry { code, asked } => match policy.next(delivery.attempts + 1, asked) {
            Next::RetryAfter(wait) => (
                DeliveryUpdate::Retry {
                    error: code.clone(),
                    due_ms: due_in(wait),
                },
                Kind::DeliveryFailed,
                Some(code),
                "retry",
            ),
            Next::GiveUp => (
                DeliveryUpdate::Dead {
                    error: code.clone(),
                    attempted: true,
                },
                Kind::DeadLettered,
                Some(code),
                "dead",
            ),
        },
        Attempt::Dead { code } => (
            DeliveryUpdate::Dead {
                error: code.clone(),
                attempted: true,
            },
            Kind::DeadLettered,
            Some(code),
            "dead",
        ),
        Attempt::Unsendable { code } => (
            DeliveryUpdate::Dead {
                error: code.clone(),
                attempted: false,
            },
            Kind::DeadLettered,
            Some(code),
            "dead",
        ),
    };
    if let Err(error) = gateway.audit_delivery(delivery, kind, reason).await {
        tracing::error!(delivery = delivery.id, channel, error = %error, "auditing a delivery attempt failed; it will be tried again");
        let again = DeliveryUpdate::Postpone {
            due_ms: due_in(Duration::from_secs(1)),
        };
        let _ = gateway.store.update(delivery.id, again).await;
        return None;
    }
    match gateway.store.update(delivery.id, update).await {
        Ok(d) => {
            // A dead letter is a WARN line: an operator must act (`deliveries dead`, then a
            // redelivery).
            delivery_step(&gateway.metrics, &d, label);
            Some(d)
        }
        Err(error) => {
            tracing::error!(delivery = delivery.id, channel, error = %error, "recording a delivery attempt failed");
            None
        }
    }
}

/// Why an operator's change to a dead letter was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// It is not a dead letter (`NotFound`), the change cannot be made to it (`Refused`), or
    /// the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log could not record the change, so it was not made.
    #[error("the change could not be audited: {0}")]
    Audit(String),
}

/// Puts dead letter `id` back in line at an operator's request, due now, on the channel of
/// its recipient's delivery mode as the registry gives it now: a webhook recipient moved to
/// the inbox finds the messages that died while its endpoint was gone in its inbox. Refused
/// for a recipient the registry gives no delivery mode (or no longer holds). Like an
/// attempt, it is audited first (`redelivered`, reason `operator`, with the transport it goes
/// out on) and then recorded, so that the evidence is never behind the state; the attempts
/// that follow are audited as usual. Operators' changes are made one at a time, so that two
/// requests for the same dead letter log one entry.
pub async fn redeliver(gateway: &Gateway, id: u64) -> Result<Delivery, DeadLetterError> {
    let _one_at_a_time = gateway.dead_letter_changes.lock().await;
    let mut dead = gateway.store.redeliverable(id)?;
    let accepted_on = dead.channel;
    dead.channel = gateway.channel_of(&dead.recipient).ok_or_else(|| {
        StoreError::Refused(format!(
            "delivery {id} cannot be redelivered: the registry gives {} no delivery mode (or \
             no longer holds it); discard it, or give the recipient one and restart",
            dead.recipient
        ))
    })?;
    audit_operator_change(gateway, &dead, Kind::Redelivered).await?;
    let back = gateway
        .store
        .update(
            id,
            DeliveryUpdate::Redeliver {
                channel: dead.channel,
            },
        )
        .await?;
    gateway.outbox_changed.notify_waiters();
    if back.channel == accepted_on {
        tracing::info!(delivery = back.id, recipient = %back.recipient, "dead letter put back in line");
    } else {
        tracing::info!(
            delivery = back.id,
            recipient = %back.recipient,
            from = accepted_on.name(),
            to = back.channel.name(),
            "dead letter put back in line on its recipient's delivery mode now"
        );
    }
    Ok(back)
}

/// Gives dead letter `id` up for good at an operator's request: it leaves the dead letters
/// and its body is deleted. Any dead letter can be discarded, those that cannot be redelivered
/// (no body: `encode-failed`, `mapping-not-in-force`, `case-erased`) among them. Audited
/// first (`discarded`, reason `operator`), then recorded, one change at a time as
/// [`redeliver`] is.
pub async fn discard(gateway: &Gateway, id: u64) -> Result<Delivery, DeadLetterError> {
    let _one_at_a_time = gateway.dead_letter_changes.lock().await;
    let dead = gateway.store.discardable(id)?;
    audit_operator_change(gateway, &dead, Kind::Discarded).await?;
    let gone = gateway.store.update(id, DeliveryUpdate::Discard).await?;
    delivery_step(&gateway.metrics, &gone, "discarded");
    Ok(gone)
}

async fn audit_operator_change(
    gateway: &Gateway,
    dead: &Delivery,
    kind: Kind,
) -> Result<(), DeadLetterError> {
    gateway
        .audit_operator_change(dead, kind)
        .await
        .map(drop)
        .map_err(|refusal| DeadLetterError::Audit(refusal.to_string()))
}

/// When to try a failed delivery again, and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before the delivery is dead-lettered.
    pub max_attempts: u32,
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The longest wait a recipient's `Retry-After` is honoured for.
    pub max_asked: Duration,
}

impl From<&DeliverySettings> for RetryPolicy {
    fn from(s: &DeliverySettings) -> Self {
        RetryPolicy {
            max_attempts: s.max_attempts,
            initial: s.initial_backoff(),
            max: s.max_backoff(),
            max_asked: s.max_retry_after(),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up.
    GiveUp,
}

impl RetryPolicy {
    /// The decision after attempt number `attempts` (1 for the first) failed. `asked` is the
    /// recipient's `Retry-After`, honoured up to [`RetryPolicy::max_asked`]. It never shortens
    /// the backoff: a `Retry-After: 0`, or a date already past (a clock a little behind), would
    /// otherwise spend every attempt within seconds and dead-letter the delivery.
    pub fn next(&self, attempts: u32, asked: Option<Duration>) -> Next {
        if attempts >= self.max_attempts {
            return Next::GiveUp;
        }
        let backoff = self.backoff(attempts);
        Next::RetryAfter(match asked {
            Some(wait) => wait.min(self.max_asked).max(backoff),
            None => backoff,
        })
    }

    /// The jittered exponential delay after attempt number `attempts`.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.max);
        // Jitter between half the delay and the delay: retries of many deliveries spread out,
        // and the total time before giving up stays predictable.
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        let jittered = ms / 2 + random_below(ms - ms / 2 + 1);
        Duration::from_millis(jittered)
    }
}

fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return n / 2;
    }
    u64::from_le_bytes(bytes) % n.max(1)
}

/// Milliseconds since the epoch, `d` from now.
pub fn due_in(d: Duration) -> u64 {
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads a `Retry-After` value: seconds, or an HTTP date in any of the three forms RFC 9110
/// makes a recipient accept (IMF-fixdate, RFC 850, asctime). A date in the past asks for no
/// wait; seconds too many for a number ask for the longest wait (the policy caps it).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_with_jitter_then_gives_up() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_asked: Duration::from_secs(1),
        };
        for attempt in 1..5 {
            let Next::RetryAfter(wait) = policy.next(attempt, None) else {
                panic!("gave up too early")
            };
            let ceiling = (100u64 << (attempt - 1)).min(1000);
            assert!(wait.as_millis() as u64 <= ceiling, "{attempt}: {wait:?}");
            assert!(
                wait.as_millis() as u64 >= ceiling / 2,
                "{attempt}: {wait:?}"
            );
        }
        assert_eq!(policy.next(5, None), Next::GiveUp);
        assert_eq!(
            policy.next(1, Some(Duration::from_secs(60))),
            Next::RetryAfter(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_retry_after_never_shortens_the_backoff() {
        let policy = RetryPolicy {
            max_attempts: 24,
            initial: Duration::from_millis(400),
            max: Duration::from_secs(5),
            max_asked: Duration::from_secs(5),
        };
        for attempt in 1..10 {
            let floor = Duration::from_millis((400u64 << (attempt - 1)).min(5000) / 2);
            for asked in [Duration::ZERO, Duration::from_millis(10)] {
                let Next::RetryAfter(wait) = policy.next(attempt, Some(asked)) else {
                    panic!("gave up too early")
                };
                assert!(
                    wait >= floor,
                    "attempt {attempt}, asked {asked:?}: {wait:?}"
                );
            }
        }
        // A longer wait asked for is honoured, up to the longest delay.
        assert_eq!(
            policy.next(1, Some(Duration::from_secs(3))),
            Next::RetryAfter(Duration::from_secs(3))
        );
    }

    #[test]
    fn reads_retry_after_as_seconds_or_any_http_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        for past in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_retry_after(past), Some(Duration::ZERO), "{past}");
        }
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let wait = parse_retry_after(&later).unwrap();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(parse_retry_after("+5"), None);
    }

    #[test]
    fn a_retry_after_too_long_for_a_number_asks_for_the_longest_wait() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(60),
            max_asked: Duration::from_secs(600),
        };
        let asked = parse_retry_after("99999999999999999999999");
        assert_eq!(asked, Some(Duration::MAX));
        assert_eq!(
            policy.next(1, asked),
            Next::RetryAfter(Duration::from_secs(600))
        );
        // A wait longer than the longest backoff, asked for, is honoured whole.
        assert_eq!(
            policy.next(1, Some(Duration::from_secs(3600))),
            Next::RetryAfter(Duration::from_secs(600))
        );
        assert_eq!(
            policy.next(1, Some(Duration::from_secs(300))),
            Next::RetryAfter(Duration::from_secs(300))
        );
    }
}
