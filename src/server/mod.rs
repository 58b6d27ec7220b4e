//! The REST transport: the partner-facing HTTPS server with mutual TLS, and the admin listener.
//!
//! This module owns HTTP: TLS termination with rustls, reading the partner's identity from the
//! verified client certificate of the connection (never from the request), the routes, and
//! the translation of the pipeline's outcomes into HTTP answers and RFC 9457 problems. What a
//! message means is the pipeline's business.

pub mod admin;
pub mod outliving;
pub mod problem;
pub mod routes;

use crate::config::Config;
use crate::metrics::{Metrics, ReasonLabels};
use crate::pipeline::refusal_summaries::RefusalSummaries;
use crate::pipeline::{Gateway, UNVERIFIED};
use crate::tls::{
    CertificateRefusal, CertificateRefusalObserver, ClientVerifier, PeerIdentity, peer_identity,
};
use actix_web::dev::{Extensions, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use chrono::Utc;
use rustls::pki_types::CertificateDer;
use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The identity read from a connection's verified client certificate.
#[derive(Debug, Clone)]
pub struct ConnectionIdentity(pub Option<VerifiedPeer>);

/// A connection's client certificate, verified by its handshake, and kept to be verified again
/// while the connection lasts (see [`VerifiedPeer::still_valid`]).
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    /// What the certificate says.
    pub identity: PeerIdentity,
    /// The chain the handshake verified, end-entity first.
    chain: Arc<Vec<CertificateDer<'static>>>,
    /// The generation of the CRLs the chain was last verified under
    /// ([`ClientVerifier::generation`]).
    checked: Arc<AtomicU64>,
    /// When it was last verified, in seconds since the epoch.
    checked_at: Arc<AtomicU64>,
    /// The `notAfter` of each certificate of the chain ([`crate::tls::chain_not_afters`]).
    not_afters: Arc<[i64]>,
    /// When the next of them comes, after the last verification ([`crate::tls::next_expiry`]).
    valid_until: Arc<AtomicI64>,
    /// Whether the chain leads to the CA its partner's entry names (`issuer`), once asked.
    issued: Arc<OnceLock<bool>>,
}

impl VerifiedPeer {
    /// Whether the certificate is still valid: verified again when the CRLs were read again
    /// since it was last verified, when one of them went stale since (its `nextUpdate`
    /// passed), or once a certificate of the chain has expired. A connection outlives the
    /// handshake that checked it, so that a certificate revoked (or expired, or whose status
    /// is no longer known) since would otherwise go on being accepted on a connection kept
    /// alive.
    pub fn still_valid(&self, verifier: &ClientVerifier) -> Result<(), rustls::Error> {
        let generation = verifier.generation();
        let now = Utc::now().timestamp();
        let now_secs = u64::try_from(now).unwrap_or(0);
        let expired = now >= self.valid_until.load(Ordering::Acquire);
        let gone_stale = self.checked_at.load(Ordering::Acquire) < verifier.stale_since(now_secs);
        if !expired && !gone_stale && self.checked.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        verifier.recheck(&self.chain)?;
        self.checked.store(generation, Ordering::Release);
        self.checked_at.store(now_secs, Ordering::Release);
        self.valid_until.store(
            crate::tls::next_expiry(&self.not_afters, now),
            Ordering::Release,
        );
        Ok(())
    }

    /// Whether the certificate was issued by the bundle's CA named `issuer`. Asked once a
    /// connection: its certificate, and the registry entry it names, do not change while it is
    /// open.
    pub fn issued_by(&self, verifier: &ClientVerifier, issuer: &str) -> bool {
        *self
            .issued
            .get_or_init(|| verifier.issued_by(issuer, &self.chain))
    }
}

/// The connections each client certificate holds open, by fingerprint, so that one
/// certificate holder cannot hold more than its share of the server's connections (and of the
/// memory their buffers hold). Counted when a connection is set up, and let go when it ends
/// (see [`ConnectionSlot`]).
#[derive(Debug)]
struct ConnectionCounts {
    per_certificate: Mutex<HashMap<String, usize>>,
    most: usize,
    /// The log lines of the requests refused over the limit, at most one a second.
    refusal_lines: Arc<crate::line_throttle::LineThrottle>,
}

impl ConnectionCounts {
    /// A place for one more connection of `fingerprint`'s, or `None` when it holds the most.
    fn take(self: &Arc<Self>, fingerprint: &str) -> Option<ConnectionSlot> {
        let mut counts = self
            .per_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let held = counts.entry(fingerprint.to_owned()).or_default();
        if *held >= self.most {
            return None;
        }
        *held += 1;
        Some(ConnectionSlot {
            counts: self.clone(),
            fingerprint: fingerprint.to_owned(),
        })
    }
}

/// One connection's place among its certificate's, given back when the connection ends (its
/// extensions are dropped with it).
#[derive(Debug)]
struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    fingerprint: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .per_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = counts.get_mut(&self.fingerprint) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.fingerprint);
            }
        }
    }
}

/// Marks a connection set up while its certificate held the most connections it may: each of
/// its requests is answered `503`, and the connection closed.
#[derive(Debug, Clone)]
struct OverConnectionLimit {
    /// The most connections a certificate may hold.
    most: usize,
    /// The log lines of such refusals.
    lines: Arc<crate::line_throttle::LineThrottle>,
    /// The certificate's SHA-256 fingerprint, for the operators.
    fingerprint: String,
}

/// How long before a connection is set up a CRL reload may have come after its handshake's
/// certificate check: longer than any handshake may take (actix's limit is 3 s).
const HANDSHAKE_SPAN: Duration = Duration::from_secs(60);

/// Reads the verified client certificate when a TLS connection is set up, noting the CRLs'
/// generation it was verified under. Were the CRLs read again shortly before, the handshake
/// may have used the earlier ones: the connection's first request verifies it again.
fn on_connect(
    verifier: &ClientVerifier,
    counts: &Arc<ConnectionCounts>,
    stalled_write: Duration,
    connection: &dyn Any,
    extensions: &mut Extensions,
) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let tls = connection.downcast_ref::<Tls>();
    // The HTTP library buffers the answers of every request a client pipelines, however many,
    // and bounds neither that buffer nor how long a client may leave it unread (its keep-alive
    // timer runs only on an idle connection). The kernel closes a connection whose data has
    // waited unacknowledged, or unsent behind a closed window, this long.
    if let Some(tls) = tls
        && let Err(error) =
            socket2::SockRef::from(tls.get_ref().0).set_tcp_user_timeout(Some(stalled_write))
    {
        tracing::warn!(%error, "the time limit of a stalled connection could not be set");
    }
    // The generation first: a reload it counts has its time already set (see
    // `ClientVerifier::reload_if_changed`).
    let generation = verifier.generation();
    let generation = if verifier.reloaded_within(HANDSHAKE_SPAN) {
        u64::MAX
    } else {
        generation
    };
    let peer = tls
        .and_then(|tls| tls.get_ref().1.peer_certificates())
        .and_then(|certs| {
            let identity = peer_identity(certs).ok()?;
            let now = Utc::now().timestamp();
            let not_afters: Arc<[i64]> = crate::tls::chain_not_afters(certs).into();
            // The handshake verified the chain a moment ago, with the CRLs in use then: taken
            // as verified a span earlier, so that a CRL gone stale meanwhile is not missed.
            let verified_at = now.saturating_sub(HANDSHAKE_SPAN.as_secs().cast_signed());
            Some(VerifiedPeer {
                identity,
                valid_until: Arc::new(AtomicI64::new(crate::tls::next_expiry(
                    &not_afters,
                    verified_at,
                ))),
                not_afters,
                chain: Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()),
                checked: Arc::new(AtomicU64::new(generation)),
                checked_at: Arc::new(AtomicU64::new(u64::try_from(verified_at).unwrap_or(0))),
                issued: Arc::new(OnceLock::new()),
            })
        });
    if let Some(peer) = &peer {
        match counts.take(&peer.identity.fingerprint) {
            Some(slot) => {
                extensions.insert(slot);
            }
            None => {
                extensions.insert(OverConnectionLimit {
                    most: counts.most,
                    lines: counts.refusal_lines.clone(),
                    fingerprint: peer.identity.fingerprint.clone(),
                });
            }
        }
    }
    extensions.insert(ConnectionIdentity(peer));
}

/// Answers every request of a connection set up over its certificate's limit `503`, with
/// `Connection: close`, before any route reads it: the client is told to use the connections
/// it has. Not audited, like the other `503`s of a full share: no message was read. A message
/// (`POST /v1/messages`) so refused is counted `unavailable` for the partner its certificate
/// names (`unregistered` for none), as one whose turn did not come.
async fn refuse_over_limit(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(over) = req.conn_data::<OverConnectionLimit>().cloned() else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    let most = over.most;
    if let Some(held_back) = over.lines.may_write_at(Instant::now()) {
        tracing::warn!(
            certificate = %over.fingerprint,
            limit = most,
            lines_held_back = held_back,
            "a request refused: its connection is one more than its client certificate may hold \
             (one such line a second at most; lines_held_back counts those of any certificate \
             not written since the last)"
        );
    }
    if req.method() == actix_web::http::Method::POST
        && req.path() == "/v1/messages"
        && let Some(gateway) = req.app_data::<web::Data<Gateway>>()
    {
        let identity = req
            .conn_data::<ConnectionIdentity>()
            .and_then(|c| c.0.as_ref())
            .map(|peer| &peer.identity);
        let sender = identity
            .and_then(|identity| {
                gateway
                    .registry
                    .identify(&identity.uris, &identity.fingerprint)
                    .ok()
            })
            .map_or(crate::pipeline::UNREGISTERED, |entry| entry.id.as_str());
        gateway.metrics.message(sender, "rest", "unavailable");
    }
    let problem = problem::Problem::unavailable(format!(
        "this client certificate already holds {most} connections, the most it may \
         (server.connections_per_certificate): send on those it has (they are kept alive)"
    ));
    let mut response = actix_web::ResponseError::error_response(&problem);
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(response))
}

/// Counts each client certificate that the TLS handshake refuses, and tallies it for a
/// summary under [`UNVERIFIED`] (see [`crate::pipeline::refusal_summaries`]). It holds only
/// the tallies and the metrics, not the gateway, so that the server's verifier does not keep
/// the gateway from being closed when it stops.
struct RefusedCertificateAudit {
    summaries: Arc<RefusalSummaries>,
    metrics: Arc<Metrics>,
}

impl CertificateRefusalObserver for RefusedCertificateAudit {
    fn refused(&self, certificate: &CertificateDer<'_>, reason: CertificateRefusal) {
        self.metrics
            .tls_refused_certificates
            .get_or_create(&ReasonLabels {
                reason: reason.code(),
            })
            .inc();
        self.summaries.record(
            UNVERIFIED,
            reason.code(),
            crate::audit::Transport::Rest,
            certificate,
            Utc::now(),
        );
    }
}

/// A running partner-facing server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its client-certificate verifier, whose CRLs can be read again while it runs.
    pub client_verifier: Arc<crate::tls::ClientVerifier>,
    /// Stops it.
    pub handle: ServerHandle,
    /// The tasks of messages whose client went away, which must finish before the HTTP
    /// workers stop (see [`RunningServer::stop`]).
    pub outliving: Arc<outliving::OutlivingTasks>,
    /// Resolves when it has stopped.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds a socket to a listener's address without listening on it yet, for the start to take
/// the address before it touches the data folder: an address another listener serves on
/// stops the start there, and connections are refused, not left waiting, until the listener
/// serves ([`listen`]). (Another socket bound with `SO_REUSEADDR` and not listening does not:
/// that conflict shows when listening.) The start may take long (a journal replayed, the
/// store's file rewritten after an erasure); a load balancer's checks must fail meanwhile.
pub fn reserve_address(
    address: std::net::SocketAddr,
    setting: &str,
) -> anyhow::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let reserve = || -> std::io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        // As the standard library's listeners do: a restarted gateway takes its address back
        // at once, while connections of the last run linger in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        Ok(socket)
    };
    reserve().with_context(|| format!("taking the address {address} ({setting})"))
}

/// Starts listening on an address [`reserve_address`] took.
fn listen(socket: socket2::Socket) -> std::io::Result<std::net::TcpListener> {
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The listeners' queue of connections not yet accepted (actix-web's default).
const LISTEN_BACKLOG: i32 = 2048;

/// The file of the data folder that keeps the newest CRL used of each series.
pub const CRL_MARKS_FILE: &str = "crl-marks.json";

/// The listener's TLS configuration, and its verifier of client certificates, which the
/// webhook calls share for endpoints' certificates ([`crate::tls::EndpointVerifier`]): one set
/// of CRLs, read again while the gateway runs. Certificates the handshake refuses are audited in
/// summaries (see `pipeline::refusal_summaries`).
pub fn tls_config(
    gateway: &Gateway,
    config: &Config,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<ClientVerifier>)> {
    let observer = Arc::new(RefusedCertificateAudit {
        summaries: gateway.refusal_summaries(),
        metrics: gateway.metrics.clone(),
    });
    // The newest CRL used of each series is kept in the data folder, so that the next start
    // refuses an older one as a reload does.
    let files = config
        .tls
        .server_files()
        .with_crl_marks(config.paths.data.join(CRL_MARKS_FILE));
    Ok(crate::tls::server_config_with_verifier(
        &files,
        Some(observer),
    )?)
}

/// Starts the partners' listener on `address` (reserved by [`reserve_address`]), with the TLS
/// configuration and verifier of [`tls_config`].
pub fn start(
    gateway: Arc<Gateway>,
    config: &Config,
    address: socket2::Socket,
    tls: Arc<rustls::ServerConfig>,
    client_verifier: Arc<ClientVerifier>,
) -> anyhow::Result<RunningServer> {
    let tls = (*tls).clone();
    let floor = config.server.floor_mode;
    if floor {
        tracing::warn!(
            "MEASURING FLOOR: every POST /v1/messages is answered 202 and nothing is processed, \
             recorded or kept; for passerelle load only"
        );
    }
    // The floor reads each body whole (the pipeline streams it under its own limit): no more
    // than a message may be.
    let floor_body_limit = config.limits.max_body_bytes.saturating_add(1);
    let data = web::Data::from(gateway);
    let verifier = web::Data::from(client_verifier.clone());
    let outliving = Arc::new(outliving::OutlivingTasks::default());
    let outliving_data = web::Data::from(outliving.clone());
    let trail_reads = web::Data::new(routes::TrailReads::new(
        routes::TRAIL_READS_AT_ONCE,
        routes::TRAIL_READ_WAIT,
    ));
    let connect_verifier = client_verifier.clone();
    let stalled_write = Duration::from_secs(config.server.stalled_write_secs);
    let connection_counts = Arc::new(ConnectionCounts {
        per_certificate: Mutex::new(HashMap::new()),
        most: config.server.connections_per_certificate.max(1),
        refusal_lines: Arc::default(),
    });
    let listener = listen(address)?;
    let addr = listener.local_addr()?;
    let mut server = HttpServer::new(move || {
        let app = App::new()
            .wrap(actix_web::middleware::from_fn(refuse_over_limit))
            .app_data(data.clone())
            .app_data(verifier.clone())
            .app_data(outliving_data.clone())
            .app_data(trail_reads.clone())
            .app_data(web::PayloadConfig::new(if floor {
                floor_body_limit
            } else {
                usize::MAX
            }))
            // Bad query strings and path values are answered as problems too.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                problem::Problem::bad_request(format!("the query string: {e}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, req| {
                // "Path deserialize error: can not parse "abc" to a u64": the resource does
                // not exist; the parser's words are kept after its own prefix.
                let why = e.to_string();
                let why = why.strip_prefix("Path deserialize error: ").unwrap_or(&why);
                problem::Problem::not_found(format!("no such resource {} ({why})", req.path()))
                    .into()
            }));
        if floor {
            app.configure(routes::floor)
        } else {
            app.configure(routes::configure)
        }
    })
    .on_connect(move |connection, extensions| {
        on_connect(
            &connect_verifier,
            &connection_counts,
            stalled_write,
            connection,
            extensions,
        )
    })
    .keep_alive(Duration::from_secs(config.server.keep_alive_secs))
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    .disable_signals();
    if let Some(workers) = config.server.workers {
        server = server.workers(workers.max(1));
    }
    let server = server.listen_rustls_0_23(listener, tls)?.run();
    let handle = server.handle();
    Ok(RunningServer {
        addr,
        client_verifier,
        handle,
        outliving,
        task: tokio::spawn(server),
    })
}

impl RunningServer {
    /// Stops gracefully, within about twice `bound` (see [`outliving::OutlivingTasks::stop_server`]):
    /// the messages whose client went away are let finish, then the requests in flight are
    /// drained (bounded by `server.shutdown_timeout_secs`).
    pub async fn stop(self, bound: Duration) {
        let left = self.outliving.stop_server(&self.handle, bound).await;
        if left > 0 {
            tracing::warn!(
                messages = left,
                "messages whose client went away were still being processed when the stop's \
                 time was up; they are dropped (an acceptance under way is settled at the next \
                 start)"
            );
        }
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reserved address is the gateway's, but refuses connections until it is listened on.
    #[test]
    fn a_reserved_address_refuses_connections_until_listened_on() {
        let reserved = reserve_address("127.0.0.1:0".parse().unwrap(), "server.listen").unwrap();
        let address = reserved.local_addr().unwrap().as_socket().unwrap();
        let refused = std::net::TcpStream::connect(address).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let listener = listen(reserved).unwrap();
        std::net::TcpStream::connect(address).unwrap();
        // An address another listener serves on cannot be taken.
        let taken = reserve_address(address, "admin.listen").unwrap_err();
        assert!(
            format!("{taken:#}").contains(&format!("{address} (admin.listen)")),
            "{taken:#}"
        );
        drop(listener);
    }
}
