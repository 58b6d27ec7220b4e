//! The gateway's Prometheus metrics.
//!
//! This module owns the metric names and their labels. Labels carry partner ids, event types,
//! outcomes and channels only: never a case id, a name or a document number.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an ingested message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// The sending partner.
    pub partner: String,
    /// `rest` or `amqp`.
    pub transport: &'static str,
    /// `accepted`, `duplicate`, `ignored`, or the refusal's class.
    pub outcome: &'static str,
}

/// Labels of a delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The recipient.
    pub recipient: String,
    /// `inbox`, `webhook` or `amqp`.
    pub channel: &'static str,
    /// `delivered`, `acknowledged`, `retry`, `dead` or `discarded`.
    pub outcome: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `passerelle_messages_total`: ingested messages by partner, transport and outcome.
    pub messages: Family<MessageLabels, Counter>,
    /// `passerelle_ingest_seconds`: time from receipt to answer, for accepted messages.
    pub ingest_seconds: Histogram,
    /// `passerelle_deliveries_total`: delivery outcomes by recipient, channel and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// `passerelle_outbox_pending`: deliveries not yet delivered or acknowledged.
    pub outbox_pending: Gauge,
    /// `passerelle_outbox_dead`: dead-lettered deliveries.
    pub outbox_dead: Gauge,
    /// `passerelle_audit_appends_total`: entries appended to the audit log.
    pub audit_appends: Counter,
    /// `passerelle_audit_failures_total`: appends that failed (the message got a 503).
    pub audit_failures: Counter,
    /// `passerelle_audit_log_size`: entries covered by the latest checkpoint.
    pub audit_log_size: Gauge,
    /// `passerelle_amqp_connected`: 1 while the AMQP transport's session runs (connected, its
    /// topology declared), else 0.
    pub amqp_connected: Gauge,
    /// `passerelle_amqp_sessions_total`: AMQP sessions started (a connection with its topology
    /// declared); more than one means the transport reconnected.
    pub amqp_sessions: Counter,
    /// `passerelle_amqp_blocked`: 1 while the broker blocks the gateway's connection (a memory
    /// or disk alarm), else 0.
    pub amqp_blocked: Gauge,
    /// `passerelle_amqp_refused_queues`: partners whose inbound queue the broker will not let
    /// the gateway consume now (their messages wait in it).
    pub amqp_refused_queues: Gauge,
    /// `passerelle_amqp_refused_declarations`: partners whose queues the broker refused at the
    /// last declaration of the topology (a queue re-created by hand with other arguments, say).
    pub amqp_refused_declarations: Gauge,
    /// `passerelle_crl_next_update_timestamp_seconds`: the earliest `nextUpdate` of the CRLs in
    /// use, in seconds since the epoch (0 when none of them has one).
    pub crl_next_update: Gauge,
    /// `passerelle_crl_reloads_total`: reloads of the CRL files after they changed, by outcome:
    /// `loaded` when changed files were taken, `failed` when one was refused (the CRLs taken
    /// from it before stay in use); one reload may count both.
    pub crl_reloads: Family<OutcomeLabels, Counter>,
    /// `passerelle_tls_refused_certificates_total`: client certificates that the TLS handshake
    /// refused, by reason (`certificate-revoked`, `certificate-expired`, ...).
    pub tls_refused_certificates: Family<ReasonLabels, Counter>,
}

/// A label set with only a reason code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// A label set with only an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("passerelle");
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages received, by partner, transport and outcome",
            messages.clone(),
        );
        let ingest_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "ingest_seconds",
            "Time from a message's arrival to the gateway's answer",
            ingest_seconds.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery outcomes, by recipient, channel and outcome",
            deliveries.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "outbox_pending",
            "Deliveries not yet delivered or acknowledged",
            outbox_pending.clone(),
        );
        let outbox_dead = Gauge::default();
        registry.register(
            "outbox_dead",
            "Deliveries given up and dead-lettered",
            outbox_dead.clone(),
        );
        let audit_appends = Counter::default();
        registry.register(
            "audit_appends",
            "Entries appended to the audit log",
            audit_appends.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit appends that failed",
            audit_failures.clone(),
        );
        let audit_log_size = Gauge::default();
        registry.register(
            "audit_log_size",
            "Entries covered by the latest signed checkpoint",
            audit_log_size.clone(),
        );
        let crl_reloads = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["loaded", "failed"] {
            let _ = crl_reloads.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "crl_reloads",
            "CRL files read again after they changed, by outcome",
            crl_reloads.clone(),
        );
        let amqp_connected = Gauge::default();
        registry.register(
            "amqp_connected",
            "1 while the AMQP transport's session runs, else 0",
            amqp_connected.clone(),
        );
        let amqp_sessions = Counter::default();
        registry.register(
            "amqp_sessions",
            "AMQP sessions started (a connection with its topology declared); more than one means reconnections",
            amqp_sessions.clone(),
        );
        let amqp_blocked = Gauge::default();
        registry.register(
            "amqp_blocked",
            "1 while the broker blocks the gateway's AMQP connection, else 0",
            amqp_blocked.clone(),
        );
        let amqp_refused_queues = Gauge::default();
        registry.register(
            "amqp_refused_queues",
            "Partners whose inbound queue the broker will not let the gateway consume now",
            amqp_refused_queues.clone(),
        );
        let amqp_refused_declarations = Gauge::default();
        registry.register(
            "amqp_refused_declarations",
            "Partners whose queues the broker refused at the last declaration of the topology",
            amqp_refused_declarations.clone(),
        );
        let crl_next_update = Gauge::default();
        registry.register(
            "crl_next_update_timestamp_seconds",
            "The earliest nextUpdate of the CRLs in use, in seconds since the epoch (0: none has one)",
            crl_next_update.clone(),
        );
        let tls_refused_certificates = Family::<ReasonLabels, Counter>::default();
        for refusal in crate::tls::CertificateRefusal::ALL {
            let _ = tls_refused_certificates.get_or_create(&ReasonLabels {
                reason: refusal.code(),
            });
        }
        registry.register(
            "tls_refused_certificates",
            "Client certificates the TLS handshake refused, by reason",
            tls_refused_certificates.clone(),
        );
        Metrics {
            amqp_connected,
            amqp_sessions,
            amqp_blocked,
            amqp_refused_queues,
            amqp_refused_declarations,
            crl_next_update,
            crl_reloads,
            tls_refused_certificates,
            registry,
            messages,
            ingest_seconds,
            deliveries,
            outbox_pending,
            outbox_dead,
            audit_appends,
            audit_failures,
            audit_log_size,
        }
    }

    /// Creates at zero the series of `partner`'s messages over `transport` with each of
    /// `outcomes`. Operators alert on increases, and Prometheus sees none in a series that
    /// appears with its first count: the series an alert may watch are there from the start.
    pub fn messages_start_at_zero<'a>(
        &self,
        partner: &str,
        transport: &'static str,
        outcomes: impl IntoIterator<Item = &'a &'static str>,
    ) {
        for outcome in outcomes {
            let _ = self.messages.get_or_create(&MessageLabels {
                partner: partner.to_owned(),
                transport,
                outcome,
            });
        }
    }

    /// Creates at zero the series of `recipient`'s deliveries over `channel` with each of
    /// `outcomes` (see [`Metrics::messages_start_at_zero`]).
    pub fn deliveries_start_at_zero(
        &self,
        recipient: &str,
        channel: &'static str,
        outcomes: &[&'static str],
    ) {
        for &outcome in outcomes {
            let _ = self.deliveries.get_or_create(&DeliveryLabels {
                recipient: recipient.to_owned(),
                channel,
                outcome,
            });
        }
    }

    /// Counts a message.
    pub fn message(&self, partner: &str, transport: &'static str, outcome: &'static str) {
        self.messages
            .get_or_create(&MessageLabels {
                partner: partner.to_owned(),
                transport,
                outcome,
            })
            .inc();
    }

    /// Counts a delivery outcome.
    pub fn delivery(&self, recipient: &str, channel: &'static str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                recipient: recipient.to_owned(),
                channel,
                outcome,
            })
            .inc();
    }

    /// The metrics in the Prometheus text format, each counter's and gauge's series in the
    /// order of their labels, the same at every scrape.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        series_in_label_order(&text)
    }
}

/// Sorts the series of each counter and gauge family by their labels.
///
/// The encoder writes a family's series in the order of its hash map, which changes from one
/// scrape to the next. A histogram's lines keep their order: its buckets must stay in the
/// order of their bounds.
fn series_in_label_order(text: &str) -> String {
    let mut sorted = String::with_capacity(text.len());
    let mut series: Vec<&str> = Vec::new();
    let mut sortable = false;
    fn flush(series: &mut Vec<&str>, sortable: bool, sorted: &mut String) {
        if sortable {
            series.sort_unstable();
        }
        for line in series.drain(..) {
            sorted.push_str(line);
            sorted.push('\n');
        }
    }
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut series, sortable, &mut sorted);
            if let Some(kind) = line.strip_prefix("# TYPE ") {
                sortable = kind.ends_with(" counter") || kind.ends_with(" gauge");
            }
            sorted.push_str(line);
            sorted.push('\n');
        } else {
            series.push(line);
        }
    }
    flush(&mut series, sortable, &mut sorted);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_lists_its_series_in_the_same_order_at_every_scrape() {
        let metrics = Metrics::new();
        for recipient in ["iom.sn", "airline.at", "ma.interieur", "iom.ma", "ma.dgsn"] {
            metrics.delivery(recipient, "webhook", "delivered");
            metrics.delivery(recipient, "inbox", "acknowledged");
        }
        metrics.ingest_seconds.observe(0.002);
        let text = metrics.render();

        let deliveries: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("passerelle_deliveries_total{"))
            .collect();
        assert_eq!(deliveries.len(), 10);
        let mut in_order = deliveries.clone();
        in_order.sort_unstable();
        assert_eq!(deliveries, in_order);

        let bounds: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("passerelle_ingest_seconds_bucket{"))
            .collect();
        assert_eq!(
            bounds.first().map(|l| l.contains("le=\"0.0005\"")),
            Some(true)
        );
        assert_eq!(bounds.last().map(|l| l.contains("le=\"+Inf\"")), Some(true));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
