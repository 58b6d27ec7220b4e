//! Helpers for the integration tests of the REST gateway.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/gateway.rs"]
//! mod gateway_support;
//! ```
//!
//! What it offers:
//!
//! - [`write_registry`]: a copy of `config/registry.toml` in a temporary folder, with chosen
//!   partners' delivery modes replaced (webhooks pointed at test receivers on `localhost`, AMQP
//!   partners switched to the inbox, `sends` narrowed);
//! - [`test_config`] and [`config_file`]: a gateway configuration for tests (loopback listeners
//!   on free ports, data in a temporary folder, fast retries, high rate limits), in memory or as
//!   a TOML file for `passerelle serve --config`;
//! - [`Client`]: an mTLS client of the gateway with a partner's development certificate
//!   (`certs/dev/<id>.pem`), or with another client configuration (none, revoked, expired…);
//! - [`Admin`]: a plain HTTP client of the admin listener, with a metrics reader;
//! - [`Receiver`]: a partner's webhook endpoint (HTTPS that requires the gateway's client
//!   certificate) that records every request and can be told to fail, or be taken down and
//!   brought up again on the same port;
//! - [`ServedGateway`]: the `passerelle serve` binary as a child process, its logs in a file;
//! - [`verify_trail`]: an auditor's trail fetched from the gateway and every proof in it checked
//!   offline with the crate's verifiers;
//! - [`SmallFs`]: a small `tmpfs` (the tests run as root) that a test fills, for a full disk.
#![allow(dead_code)]

use actix_web::dev::{Extensions, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use passerelle::audit::bundle::verify_bundle;
use passerelle::audit::merkle::{leaf_hash, verify_inclusion};
use passerelle::audit::{Checkpoint, Leaf, NoteVerifier, TlogProof};
use passerelle::config::Config;
use passerelle::tls::{self, dev};
use serde_json::Value;
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The crate's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The development PKI.
pub fn dev_dir() -> PathBuf {
    root().join(dev::DEFAULT_DIR)
}

/// The audit log's origin in the test configurations (the default).
pub const ORIGIN: &str = "passerelle.localhost/audit";

/// The bytes of a mapping fixture: `fixture("sn.consulat.casablanca", "in/lpc-issued.xml")`.
pub fn fixture(partner: &str, name: &str) -> Vec<u8> {
    let path = root().join("mappings/fixtures").join(partner).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A JSON mapping fixture.
pub fn fixture_json(partner: &str, name: &str) -> Value {
    serde_json::from_slice(&fixture(partner, name))
        .unwrap_or_else(|e| panic!("fixture {partner}/{name} is not JSON: {e}"))
}

/// A text mapping fixture.
pub fn fixture_text(partner: &str, name: &str) -> String {
    String::from_utf8(fixture(partner, name)).expect("a UTF-8 fixture")
}

/// A free loopback port: bound, then released (see [`passerelle::loopback`]).
pub fn free_port() -> u16 {
    passerelle::loopback::free_port()
}

// -------------------------------------------------------------------------------- mappings

/// Copies the folder `from`, with its subfolders, into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the crate's mappings in `dir/mappings`, in which the DGSN's laissez-passer notice
/// looks the issuing post up in a code list that lacks it: the gateway accepts the consulate's
/// laissez-passer but cannot write it for the DGSN (an `encode-failed` dead letter). Returns
/// the copy's path.
pub fn mappings_unwritable_for_dgsn(dir: &Path) -> PathBuf {
    let mappings = dir.join("mappings");
    copy_dir(&root().join("mappings"), &mappings);
    let dgsn = mappings.join("ma.dgsn.toml");
    let text = std::fs::read_to_string(&dgsn).unwrap();
    let post = r#"poste="{{ data.lpc.issuing_post }}""#;
    assert!(
        text.contains(post),
        "the DGSN's notice names the issuing post"
    );
    let unwritable = text.replace(
        post,
        r#"poste="{{ data.lpc.issuing_post | lookup('document_types') }}""#,
    );
    std::fs::write(&dgsn, unwritable).unwrap();
    mappings
}

// ------------------------------------------------------------------------- the gateway binary

/// A `passerelle serve` set-up in a temporary folder: the sample registry with some changes, a
/// configuration file on free loopback ports, the data folder, and how to reach the gateway.
pub struct ServedSetup {
    /// The folder that holds everything.
    pub dir: tempfile::TempDir,
    /// The configuration file.
    pub config: PathBuf,
    /// The data folder (`paths.data`).
    pub data: PathBuf,
    /// The HTTPS listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: Admin,
}

impl ServedSetup {
    /// A set-up of the sample registry with `changes`.
    pub fn new(changes: &RegistryChanges) -> ServedSetup {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let registry = write_registry(dir.path(), changes);
        let data = dir.path().join("data");
        let [https, admin] = passerelle::loopback::free_ports();
        let config = config_file(dir.path(), &registry, &data, https, admin);
        ServedSetup {
            config,
            data,
            addr: SocketAddr::from(([127, 0, 0, 1], https)),
            admin: Admin::new(SocketAddr::from(([127, 0, 0, 1], admin))),
            dir,
        }
    }

    /// Starts the gateway, its log in file `log` of the folder, with `RUST_LOG` `filter`, and
    /// waits until it is ready.
    pub async fn start(&self, log: &str, filter: &str) -> ServedGateway {
        let mut gateway = ServedGateway::spawn(&self.config, self.dir.path().join(log), filter);
        gateway.ready(&self.admin).await;
        gateway
    }
}

/// A running `passerelle serve` child process, its JSON logs (standard error) in a file; killed
/// with `SIGKILL` when dropped.
pub struct ServedGateway {
    child: Child,
    log: PathBuf,
}

impl ServedGateway {
    /// Starts `passerelle serve --config config` from the crate's folder, with `RUST_LOG` set
    /// to `filter`, its standard error written to `log`.
    pub fn spawn(config: &Path, log: PathBuf, filter: &str) -> ServedGateway {
        let stderr = std::fs::File::create(&log).expect("the gateway's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_passerelle"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(root())
            .env("RUST_LOG", filter)
            // The binary sets its threads' stack itself (see `src/main.rs`), not the tests'.
            .env_remove("RUST_MIN_STACK")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting passerelle serve");
        ServedGateway { child, log }
    }

    /// Waits until the admin listener says ready.
    pub async fn ready(&mut self, admin: &Admin) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = admin.try_get("/ready").await
                && reply.status == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the gateway exited with {status}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the gateway is not ready:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, and reap it; panics unless the gateway was still running and died of that signal (a
    /// gateway that had already exited of itself would otherwise pass for one killed).
    pub fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            self.running(),
            "the gateway exited before the kill:\n{}",
            self.stderr()
        );
        self.signal(rustix::process::Signal::KILL);
        let status = self.child.wait().expect("reaping the gateway");
        assert_eq!(
            status.signal(),
            Some(9),
            "killed, not exited: {status}:\n{}",
            self.stderr()
        );
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid =
            rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("a process id"))
                .expect("a process id");
        rustix::process::kill_process(pid, signal).expect("sending a signal");
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for the gateway")
            .is_none()
    }

    /// `SIGTERM` (a graceful shutdown), and waits up to 30 s for it to exit; panics if it fails
    /// or does not stop.
    pub fn terminate(&mut self) {
        let status = self.stop();
        assert!(status.success(), "{status}:\n{}", self.stderr());
    }

    /// `SIGTERM` (a graceful shutdown), and waits up to 30 s for it to exit; returns how it
    /// exited, and panics if it does not stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the gateway") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the gateway did not stop within 30 s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for it to exit by itself; returns how it exited, and panics if it
    /// does not.
    pub fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the gateway") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it has written to standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------ registry

/// How a test changes the sample registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryChanges {
    /// Partners whose delivery becomes a webhook at this URL.
    pub webhooks: Vec<(String, String)>,
    /// Partners whose delivery becomes the inbox.
    pub inbox: Vec<String>,
    /// Partners whose `sends` list is replaced.
    pub sends: Vec<(String, Vec<String>)>,
    /// Partners whose `mappings` list (the mapping ids in force) is replaced.
    pub mappings: Vec<(String, Vec<String>)>,
    /// The CA every partner's entry names as the issuer of its certificates.
    pub issuer: Option<String>,
    /// Partners taken out of the registry.
    pub removed: Vec<String>,
}

impl RegistryChanges {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// `partner` receives by webhook at `url`.
    pub fn webhook(mut self, partner: &str, url: &str) -> Self {
        self.webhooks.push((partner.to_owned(), url.to_owned()));
        self
    }

    /// `partner` receives from its inbox.
    pub fn inbox(mut self, partner: &str) -> Self {
        self.inbox.push(partner.to_owned());
        self
    }

    /// `partner` may send only these event types (names without the `ma.rva.` prefix).
    pub fn sends(mut self, partner: &str, types: &[&str]) -> Self {
        self.sends.push((
            partner.to_owned(),
            types.iter().map(|t| (*t).to_owned()).collect(),
        ));
        self
    }

    /// `partner` is taken out of the registry.
    pub fn remove(mut self, partner: &str) -> Self {
        self.removed.push(partner.to_owned());
        self
    }

    /// Every partner's certificates are issued by the CA of the bundle named `issuer`, by its
    /// subject or its fingerprint.
    pub fn issuer_of_all(mut self, issuer: &str) -> Self {
        self.issuer = Some(issuer.to_owned());
        self
    }

    /// Only these mapping ids (`<partner>/<kind>`) are in force for `partner`.
    pub fn mappings(mut self, partner: &str, ids: &[&str]) -> Self {
        self.mappings.push((
            partner.to_owned(),
            ids.iter().map(|id| (*id).to_owned()).collect(),
        ));
        self
    }
}

/// Writes `dir/registry.toml`: the sample registry `config/registry.toml` with `changes`.
pub fn write_registry(dir: &Path, changes: &RegistryChanges) -> PathBuf {
    let text = std::fs::read_to_string(root().join("config/registry.toml")).expect("the registry");
    let mut table: toml::Table = toml::from_str(&text).expect("the registry is TOML");
    let partners = table
        .get_mut("partner")
        .and_then(toml::Value::as_array_mut)
        .expect("[[partner]] entries");
    let mut seen = Vec::new();
    partners.retain(|partner| {
        let id = partner.get("id").and_then(toml::Value::as_str);
        let removed = id.is_some_and(|id| changes.removed.iter().any(|r| r == id));
        if let (true, Some(id)) = (removed, id) {
            seen.push(id.to_owned());
        }
        !removed
    });
    for partner in partners.iter_mut() {
        let entry = partner.as_table_mut().expect("a partner table");
        let id = entry["id"].as_str().expect("an id").to_owned();
        if let Some(issuer) = &changes.issuer {
            entry.insert("issuer".into(), issuer.as_str().into());
        }
        if let Some((_, url)) = changes.webhooks.iter().find(|(p, _)| *p == id) {
            let mut delivery = toml::Table::new();
            delivery.insert("mode".into(), "webhook".into());
            delivery.insert("url".into(), url.as_str().into());
            entry.insert("delivery".into(), delivery.into());
            seen.push(id.clone());
        }
        if changes.inbox.contains(&id) {
            let mut delivery = toml::Table::new();
            delivery.insert("mode".into(), "inbox".into());
            entry.insert("delivery".into(), delivery.into());
            seen.push(id.clone());
        }
        for (key, lists) in [("sends", &changes.sends), ("mappings", &changes.mappings)] {
            if let Some((_, items)) = lists.iter().find(|(p, _)| *p == id) {
                let list: Vec<toml::Value> = items.iter().map(|t| t.as_str().into()).collect();
                entry.insert(key.into(), list.into());
                seen.push(id.clone());
            }
        }
    }
    for id in changes
        .webhooks
        .iter()
        .map(|(p, _)| p)
        .chain(&changes.inbox)
        .chain(changes.sends.iter().map(|(p, _)| p))
        .chain(changes.mappings.iter().map(|(p, _)| p))
        .chain(&changes.removed)
    {
        assert!(seen.contains(id), "no partner {id} in the sample registry");
    }
    let path = dir.join("registry.toml");
    std::fs::write(&path, toml::to_string(&table).expect("TOML")).expect("writing the registry");
    path
}

// -------------------------------------------------------------------------------- configuration

/// A configuration for an in-process test gateway: both listeners on 127.0.0.1 port 0, the
/// development PKI, the crate's mappings, `registry`, data in `data`, fast retries (50 ms
/// doubling up to 1 s, 10 attempts) and rate limits that no test reaches. It also sends the
/// gateway's logs to the test's output ([`capture_logs`]).
pub fn test_config(data: &Path, registry: &Path) -> Config {
    capture_logs();
    let dev = dev_dir();
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.workers = Some(2);
    config.server.shutdown_timeout_secs = 2;
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.tls.ca = dev.join("ca.pem");
    config.tls.cert = dev.join("server.pem");
    config.tls.key = dev.join("server.key");
    config.tls.crls = vec![dev.join("crl.pem")];
    config.tls.client_cert = dev.join("gateway-client.pem");
    config.tls.client_key = dev.join("gateway-client.key");
    config.paths.registry = registry.to_owned();
    config.paths.mappings = root().join("mappings");
    config.paths.data = data.to_owned();
    config.limits.rate_per_second = 100_000;
    config.limits.burst = 100_000;
    config.delivery.initial_backoff_ms = 50;
    config.delivery.max_backoff_secs = 1;
    config.delivery.max_attempts = 10;
    config.delivery.timeout_secs = 5;
    config
}

/// Installs a log subscriber that writes the in-process gateway's logs through the test
/// harness, which keeps them with each test's output and shows them when the test fails. The
/// filter is `RUST_LOG`, or else warnings, plus the AMQP transport's connection events (connected,
/// consuming, lost), which tell how a failing broker test got where it did. Calling it again is
/// harmless.
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,passerelle::amqp=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// The same settings as [`test_config`], as a TOML file for `passerelle serve --config`, with
/// fixed ports (pick them with [`free_port`]). Returns the file's path.
pub fn config_file(dir: &Path, registry: &Path, data: &Path, https: u16, admin: u16) -> PathBuf {
    let dev = dev_dir();
    let p = |path: PathBuf| toml::Value::from(path.display().to_string());
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{https}"
workers = 2
shutdown_timeout_secs = 2

[admin]
listen = "127.0.0.1:{admin}"

[tls]
ca = {ca}
cert = {cert}
key = {key}
crls = [{crl}]
client_cert = {client_cert}
client_key = {client_key}

[paths]
registry = {registry}
mappings = {mappings}
data = {data}

[limits]
rate_per_second = 100000
burst = 100000

[delivery]
initial_backoff_ms = 50
max_backoff_secs = 1
"#,
        ca = p(dev.join("ca.pem")),
        cert = p(dev.join("server.pem")),
        key = p(dev.join("server.key")),
        crl = p(dev.join("crl.pem")),
        client_cert = p(dev.join("gateway-client.pem")),
        client_key = p(dev.join("gateway-client.key")),
        registry = p(registry.to_owned()),
        mappings = p(root().join("mappings")),
        data = p(data.to_owned()),
    );
    let path = dir.join("passerelle.toml");
    std::fs::write(&path, text).expect("writing the configuration");
    Config::load(&path).expect("the test configuration loads");
    path
}

// ------------------------------------------------------------------------------------- clients

/// The client TLS configuration of a development certificate (`certs/dev/<name>.pem`).
pub fn client_tls(name: &str) -> rustls::ClientConfig {
    let config = tls::client_config(&dev::files(&dev_dir(), name))
        .unwrap_or_else(|e| panic!("the client configuration of {name}: {e}"));
    let mut config = (*config).clone();
    config.alpn_protocols = vec![tls::ALPN_HTTP_1_1.to_vec()];
    config
}

/// A client TLS configuration that trusts the development CA and presents no certificate.
pub fn anonymous_tls() -> rustls::ClientConfig {
    let roots = tls::load_roots(&dev_dir().join("ca.pem")).expect("the CA bundle");
    let mut config = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![tls::ALPN_HTTP_1_1.to_vec()];
    config
}

/// An HTTP answer, read to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts an RFC 9457 problem of this status and `urn:passerelle:problem:<code>`; returns it.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let problem = self.json();
        assert_eq!(problem["type"], format!("urn:passerelle:problem:{code}"));
        assert_eq!(problem["status"], status);
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        problem
    }
}

async fn read(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("reading a body").to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A partner's mTLS client of the gateway's HTTPS listener (addressed as `localhost`).
#[derive(Debug, Clone)]
pub struct Client {
    /// Whose certificate it presents.
    pub name: String,
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client with the development certificate `certs/dev/<name>.pem`.
    pub fn new(name: &str, gateway: SocketAddr) -> Client {
        Client::with_tls(name, client_tls(name), gateway)
    }

    /// A client with any TLS configuration.
    pub fn with_tls(name: &str, tls: rustls::ClientConfig, gateway: SocketAddr) -> Client {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", gateway)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("a client");
        Client {
            name: name.to_owned(),
            http,
            base: format!("https://localhost:{}", gateway.port()),
        }
    }

    /// POSTs a message; fails only if no answer came (TLS refused, connection reset…).
    pub async fn try_send(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Result<Reply> {
        let response = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Ok(read(response).await)
    }

    /// POSTs a message with extra headers (`ce-*`, `content-encoding`…).
    pub async fn send_with_headers(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("content-type", content_type);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} sending: {e:?}", self.name));
        read(response).await
    }

    /// POSTs a message.
    pub async fn send(&self, content_type: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.try_send(content_type, body)
            .await
            .unwrap_or_else(|e| panic!("{} sending: {e:?}", self.name))
    }

    /// POSTs a structured-mode CloudEvent as a binary-mode one: the attributes as `ce-*`
    /// headers, `data` as an `application/json` body.
    pub async fn send_binary(&self, event: &Value) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("content-type", "application/json");
        for (name, value) in event.as_object().expect("an event object") {
            if name == "data" || name == "datacontenttype" {
                continue;
            }
            request = request.header(
                format!("ce-{name}"),
                value.as_str().expect("a string attribute"),
            );
        }
        let response = request
            .body(serde_json::to_vec(&event["data"]).expect("JSON"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} sending: {e:?}", self.name));
        read(response).await
    }

    /// GETs a path (with its query).
    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path).await
    }

    /// HEADs a path.
    pub async fn head(&self, path: &str) -> Reply {
        self.call(reqwest::Method::HEAD, path).await
    }

    /// POSTs an empty body to a path.
    pub async fn post(&self, path: &str) -> Reply {
        self.call(reqwest::Method::POST, path).await
    }

    /// Sends a request without a body to a path, and reads the answer.
    async fn call(&self, method: reqwest::Method, path: &str) -> Reply {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e:?}", self.name));
        read(response).await
    }

    /// Every message in the caller's inbox, paging with `after` and `limit`.
    pub async fn inbox(&self, limit: usize) -> Vec<Value> {
        let mut after = 0u64;
        let mut all = Vec::new();
        loop {
            let reply = self
                .get(&format!("/v1/inbox?after={after}&limit={limit}"))
                .await;
            assert_eq!(reply.status, 200, "{} inbox: {}", self.name, reply.text());
            let page = reply.json();
            let messages = page["messages"].as_array().expect("messages").clone();
            if messages.is_empty() {
                assert_eq!(page["next_after"], after);
                return all;
            }
            after = page["next_after"].as_u64().expect("next_after");
            assert_eq!(Some(after), messages.last().and_then(|m| m["id"].as_u64()));
            all.extend(messages);
        }
    }

    /// Acknowledges an inbox delivery.
    pub async fn ack(&self, id: u64) {
        let reply = self.post(&format!("/v1/inbox/{id}/ack")).await;
        assert_eq!(
            reply.status,
            200,
            "{} ack {id}: {}",
            self.name,
            reply.text()
        );
        assert_eq!(reply.json()["state"], "acknowledged");
    }
}

/// A client of the admin listener (plain HTTP).
#[derive(Debug, Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    /// A client of the admin listener at `addr`.
    pub fn new(addr: SocketAddr) -> Admin {
        Admin {
            // A TLS configuration is given only because reqwest is built without a default
            // crypto provider; the admin listener is plain HTTP.
            http: reqwest::Client::builder()
                .use_preconfigured_tls(anonymous_tls())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
            base: format!("http://{addr}"),
        }
    }

    /// GETs a path, or fails if the listener does not answer.
    pub async fn try_get(&self, path: &str) -> reqwest::Result<Reply> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok(read(response).await)
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e:?}"))
    }

    /// POSTs to a path.
    pub async fn post(&self, path: &str) -> Reply {
        self.post_from(path, None).await
    }

    /// GETs a path with `Host: host`, as a web page whose name resolves to this host would.
    pub async fn get_for_host(&self, path: &str, host: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", host)
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e:?}"));
        read(response).await
    }

    /// POSTs to a path as a web page at `origin` would (its browser adds `Origin`).
    pub async fn post_from(&self, path: &str, origin: Option<&str>) -> Reply {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin POST {path}: {e:?}"));
        read(response).await
    }

    /// The sum of the samples of metric `name` (e.g. `passerelle_audit_appends_total`) whose
    /// labels include every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200);
        metric(&reply.text(), name, labels)
    }
}

/// The sum of the samples of metric `name` in a Prometheus/OpenMetrics text whose labels
/// include every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (l, v) = r.split_once('}')?;
                    (l, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

// ------------------------------------------------------------------------------------- waiting

/// Calls `probe` every 50 ms until it returns `Some`, for at most `limit`; panics naming
/// `what` when the time runs out.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------ receiver

/// What a [`Receiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `204 No Content`.
    Accept,
    /// This status, with `Retry-After: <seconds>` when given.
    Fail {
        /// The status.
        status: u16,
        /// The `Retry-After` seconds.
        retry_after: Option<u64>,
    },
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// `X-Passerelle-Delivery`.
    pub delivery: String,
    /// `X-Passerelle-Event-Id`.
    pub event_id: String,
    /// `X-Passerelle-Source`.
    pub source: String,
    /// `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// The URI names of the client certificate the caller presented.
    pub client: Vec<String>,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// Whether it was answered with a `2xx`.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug)]
struct ReceiverState {
    answer: Answer,
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

#[derive(Debug, Clone)]
struct ClientUris(Vec<String>);

fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let uris = connection
        .downcast_ref::<Tls>()
        .and_then(|tls| tls.get_ref().1.peer_certificates())
        .and_then(|certs| tls::peer_identity(certs).ok())
        .map(|identity| identity.uris)
        .unwrap_or_default();
    extensions.insert(ClientUris(uris));
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<ReceiverState>>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut state = state.lock().expect("the receiver's state");
    let answer = state.script.pop_front().unwrap_or(state.answer);
    let status = match answer {
        Answer::Accept => 204,
        Answer::Fail { status, .. } => status,
    };
    state.received.push(Received {
        path: req.path().to_owned(),
        delivery: header("x-passerelle-delivery"),
        event_id: header("x-passerelle-event-id"),
        source: header("x-passerelle-source"),
        content_type: header("content-type"),
        body: body.to_vec(),
        client: req
            .conn_data::<ClientUris>()
            .map(|c| c.0.clone())
            .unwrap_or_default(),
        status,
        at: Instant::now(),
    });
    match answer {
        Answer::Accept => HttpResponse::NoContent().finish(),
        Answer::Fail {
            status,
            retry_after,
        } => {
            let mut response = HttpResponse::build(StatusCode::from_u16(status).expect("a status"));
            if let Some(seconds) = retry_after {
                response.insert_header(("Retry-After", seconds.to_string()));
            }
            response.body("not now")
        }
    }
}

/// A partner's webhook endpoint: HTTPS on `localhost:<port>` with the development server
/// certificate, requiring a client certificate of the development CA (the gateway's), as a
/// partner's endpoint should. It records every request.
pub struct Receiver {
    /// Its port, kept while it is down.
    pub port: u16,
    /// Its TLS files: the development server certificate unless [`Receiver::presenting`] or
    /// [`Receiver::presenting_files`] said otherwise.
    files: tls::TlsFiles,
    state: web::Data<Mutex<ReceiverState>>,
    server: Option<ServerHandle>,
}

impl Receiver {
    /// A receiver whose port is chosen but which does not listen yet ([`Receiver::up`]).
    pub fn reserve() -> Receiver {
        Receiver {
            port: free_port(),
            files: dev::files(&dev_dir(), dev::SERVER),
            state: web::Data::new(Mutex::new(ReceiverState {
                answer: Answer::Accept,
                script: VecDeque::new(),
                received: Vec::new(),
            })),
            server: None,
        }
    }

    /// A receiver that listens and accepts.
    pub fn start() -> Receiver {
        let mut receiver = Receiver::reserve();
        receiver.up();
        receiver
    }

    /// A receiver that listens and accepts on an actix system of its own thread, for a test
    /// that runs on a plain tokio runtime. It cannot be taken down ([`Receiver::down`] and
    /// [`Receiver::up`] need the receiver's own system); it stops with the test's process.
    pub fn start_on_own_thread() -> Receiver {
        let (sender, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                sender
                    .send(Receiver::start())
                    .expect("the test waits for its receiver");
                std::future::pending::<()>().await;
            });
        });
        let mut receiver = started.recv().expect("the receiver's thread started it");
        // Its server runs on the other thread's system: forget its handle.
        receiver.server = None;
        receiver
    }

    /// The receiver presents development certificate `name` (for example `expired`) instead
    /// of the server certificate, once up.
    pub fn presenting(mut self, name: &str) -> Receiver {
        self.files = dev::files(&dev_dir(), name);
        self
    }

    /// The receiver serves with `files` (a certificate of another CA, say) once up.
    pub fn presenting_files(mut self, files: tls::TlsFiles) -> Receiver {
        self.files = files;
        self
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Starts listening on its port (on the current actix system).
    pub fn up(&mut self) {
        assert!(self.server.is_none(), "the receiver is already up");
        let tls = tls::server_config(&self.files).expect("server TLS");
        // The port was released by `reserve` or `down`; bind it again, waiting for the
        // previous listener to be gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("binding port {} again: {e}", self.port),
            }
        };
        let state = self.state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(receive))
        })
        .on_connect(on_connect)
        .workers(1)
        .shutdown_timeout(1)
        .disable_signals()
        .listen_rustls_0_23(listener, (*tls).clone())
        .expect("listening")
        .run();
        self.server = Some(server.handle());
        actix_web::rt::spawn(server);
    }

    /// Stops listening (the port stays reserved for [`Receiver::up`]).
    pub async fn down(&mut self) {
        if let Some(handle) = self.server.take() {
            handle.stop(false).await;
        }
    }

    /// What to answer from now on, once the script is used up.
    pub fn answer(&self, answer: Answer) {
        self.state.lock().expect("state").answer = answer;
    }

    /// Answers to give to the next requests, in order, before the default answer.
    pub fn script(&self, answers: &[Answer]) {
        self.state
            .lock()
            .expect("state")
            .script
            .extend(answers.iter().copied());
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("state").received.clone()
    }

    /// The requests answered with a `2xx`.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }
}

// --------------------------------------------------------------------------------------- audit

/// A trail entry whose proof was verified.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its index in the log.
    pub index: u64,
    /// The leaf.
    pub leaf: Leaf,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A verified trail.
#[derive(Debug, Clone)]
pub struct VerifiedTrail {
    /// The covered entries, in index order.
    pub entries: Vec<Entry>,
    /// Matching entries no checkpoint covers yet.
    pub pending: Vec<u64>,
    /// The size of the checkpoint the proofs are against.
    pub size: u64,
}

impl VerifiedTrail {
    /// How many entries of this kind (`"accepted"`, `"delivered"`, …) the trail holds.
    pub fn count(&self, kind: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| kind_of(&e.leaf) == kind)
            .count()
    }
}

/// A leaf's kind, as its JSON names it (`delivery_failed`).
pub fn kind_of(leaf: &Leaf) -> String {
    serde_json::to_value(leaf.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Fetches `GET /v1/audit/trails?<query>` and `…&format=bundle` as `auditor`, and checks every
/// proof offline: each entry's leaf, re-encoded, against its `c2sp.org/tlog-proof` with the
/// pinned `verifier`; that the proofs are against the trail's own checkpoint and that no entry
/// is both proven and pending; the bundle with [`verify_bundle`]; and that both name the same
/// entries.
pub async fn verify_trail(auditor: &Client, query: &str, verifier: &NoteVerifier) -> VerifiedTrail {
    let reply = auditor.get(&format!("/v1/audit/trails?{query}")).await;
    assert_eq!(reply.status, 200, "trail {query}: {}", reply.text());
    let trail = reply.json();
    let key = NoteVerifier::parse(trail["verifier_key"].as_str().expect("verifier_key"))
        .expect("a verifier key");
    assert_eq!(&key, verifier, "the trail names another key than the log's");
    let mut entries = Vec::new();
    let mut size = 0;
    let mut checkpoints: HashMap<String, Checkpoint> = HashMap::new();
    for item in trail["entries"].as_array().expect("entries") {
        let index = item["index"].as_u64().expect("index");
        let leaf: Leaf = serde_json::from_value(item["leaf"].clone()).expect("a leaf");
        let bytes = leaf.encode().expect("a leaf encodes");
        let proof = TlogProof::parse(item["proof"].as_str().expect("proof")).expect("a proof");
        assert_eq!(proof.index, index);
        // What `TlogProof::verify` does, with each distinct checkpoint's signature checked once
        // (signatures are slow in a debug build).
        let checkpoint = checkpoints
            .entry(proof.checkpoint.clone())
            .or_insert_with(|| {
                Checkpoint::open(proof.checkpoint.as_bytes(), verifier, Some(ORIGIN))
                    .unwrap_or_else(|e| panic!("the checkpoint of trail {query}: {e}"))
            });
        verify_inclusion(
            index,
            checkpoint.size,
            &leaf_hash(&bytes),
            &proof.path,
            &checkpoint.root,
        )
        .unwrap_or_else(|e| panic!("entry {index} of trail {query}: {e:?}"));
        size = checkpoint.size;
        entries.push(Entry { index, leaf, bytes });
    }
    let pending: Vec<u64> = trail["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|v| v.as_u64().expect("an index"))
        .collect();
    let signed = trail["checkpoint"].as_str().expect("checkpoint");
    let checkpoint = match checkpoints.get(signed) {
        Some(cp) => cp.clone(),
        None => Checkpoint::open(signed.as_bytes(), verifier, Some(ORIGIN))
            .expect("the trail's checkpoint verifies"),
    };
    if entries.is_empty() {
        size = checkpoint.size;
    }
    assert_eq!(
        size, checkpoint.size,
        "the proofs of trail {query} are against its checkpoint"
    );

    for index in &pending {
        assert!(
            *index >= size && entries.iter().all(|e| e.index != *index),
            "entry {index} of trail {query} is both proven (checkpoint size {size}) and pending"
        );
    }

    let bundle = auditor
        .get(&format!("/v1/audit/trails?{query}&format=bundle"))
        .await;
    assert_eq!(bundle.status, 200, "bundle {query}: {}", bundle.text());
    // The crate's own offline check, on a blocking thread (one signature check per entry).
    let (body, pinned) = (bundle.body.clone(), verifier.clone());
    let verified = tokio::task::spawn_blocking(move || verify_bundle(&body, Some(&pinned)))
        .await
        .expect("the bundle check")
        .unwrap_or_else(|e| panic!("the bundle of {query} does not verify: {e}"));
    assert!(verified.pinned);
    // The bundle may be against a later checkpoint: it covers at least the same entries.
    let in_bundle: Vec<u64> = verified.entries.iter().map(|(i, _)| *i).collect();
    for e in &entries {
        assert!(
            in_bundle.contains(&e.index),
            "entry {} missing from the bundle",
            e.index
        );
    }
    for (index, leaf) in &verified.entries {
        if let Some(e) = entries.iter().find(|e| e.index == *index) {
            assert_eq!(
                &e.leaf, leaf,
                "entry {index} differs between trail and bundle"
            );
        }
    }
    VerifiedTrail {
        entries,
        pending,
        size,
    }
}

/// The size of a [`SmallFs`].
const SMALL_FS: &str = "size=8m";

/// A `tmpfs` mounted on a folder for the life of the value; unmounted when dropped.
pub struct SmallFs {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl SmallFs {
    /// Mounts a fresh `tmpfs` of [`SMALL_FS`] on `path` (created if missing).
    pub fn mount(path: &Path) -> SmallFs {
        std::fs::create_dir_all(path).expect("the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", SMALL_FS, "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}): this test fills a small filesystem of its \
             own, and must run as root",
            path.display()
        );
        SmallFs {
            path: path.to_owned(),
        }
    }

    /// Writes a file that takes every byte left; returns its path.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("the filler file");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Whatever is left is less than a chunk: take it a byte at a time.
        while file.write(&[0]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs `passerelle audit erase` on the audit log of the data folder `data` (the gateway
/// stopped), with the signing key the test configuration puts there, for case `case`; panics
/// with its error output if it fails.
pub fn erase_case(data: &Path, case: &str) {
    let erase = Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["audit", "erase", "--log"])
        .arg(data.join("audit-log"))
        .arg("--signer")
        .arg(data.join("audit-signing.key"))
        .args(["--case", case])
        .output()
        .expect("running passerelle audit erase");
    assert!(
        erase.status.success(),
        "{}",
        String::from_utf8_lossy(&erase.stderr)
    );
}
