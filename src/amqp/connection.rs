//! The connection to the broker: settings, mutual TLS, SASL EXTERNAL or PLAIN, and reconnection
//! with capped exponential backoff.
//!
//! TLS is the gateway's own policy ([`crate::tls::client_config`]: TLS 1.3/1.2, AEAD suites, the
//! broker's certificate checked against the configured CA bundle and CRLs), driven by lapin over
//! rustls. The gateway authenticates with its client certificate (SASL EXTERNAL): the broker maps
//! the certificate's URI name to a broker user (see the [module documentation](super)).

use crate::tls::{self, TlsError, TlsFiles};
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::AsyncTcpStream;
use lapin::types::ShortString;
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Deserialize;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tcp_stream::RustlsConnector;
use tokio::sync::watch;

/// The default broker URL: AMQPS on the local host, default virtual host.
pub const DEFAULT_URL: &str = "amqps://127.0.0.1:5671/%2f";
/// The default number of unacknowledged deliveries a consumer channel may hold.
pub const DEFAULT_PREFETCH: u16 = 64;
/// The default heartbeat proposed to the broker, in seconds.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 30;
/// The default time limit of one connection attempt (TCP, TLS and AMQP handshakes), in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// The default connection name shown by the broker (its client property `connection_name`:
/// `rabbitmqctl list_connections name client_properties`).
pub const DEFAULT_CONNECTION_NAME: &str = "passerelle";
/// The default outbox depth at which the gateway stops taking messages from its inbound queues.
pub const DEFAULT_MAX_OUTBOX: u64 = 50_000;
/// The default number of published deliveries awaiting their publisher confirm at once.
pub const DEFAULT_PUBLISH_IN_FLIGHT: usize = 64;
/// The default of [`AmqpSettings::held_return_secs`]: ten minutes, a third of RabbitMQ's
/// default `consumer_timeout`.
pub const DEFAULT_HELD_RETURN_SECS: u64 = 600;

/// How the gateway authenticates to the broker.
///
/// In a settings file: `auth = { mechanism = "external" }` (the default) or
/// `auth = { mechanism = "plain", user = "…", password = "…" }`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "AuthSetting")]
pub enum AmqpAuth {
    /// SASL EXTERNAL: the broker takes the user from the client certificate of the TLS
    /// connection. Needs an `amqps://` URL and [`AmqpSettings::tls`].
    #[default]
    External,
    /// SASL PLAIN: a user name and a password, for development and tests. Over `amqp://` the
    /// password crosses the network in clear.
    Plain {
        /// The broker user.
        user: String,
        /// Its password. Never printed: `Debug` shows `"<redacted>"`.
        password: String,
    },
}

/// `auth` as a settings file writes it, before its keys are checked against its mechanism.
///
/// Read through this rather than as an internally tagged enum, which would take
/// `{ mechanism = "external", password = "…" }` without a word (serde does not refuse unknown
/// keys beside a variant without fields) and would name no key at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSetting {
    mechanism: Mechanism,
    user: Option<String>,
    password: Option<String>,
}

/// The SASL mechanisms the gateway offers the broker.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mechanism {
    External,
    Plain,
}

impl TryFrom<AuthSetting> for AmqpAuth {
    type Error = &'static str;

    fn try_from(setting: AuthSetting) -> Result<Self, Self::Error> {
        match (setting.mechanism, setting.user, setting.password) {
            (Mechanism::External, None, None) => Ok(AmqpAuth::External),
            (Mechanism::External, ..) => Err(
                "mechanism \"external\" takes no `user` or `password`: the broker reads the user \
                 from the gateway's client certificate",
            ),
            (Mechanism::Plain, Some(user), Some(password)) => {
                Ok(AmqpAuth::Plain { user, password })
            }
            (Mechanism::Plain, None, _) => Err("mechanism \"plain\" needs a `user`"),
            (Mechanism::Plain, _, None) => Err("mechanism \"plain\" needs a `password`"),
        }
    }
}

impl fmt::Debug for AmqpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::External => f.write_str("External"),
            Self::Plain { user, .. } => f
                .debug_struct("Plain")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// The delays between connection attempts of [`connect_with_backoff`]: exponential from
/// `initial_ms`, doubled after each failure, capped at `max_ms`, each drawn at random between half
/// the delay and the full delay (so that gateways restarted together do not retry in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first delay, in milliseconds (default 500).
    pub initial_ms: u64,
    /// The longest delay, in milliseconds (default 30 000).
    pub max_ms: u64,
}

/// The smallest longest delay between connection attempts, in milliseconds.
pub const MIN_BACKOFF_CEILING_MS: u64 = 1_000;

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, after `attempt` failures (from 1), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let max = self.max_ms.max(1);
        let ceiling = self
            .initial_ms
            .max(1)
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(max);
        let half = ceiling / 2;
        Duration::from_millis(half + random_below(ceiling - half + 1))
    }
}

/// The settings of the connection to the broker (the `[amqp]` table of the gateway's settings).
///
/// Every field has a default, and the defaults are the safe choice: AMQPS on the local host,
/// authentication by client certificate (SASL EXTERNAL). An `amqps://` URL needs [`Self::tls`].
///
/// ```toml
/// [amqp]
/// url = "amqps://broker.example.ma:5671/%2f"
/// auth = { mechanism = "external" }
/// tls = { ca = "/etc/passerelle/broker-ca.pem", cert = "/etc/passerelle/gateway-client.pem",
///         key = "/etc/passerelle/gateway-client.key", crls = ["/etc/passerelle/broker-ca.crl"] }
/// prefetch = 64
/// heartbeat_secs = 30
/// connection_name = "passerelle"
/// senders = ["airline.at"]
/// max_outbox = 50000
/// publish_in_flight = 64
/// held_return_secs = 600
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// The broker: `amqps://host[:port][/vhost]` (or `amqp://` for tests), the virtual host
    /// percent-encoded (`%2f` is `/`, the default). No credentials (they go in [`Self::auth`]),
    /// no query string. Default [`DEFAULT_URL`].
    pub url: String,
    /// How to authenticate. Default [`AmqpAuth::External`].
    pub auth: AmqpAuth,
    /// The gateway's TLS files: `ca` verifies the broker's certificate, `cert` and `key` are the
    /// gateway's client certificate, `crls` (optional) are checked against the broker's chain.
    /// Required by `amqps://`.
    #[serde(deserialize_with = "deserialize_tls_files")]
    pub tls: Option<TlsFiles>,
    /// How many unacknowledged deliveries a consumer channel may hold ([`consumer_channel`]).
    /// Default [`DEFAULT_PREFETCH`]; at least 1.
    pub prefetch: u16,
    /// The heartbeat proposed to the broker, in seconds (the broker may lower it; 0 disables
    /// heartbeats). Default [`DEFAULT_HEARTBEAT_SECS`].
    pub heartbeat_secs: u16,
    /// The time limit of one connection attempt, in seconds, and then of each step of the
    /// session's setup on it (a channel, the declarations, each consumer). Default
    /// [`DEFAULT_CONNECT_TIMEOUT_SECS`]; at least 1.
    pub connect_timeout_secs: u64,
    /// The connection name the broker shows. Default [`DEFAULT_CONNECTION_NAME`].
    pub connection_name: String,
    /// The delays between attempts of [`connect_with_backoff`].
    pub backoff: Backoff,
    /// Partners that publish to the gateway over AMQP although they receive otherwise (for
    /// example `airline.at`, whose departure-control system falls back to AMQP during irregular
    /// operations). Their inbound queues are declared and consumed like those of the partners
    /// whose registry delivery mode is `amqp`. Each must be a registry partner. Default none.
    pub senders: Vec<String>,
    /// Backpressure: while the store holds at least this many pending deliveries (the outbox
    /// and the inboxes not yet acknowledged), the gateway takes no new message from its inbound
    /// queues; it resumes below nine tenths of it. Default [`DEFAULT_MAX_OUTBOX`]; at least 1.
    pub max_outbox: u64,
    /// How many deliveries the gateway keeps published but not yet confirmed by the broker.
    /// Default [`DEFAULT_PUBLISH_IN_FLIGHT`]; at least 1.
    pub publish_in_flight: usize,
    /// Once intake has been paused this long (seconds; see
    /// [`Backpressure`](super::backpressure::Backpressure)), each paused consumer is cancelled
    /// and the messages it holds are returned to their queue, to be consumed again when intake
    /// resumes. Keep it under the broker's `consumer_timeout` (30 minutes by default), which
    /// would otherwise close the channel of a consumer that holds messages that long. Default
    /// [`DEFAULT_HELD_RETURN_SECS`]; at least 1.
    pub held_return_secs: u64,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            auth: AmqpAuth::External,
            tls: None,
            prefetch: DEFAULT_PREFETCH,
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            connection_name: DEFAULT_CONNECTION_NAME.to_owned(),
            backoff: Backoff::default(),
            senders: Vec::new(),
            max_outbox: DEFAULT_MAX_OUTBOX,
            publish_in_flight: DEFAULT_PUBLISH_IN_FLIGHT,
            held_return_secs: DEFAULT_HELD_RETURN_SECS,
        }
    }
}

/// The TLS files as written in a settings file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFilesSetting {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    crls: Vec<PathBuf>,
}

fn deserialize_tls_files<'de, D>(deserializer: D) -> Result<Option<TlsFiles>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let setting = Option::<TlsFilesSetting>::deserialize(deserializer)?;
    Ok(setting.map(|files| TlsFiles {
        ca: files.ca,
        cert: files.cert,
        key: files.key,
        crls: files.crls,
        crl_marks: None,
    }))
}

impl AmqpSettings {
    /// Settings for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks the settings without connecting: the URL, and that the authentication and the TLS
    /// files fit the scheme. The TLS files themselves are read by [`connect`].
    pub fn validate(&self) -> Result<(), AmqpError> {
        self.endpoint().map(|_| ())
    }

    /// The broker's address as it may be logged: `scheme://host:port/vhost`, no credentials.
    pub fn endpoint(&self) -> Result<Endpoint, AmqpError> {
        let endpoint = Endpoint::parse(&self.url)?;
        let invalid = |message: &str| Err(AmqpError::Settings(message.to_owned()));
        match (endpoint.tls, &self.auth, &self.tls) {
            (true, _, None) => return invalid("an amqps:// URL needs the TLS files (amqp.tls)"),
            (false, AmqpAuth::External, _) => {
                return invalid(
                    "SASL EXTERNAL authenticates with the TLS client certificate: it needs an amqps:// URL",
                );
            }
            (false, _, Some(_)) => {
                return invalid("TLS files are set but the URL is amqp://: use amqps://");
            }
            _ => {}
        }
        if let AmqpAuth::Plain { user, .. } = &self.auth
            && user.is_empty()
        {
            return invalid("the PLAIN user name is empty");
        }
        if self.prefetch == 0 {
            return invalid("prefetch must be at least 1");
        }
        if self.connect_timeout_secs == 0 {
            return invalid("connect_timeout_secs must be at least 1");
        }
        if self.max_outbox == 0 {
            return invalid("max_outbox must be at least 1");
        }
        if self.publish_in_flight == 0 {
            return invalid("publish_in_flight must be at least 1");
        }
        if self.held_return_secs == 0 {
            return invalid("held_return_secs must be at least 1");
        }
        // Attempts that follow each other with no pause would flood the broker and the log
        // while it is down: the delays must grow to a second at least.
        if self.backoff.initial_ms == 0 {
            return invalid("backoff.initial_ms must be at least 1");
        }
        if self.backoff.max_ms < MIN_BACKOFF_CEILING_MS {
            return Err(AmqpError::Settings(format!(
                "backoff.max_ms must be at least {MIN_BACKOFF_CEILING_MS}, not {}",
                self.backoff.max_ms
            )));
        }
        if self.backoff.initial_ms > self.backoff.max_ms {
            return invalid("backoff.initial_ms must not be more than backoff.max_ms");
        }
        Ok(endpoint)
    }
}

/// A broker address parsed from [`AmqpSettings::url`]. Its `Display` form
/// (`amqps://host:port/vhost`) holds no credentials and may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether the scheme is `amqps`.
    pub tls: bool,
    /// The host name or IP address (an IPv6 address without brackets). It is also the name the
    /// broker's certificate is verified against.
    pub host: String,
    /// The port (default 5671 for `amqps`, 5672 for `amqp`).
    pub port: u16,
    /// The virtual host, percent-decoded (`/` by default).
    pub vhost: String,
}

impl Endpoint {
    /// Whether the connection goes without TLS (`amqp://`) to a host that is not this machine's
    /// loopback: the partners' messages, and the PLAIN password, would cross a network in the
    /// clear.
    pub fn in_the_clear_beyond_loopback(&self) -> bool {
        let loopback = self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback());
        !self.tls && !loopback
    }

    /// Parses `amqp[s]://host[:port][/vhost]`. Credentials, query strings and fragments are
    /// refused.
    ///
    /// The URL is parsed here rather than by lapin's URI parser, which replaces an IP address host
    /// by `localhost`.
    pub fn parse(url: &str) -> Result<Self, AmqpError> {
        let invalid = |message: String| AmqpError::Settings(format!("amqp.url: {message}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected amqps://host:port/vhost".to_owned()))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqps" => true,
            "amqp" => false,
            other => return Err(invalid(format!("unknown scheme {other:?}"))),
        };
        if rest.contains(['?', '#']) {
            return Err(invalid(
                "no query string or fragment: heartbeat, timeouts and the authentication are settings of their own"
                    .to_owned(),
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
            None => (rest, None),
        };
        if authority.contains('@') {
            return Err(invalid(
                "no credentials in the URL: put them in amqp.auth".to_owned(),
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unterminated IPv6 address".to_owned()))?;
            let port =
                match after {
                    "" => None,
                    after => Some(after.strip_prefix(':').ok_or_else(|| {
                        invalid("unexpected text after the IPv6 address".to_owned())
                    })?),
                };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host".to_owned()));
        }
        let port = match port {
            None => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| invalid(format!("invalid port {port:?}")))?,
        };
        let vhost = match path {
            None => "/".to_owned(),
            Some(path) => percent_decode(path).ok_or_else(|| {
                invalid("the virtual host is not valid percent-encoded UTF-8".to_owned())
            })?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            vhost,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let vhost: String = self
            .vhost
            .bytes()
            .map(|byte| {
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    (byte as char).to_string()
                } else {
                    format!("%{byte:02x}")
                }
            })
            .collect();
        write!(f, "{scheme}://{host}:{}/{vhost}", self.port)
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Why the gateway could not talk to the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The settings are inconsistent (see [`AmqpSettings::validate`]).
    #[error("invalid AMQP settings: {0}")]
    Settings(String),
    /// The TLS files could not be loaded.
    #[error("cannot set up TLS for the AMQP connection: {0}")]
    Tls(#[from] TlsError),
    /// The connection could not be established: network, TLS handshake, authentication, or the
    /// broker refused it.
    #[error("cannot connect to the AMQP broker at {endpoint}: {source}")]
    Connect {
        /// Where (no credentials).
        endpoint: String,
        /// Why.
        source: lapin::Error,
    },
    /// The connection attempt took longer than [`AmqpSettings::connect_timeout_secs`].
    #[error("connecting to the AMQP broker at {endpoint} took longer than {timeout:?}")]
    Timeout {
        /// Where (no credentials).
        endpoint: String,
        /// The time limit.
        timeout: Duration,
    },
    /// A step of a new session's setup (a channel, the declarations, a consumer) took longer
    /// than [`AmqpSettings::connect_timeout_secs`].
    #[error("setting up the AMQP session: {step} took longer than {limit:?}")]
    SetupTimeout {
        /// Which step.
        step: &'static str,
        /// The time limit.
        limit: Duration,
    },
    /// Shutdown was requested before a connection could be made.
    #[error("shutdown requested before the AMQP connection was established")]
    Shutdown,
    /// A topology name is not acceptable (see [`super::Topology::new`]).
    #[error("invalid AMQP topology: {0}")]
    Topology(String),
    /// The broker negatively acknowledged a published message, or confirms were not enabled.
    #[error("the broker did not confirm a message published to {0}")]
    NotConfirmed(String),
    /// The broker confirmed messages that its queue then did not hold (the throughput probe
    /// counts them when it purges the queue).
    #[error("the broker confirmed {confirmed} messages published to {queue}, but it held {held}")]
    ConfirmedNotHeld {
        /// The queue.
        queue: String,
        /// How many were published and confirmed.
        confirmed: usize,
        /// How many the queue held.
        held: usize,
    },
    /// An operation on an open connection or channel failed.
    #[error("AMQP operation failed: {0}")]
    Broker(#[from] lapin::Error),
    /// The channel was lost (its connection failed, or it was closed) while an answer was
    /// awaited on it.
    #[error("the AMQP channel was lost before the broker answered")]
    Lost,
}

impl AmqpError {
    /// Whether trying again later may succeed: `false` for settings, TLS files and topology
    /// names, which only a change of configuration fixes, and after shutdown.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Settings(_) | Self::Tls(_) | Self::Topology(_) | Self::Shutdown
        )
    }
}

/// The socket of one connection attempt, shut down when the attempt is given up (a time limit,
/// or the gateway's stop, drops it before it succeeds).
///
/// lapin starts the connection's I/O thread as soon as the transport is made, and that thread
/// holds the socket until the broker closes it: an attempt dropped while a broker that took the
/// TCP connection has not answered left a thread and a socket behind, at each attempt. The
/// socket is shut down from here instead (a duplicate of it), which ends the thread.
#[derive(Default)]
struct AttemptSocket {
    socket: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
}

impl AttemptSocket {
    /// The attempt made a connection, which keeps its socket.
    fn succeeded(&self) {
        self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Drop for AttemptSocket {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Connects to the broker once, with the time limit of the settings.
///
/// Over `amqps://` the TLS configuration is [`crate::tls::client_config`] with the settings' TLS
/// files (no ALPN: the broker does not negotiate any), the broker's certificate is verified against
/// the URL's host, and the client certificate is presented. With [`AmqpAuth::External`] the broker
/// takes the user from that certificate; with [`AmqpAuth::Plain`], from the user and password.
///
/// The connection does not recover by itself: when it fails, channels fail with it; call
/// [`connect_with_backoff`] and declare the topology again.
///
/// Must run within a Tokio runtime: lapin's I/O thread drives the socket through that runtime's
/// handle.
pub async fn connect(settings: &AmqpSettings) -> Result<Connection, AmqpError> {
    let endpoint = settings.endpoint()?;
    let connector = match (&settings.tls, endpoint.tls) {
        (Some(files), true) => {
            let mut config = (*tls::client_config(files)?).clone();
            // The gateway's HTTP ALPN means nothing to an AMQP broker.
            config.alpn_protocols.clear();
            Some(RustlsConnector::from(Arc::new(config)))
        }
        _ => None,
    };
    let (userinfo, mechanism) = match &settings.auth {
        AmqpAuth::External => (
            AMQPUserInfo {
                username: String::new(),
                password: String::new(),
            },
            SASLMechanism::External,
        ),
        AmqpAuth::Plain { user, password } => (
            AMQPUserInfo {
                username: user.clone(),
                password: password.clone(),
            },
            SASLMechanism::Plain,
        ),
    };
    let uri = AMQPUri {
        scheme: if endpoint.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo,
            host: endpoint.host.clone(),
            port: endpoint.port,
        },
        vhost: endpoint.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(settings.heartbeat_secs),
            auth_mechanism: Some(mechanism),
            ..AMQPQueryString::default()
        },
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.as_str().into());
    let runtime = lapin::runtime::default_runtime()?;
    let timeout = Duration::from_secs(settings.connect_timeout_secs);
    let host = endpoint.host.clone();
    let attempt = AttemptSocket::default();
    let socket_of_attempt = attempt.socket.clone();
    let open = Connection::connector(
        uri,
        runtime,
        move |uri: AMQPUri, runtime| {
            let connector = connector.clone();
            let host = host.clone();
            let socket_of_attempt = socket_of_attempt.clone();
            async move {
                let transport = async {
                    let addresses: Vec<SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), uri.authority.port))
                            .await?
                            .collect();
                    let stream: AsyncTcpStream<async_compat::Compat<tokio::net::TcpStream>> =
                        AsyncTcpStream::connect(&runtime, addresses).await?;
                    if let AsyncTcpStream::Plain(plain) = &stream {
                        let socket = socket2::SockRef::from(plain.get_ref()).try_clone()?;
                        *socket_of_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(socket);
                    }
                    match &connector {
                        Some(connector) => stream.into_rustls(connector, &host).await,
                        None => Ok(stream),
                    }
                };
                match tokio::time::timeout(timeout, transport).await {
                    Ok(stream) => Ok(stream?),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TCP connection or TLS handshake timed out",
                    )
                    .into()),
                }
            }
        },
        properties,
    );
    match tokio::time::timeout(timeout, open).await {
        Ok(Ok(connection)) => {
            attempt.succeeded();
            Ok(connection)
        }
        Ok(Err(source)) => Err(AmqpError::Connect {
            endpoint: endpoint.to_string(),
            source,
        }),
        Err(_) => Err(AmqpError::Timeout {
            endpoint: endpoint.to_string(),
            timeout,
        }),
    }
}

/// Connects to the broker, trying again after each failure with [`AmqpSettings::backoff`], until
/// it succeeds or shutdown is requested.
///
/// `shutdown` is the gateway's shutdown signal: `true` (or a dropped sender) stops the attempts,
/// including during a wait, and returns [`AmqpError::Shutdown`]. Errors that only a change of
/// configuration fixes ([`AmqpError::is_retryable`]) are returned at once. Each failure is logged
/// as a warning with the attempt number, the delay and the error (which names the broker, never
/// credentials nor message content).
pub async fn connect_with_backoff(
    settings: &AmqpSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Connection, AmqpError> {
    let endpoint = settings.endpoint()?;
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow_and_update() {
            return Err(AmqpError::Shutdown);
        }
        let result = tokio::select! {
            result = connect(settings) => result,
            _ = wait_for_shutdown(shutdown) => return Err(AmqpError::Shutdown),
        };
        match result {
            Ok(connection) => {
                tracing::info!(
                    broker = %endpoint,
                    attempts = attempt + 1,
                    "connected to the AMQP broker"
                );
                return Ok(connection);
            }
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) => {
                attempt = attempt.saturating_add(1);
                let delay = settings.backoff.delay(attempt);
                tracing::warn!(
                    broker = %endpoint,
                    attempt,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %error,
                    "AMQP connection failed; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = wait_for_shutdown(shutdown) => return Err(AmqpError::Shutdown),
                }
            }
        }
    }
}

/// Resolves when `true` is sent or the sender is dropped.
async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender is gone, which also means shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Opens a channel for consuming: `basic.qos` with [`AmqpSettings::prefetch`] unacknowledged
/// deliveries per consumer.
pub async fn consumer_channel(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<Channel, AmqpError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}

/// Opens a channel for publishing with publisher confirms: every `basic_publish` then resolves
/// to the broker's `Ack` (message safely stored, or returned first if it was `mandatory` and
/// unroutable) or `Nack`.
pub async fn publisher_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// How long one call on the broker may take when the gateway waits on it to move on: an
/// acknowledgement, a cancel, a publish handed to the connection, a channel closed. After a
/// lost connection such a call may never be answered, and a session that waited on it would
/// never end, nor the transport reconnect.
pub(crate) const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a call on the broker within [`BROKER_CALL_TIMEOUT`]; a call that takes longer fails
/// with a message that says so.
pub(crate) async fn bounded<T, E: fmt::Display>(
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!(
            "no answer from the broker within {} s",
            BROKER_CALL_TIMEOUT.as_secs()
        )),
    }
}

/// How often [`channel_lost`] looks at the channel.
const LOST_POLL: Duration = Duration::from_millis(100);

/// Resolves once `channel` is no longer open (its connection was lost, or it was closed): a
/// publisher confirm awaited on it will not come.
pub(crate) async fn channel_lost(channel: &Channel) {
    while channel.status().connected() {
        tokio::time::sleep(LOST_POLL).await;
    }
}

/// Lets go of a channel the broker closed by refusing a call on it, once the broker's close is
/// taken in (at most a few seconds): dropped while lapin still holds it open, it would be
/// closed from this side too, and the two closes crossing end the whole connection.
pub(crate) async fn let_go_of_refused(channel: Channel) {
    let _ = tokio::time::timeout(Duration::from_secs(5), channel_lost(&channel)).await;
}

/// A short string for lapin, or a topology error when longer than 255 bytes.
pub(crate) fn short_string(text: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(text)
        .map_err(|_| AmqpError::Topology(format!("{text:?} is longer than 255 bytes")))
}

/// A random number in `0..bound` (`bound` ≥ 1), for jitter. Falls back to the clock when the
/// system's generator fails: jitter needs no cryptographic quality.
pub(crate) fn random_below(bound: u64) -> u64 {
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos().into())
    });
    random % bound.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_amqps_and_external() {
        let settings = AmqpSettings::default();
        assert_eq!(settings.url, DEFAULT_URL);
        assert_eq!(settings.auth, AmqpAuth::External);
        assert_eq!(settings.prefetch, 64);
        // amqps needs the TLS files: the default alone is not a working configuration.
        assert!(matches!(settings.validate(), Err(AmqpError::Settings(_))));
    }

    #[test]
    fn urls_are_parsed_without_losing_ip_hosts() {
        let endpoint = Endpoint::parse("amqps://127.0.0.1:5671/%2f").unwrap();
        assert_eq!(
            endpoint,
            Endpoint {
                tls: true,
                host: "127.0.0.1".into(),
                port: 5671,
                vhost: "/".into()
            }
        );
        assert_eq!(endpoint.to_string(), "amqps://127.0.0.1:5671/%2f");
        let endpoint = Endpoint::parse("amqp://[::1]").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 5672));
        assert_eq!(endpoint.vhost, "/");
        assert_eq!(
            Endpoint::parse("amqps://broker.example:1234/gateway")
                .unwrap()
                .vhost,
            "gateway"
        );
    }

    #[test]
    fn plain_amqp_beyond_loopback_is_told() {
        let beyond = |url: &str| Endpoint::parse(url).unwrap().in_the_clear_beyond_loopback();
        assert!(beyond("amqp://broker.example/%2f"));
        assert!(beyond("amqp://10.0.0.5/%2f"));
        assert!(!beyond("amqp://localhost/%2f"));
        assert!(!beyond("amqp://127.0.0.1:5672/%2f"));
        assert!(!beyond("amqp://[::1]/%2f"));
        assert!(!beyond("amqp://[::ffff:127.0.0.1]/%2f"));
        assert!(!beyond("amqps://broker.example/%2f"));
    }

    #[test]
    fn credentials_and_queries_in_urls_are_refused() {
        for url in [
            "amqp://guest:guest@localhost/%2f",
            "amqps://localhost/%2f?heartbeat=10",
            "http://localhost/",
            "amqp://:5672/",
            "amqp://localhost:0/",
            "amqp://localhost:99999/",
        ] {
            assert!(
                matches!(Endpoint::parse(url), Err(AmqpError::Settings(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn external_needs_tls() {
        let settings = AmqpSettings::new("amqp://127.0.0.1:5672/%2f");
        assert!(settings.validate().is_err());
        let settings = AmqpSettings {
            auth: AmqpAuth::Plain {
                user: "u".into(),
                password: "p".into(),
            },
            ..AmqpSettings::new("amqp://127.0.0.1:5672/%2f")
        };
        settings.validate().unwrap();
    }

    #[test]
    fn passwords_are_not_printed() {
        let auth = AmqpAuth::Plain {
            user: "gateway".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn an_auth_setting_takes_the_keys_of_its_mechanism_only() {
        // As a configuration error is said: by line and column, without the file's text.
        let read = |auth: &str| {
            let text = format!("url = \"amqps://broker/%2f\"\nauth = {auth}");
            toml::from_str::<AmqpSettings>(&text)
                .map(|settings| settings.auth)
                .map_err(|error| crate::error_text::toml_error_unquoted(&text, &error))
        };
        assert_eq!(
            read(r#"{ mechanism = "external" }"#),
            Ok(AmqpAuth::External)
        );
        assert_eq!(
            read(r#"{ mechanism = "plain", user = "u", password = "p" }"#),
            Ok(AmqpAuth::Plain {
                user: "u".into(),
                password: "p".into()
            })
        );
        for (auth, said) in [
            (
                r#"{ mechanism = "external", password = "hunter2" }"#,
                "takes no `user` or `password`",
            ),
            (
                r#"{ mechanism = "plain", password = "hunter2" }"#,
                "needs a `user`",
            ),
            (
                r#"{ mechanism = "plain", user = "u" }"#,
                "needs a `password`",
            ),
            (
                r#"{ mechanism = "plain", user = "u", pasword = "hunter2" }"#,
                "unknown field `pasword`",
            ),
            (
                r#"{ mechanism = "kerberos" }"#,
                "an unknown value, expected `external` or `plain`",
            ),
            (r#"{ user = "u" }"#, "missing field `mechanism`"),
        ] {
            let refused = read(auth).unwrap_err();
            assert!(refused.contains(said), "{auth}: {refused}");
            assert!(!refused.contains("hunter2"), "{auth}: {refused}");
        }
    }

    #[test]
    fn settings_deserialize_from_toml() {
        let settings: AmqpSettings = toml::from_str(
            r#"
            url = "amqps://broker.example:5671/%2f"
            tls = { ca = "ca.pem", cert = "gw.pem", key = "gw.key" }
            prefetch = 10
            backoff = { initial_ms = 100 }
            "#,
        )
        .unwrap();
        assert_eq!(settings.prefetch, 10);
        assert_eq!(settings.backoff.initial_ms, 100);
        assert_eq!(settings.backoff.max_ms, 30_000);
        assert_eq!(settings.tls.as_ref().unwrap().cert, PathBuf::from("gw.pem"));
        settings.validate().unwrap();
        let plain: AmqpSettings = toml::from_str(
            r#"
            url = "amqp://localhost/%2f"
            auth = { mechanism = "plain", user = "u", password = "p" }
            "#,
        )
        .unwrap();
        plain.validate().unwrap();
    }

    #[test]
    fn transport_settings_have_safe_defaults_and_bounds() {
        let settings: AmqpSettings = toml::from_str(
            r#"
            url = "amqp://localhost/%2f"
            auth = { mechanism = "plain", user = "u", password = "p" }
            senders = ["airline.at"]
            max_outbox = 1000
            "#,
        )
        .unwrap();
        assert_eq!(settings.senders, ["airline.at"]);
        assert_eq!(settings.max_outbox, 1000);
        assert_eq!(settings.publish_in_flight, DEFAULT_PUBLISH_IN_FLIGHT);
        settings.validate().unwrap();
        for broken in [
            AmqpSettings {
                max_outbox: 0,
                ..settings.clone()
            },
            AmqpSettings {
                publish_in_flight: 0,
                ..settings.clone()
            },
        ] {
            assert!(matches!(broken.validate(), Err(AmqpError::Settings(_))));
        }
        // Reconnection delays must grow to a second at least.
        for (initial_ms, max_ms, named) in [
            (0, 30_000, "backoff.initial_ms"),
            (0, 0, "backoff.initial_ms"),
            (500, 0, "backoff.max_ms"),
            (10, 999, "backoff.max_ms"),
            (
                5_000,
                2_000,
                "backoff.initial_ms must not be more than backoff.max_ms",
            ),
        ] {
            let broken = AmqpSettings {
                backoff: Backoff { initial_ms, max_ms },
                ..settings.clone()
            };
            let Err(AmqpError::Settings(message)) = broken.validate() else {
                panic!("backoff {initial_ms}..{max_ms} was taken");
            };
            assert!(message.contains(named), "{message}");
        }
        AmqpSettings {
            backoff: Backoff {
                initial_ms: 1,
                max_ms: MIN_BACKOFF_CEILING_MS,
            },
            ..settings.clone()
        }
        .validate()
        .unwrap();
    }

    /// An attempt given up on a broker that took the TCP connection and never answers leaves
    /// no connection behind (lapin's I/O thread held it, and a thread, until the broker closed
    /// it).
    #[tokio::test]
    async fn an_attempt_given_up_closes_its_connection() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let settings = AmqpSettings {
            auth: AmqpAuth::Plain {
                user: "u".into(),
                password: "p".into(),
            },
            connect_timeout_secs: 1,
            ..AmqpSettings::new(format!("amqp://127.0.0.1:{port}/%2f"))
        };
        let attempt = tokio::spawn(async move { connect(&settings).await });
        let (mut silent_broker, _) = listener.accept().await.unwrap();
        let result = attempt.await.unwrap();
        assert!(
            matches!(result, Err(AmqpError::Timeout { .. })),
            "{result:?}"
        );
        // The broker's side reads the protocol header, then the end of the connection.
        let mut received = Vec::new();
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            silent_broker.read_to_end(&mut received),
        )
        .await;
        assert!(ended.is_ok(), "the attempt's connection is still open");
        assert!(received.starts_with(b"AMQP"), "{received:?}");
    }

    #[tokio::test]
    async fn connect_with_backoff_retries_until_shutdown() {
        // A port with nothing listening: every attempt fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = AmqpSettings {
            auth: AmqpAuth::Plain {
                user: "u".into(),
                password: "p".into(),
            },
            backoff: Backoff {
                initial_ms: 10,
                max_ms: MIN_BACKOFF_CEILING_MS,
            },
            ..AmqpSettings::new(format!("amqp://127.0.0.1:{port}/%2f"))
        };
        let (stop, mut shutdown) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.send(true).unwrap();
        });
        let started = std::time::Instant::now();
        let result = connect_with_backoff(&settings, &mut shutdown).await;
        assert!(matches!(result, Err(AmqpError::Shutdown)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        stopper.await.unwrap();

        // Settings errors are not retried.
        let (_stop, mut shutdown) = watch::channel(false);
        let invalid = AmqpSettings::new("amqp://127.0.0.1:1/%2f");
        let result = connect_with_backoff(&invalid, &mut shutdown).await;
        assert!(matches!(result, Err(AmqpError::Settings(_))), "{result:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let backoff = Backoff {
            initial_ms: 100,
            max_ms: 1_000,
        };
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = backoff.delay(3);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let late = backoff.delay(40);
            assert!((500..=1_000).contains(&late.as_millis()), "{late:?}");
        }
    }
}
