//! The exchanges and queues the gateway uses on the broker, and their names.
//!
//! ```text
//!  partner ──publish, routing key = its id──▶ passerelle.inbound (direct)
//!                                                 └─▶ passerelle.in.<id>   (quorum) ──▶ gateway
//!  gateway ──publish, routing key = recipient──▶ passerelle.outbound (direct)
//!                                                 └─▶ passerelle.out.<id>  (quorum) ──▶ partner
//!  passerelle.in.* / passerelle.out.* ──dead letters──▶ passerelle.dlx (topic)
//!                                                 └─▶ passerelle.dead      (quorum, binding "#")
//! ```
//!
//! **One dead-letter queue for everything.** Every inbound and outbound queue dead-letters to
//! `passerelle.dlx`, keeping the message's routing key (the partner id); the single quorum queue
//! `passerelle.dead` takes them all (binding `#`). The broker records in each dead letter's
//! `x-death` header (and `x-first-death-queue`) the queue it came from and why (`rejected`,
//! `delivery_limit`, `expired`), which is what an operator needs; one queue per partner would
//! double the number of quorum queues (each one a Raft group on every broker node) for no gain.
//! The DLX is a topic exchange so that per-partner dead-letter queues can later be bound to it
//! (binding key = partner id) without changing the work queues.
//!
//! **Work queue arguments.** The inbound and outbound queues are durable quorum queues
//! (replicated, fsync'd before the publisher confirm) with:
//!
//! - `x-dead-letter-exchange = passerelle.dlx` and `x-dead-letter-strategy = at-least-once`: the
//!   broker keeps a dead letter in the source queue until the dead-letter queue has confirmed it,
//!   so a message is never lost between the two;
//! - `x-overflow = reject-publish`: when a length limit ([`QueueLimits`]) is reached, publishers get
//!   a `Nack` instead of the oldest message being dropped (at-least-once dead-lettering requires
//!   it, too);
//! - `x-delivery-limit` (default [`DEFAULT_DELIVERY_LIMIT`]): a message that consumers have failed
//!   to process that many times (returned or crashed consumer) is dead-lettered instead of being
//!   redelivered forever.
//!
//! **Sender identification.** A partner publishes to `passerelle.inbound` with its own id as the
//! routing key, and with the `user_id` property set to its broker user ([`partner_user`]). The
//! broker refuses (channel error `PRECONDITION_FAILED`) any message whose `user_id` is not the
//! user the connection authenticated as, and the user comes from the partner's client certificate
//! (SASL EXTERNAL). The gateway therefore takes the sender from `user_id`, never from the routing
//! key or the body, and refuses a message without `user_id`. Permissions
//! ([`partner_permissions`]) let a partner write to the inbound exchange and read its own outbound
//! queue, nothing else.
//!
//! Declaring is idempotent: [`Topology::declare`] can run at every (re)connection. Declaring an
//! existing queue with different arguments fails with `PRECONDITION_FAILED`: changing the limits of
//! an existing queue means deleting it or using a broker policy.

use super::connection::{AmqpError, let_go_of_refused, short_string};
use crate::registry::{Delivery, Registry};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use std::collections::BTreeSet;

/// A queue as the broker has it (its message and consumer counts), looked up passively on
/// `channel`: a missing queue is an error, which closes the channel.
pub async fn look_up_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The exchange partners publish to (direct; routing key = the sender's partner id).
pub const INBOUND_EXCHANGE: &str = "passerelle.inbound";
/// The exchange the gateway publishes deliveries to (direct; routing key = the recipient's id).
pub const OUTBOUND_EXCHANGE: &str = "passerelle.outbound";
/// The dead-letter exchange of every work queue (topic; routing key = the partner id).
pub const DEAD_LETTER_EXCHANGE: &str = "passerelle.dlx";
/// The quorum queue that receives every dead letter.
pub const DEAD_LETTER_QUEUE: &str = "passerelle.dead";
/// The prefix of inbound queue names.
pub const INBOUND_QUEUE_PREFIX: &str = "passerelle.in.";
/// The prefix of outbound queue names.
pub const OUTBOUND_QUEUE_PREFIX: &str = "passerelle.out.";
/// How many times a message may be returned to its queue (requeued, or left unacknowledged by a
/// consumer that went away) before the next return dead-letters it, by default.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// The prefix of the broker user of a partner ([`partner_user`]).
pub const PARTNER_USER_PREFIX: &str = crate::tls::PARTNER_URI_PREFIX;
/// The longest partner id: queue names are AMQP short strings (255 bytes).
const MAX_PARTNER_ID_LEN: usize = 255 - OUTBOUND_QUEUE_PREFIX.len();

/// The inbound queue of a partner: `passerelle.in.<partner>`. The gateway consumes it.
pub fn inbound_queue(partner: &str) -> String {
    format!("{INBOUND_QUEUE_PREFIX}{partner}")
}

/// The outbound queue of a partner: `passerelle.out.<partner>`. The partner consumes it.
pub fn outbound_queue(partner: &str) -> String {
    format!("{OUTBOUND_QUEUE_PREFIX}{partner}")
}

/// The broker user of a partner: `urn:partner:<partner>`, the URI subject alternative name of its
/// client certificate, which the broker takes as the user name under SASL EXTERNAL
/// (`ssl_cert_login_from = subject_alternative_name`, `ssl_cert_login_san_type = uri`,
/// `ssl_cert_login_san_index = 0`). It is also the `user_id` its messages must carry.
pub fn partner_user(partner: &str) -> String {
    format!("{PARTNER_USER_PREFIX}{partner}")
}

/// The broker permissions of one partner on the virtual host, as regular expressions on resource
/// names (`rabbitmqctl set_permissions <user> <configure> <write> <read>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Resources the user may declare or delete: none.
    pub configure: String,
    /// Resources the user may publish to: the inbound exchange.
    pub write: String,
    /// Resources the user may consume from: its own outbound queue.
    pub read: String,
}

/// The permissions of a partner: publish to [`INBOUND_EXCHANGE`], consume its
/// [`outbound_queue`], declare nothing.
pub fn partner_permissions(partner: &str) -> Permissions {
    Permissions {
        configure: "^$".to_owned(),
        write: format!("^{}$", regex::escape(INBOUND_EXCHANGE)),
        read: format!("^{}$", regex::escape(&outbound_queue(partner))),
    }
}

/// Length limits of the work queues. With a limit reached, publishers get a `Nack`
/// (`x-overflow = reject-publish`); unset, the broker's memory and disk alarms are the only limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `x-delivery-limit`: returns (requeues) a message may have; the next dead-letters it.
    /// `None`: unlimited.
    pub delivery_limit: Option<u32>,
    /// `x-max-length`: ready messages per queue. `None`: unlimited.
    pub max_length: Option<u32>,
    /// `x-max-length-bytes`: bytes of ready message bodies per queue. `None`: unlimited.
    pub max_length_bytes: Option<u64>,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            delivery_limit: Some(DEFAULT_DELIVERY_LIMIT),
            max_length: None,
            max_length_bytes: None,
        }
    }
}

/// The gateway's exchanges and queues for a set of AMQP partners (see the
/// [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    partners: BTreeSet<String>,
    limits: QueueLimits,
}

impl Topology {
    /// The topology of `partners`, each with an inbound and an outbound queue, and the default
    /// [`QueueLimits`].
    ///
    /// Fails when a partner id is empty, longer than 240 bytes, or holds anything but lower-case
    /// ASCII letters, digits, `.`, `-` and `_` (the names must be plain queue names and routing
    /// keys, and must not reach into another partner's permissions expression).
    pub fn new<I, S>(partners: I) -> Result<Self, AmqpError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let partners = partners
            .into_iter()
            .map(Into::into)
            .map(|id: String| {
                let valid = !id.is_empty()
                    && id.len() <= MAX_PARTNER_ID_LEN
                    && id.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b)
                    });
                if valid {
                    Ok(id)
                } else {
                    Err(AmqpError::Topology(format!(
                        "partner id {id:?} is not a queue-safe name (lower-case letters, digits, '.', '-', '_'; at most {MAX_PARTNER_ID_LEN} bytes)"
                    )))
                }
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Self {
            partners,
            limits: QueueLimits::default(),
        })
    }

    /// The topology of the registry's partners whose delivery mode is `amqp`.
    pub fn from_registry(registry: &Registry) -> Result<Self, AmqpError> {
        Self::new(
            registry
                .partners()
                .filter(|partner| partner.delivery.as_ref().is_some_and(Delivery::is_amqp))
                .map(|partner| partner.id.clone()),
        )
    }

    /// The same topology with other queue limits.
    #[must_use]
    pub fn with_limits(mut self, limits: QueueLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The queue limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// The partner ids, in order.
    pub fn partners(&self) -> impl Iterator<Item = &str> {
        self.partners.iter().map(String::as_str)
    }

    /// The arguments of every inbound and outbound queue: quorum type, dead-lettering to
    /// [`DEAD_LETTER_EXCHANGE`] at least once, `reject-publish` overflow, and the limits.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut arguments = quorum_arguments();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            long_string(DEAD_LETTER_EXCHANGE),
        );
        arguments.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
        if let Some(limit) = self.limits.delivery_limit {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(limit.into()),
            );
        }
        if let Some(length) = self.limits.max_length {
            arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(length.into()));
        }
        if let Some(bytes) = self.limits.max_length_bytes {
            arguments.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)),
            );
        }
        arguments
    }

    /// The arguments of [`DEAD_LETTER_QUEUE`]: a quorum queue with `reject-publish` overflow (so
    /// that, should it get a length limit by policy, dead-lettering waits instead of dropping),
    /// and no dead-lettering of its own.
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut arguments = quorum_arguments();
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
        arguments
    }

    /// Declares the exchanges, the queues and the bindings, in an order that never leaves a
    /// queue without its dead-letter route. Idempotent: declaring again what exists with the
    /// same arguments changes nothing.
    ///
    /// A failure (for example `PRECONDITION_FAILED` for a queue that exists with other arguments,
    /// or `ACCESS_REFUSED`) closes the channel; use a fresh one to go on.
    pub async fn declare(&self, channel: &Channel) -> Result<(), AmqpError> {
        self.declare_shared(channel).await?;
        for partner in &self.partners {
            self.declare_partner(channel, partner).await?;
        }
        Ok(())
    }

    /// Declares what all partners share as [`Topology::declare`] does (a failure is returned),
    /// then each partner's queues and bindings on a channel of `connection` of their own: a
    /// partner's queue the broker refuses (one that exists with other arguments, say) is
    /// returned with why, and the other partners' are declared all the same, so that one queue
    /// an operator changed does not stop the transport for every partner.
    pub async fn declare_each(
        &self,
        connection: &Connection,
    ) -> Result<Vec<(String, AmqpError)>, AmqpError> {
        let channel = connection.create_channel().await?;
        self.declare_shared(&channel).await?;
        let mut refused = Vec::new();
        let mut channel = Some(channel);
        for partner in &self.partners {
            let on = match channel.take() {
                Some(channel) => channel,
                None => connection.create_channel().await?,
            };
            match self.declare_partner(&on, partner).await {
                Ok(()) => channel = Some(on),
                // The refusal closed the channel: the next partner gets a new one.
                Err(error) => {
                    refused.push((partner.clone(), error));
                    let_go_of_refused(on).await;
                }
            }
        }
        if let Some(channel) = channel {
            let _ = channel.close(200, "OK".into()).await;
        }
        Ok(refused)
    }

    /// Whether the exchanges and the dead-letter queue that all partners share are all on the
    /// broker, looked up passively on a channel of `connection` of its own (a missing one
    /// closes it).
    pub async fn shared_present(&self, connection: &Connection) -> Result<bool, AmqpError> {
        let channel = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let mut present = true;
        for (exchange, kind) in [
            (DEAD_LETTER_EXCHANGE, ExchangeKind::Topic),
            (INBOUND_EXCHANGE, ExchangeKind::Direct),
            (OUTBOUND_EXCHANGE, ExchangeKind::Direct),
        ] {
            if channel
                .exchange_declare(exchange.into(), kind, passive, FieldTable::default())
                .await
                .is_err()
            {
                present = false;
                break;
            }
        }
        if present {
            present = look_up_queue(&channel, DEAD_LETTER_QUEUE).await.is_ok();
        }
        if present {
            let _ = channel.close(200, "OK".into()).await;
        } else {
            let_go_of_refused(channel).await;
        }
        Ok(present)
    }

    /// Declares the dead-letter exchange and queue, and the inbound and outbound exchanges.
    async fn declare_shared(&self, channel: &Channel) -> Result<(), AmqpError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                DEAD_LETTER_QUEUE.into(),
                QueueDeclareOptions::durable(),
                self.dead_letter_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                DEAD_LETTER_QUEUE.into(),
                DEAD_LETTER_EXCHANGE.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for exchange in [INBOUND_EXCHANGE, OUTBOUND_EXCHANGE] {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares `partner`'s inbound and outbound queues, and binds them.
    async fn declare_partner(&self, channel: &Channel, partner: &str) -> Result<(), AmqpError> {
        let arguments = self.work_queue_arguments();
        for (queue, exchange) in [
            (inbound_queue(partner), INBOUND_EXCHANGE),
            (outbound_queue(partner), OUTBOUND_EXCHANGE),
        ] {
            let queue = short_string(&queue)?;
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions::durable(),
                    arguments.clone(),
                )
                .await?;
            channel
                .queue_bind(
                    queue,
                    exchange.into(),
                    short_string(partner)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// `x-queue-type = quorum`.
pub(crate) fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_partner_id() {
        assert_eq!(inbound_queue("iom.sn"), "passerelle.in.iom.sn");
        assert_eq!(outbound_queue("iom.sn"), "passerelle.out.iom.sn");
        assert_eq!(partner_user("iom.sn"), "urn:partner:iom.sn");
        let permissions = partner_permissions("iom.sn");
        assert_eq!(permissions.write, r"^passerelle\.inbound$");
        assert_eq!(permissions.read, r"^passerelle\.out\.iom\.sn$");
        assert_eq!(permissions.configure, "^$");
    }

    #[test]
    fn partner_ids_must_be_queue_safe() {
        assert!(Topology::new(["ci.ambassade.rabat", "iom.sn"]).is_ok());
        for bad in ["", "Upper", "a b", "a*", "a#", &"x".repeat(241)] {
            assert!(
                matches!(Topology::new([bad]), Err(AmqpError::Topology(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn work_queues_dead_letter_at_least_once() {
        let topology = Topology::new(["iom.sn"]).unwrap();
        let arguments = topology.work_queue_arguments();
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(get("x-queue-type"), Some(long_string("quorum")));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(long_string(DEAD_LETTER_EXCHANGE))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(long_string("at-least-once"))
        );
        assert_eq!(get("x-overflow"), Some(long_string("reject-publish")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(5)));
        assert_eq!(get("x-max-length"), None);
    }

    #[test]
    fn the_sample_registry_has_two_amqp_partners() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mappings = crate::mapping::MappingSet::load(&root.join("mappings")).unwrap();
        let catalogue = crate::canonical::Catalogue::embedded().unwrap();
        let registry =
            Registry::load(&root.join("config/registry.toml"), &catalogue, &mappings).unwrap();
        let topology = Topology::from_registry(&registry).unwrap();
        assert_eq!(
            topology.partners().collect::<Vec<_>>(),
            ["ci.ambassade.rabat", "iom.sn"]
        );
    }
}
