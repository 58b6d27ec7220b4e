//! The gateway's configuration file (`passerelle serve --config FILE`).
//!
//! This module owns the settings, their safe defaults and their validation. Every setting has
//! a default: an empty file starts a gateway on loopback with the development PKI, the sample
//! registry and its data under `var/passerelle`. `config/passerelle.toml` is the documented
//! sample; `docs/operations.md` is the reference.

use crate::error_text;
use crate::pipeline::Limits;
use crate::tls::TlsFiles;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The partner-facing HTTPS listener.
    pub server: ServerSettings,
    /// The admin listener (health, readiness, metrics, dead letters).
    pub admin: AdminSettings,
    /// TLS material.
    pub tls: TlsSettings,
    /// Where the registry, the mappings and the data live.
    pub paths: PathSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Limits per sender.
    pub limits: Limits,
    /// Push delivery: the retries of webhook calls and AMQP publishes, and the webhook calls'
    /// time limit and concurrency.
    pub delivery: DeliverySettings,
    /// The AMQP transport; absent means no AMQP.
    pub amqp: Option<crate::amqp::AmqpSettings>,
}

/// The partner-facing HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on. Default `127.0.0.1:8443`.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// HTTP worker threads. Default: the number of CPUs.
    pub workers: Option<usize>,
    /// How long a graceful shutdown waits for the messages whose client went away, and then
    /// for requests in flight, in seconds (each). Default 30.
    pub shutdown_timeout_secs: u64,
    /// Idle keep-alive time of a connection, in seconds. Default 75.
    pub keep_alive_secs: u64,
    /// Connections one client certificate may hold open at once. Default 64.
    pub connections_per_certificate: usize,
    /// How long a connection's answers may wait unread by its client (or unacknowledged by
    /// the network) before the connection is closed, in seconds (the socket's
    /// `TCP_USER_TIMEOUT`). Default 30.
    pub stalled_write_secs: u64,
    /// Answer every `POST /v1/messages` with `202` without processing: the measuring floor of
    /// `passerelle load`, set only by its hidden `serve --measuring-floor` flag, never by a
    /// settings file (a gateway that acknowledges what it does not keep must not be one
    /// setting away).
    #[serde(skip)]
    pub floor_mode: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            workers: None,
            shutdown_timeout_secs: 30,
            keep_alive_secs: 75,
            connections_per_certificate: 64,
            stalled_write_secs: 30,
            floor_mode: false,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address to listen on, plain HTTP. Default `127.0.0.1:9090`; keep it on loopback or a
    /// management network.
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// TLS material, in PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The CA bundle partner certificates (and webhook servers) must chain to.
    pub ca: PathBuf,
    /// The gateway's server certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CRLs covering every CA of the bundle. Required: a client certificate whose status is
    /// unknown is refused.
    pub crls: Vec<PathBuf>,
    /// The gateway's client certificate, for its webhook calls (AMQP has its own, `amqp.tls`).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// How often the CRL files are checked for a change, and read again when they changed,
    /// in seconds. Default 60.
    pub crl_refresh_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        let dev = Path::new("certs/dev");
        TlsSettings {
            ca: dev.join("ca.pem"),
            cert: dev.join("server.pem"),
            key: dev.join("server.key"),
            crls: vec![dev.join("crl.pem")],
            client_cert: dev.join("gateway-client.pem"),
            client_key: dev.join("gateway-client.key"),
            crl_refresh_secs: 60,
        }
    }
}

impl TlsSettings {
    /// The server's files.
    pub fn server_files(&self) -> TlsFiles {
        let mut files = TlsFiles::new(&self.ca, &self.cert, &self.key);
        for crl in &self.crls {
            files = files.with_crl(crl);
        }
        files
    }

    /// The gateway's client files (for webhooks): endpoints' certificates are checked against
    /// the CA bundle and the CRLs, as partners' are.
    pub fn client_files(&self) -> TlsFiles {
        let mut files = TlsFiles::new(&self.ca, &self.client_cert, &self.client_key);
        for crl in &self.crls {
            files = files.with_crl(crl);
        }
        files
    }
}

/// Where things are.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    /// The partner registry. Default `config/registry.toml`.
    pub registry: PathBuf,
    /// The mappings folder. Default `mappings`.
    pub mappings: PathBuf,
    /// The data folder: `store.redb` and `audit-log/`. Default `var/passerelle`.
    pub data: PathBuf,
    /// Go on with a store older than the audit log, once: set only by `serve
    /// --accept-older-store`, never by a settings file (the start refuses such a store
    /// otherwise, see `service::store_not_behind_log`).
    #[serde(skip)]
    pub accept_older_store: bool,
}

impl Default for PathSettings {
    fn default() -> Self {
        PathSettings {
            registry: "config/registry.toml".into(),
            mappings: "mappings".into(),
            data: "var/passerelle".into(),
            accept_older_store: false,
        }
    }
}

impl PathSettings {
    /// The store file.
    pub fn store(&self) -> PathBuf {
        self.data.join("store.redb")
    }

    /// The audit log folder.
    pub fn audit_log(&self) -> PathBuf {
        self.data.join("audit-log")
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// The log's origin (checkpoint first line, and the signing key's name).
    /// Default `passerelle.localhost/audit`.
    pub origin: String,
    /// The signing key (`passerelle audit keygen`). Default `<data>/audit-signing.key`.
    pub signing_key: Option<PathBuf>,
    /// Create the signing key if the file does not exist. Default true; set false in
    /// production, where the key is provisioned and backed up.
    pub create_key: bool,
    /// Seconds between checkpoints while the log grows. Default 0.5.
    pub checkpoint_interval_secs: f64,
    /// Start although the clock is behind the log's last entry: set only by `serve
    /// --accept-clock-behind-log`, never by a settings file.
    #[serde(skip)]
    pub accept_clock_behind_log: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            origin: "passerelle.localhost/audit".into(),
            signing_key: None,
            create_key: true,
            checkpoint_interval_secs: 0.5,
            accept_clock_behind_log: false,
        }
    }
}

/// Push delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Attempts before a delivery is dead-lettered. Default 24: with the other defaults, 37 to
    /// 74 minutes, longer than a partner's half-hour maintenance window.
    pub max_attempts: u32,
    /// First retry delay, milliseconds; doubled at each attempt, drawn between half of it and
    /// all of it. Default 500.
    pub initial_backoff_ms: u64,
    /// Longest retry delay, seconds. Default 300.
    pub max_backoff_secs: u64,
    /// Longest wait a recipient's `Retry-After` is honoured for, seconds (never less than
    /// `max_backoff_secs`). Default 86400, a day: a recipient that says when it will be back
    /// is not tried before, and its attempts are not spent in that time.
    pub max_retry_after_secs: u64,
    /// Timeout of one webhook call, seconds. Default 10.
    pub timeout_secs: u64,
    /// Webhook calls in flight at once; one recipient has at most a quarter of them (at
    /// least one). Default 16.
    pub concurrency: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_attempts: 24,
            initial_backoff_ms: 500,
            max_backoff_secs: 300,
            max_retry_after_secs: 86_400,
            timeout_secs: 10,
            concurrency: 16,
        }
    }
}

impl DeliverySettings {
    /// The first retry delay.
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms.max(1))
    }

    /// The longest retry delay.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs(self.max_backoff_secs.max(1))
    }

    /// The longest wait a recipient's `Retry-After` is honoured for.
    pub fn max_retry_after(&self) -> Duration {
        Duration::from_secs(self.max_retry_after_secs).max(self.max_backoff())
    }
}

impl Config {
    /// Reads a configuration file. Relative paths in it are taken from the current folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config = Config::parse(&text)
            .map_err(|problem| anyhow::anyhow!("parsing {}: {problem}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(config)
    }

    /// Reads a configuration's text. A refusal names the setting at fault (`limits.burst`) and
    /// its line, without quoting the line or the value: `[amqp] auth` may hold a password.
    pub fn parse(text: &str) -> Result<Config, String> {
        error_text::from_toml(text).map_err(|refusal| refusal.to_string())
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.tls.crls.is_empty() {
            bail!("tls.crls is empty: client certificates need a revocation list");
        }
        if !crate::audit::note::is_valid_key_name(&self.audit.origin) {
            bail!(
                "audit.origin is not a log name: it must be non-empty, with no space and no \
                 `+` (for example audit.passerelle.gov.ma/log-1)"
            );
        }
        let positive = [
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            (
                "limits.rate_per_second",
                u64::from(self.limits.rate_per_second),
            ),
            (
                "limits.bodies_in_flight",
                self.limits.bodies_in_flight as u64,
            ),
            ("limits.body_read_secs", self.limits.body_read_secs),
            (
                "limits.messages_in_flight",
                self.limits.messages_in_flight as u64,
            ),
            (
                "delivery.max_attempts",
                u64::from(self.delivery.max_attempts),
            ),
            ("delivery.concurrency", self.delivery.concurrency as u64),
            (
                "server.connections_per_certificate",
                self.server.connections_per_certificate as u64,
            ),
            ("tls.crl_refresh_secs", self.tls.crl_refresh_secs),
            ("server.stalled_write_secs", self.server.stalled_write_secs),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            bail!("{key} is 0: it must be positive");
        }
        if !(1..=86_400).contains(&self.limits.refused_certificate_summary_secs) {
            bail!("limits.refused_certificate_summary_secs must be from 1 to 86400 (a day)");
        }
        if !(self.audit.checkpoint_interval_secs > 0.0
            && self.audit.checkpoint_interval_secs <= 1.0)
        {
            bail!("audit.checkpoint_interval_secs must be more than 0 and at most 1");
        }
        let (server, admin) = (self.server.listen, self.admin.listen);
        // A wildcard takes its family's addresses; IPv6's (`[::]`) takes IPv4's too, as a
        // dual-stack socket does by default.
        let covers = |wildcard: std::net::IpAddr, other: std::net::IpAddr| {
            wildcard.is_unspecified() && (wildcard.is_ipv6() || other.is_ipv4())
        };
        let overlapping = server.ip() == admin.ip()
            || covers(server.ip(), admin.ip())
            || covers(admin.ip(), server.ip());
        if server.port() != 0 && server.port() == admin.port() && overlapping {
            bail!(
                "server.listen ({server}) and admin.listen ({admin}) take the same address: \
                 give the admin listener another port"
            );
        }
        Ok(())
    }

    /// The signing key's file.
    pub fn signing_key(&self) -> PathBuf {
        self.audit
            .signing_key
            .clone()
            .unwrap_or_else(|| self.paths.data.join("audit-signing.key"))
    }
}

/// Reads a listener's address: an IP address and a port. Said so when it is not one, a host
/// name in particular, which the standard parser's own message ("invalid socket address
/// syntax") does not explain.
fn socket_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(
            "not an IP address and a port (0 to 65535), such as 127.0.0.1:8443 or [::1]:8443 \
             (a host name is not taken: the listener binds to one address)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_listeners_need_two_addresses() {
        for (server, admin) in [
            ("127.0.0.1:8443", "127.0.0.1:8443"),
            ("0.0.0.0:8443", "127.0.0.1:8443"),
            ("[::1]:8443", "[::]:8443"),
            ("[::]:8443", "127.0.0.1:8443"),
        ] {
            let text = format!("[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"\n");
            let config: Config = toml::from_str(&text).unwrap();
            let refused = config.validate().unwrap_err().to_string();
            assert!(refused.contains("take the same address"), "{refused}");
        }
        for (server, admin) in [
            ("127.0.0.1:8443", "127.0.0.1:9090"),
            ("127.0.0.1:8443", "127.0.0.2:8443"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("0.0.0.0:8443", "[::1]:8443"),
        ] {
            let text = format!("[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"\n");
            let config: Config = toml::from_str(&text).unwrap();
            assert!(config.validate().is_ok(), "{server} {admin}");
        }
    }

    #[test]
    fn no_settings_file_makes_a_gateway_a_measuring_floor() {
        let refused = toml::from_str::<Config>("[server]\nfloor_mode = true\n").unwrap_err();
        assert!(
            refused.to_string().contains("unknown field `floor_mode`"),
            "{refused}"
        );
        assert!(!Config::default().server.floor_mode);
    }

    #[test]
    fn a_listener_takes_an_ip_address_and_a_port() {
        let config: Config = toml::from_str(
            "[server]\nlisten = \"[::1]:8443\"\n[admin]\nlisten = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        assert_eq!(config.server.listen, "[::1]:8443".parse().unwrap());
        assert_eq!(config.admin.listen, "127.0.0.1:9".parse().unwrap());
        for (text, words) in [
            (
                "[server]\nlisten = \"localhost:8443\"\n",
                "not an IP address and a port",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1\"\n",
                "a host name is not taken",
            ),
        ] {
            let refused = toml::from_str::<Config>(text).unwrap_err().to_string();
            assert!(refused.contains(words), "{refused}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_its_setting_and_not_its_value() {
        for (text, opening, kind) in [
            (
                "[limits]\nburst = -1\n",
                "limits.burst: line 2",
                "an integer",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:8443\"\n\n[amqp]\nprefetch = \"s3cret\"\n",
                "amqp.prefetch: line 5",
                "a string",
            ),
            (
                "[amqp.backoff]\ninitial_ms = true\n",
                "amqp.backoff.initial_ms: line 2",
                "a boolean",
            ),
        ] {
            let refused = Config::parse(text).unwrap_err();
            assert!(refused.starts_with(opening), "{refused}");
            assert!(refused.contains(kind), "{refused}");
            assert!(
                !refused.contains("s3cret") && !refused.contains("-1"),
                "{refused}"
            );
        }
        // A document that is not TOML has no setting to name: its line is said.
        assert!(
            Config::parse("[limits\n")
                .unwrap_err()
                .starts_with("line 1")
        );
        let unknown = Config::parse("[limit]\nburst = 1\n").unwrap_err();
        assert!(
            unknown.starts_with("limit: line 1") && unknown.contains("unknown field `limit`"),
            "{unknown}"
        );
    }

    #[test]
    fn a_crl_refresh_of_zero_seconds_is_refused() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.tls.crl_refresh_secs = 0;
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("tls.crl_refresh_secs"), "{refused}");
    }
}
