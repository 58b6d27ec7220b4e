//! The admin listener: liveness, readiness, metrics and dead letters, in plain HTTP on a
//! loopback or management address.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | the process is alive, and its store and audit log have not failed for good |
//! | `GET /ready` | the store, the audit log and every configured broker connection are up |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /dead-letters?after=&limit=` | dead-lettered deliveries (metadata only), a page at a time |
//! | `POST /deliveries/{id}/redeliver` | put a dead letter back in line |
//! | `POST /deliveries/{id}/discard` | give a dead letter up for good |

use super::outliving::OutlivingTasks;
use crate::delivery::{self, DeadLetterError};
use crate::pipeline::Gateway;
use crate::store::{DEAD_LETTER_PAGE, StoreError};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A named component and whether it is up.
type Component = (String, Arc<AtomicBool>);

/// Components whose state decides readiness, besides the store and the audit log.
#[derive(Debug, Default, Clone)]
pub struct Readiness {
    components: Arc<std::sync::Mutex<Vec<Component>>>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Registers a component (a broker connection, say); the flag says whether it is up.
    pub fn register(&self, name: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.components.lock() {
            c.push((name.to_owned(), flag.clone()));
        }
        flag
    }

    /// Marks the gateway as stopping: `/ready` answers 503 from now on, so that load
    /// balancers stop sending it work while it drains.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether every registered component is up.
    pub fn all_up(&self) -> bool {
        self.states().iter().all(|(_, up)| *up)
    }

    fn states(&self) -> Vec<(String, bool)> {
        self.components
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(n, f)| (n.clone(), f.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct AdminState {
    gateway: Arc<Gateway>,
    readiness: Readiness,
    /// The operators' changes whose request went away, which the stop waits for.
    outliving: Arc<OutlivingTasks>,
    /// Whether the listener is on a loopback address: it then answers only requests for a
    /// loopback name ([`refuse_other_host_names`]).
    loopback: bool,
}

/// How long each step of the admin listener's stop may take, in seconds: its requests are an
/// operator's, short, and the stop's budget is the partner listener's (operations.md).
pub const ADMIN_STOP_SECS: u64 = 5;

/// A running admin listener.
pub struct RunningAdmin {
    /// The address it listens on.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    outliving: Arc<OutlivingTasks>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningAdmin {
    /// Stops it: first lets an operator's change whose request went away finish (its audit
    /// entry and its record are made together), then stops gracefully; each step takes at
    /// most [`ADMIN_STOP_SECS`].
    pub async fn stop(self) {
        let left = self
            .outliving
            .stop_server(&self.handle, Duration::from_secs(ADMIN_STOP_SECS))
            .await;
        if left > 0 {
            tracing::warn!(
                changes = left,
                "operators' changes to dead letters were still being made when the stop's time \
                 was up; they are dropped"
            );
        }
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the admin listener failed"),
            Err(error) => tracing::error!(
                error = crate::error_text::task_failure(&error),
                "the admin listener failed"
            ),
        }
    }
}

/// Starts the admin listener on the current runtime.
pub fn start(
    gateway: Arc<Gateway>,
    readiness: Readiness,
    address: socket2::Socket,
) -> anyhow::Result<RunningAdmin> {
    let listener = super::listen(address)?;
    let addr = listener.local_addr()?;
    let outliving = Arc::new(OutlivingTasks::default());
    let state = web::Data::new(AdminState {
        gateway,
        readiness,
        outliving: outliving.clone(),
        loopback: addr.ip().to_canonical().is_loopback(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(refuse_other_host_names))
            // A delivery id that is not a number, and a route that does not exist, are answered
            // in the listener's JSON errors too.
            .app_data(web::PathConfig::default().error_handler(|e, req| {
                // The one path with a parameter to read: `/deliveries/{id}/…`. A change asked by
                // a web page is refused as such, whatever its id.
                let id = req.match_info().get("id").unwrap_or_default();
                let answer = refuse_web_pages(req).unwrap_or_else(|| {
                    HttpResponse::NotFound().json(serde_json::json!({
                        "error": format!(
                            "no delivery {id:?}: a delivery id is a whole number (the id column \
                             of `passerelle deliveries dead`)"
                        )
                    }))
                });
                actix_web::error::InternalError::from_response(e, answer).into()
            }))
            .default_service(web::to(|| async {
                HttpResponse::NotFound().json(serde_json::json!({"error": "no such route"}))
            }))
            .service(only("/health", "GET", web::get().to(health)))
            .service(only("/ready", "GET", web::get().to(ready)))
            .service(only("/metrics", "GET", web::get().to(metrics)))
            .service(only("/dead-letters", "GET", web::get().to(dead_letters)))
            .service(only(
                "/deliveries/{id}/{change}",
                "POST",
                web::post().to(change_dead_letter),
            ))
    })
    .workers(1)
    .shutdown_timeout(ADMIN_STOP_SECS)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    Ok(RunningAdmin {
        addr,
        handle,
        outliving,
        task: tokio::spawn(server),
    })
}

/// A resource with its route: any other method is answered `405`, in the listener's JSON
/// errors, with `Allow`.
fn only(path: &str, allow: &'static str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move {
            HttpResponse::MethodNotAllowed()
                .insert_header((actix_web::http::header::ALLOW, allow))
                .json(serde_json::json!({"error": format!("this route takes {allow} only")}))
        }))
}

/// Liveness. The store and the audit log do not recover by themselves from a write that
/// failed (a full disk, a failed sync): a restart is what reopens them, runs the log's
/// recovery and settles what the store held. A gateway in that state is therefore reported
/// failed, so that a supervisor that restarts failed processes restarts it; `/ready` says
/// which part is down either way.
async fn health(state: web::Data<AdminState>) -> HttpResponse {
    let failed: Vec<&str> = [
        ("store", state.gateway.store.is_open()),
        ("audit_log", state.gateway.log.is_healthy()),
    ]
    .into_iter()
    .filter_map(|(part, up)| (!up).then_some(part))
    .collect();
    if failed.is_empty() {
        return HttpResponse::Ok().json(serde_json::json!({"status": "alive"}));
    }
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "status": "failed",
        "failed": failed,
        "detail": "a write failed and the gateway accepts no message until it is restarted; \
                   its log says the cause: mend it (make room on the disk, say), then restart",
    }))
}

async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    let mut checks = vec![
        ("store".to_owned(), state.gateway.store.is_open()),
        ("audit_log".to_owned(), state.gateway.log.is_healthy()),
    ];
    checks.extend(state.readiness.states());
    checks.push((
        "accepting".to_owned(),
        !state.readiness.draining.load(Ordering::Relaxed),
    ));
    let all = checks.iter().all(|(_, up)| *up);
    let body = serde_json::json!({
        "ready": all,
        "checks": checks.into_iter().map(|(n, up)| (n, serde_json::Value::Bool(up))).collect::<serde_json::Map<_, _>>(),
    });
    if all {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    let g = &state.gateway;
    g.metrics
        .outbox_pending
        .set(i64::try_from(g.store.pending_deliveries()).unwrap_or(i64::MAX));
    g.metrics
        .audit_log_size
        .set(i64::try_from(g.log.latest_checkpoint().1.size).unwrap_or(i64::MAX));
    // Counted, not read: dead letters stay until an operator redelivers them, and a scrape
    // must stay cheap however many there are.
    if let Ok(dead) = g.store.dead_letter_count() {
        g.metrics
            .outbox_dead
            .set(i64::try_from(dead).unwrap_or(i64::MAX));
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(g.metrics.render())
}

/// The query of `GET /dead-letters`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterPage {
    /// List those after this delivery id.
    #[serde(default)]
    after: u64,
    /// At most this many.
    limit: Option<usize>,
}

async fn dead_letters(
    state: web::Data<AdminState>,
    query: Result<web::Query<DeadLetterPage>, actix_web::Error>,
) -> HttpResponse {
    let page = match query {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return HttpResponse::BadRequest().json(serde_json::json!({
                "error": format!("the query takes after (a delivery id) and limit (1 to {DEAD_LETTER_PAGE}): {e}")
            }));
        }
    };
    let limit = page.limit.unwrap_or(DEAD_LETTER_PAGE);
    if !(1..=DEAD_LETTER_PAGE).contains(&limit) {
        return HttpResponse::BadRequest().json(serde_json::json!({
            "error": format!("limit must be 1 to {DEAD_LETTER_PAGE}, not {limit}")
        }));
    }
    match state.gateway.store.dead_letters(page.after, limit) {
        Ok(list) => HttpResponse::Ok().json(
            list.into_iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.id,
                        "event_id": d.event_id,
                        "event_type": d.event_type,
                        "recipient": d.recipient,
                        "channel": d.channel,
                        "attempts": d.attempts,
                        "last_error": d.last_error,
                        "created_at": d.created_at,
                    })
                })
                .collect::<Vec<_>>(),
        ),
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({"error": e.to_string()}))
        }
    }
}

/// `POST /deliveries/{id}/redeliver` and `POST /deliveries/{id}/discard`: an operator's
/// change to a dead letter.
async fn change_dead_letter(
    req: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<(u64, String)>,
) -> HttpResponse {
    let (id, change) = path.into_inner();
    if !matches!(change.as_str(), "redeliver" | "discard") {
        return HttpResponse::NotFound().json(serde_json::json!({"error": "no such route"}));
    }
    if let Some(refused) = refuse_web_pages(&req) {
        return refused;
    }
    // Made in a task of its own, to its end even when the operator's client goes away: its
    // audit entry is written first, and the store's record must follow it.
    let gateway = state.gateway.clone();
    let made = async move {
        if change == "redeliver" {
            delivery::redeliver(&gateway, id).await
        } else {
            delivery::discard(&gateway, id).await
        }
    };
    match state.outliving.run(made).await {
        Ok(changed) => dead_letter_changed(id, changed),
        Err(error) => {
            tracing::error!(
                error = crate::error_text::task_failure(&error),
                delivery = id,
                "an operator's change to a dead letter failed"
            );
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"error": "the change failed; ask again"}))
        }
    }
}

/// Refuses, on a loopback listener, a request for a host name that is not a loopback one
/// (`Host` other than `localhost`, `127.0.0.1`, `[::1]`, with any port). A web page in a
/// browser on this host can reach the listener under a name of its own that resolves to
/// 127.0.0.1 (DNS rebinding), and read its answers as its own origin's: the dead letters
/// (event ids, recipients) and the metrics. Such a request names the page's host. A request
/// without `Host` (HTTP/1.0, which no browser sends) is answered.
async fn refuse_other_host_names(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let loopback = req
        .app_data::<web::Data<AdminState>>()
        .is_some_and(|state| state.loopback);
    let host = req.headers().get(actix_web::http::header::HOST);
    if loopback && host.is_some_and(|host| !names_loopback(host.as_bytes())) {
        let answer = HttpResponse::Forbidden().json(serde_json::json!({
            "error": "the admin listener is on loopback and answers requests for localhost, \
                      127.0.0.1 or [::1] only (the Host header names another host)"
        }));
        return Ok(req.into_response(answer).map_into_right_body());
    }
    next.call(req)
        .await
        .map(|answer| answer.map_into_left_body())
}

/// Whether a `Host` header names a loopback host: `localhost`, or a loopback IPv4 or IPv6
/// address, with or without a port.
fn names_loopback(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = if let Some(bracketed) = host.strip_prefix('[') {
        // `[::1]` or `[::1]:9090`.
        match bracketed.split_once(']') {
            Some((address, rest)) if rest.is_empty() || rest.starts_with(':') => address,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The listener has no credentials of its own (it is on loopback, for the operators of this
/// host). A browser on this host would still send it a page's form or `fetch`, with the page's
/// `Origin`: a change asked that way is refused, so that no web page can redeliver or discard
/// what an operator left dead. The command line sends no `Origin`.
fn refuse_web_pages(req: &HttpRequest) -> Option<HttpResponse> {
    req.headers()
        .contains_key(actix_web::http::header::ORIGIN)
        .then(|| {
            HttpResponse::Forbidden().json(serde_json::json!({
                "error": "the admin listener takes no changes from web pages (the request has an Origin)"
            }))
        })
}

/// The answer to an operator's change to dead letter `id`: the delivery's new state, `404`
/// when it is not a dead letter, `409` when the change cannot be made to it, `503` when the
/// store or the audit log failed.
fn dead_letter_changed(
    id: u64,
    changed: Result<crate::store::Delivery, DeadLetterError>,
) -> HttpResponse {
    match changed {
        Ok(d) => HttpResponse::Ok().json(serde_json::json!({
            "id": d.id,
            "state": d.state,
            "channel": d.channel.name(),
        })),
        Err(DeadLetterError::Store(StoreError::NotFound(what))) => HttpResponse::NotFound()
            .json(serde_json::json!({"error": format!("no such {what}: {id}")})),
        Err(DeadLetterError::Store(refused @ StoreError::Refused(_))) => {
            HttpResponse::Conflict().json(serde_json::json!({"error": refused.to_string()}))
        }
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({"error": e.to_string()}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names_loopback;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:9090",
            "LocalHost.",
            "127.0.0.1",
            "127.0.0.2:9090",
            "[::1]",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            assert!(names_loopback(host.as_bytes()), "{host}");
        }
        for host in [
            "rebound.example",
            "rebound.example:9090",
            "localhost.rebound.example",
            "10.0.0.1:9090",
            "[::2]:9090",
            "[::1]x",
            "::1",
            "",
        ] {
            assert!(!names_loopback(host.as_bytes()), "{host}");
        }
    }
}
