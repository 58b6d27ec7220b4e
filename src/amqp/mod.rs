//! The AMQP transport: the connection to the RabbitMQ broker, the exchanges and queues the
//! gateway uses, the consumer of the partners' inbound queues, the publisher of deliveries, and a
//! probe of the broker's raw publish-with-confirm rate.
//!
//! | module | owns |
//! |---|---|
//! | [`connection`] | settings, TLS, SASL, connecting with backoff, consumer and publisher channels |
//! | [`topology`] | the names and arguments of the exchanges and queues, partners' broker users and permissions |
//! | [`transport`] | the worker: (re)connect, declare, run a session of consumers and publisher, readiness |
//! | `declarations` | the topology kept declared during a session: refused queues tried again, deleted ones put back |
//! | [`ingress`] | inbound messages: sender check, submission to the pipeline, ack, dead letters with reasons |
//! | [`egress`] | deliveries: the AMQP message of a delivery, publish with confirms, retries, audit |
//! | `confirms` | the publisher confirms of one channel: which publish each confirm or return settles |
//! | [`backpressure`] | when the consumers pause (connection blocked, outbox full, the store or the audit log unable to make a message durable) |
//! | [`probe`] | the broker's raw publish-confirm rate, the benchmark's baseline |
//! | [`broker`] | a private RabbitMQ node on loopback, for the tests, the benchmark and the demo |
//!
//! `docs/amqp.md` is the operator's guide: broker configuration, dead letters, duplicates,
//! several instances.
//!
//! This module owns how the gateway reaches the broker ([`connect`], [`connect_with_backoff`]),
//! and the names and arguments of every exchange and queue ([`Topology`], [`inbound_queue`],
//! [`outbound_queue`]). It does not decide what a message means, who may send it, nor where it
//! goes: that is the pipeline's and the registry's work. Partners that exchange over AMQP
//! publish to `passerelle.inbound` and consume `passerelle.out.<their id>`; the gateway does the
//! reverse.
//!
//! # Broker-side identity
//!
//! Partners and the gateway authenticate with their client certificates (SASL EXTERNAL). The
//! broker must map a certificate to the user named by its first URI subject alternative name,
//! never by its common name, as the gateway's TLS policy does:
//!
//! ```text
//! auth_mechanisms.1 = EXTERNAL
//! ssl_options.verify = verify_peer
//! ssl_cert_login_from = subject_alternative_name
//! ssl_cert_login_san_type = uri
//! ssl_cert_login_san_index = 0
//! ```
//!
//! and the `rabbitmq_auth_mechanism_ssl` plugin must be enabled. A partner's broker user is then
//! `urn:partner:<id>` ([`partner_user`]), the gateway's `urn:gateway:passerelle`. The broker checks
//! that a message's `user_id` property, when set, is the connection's user: this is how the gateway
//! knows who sent a message (see [`topology`]).
//!
//! # Delivery guarantees
//!
//! Queues are quorum queues, messages are published persistent with publisher confirms, and a
//! message counts as accepted by the broker only once confirmed ([`publisher_channel`]). Publishing
//! with `mandatory` makes an unroutable message come back with its confirm
//! (`Confirmation::Ack(Some(returned))`, reply code 312 `NO_ROUTE`) instead of vanishing.

pub mod backpressure;
pub mod broker;
mod confirms;
pub mod connection;
mod declarations;
pub mod egress;
pub mod ingress;
pub mod probe;
pub mod topology;
pub mod transport;

pub use backpressure::Backpressure;
pub use connection::{
    AmqpAuth, AmqpError, AmqpSettings, Backoff, Endpoint, connect, connect_with_backoff,
    consumer_channel, publisher_channel,
};
pub use egress::outbound_message;
pub use ingress::{DeadLetter, check_sender, content_of, dead_letter_properties};
pub use probe::{declare_probe_queue, publish_confirm_rate};
pub use topology::{
    DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, INBOUND_EXCHANGE, OUTBOUND_EXCHANGE, Permissions,
    QueueLimits, Topology, inbound_queue, look_up_queue, outbound_queue, partner_permissions,
    partner_user,
};
pub use transport::{AmqpTransport, check_settings};
