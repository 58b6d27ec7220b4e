//! The webhook worker: POSTs due deliveries to their recipients' HTTPS endpoints with the
//! gateway's client certificate.
//!
//! A delivery counts as delivered only on a `2xx`. `410 Gone` dead-letters it at once; `408`,
//! `425`, `429`, `5xx` and network failures are retried under the [`RetryPolicy`], honouring
//! `Retry-After`; any other status (another `4xx`, or a `3xx`: redirects are not followed) is
//! an answer that retrying cannot mend, and dead-letters it for an operator to look at and
//! redeliver. Each attempt is audited before the store records
//! its outcome, so that the evidence is never behind the state. A crash between a recipient's
//! `2xx` and that record makes the delivery go out again after the restart: recipients drop
//! such repeats by the event's source and id (`X-Passerelle-Source`, `X-Passerelle-Event-Id`),
//! which name one message whatever instance of the gateway delivers it. The delivery id
//! (`X-Passerelle-Delivery`) never changes across retries either, but it is one instance's
//! number, for support only: another instance, or a store restored from a backup, can give
//! the same number to another message.
//!
//! One recipient has at most a quarter of the calls in flight (at least one): a recipient
//! whose endpoint hangs, or that has a backlog, leaves the other calls to the others.

use super::{
    Attempt, HeldBack, KeyedTasks, RetryPolicy, can_record, due_in, listen, look_at_line,
    parse_retry_after, record_attempt,
};
use crate::pipeline::Gateway;
use crate::registry::Delivery as DeliveryMode;
use crate::store::{Channel, Delivery};
use crate::tls::ClientVerifier;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The header carrying the delivery id, stable across retries (for support: unique only in
/// the store of the instance that sends it).
pub const DELIVERY_HEADER: &str = "x-passerelle-delivery";
/// The header carrying the event id.
pub const EVENT_ID_HEADER: &str = "x-passerelle-event-id";
/// The header carrying the event's source: with the event id, the key by which a recipient
/// drops repeats.
pub const SOURCE_HEADER: &str = "x-passerelle-source";

/// The share of the calls in flight that one recipient may have: `concurrency` divided by
/// this, and at least one.
const RECIPIENT_SHARE: usize = 4;

/// The HTTP client of the webhook calls.
fn http_client(tls: &rustls::ClientConfig, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    // No proxy from the environment (`HTTPS_PROXY` and the like): a recipient's personal
    // data goes to its endpoint directly, never through a host the registry does not name.
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(tls.clone())
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Pushes webhook deliveries until shut down.
pub struct WebhookWorker {
    gateway: Arc<Gateway>,
    /// The TLS configuration of the calls (see [`crate::tls::endpoint_client_config`]).
    tls: rustls::ClientConfig,
    /// Whose CRLs endpoints are checked against: when it reads them again, the client is made
    /// anew ([`WebhookWorker::client`]).
    verifier: Arc<ClientVerifier>,
    /// The HTTP clients, by the CA their endpoints must lead to (`None`: any CA of the
    /// bundle), and the generation of the CRLs their connections were checked under.
    clients: Mutex<(u64, HashMap<Option<String>, reqwest::Client>)>,
    timeout: Duration,
    policy: RetryPolicy,
    concurrency: usize,
    /// The WARN lines of failed calls, at most one a second for each recipient: an endpoint
    /// down while hundreds of deliveries wait for it would otherwise write a line for each
    /// attempt (each is audited, and counted in `passerelle_deliveries_total`).
    failure_lines: crate::line_throttle::LineThrottles,
}

impl WebhookWorker {
    /// A worker calling out with `tls`, a configuration of
    /// [`crate::tls::endpoint_client_config`] over `verifier` (the gateway's client
    /// certificate; the CA bundle and the CRLs that recipients' servers are checked against).
    pub fn new(
        gateway: Arc<Gateway>,
        tls: &rustls::ClientConfig,
        verifier: Arc<ClientVerifier>,
        policy: RetryPolicy,
        timeout: Duration,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = http_client(&tls, timeout)?;
        let generation = verifier.generation();
        Ok(WebhookWorker {
            gateway,
            tls,
            verifier,
            clients: Mutex::new((generation, HashMap::from([(None, client)]))),
            timeout,
            policy,
            concurrency: concurrency.max(1),
            failure_lines: crate::line_throttle::LineThrottles::default(),
        })
    }

    /// The HTTP client to call a recipient bound to `issuer` with (the registry's `issuer`,
    /// whose endpoints' certificates must lead to that CA; `None`: any CA of the bundle). Once
    /// the CRLs have been read again, the clients are made anew: the connections they keep
    /// alive were checked against the CRLs of their handshakes, and an endpoint's certificate
    /// revoked since must be checked again on a new connection.
    fn client(&self, issuer: Option<&str>) -> reqwest::Result<reqwest::Client> {
        let generation = self.verifier.generation();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.0 != generation {
            // The old ones are kept until the new ones are made: a call on a connection kept
            // alive beats no call at all, and an error would be the machine's, not the
            // recipient's.
            let fresh: reqwest::Result<HashMap<_, _>> = clients
                .1
                .keys()
                .map(|issuer| Ok((issuer.clone(), self.make_client(issuer.as_deref())?)))
                .collect();
            match fresh {
                Ok(fresh) => *clients = (generation, fresh),
                Err(error) => {
                    tracing::error!(error = %error, "making the webhook clients anew after a CRL reload");
                }
            }
        }
        let key = issuer.map(str::to_owned);
        if let Some(client) = clients.1.get(&key) {
            return Ok(client.clone());
        }
        let client = self.make_client(issuer)?;
        clients.1.insert(key, client.clone());
        Ok(client)
    }

    /// A new HTTP client for the endpoints of recipients bound to `issuer` (see
    /// [`WebhookWorker::client`]).
    fn make_client(&self, issuer: Option<&str>) -> reqwest::Result<reqwest::Client> {
        match issuer {
            None => http_client(&self.tls, self.timeout),
            Some(issuer) => http_client(
                &crate::tls::endpoint_client_config_bound_to(
                    &self.tls,
                    self.verifier.clone(),
                    issuer,
                ),
                self.timeout,
            ),
        }
    }

    /// Runs until `shutdown` turns true, then finishes the attempts in flight.
    ///
    /// No delivery is attempted while the store or the audit log is failing: an attempt
    /// could not be recorded, and would be made again. A delivery whose attempt could not be
    /// recorded all the same is held back for [`super::HOLD_BACK`] before it is tried again, so that
    /// a recipient does not get the same delivery in a tight loop.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut in_flight: HashSet<u64> = HashSet::new();
        // The recipient of each attempt in flight.
        let mut recipient_of: HashMap<u64, String> = HashMap::new();
        let per_recipient = (this.concurrency / RECIPIENT_SHARE).max(1);
        // The recipient the last look ended with: the next starts after it.
        let mut turn = String::new();
        let mut held = HeldBack::default();
        let mut attempts: KeyedTasks<u64, bool> = KeyedTasks::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let changed = this.gateway.outbox_changed.clone();
            let mut released = listen(&changed);
            let now = due_in(Duration::ZERO);
            let skip = held.and(&in_flight);
            let recordable = can_record(&this.gateway);
            let room = this.concurrency.saturating_sub(in_flight.len());
            let mut next_ms = None;
            if room > 0 && recordable {
                let mut busy: HashMap<String, usize> = HashMap::new();
                for recipient in recipient_of.values() {
                    *busy.entry(recipient.clone()).or_default() += 1;
                }
                let allowance = move |recipient: &str| {
                    per_recipient.saturating_sub(busy.get(recipient).copied().unwrap_or(0))
                };
                let look = look_at_line(
                    &this.gateway,
                    Channel::Webhook,
                    now,
                    skip,
                    room,
                    turn.clone(),
                    allowance,
                );
                match look.await {
                    Ok(look) => {
                        let taken;
                        (taken, next_ms) =
                            held.sort_look(look, &this.gateway, Channel::Webhook, &mut turn);
                        for d in taken {
                            in_flight.insert(d.id);
                            recipient_of.insert(d.id, d.recipient.clone());
                            let worker = this.clone();
                            attempts.spawn(d.id, async move { worker.attempt(d).await });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reading the outbox"),
                }
            }
            let wait = held.until_next_look(next_ms, recordable);
            tokio::select! {
                Some((id, recorded)) = attempts.join_next(), if !attempts.is_empty() => {
                    held.settle(&mut in_flight, id, recorded);
                    recipient_of.remove(&id);
                }
                () = &mut released => {}
                _ = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => {
                    // The stop's sender is gone: nothing can stop the worker any more, and
                    // `changed` would answer at once on every turn.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        while let Some(done) = attempts.join_next().await {
            let _ = done;
        }
    }

    /// Makes one attempt and records it; returns whether it is on record.
    async fn attempt(&self, delivery: Delivery) -> bool {
        let outcome = self.call(&delivery).await;
        record_attempt(
            &self.gateway,
            &self.policy,
            &delivery,
            outcome,
            Channel::Webhook.name(),
        )
        .await
        .is_some()
    }

    async fn call(&self, d: &Delivery) -> Attempt {
        let partner = self.gateway.registry.partner(&d.recipient);
        let url = match partner.and_then(|p| p.delivery.as_ref()) {
            Some(DeliveryMode::Webhook { url }) => url.clone(),
            _ => {
                return Attempt::Unsendable {
                    code: super::NO_WEBHOOK_ENDPOINT.into(),
                };
            }
        };
        let client = match self.client(partner.and_then(|p| p.issuer.as_deref())) {
            Ok(client) => client,
            Err(error) => {
                // The machine's fault (the TLS library could not be set up), not the
                // recipient's: tried again later.
                tracing::error!(delivery = d.id, recipient = %d.recipient, error = %error, "making a webhook client");
                return Attempt::Retry {
                    code: "webhook.transport".into(),
                    asked: None,
                };
            }
        };
        let response = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, &d.content_type)
            .header(DELIVERY_HEADER, d.id.to_string())
            .header(EVENT_ID_HEADER, &d.event_id)
            .header(SOURCE_HEADER, &d.source)
            .body(d.body.clone())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let tls = tls_failure(&e);
                let code = if e.is_timeout() {
                    "webhook.timeout"
                } else if tls.is_some() {
                    "webhook.tls"
                } else if e.is_connect() {
                    "webhook.unreachable"
                } else {
                    "webhook.transport"
                };
                // The code is what the store and the audit log keep; the operator needs the
                // cause too (a refused connection, a name that does not resolve, a certificate
                // the CA bundle does not trust). It names the endpoint, never the message.
                if let Some(held_back) = self
                    .failure_lines
                    .may_write_at(&d.recipient, std::time::Instant::now())
                {
                    tracing::warn!(
                        delivery = d.id,
                        recipient = %d.recipient,
                        code,
                        cause = %error_chain(&e),
                        lines_held_back = held_back,
                        "a webhook call failed (one such line a second for each recipient at \
                         most; lines_held_back counts the recipient's not written since the last)"
                    );
                }
                return Attempt::Retry {
                    code: code.into(),
                    asked: None,
                };
            }
        };
        let status = response.status().as_u16();
        let asked = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        match status {
            200..=299 => Attempt::Delivered,
            410 => Attempt::Dead {
                code: "webhook.gone".into(),
            },
            408 | 425 | 429 | 500..=599 => Attempt::Retry {
                code: format!("webhook.http-{status}"),
                asked,
            },
            _ => Attempt::Dead {
                code: format!("webhook.http-{status}"),
            },
        }
    }
}

/// The TLS error under a failed call, if it is one: the endpoint's certificate not trusted by
/// the CA bundle, expired, revoked or not for its name, or a handshake it refused.
fn tls_failure(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An I/O error's `source` is its inner error's source, skipping the inner error itself
        // (the TLS error sits inside an I/O error, inside another): step into the inner one.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A failed call's causes, `sending the request: inner: …`. The error's own text is left out:
/// it quotes the endpoint's URL, which may carry a token or a password.
fn error_chain(error: &reqwest::Error) -> String {
    let causes = std::iter::successors(std::error::Error::source(error), |e| e.source());
    crate::error_text::each_cause_once(
        std::iter::once("sending the request".to_owned()).chain(causes.map(ToString::to_string)),
    )
}
