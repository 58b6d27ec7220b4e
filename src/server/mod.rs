//! The REST transport: the partner-facing HTTPS server with mutual TLS, and the admin listener.
//!
//! This module owns HTTP: TLS termination with rustls, reading the partner's identity from the
//! verified client certificate of the connection (never from the request), the routes, and
//! the translation of the pipeline's outcomes into HTTP answers and RFC 9457 problems. What a
//! message means is the pipeline's business.

pub mod admin;
pub mod problem;
pub mod routes;

use crate::config::Config;
use crate::pipeline::Gateway;
use crate::tls::{PeerIdentity, peer_identity};
use actix_web::dev::{Extensions, ServerHandle};
use actix_web::{App, HttpServer, web};
use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The identity read from a connection's verified client certificate.
#[derive(Debug, Clone)]
pub struct ConnectionIdentity(pub Option<PeerIdentity>);

/// Reads the verified client certificate when a TLS connection is set up.
fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let identity = connection
        .downcast_ref::<Tls>()
        .and_then(|tls| tls.get_ref().1.peer_certificates())
        .and_then(|certs| peer_identity(certs).ok());
    extensions.insert(ConnectionIdentity(identity));
}

/// A running partner-facing server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its client-certificate verifier, whose CRLs can be read again while it runs.
    pub client_verifier: Arc<crate::tls::ClientVerifier>,
    /// Stops it.
    pub handle: ServerHandle,
    /// Resolves when it has stopped.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts the partner-facing HTTPS server on the current runtime.
pub fn start(gateway: Arc<Gateway>, config: &Config) -> anyhow::Result<RunningServer> {
    let (tls, client_verifier) =
        crate::tls::server_config_with_verifier(&config.tls.server_files())?;
    // Refused certificates are audited in summaries (see `pipeline::refusal_summaries`).
    client_verifier.report_refusals_to(gateway.clone());
    let tls = (*tls).clone();
    let floor = config.server.floor_mode;
    let data = web::Data::from(gateway);
    let listener = std::net::TcpListener::bind(config.server.listen)?;
    let addr = listener.local_addr()?;
    let mut server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(usize::MAX))
            // Bad query strings and path values are answered as problems too.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                problem::Problem::bad_request(format!("the query string: {e}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                problem::Problem::not_found(format!("the path: {e}")).into()
            }));
        if floor {
            app.configure(routes::floor)
        } else {
            app.configure(routes::configure)
        }
    })
    .on_connect(on_connect)
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
        task: tokio::spawn(server),
    })
}
