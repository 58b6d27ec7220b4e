//! The partner-facing routes: ingest, inbox, receipts and the auditors' API.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/messages` | any partner | submit a native message or a CloudEvent |
//! | `GET /v1/inbox` | any partner | the deliveries waiting for the caller |
//! | `POST /v1/inbox/{id}/ack` | the recipient | acknowledge a delivery |
//! | `GET /v1/receipts/{event_id}` | the sender, auditors | receipt and inclusion proof |
//! | `GET`, `HEAD /v1/audit/log/{path}` | any partner (entry bundles: auditors) | the C2SP tlog-tiles read API |
//! | `GET /v1/audit/trails` | auditors | a case's (LPC's, PNR's) entries with proofs, or a bundle |
//!
//! The OpenAPI document `docs/openapi.yaml` describes them: `tests/openapi.rs` checks it against
//! [`ROUTES`], and `tests/gateway.rs` checks that the router serves every route of [`ROUTES`].

use super::ConnectionIdentity;
use super::outliving::OutlivingTasks;
use super::problem::Problem;
use crate::audit::bundle::Trail;
use crate::audit::{Kind, Query, Transport};
use crate::canonical::partner_source;
use crate::pipeline::refusal_summaries::RATE_LIMITED;
use crate::pipeline::shares::SharePermit;
use crate::pipeline::{Ack, Content, Gateway, Outcome, Refusal, Submission, UNREGISTERED};
use crate::registry::{AccessError, PartnerEntry};
use crate::store::{Channel, Delivery, DeliveryState, DeliveryUpdate};
use crate::tls::ClientVerifier;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The routes the server exposes, as `(method, path)`: the OpenAPI document must list these.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/messages"),
    ("get", "/v1/inbox"),
    ("post", "/v1/inbox/{id}/ack"),
    ("get", "/v1/receipts/{event_id}"),
    ("get", "/v1/audit/log/{path}"),
    ("head", "/v1/audit/log/{path}"),
    ("get", "/v1/audit/trails"),
];

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/v1/messages", "POST", web::post().to(post_message)))
        .service(only("/v1/inbox", "GET", web::get().to(get_inbox)))
        .service(only("/v1/inbox/{id}/ack", "POST", web::post().to(ack)))
        .service(only(
            "/v1/receipts/{event_id}",
            "GET",
            web::get().to(get_receipt),
        ))
        // HEAD too, as static file servers answer it: the headers of the GET, no body.
        .service(
            only(
                "/v1/audit/log/{path:.*}",
                "GET, HEAD",
                web::get().to(get_log_file),
            )
            .route(web::head().to(get_log_file)),
        )
        .service(only("/v1/audit/trails", "GET", web::get().to(get_trail)))
        .default_service(web::to(not_found));
}

/// A resource with its route: any method the resource does not route is answered `405` as a
/// problem, with `Allow` (which lists the methods it routes).
fn only(path: &str, allow: &'static str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move {
            let mut response = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("this route takes {allow} only"),
            )
            .error_response();
            response.headers_mut().insert(
                actix_web::http::header::ALLOW,
                actix_web::http::header::HeaderValue::from_static(allow),
            );
            response
        }))
}

/// The measuring floor: the same server answering `202` to every message without
/// processing it (load tests only).
pub fn floor(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/messages",
        web::post().to(|body: web::Bytes| async move {
            let _ = body;
            HttpResponse::Accepted()
                .content_type("application/json")
                .body(r#"{"status":"accepted"}"#)
        }),
    );
}

async fn not_found() -> Result<HttpResponse, Problem> {
    Err(Problem::not_found("no such route"))
}

/// The calling partner, identified from the connection's verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller(pub PartnerEntry);

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Caller, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(identify(req))
    }
}

fn identify(req: &HttpRequest) -> Result<Caller, Problem> {
    let gateway = gateway(req)?;
    let peer = req
        .conn_data::<ConnectionIdentity>()
        .and_then(|c| c.0.clone())
        .ok_or_else(|| Problem::forbidden("no verified client certificate on this connection"))?;
    let verifier = req
        .app_data::<web::Data<ClientVerifier>>()
        .ok_or_else(|| Problem::unavailable("the gateway is not configured"))?;
    peer.still_valid(verifier).map_err(|error| {
        Problem::forbidden(format!(
            "the client certificate of this connection is no longer valid ({error}): connect \
             again with a valid one"
        ))
    })?;
    let identity = &peer.identity;
    let entry = gateway
        .registry
        .identify(&identity.uris, &identity.fingerprint)
        .map_err(|e| Problem::forbidden(e.to_string()))?;
    if let Some(issuer) = &entry.issuer
        && !peer.issued_by(verifier, issuer)
    {
        let wrong = AccessError::WrongIssuer {
            partner: entry.id.clone(),
            issuer: issuer.clone(),
        };
        return Err(Problem::forbidden(wrong.to_string()));
    }
    Ok(Caller(entry.clone()))
}

/// Answers a message whose connection identifies no partner. A certificate that the partner
/// CA signed but the registry does not know is a refused message like any other, and is
/// audited (under its fingerprint) before the answer; a connection without a verified
/// certificate never gets this far (the TLS handshake refuses it). A body that does not arrive
/// whole is refused for the certificate all the same, committing to what came of it; it is
/// read in a task of its own, as a partner's is, so that a client closing its connection
/// mid-body does not end it. When such certificates already have their share of the messages
/// in the gateway, the answer is `503`, counted and unaudited: no message was read.
async fn refuse_unregistered(
    req: HttpRequest,
    gateway: web::Data<Gateway>,
    payload: web::Payload,
    problem: Problem,
) -> Problem {
    let Some(identity) = req
        .conn_data::<ConnectionIdentity>()
        .and_then(|c| c.0.clone())
        .map(|peer| peer.identity)
    else {
        return problem;
    };
    let tasks = match outliving_tasks(&req) {
        Ok(tasks) => tasks,
        Err(unconfigured) => return unconfigured,
    };
    let place = match message_permit(&gateway, UNREGISTERED).await {
        Ok(place) => place,
        Err(busy) => return busy,
    };
    let refuse = async move {
        let _place = place;
        // A body announced over the limit is not waited for: the refusal commits to no bytes.
        let body = match read_body(&req, &gateway, UNREGISTERED, payload).await {
            Ok(Body::Read(body) | Body::Unreadable { read: body, .. }) => body,
            Ok(Body::AnnouncedOverLimit) => Vec::new(),
            Err(busy) => return busy,
        };
        let why = problem.detail.clone();
        let refusal = gateway
            .refuse_unregistered(&identity.fingerprint, &body, why)
            .await;
        if refusal.code() == RATE_LIMITED {
            tracing::debug!(
                outcome = refusal.code(),
                certificate = %identity.fingerprint,
                "message from an unregistered certificate refused"
            );
        } else {
            tracing::info!(
                outcome = refusal.code(),
                certificate = %identity.fingerprint,
                "message from an unregistered certificate refused"
            );
        }
        refusal.into()
    };
    tasks.run(refuse).await.unwrap_or_else(|e| {
        tracing::error!(
            error = crate::error_text::task_failure(&e),
            "refusing a message from an unregistered certificate failed"
        );
        Problem::unavailable("the message could not be processed; send it again")
    })
}

/// The tasks of requests that outlive their client, which the shutdown waits for.
fn outliving_tasks(req: &HttpRequest) -> Result<Arc<OutlivingTasks>, Problem> {
    req.app_data::<web::Data<OutlivingTasks>>()
        .map(|tasks| tasks.clone().into_inner())
        .ok_or_else(|| Problem::unavailable("the gateway is not configured"))
}

fn gateway(req: &HttpRequest) -> Result<&Gateway, Problem> {
    req.app_data::<web::Data<Gateway>>()
        .map(|d| d.get_ref())
        .ok_or_else(|| Problem::unavailable("the gateway is not configured"))
}

fn is_auditor(caller: &Caller) -> bool {
    caller.0.role == "auditor"
}

/// Waits for a place for one more message of `sender`'s (see
/// [`crate::pipeline::Limits::messages_in_flight`]); one that does not come within twice the
/// body time limit is answered `503`.
async fn message_permit(gateway: &Gateway, sender: &str) -> Result<SharePermit, Problem> {
    gateway
        .message_permit(sender)
        .await
        .ok_or_else(|| no_turn(gateway, "messages are being processed"))
}

/// The answer to a request whose turn (for a place, for its body to be read) did not come
/// within [`Gateway::permit_wait`]: `too many <what>`. The gateway counted it (`unavailable`);
/// it is logged here like the pipeline's refusals, inside the message's span.
fn no_turn(gateway: &Gateway, what: &str) -> Problem {
    tracing::info!(
        outcome = "unavailable",
        what,
        "message refused: its turn did not come"
    );
    Problem::unavailable(format!(
        "too many {what}; this one's turn did not come within {} s, send it again",
        gateway.permit_wait().as_secs()
    ))
}

/// A request's body, as [`read_body`] found it.
enum Body {
    /// Read whole, or up to one byte past the size limit.
    Read(Vec<u8>),
    /// The request's `Content-Length` announces a body over the limit: it is neither waited
    /// for nor given a turn, and its refusal commits to no bytes.
    AnnouncedOverLimit,
    /// The body did not arrive in time, or its connection or transfer coding failed: refused
    /// `400` by the pipeline (counted and audited like any message that cannot be read),
    /// committing to what came of it.
    Unreadable {
        /// What came of it.
        read: Vec<u8>,
        /// Why, in the sender's terms.
        why: String,
    },
}

/// Reads the body, up to one byte past the size limit: a larger body is refused by the
/// pipeline (and audited) without being read to its end. Bodies are read a bounded number at
/// a time, each within a time limit (see [`crate::pipeline::Limits`]), so that clients
/// sending slowly cannot make the gateway hold more than that many bodies; one that does not
/// arrive in time is [`Body::Unreadable`]. `sender` (a partner id, or [`UNREGISTERED`]) reads
/// within its share of them; a request that waits for its turn longer than twice the time
/// limit is answered `503`.
async fn read_body(
    req: &HttpRequest,
    gateway: &Gateway,
    sender: &str,
    mut payload: web::Payload,
) -> Result<Body, Problem> {
    let limits = gateway.limits();
    let (limit, seconds) = (limits.max_body_bytes, limits.body_read_secs);
    if declared_over_limit(req, limit) {
        return Ok(Body::AnnouncedOverLimit);
    }
    let _permit = gateway
        .body_permit(sender)
        .await
        .ok_or_else(|| no_turn(gateway, "request bodies are being read"))?;
    let mut body = Vec::with_capacity(declared_length(req).unwrap_or(0).min(limit + 1));
    let read = async {
        while let Some(chunk) = payload.next().await {
            append_within(&mut body, &chunk.map_err(|e| body_error(&e))?, limit);
            if body.len() > limit {
                break;
            }
        }
        Ok(())
    };
    let why = match tokio::time::timeout(Duration::from_secs(seconds.max(1)), read).await {
        Ok(Ok(())) => return Ok(Body::Read(body)),
        Ok(Err(why)) => why,
        Err(_) => format!("the body did not arrive within {seconds} s"),
    };
    Ok(Body::Unreadable { read: body, why })
}

/// What was wrong with a body that could not be read, in the sender's terms.
fn body_error(error: &actix_web::error::PayloadError) -> String {
    use actix_web::error::PayloadError;
    match error {
        PayloadError::Incomplete(_) => {
            "the connection closed before the whole body (its Content-Length, or its last chunk) \
             had come"
                .into()
        }
        // The HTTP library's name for a chunked transfer coding it cannot read.
        PayloadError::EncodingCorrupted => "the body's chunked transfer coding is malformed".into(),
        other => format!("reading the body: {other}"),
    }
}

/// Refuses a path or query string whose percent-escapes are not UTF-8 (`%C9`, a Latin-1 `É`).
/// The HTTP library reads such escapes as U+FFFD: a receipt or a trail would be looked up
/// for a value that was never sent, and found empty.
fn readable_uri(req: &HttpRequest) -> Result<(), Problem> {
    let readable = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .is_ok()
    };
    for (part, text) in [
        ("path", req.uri().path()),
        ("query string", req.query_string()),
    ] {
        if !readable(text) {
            return Err(Problem::bad_request(format!(
                "the {part} is not percent-encoded UTF-8: send each character outside \
                 ASCII as the %XX escapes of its UTF-8 bytes"
            )));
        }
    }
    Ok(())
}

/// Appends to `body` what of `chunk` fits in `limit + 1` bytes (one byte past the limit tells
/// a body over it). The buffer grows as a `Vec` does, by doubling, but never past `limit + 1`
/// bytes: a body over the limit holds no more memory than the limit while its refusal is
/// made durable.
fn append_within(body: &mut Vec<u8>, chunk: &[u8], limit: usize) {
    let most = limit.saturating_add(1);
    let taken = &chunk[..chunk.len().min(most.saturating_sub(body.len()))];
    let needed = body.len() + taken.len();
    if needed > body.capacity() {
        let grown = needed.max(body.capacity().saturating_mul(2)).min(most);
        body.reserve_exact(grown - body.len());
    }
    body.extend_from_slice(taken);
}

/// The body's length as the request's `Content-Length` announces it.
fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|declared| usize::try_from(declared).unwrap_or(usize::MAX))
}

/// Whether the request announces (`Content-Length`) a body longer than `limit` bytes.
fn declared_over_limit(req: &HttpRequest, limit: usize) -> bool {
    declared_length(req).is_some_and(|declared| declared > limit)
}

/// How to read a request's body. A body sent with a content coding (`Content-Encoding: gzip`)
/// is refused: the gateway reads, commits to and audits bodies as sent. `ce-specversion` makes
/// the request a binary-mode CloudEvent, whose `ce-*` header values are percent-decoded, as the
/// CloudEvents HTTP binding (3.1.3.2) asks; `ce-*` headers without it are a mistake to say.
fn content_of(req: &HttpRequest) -> Content {
    let content_type = header(req, "content-type").unwrap_or_default();
    let unreadable = |why: String| Content::Unreadable(Refusal::Malformed(why));
    // A field that holds one value, sent twice, would be read as whichever came first: two
    // media types, or two values of one CloudEvents attribute, are refused rather than chosen
    // between.
    let repeated = req.headers().keys().find(|name| {
        (*name == actix_web::http::header::CONTENT_TYPE || name.as_str().starts_with("ce-"))
            && req.headers().get_all(*name).nth(1).is_some()
    });
    if let Some(name) = repeated {
        return unreadable(format!(
            "the request has more than one {name} header: send it once"
        ));
    }
    // Every Content-Encoding header, each a list of codings.
    let codings = req.headers().get_all("content-encoding").flat_map(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .split(',')
            .map(|coding| coding.trim().to_owned())
            .collect::<Vec<_>>()
    });
    for coding in codings {
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            return Content::Unreadable(Refusal::UnsupportedMediaType(format!(
                "the body is sent with Content-Encoding {coding}, which the gateway does not \
                 decode: send it without a content coding"
            )));
        }
    }
    let ce_headers: Vec<_> = req
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().strip_prefix("ce-")?, value)))
        .collect();
    if !req.headers().contains_key("ce-specversion") {
        if let Some((name, _)) = ce_headers.first() {
            return unreadable(format!(
                "the request has a ce-{name} header but no ce-specversion: a binary-mode \
                 CloudEvent gives its attributes in ce-* headers, ce-specversion among them"
            ));
        }
        return Content::Typed(content_type);
    }
    let mut attributes = Vec::with_capacity(ce_headers.len());
    for (name, value) in ce_headers {
        let decoded = value.to_str().ok().and_then(|text| {
            let text = unquoted(text)?;
            // Every % must begin an escape: the decoder would keep a broken one as it is.
            let escapes_whole = text.match_indices('%').all(|(at, _)| {
                text.as_bytes()
                    .get(at + 1..at + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            });
            if !escapes_whole {
                return None;
            }
            percent_encoding::percent_decode_str(&text)
                .decode_utf8()
                .ok()
                .map(|decoded| decoded.into_owned())
        });
        let Some(decoded) = decoded else {
            return unreadable(format!(
                "the ce-{name} header is not percent-encoded UTF-8 (CloudEvents HTTP binding: \
                 characters outside printable ASCII, and %, are sent as %XX)"
            ));
        };
        attributes.push((name.to_owned(), decoded));
    }
    Content::BinaryCloudEvent {
        attributes,
        content_type,
    }
}

/// A header value with an RFC 9110 quoted-string undone (`"A B"` is `A B`, `\x` is `x`), as
/// the CloudEvents HTTP binding asks before percent-decoding; a value that is not quoted is
/// itself. `None` for a quoted string left open, or with text after its closing quote.
fn unquoted(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return chars.next().is_none().then_some(text),
            c => text.push(c),
        }
    }
    None
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn post_message(
    req: HttpRequest,
    caller: Result<Caller, Problem>,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let gateway = req
        .app_data::<web::Data<Gateway>>()
        .cloned()
        .ok_or_else(|| Problem::unavailable("the gateway is not configured"))?;
    let caller = match caller {
        Ok(caller) => caller,
        Err(problem) => {
            return Err(refuse_unregistered(req, gateway, payload, problem).await);
        }
    };
    let span = tracing::info_span!(
        "message",
        partner = %caller.0.id,
        transport = "rest",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
    );
    async move {
        // The message's place in the gateway, taken before its body is read and held until
        // its processing is over, also when its client goes away (it moves into the task
        // below): the messages waiting for a slow disk are bounded in number, and so is the
        // memory their bodies hold.
        let place = message_permit(&gateway, &caller.0.id).await?;
        let message = {
            let (gateway, req, partner) = (gateway.clone(), req.clone(), caller.0.id.clone());
            async move {
                let _place = place;
                // A body whose declared length is over the limit is refused from its headers,
                // without waiting for it or taking a turn to read it; otherwise at most one byte
                // past the limit is read, whatever the declared length. Either way the pipeline
                // refuses it (`413`) and audits the refusal, like any other, committing to the
                // bytes read (none, in the first case). So it does a body that does not arrive
                // whole (`400`), committing to what came of it.
                let (body, content) = match read_body(&req, &gateway, &partner, payload).await? {
                    Body::Read(body) => (body, content_of(&req)),
                    Body::AnnouncedOverLimit => {
                        let limit = gateway.limits().max_body_bytes;
                        (Vec::new(), Content::Unreadable(Refusal::TooLarge { limit }))
                    }
                    Body::Unreadable { read, why } => {
                        (read, Content::Unreadable(Refusal::Malformed(why)))
                    }
                };
                let outcome = gateway
                    .ingest(Submission {
                        partner: &partner,
                        transport: Transport::Rest,
                        body: &body,
                        content,
                    })
                    .await;
                respond(outcome)
            }
        };
        // The message is read, processed and logged to its end even when the client goes away
        // (the server then drops this handler, not the task): a body cut short is refused and
        // audited, and once its two writes are under way, the message must be confirmed or
        // withdrawn, and hold its turn until then, so that the client's retry waits for it and
        // gets its receipt.
        let tasks = outliving_tasks(&req)?;
        tasks.run(message.in_current_span()).await.map_err(|e| {
            tracing::error!(
                error = crate::error_text::task_failure(&e),
                "the pipeline failed on a message"
            );
            Problem::unavailable("the message could not be processed; send it again")
        })?
    }
    .instrument(span)
    .await
}

/// The answer to a message the pipeline processed, and its log line, in the message's span.
fn respond(outcome: Result<Outcome, Refusal>) -> Result<HttpResponse, Problem> {
    match outcome {
        Ok(Outcome::Accepted(ack)) => Ok(answer(StatusCode::ACCEPTED, &ack)),
        Ok(Outcome::Duplicate(ack)) => Ok(answer(StatusCode::OK, &ack)),
        Ok(Outcome::Ignored { reason }) => {
            tracing::info!(outcome = "ignored", "message ignored");
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "status": "ignored",
                "reason": reason,
            })))
        }
        Err(refusal) => {
            // A sender over its rate limit is refused as fast as it sends: its refusals are
            // counted and audited in summaries, not logged one by one at INFO.
            if refusal.code() == RATE_LIMITED {
                tracing::debug!(outcome = refusal.code(), "message refused");
            } else {
                tracing::info!(
                    outcome = refusal.code(),
                    path = refusal.path(),
                    "message refused"
                );
            }
            Err(refusal.into())
        }
    }
}

fn answer(status: StatusCode, ack: &Ack) -> HttpResponse {
    // The pipeline has recorded the event's id and type on the message's span.
    tracing::info!(
        outcome = ack.status,
        log_index = ack.log_index,
        "message {}",
        ack.status
    );
    HttpResponse::build(status).json(ack)
}

/// The inbox's query, read as text so that a value that is not a number is refused naming its
/// parameter (the query decoder's own error names neither).
#[derive(Debug, Deserialize)]
struct InboxQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// Reads parameter `name` as a whole number, `None` when it is absent.
/// Whether `text` is digits alone (and some).
fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn whole_number<T: std::str::FromStr>(
    value: Option<&str>,
    name: &str,
) -> Result<Option<T>, Problem> {
    value
        .map(|text| {
            text.parse().map_err(|_| {
                // Digits alone that do not parse are a number too large for the parameter.
                Problem::bad_request(if all_digits(text) {
                    format!("{name} is too large: {text}")
                } else {
                    format!("{name} must be a whole number, not {text:?}")
                })
            })
        })
        .transpose()
}

/// One delivery, as the inbox lists it.
#[derive(Debug, Serialize)]
struct InboxMessage {
    id: u64,
    event_id: String,
    event_type: String,
    source: String,
    content_type: String,
    body: String,
    withheld: Vec<String>,
    created_at: String,
}

/// The inbox's turn (one request at a time per inbox). Only a poisoned lock refuses it: that
/// is the gateway's failure, and nothing about a message that could not be made durable.
async fn inbox_turn<'g>(
    gateway: &'g Gateway,
    recipient: &str,
) -> Result<crate::pipeline::Turn<'g>, Problem> {
    gateway
        .inbox_turn(recipient)
        .await
        .map_err(|_| Problem::unavailable("the inbox cannot be read now; try again"))
}

/// One page of an inbox, as it is answered.
#[derive(Debug, Serialize)]
struct InboxPage {
    messages: Vec<InboxMessage>,
    /// Where the next page starts after: the last delivery the page looked at.
    next_after: u64,
}

/// How many of an inbox page's first fetches are audited at once.
const AUDITS_AT_ONCE: usize = 16;

async fn get_inbox(
    req: HttpRequest,
    caller: Caller,
    query: web::Query<InboxQuery>,
) -> Result<HttpResponse, Problem> {
    let gateway = gateway(&req)?;
    let after: u64 = whole_number(query.after.as_deref(), "after")?.unwrap_or(0);
    // Clamped to 1..=500, however large: digits too many for a number are the most too.
    let limit = match whole_number::<usize>(query.limit.as_deref(), "limit") {
        Err(_) if query.limit.as_deref().is_some_and(all_digits) => 500,
        parsed => parsed?.unwrap_or(50).clamp(1, 500),
    };
    // A partner that does not receive by inbox would otherwise poll an inbox that stays empty
    // and never learn why. What waited in its inbox when its delivery mode changed was
    // dead-lettered at the start (`inbox.not-an-inbox-recipient`), for an operator to
    // redeliver by its mode of now.
    let elsewhere = match &caller.0.delivery {
        Some(crate::registry::Delivery::Inbox) => None,
        Some(crate::registry::Delivery::Webhook { .. }) => {
            Some("its messages are posted to its webhook")
        }
        Some(crate::registry::Delivery::Amqp { .. }) => {
            Some("its messages are published to its AMQP queue")
        }
        None => Some("it receives no messages"),
    };
    if let Some(elsewhere) = elsewhere {
        return Err(Problem::new(
            actix_web::http::StatusCode::CONFLICT,
            "conflict",
            "The caller receives no messages by inbox",
            format!(
                "partner {} has no inbox: {elsewhere} (its delivery mode in the registry)",
                caller.0.id
            ),
        ));
    }
    // One request at a time per inbox: a delivery is audited `delivered` once.
    let _turn = inbox_turn(gateway, &caller.0.id).await?;
    // Off the HTTP worker: a page reads up to 8 MiB of bodies, from disk when not cached. A
    // delivery not listed before whose case the audit log cannot record (its key lost) is
    // left out, unsent, without taking a place in the page: its first fetch, the delivery,
    // could not be audited. It is listed once the key file is restored.
    let (store, log, recipient) = (
        gateway.store.clone(),
        gateway.log.clone(),
        caller.0.id.clone(),
    );
    let page = web::block(move || {
        store.inbox_leaving_out(&recipient, after, limit, |d| {
            d.state == DeliveryState::Pending && crate::delivery::case_key_lost(&log, d)
        })
    })
    .await
    .map_err(|e| Problem::unavailable(e.to_string()))?
    .map_err(|e| Problem::unavailable(e.to_string()))?;
    for (delivery, why) in &page.unreadable {
        tracing::error!(
            delivery,
            error = %why,
            "an inbox delivery's record cannot be read back; passed over, the others are listed"
        );
    }
    if let (Some(first), Some(last)) = (page.left_out.first(), page.left_out.last()) {
        tracing::error!(
            left_out = page.left_out.len(),
            first,
            last,
            "inbox deliveries whose case has entries in the audit log but no key in its key \
             file (private/keys/cases.keys, restored from an older copy?): their delivery \
             could not be recorded, so they are left out of the inbox until the file is restored"
        );
    }
    let deliveries = page.deliveries;
    // The first fetch is the delivery: audit it, then record it (so that the evidence is never
    // behind the state: a failure in between audits it again at the next fetch). The page's
    // entries are appended together (up to `AUDITS_AT_ONCE` at a time), and share the log's
    // syncs; so are their records, which share the store's commits.
    let first_fetches: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| d.state == DeliveryState::Pending)
        .collect();
    // At most `AUDITS_AT_ONCE` at a time: each holds a copy of its body, sealed.
    let audited: Vec<_> = futures_util::stream::iter(
        first_fetches
            .iter()
            .map(|d| gateway.audit_delivery(d, Kind::Delivered, None)),
    )
    .buffered(AUDITS_AT_ONCE)
    .collect()
    .await;
    let mut failure = None;
    let to_record: Vec<&Delivery> = first_fetches
        .iter()
        .zip(audited)
        .filter_map(|(d, audited)| match audited {
            Ok(_) => Some(*d),
            Err(refusal) => {
                failure.get_or_insert(refusal);
                None
            }
        })
        .collect();
    let recorded = futures_util::future::join_all(
        to_record
            .iter()
            .map(|d| gateway.store.update(d.id, DeliveryUpdate::Delivered)),
    )
    .await;
    for recorded in recorded {
        let delivered = recorded.map_err(|e| Problem::unavailable(e.to_string()))?;
        crate::delivery::delivery_step(&gateway.metrics, &delivered, "delivered");
    }
    if failure.is_some() {
        // The audit log could not record the delivery (its error is logged where it failed).
        return Err(Problem::unavailable(
            "the inbox could not be read: the audit log cannot record deliveries now; try again",
        ));
    }
    let messages: Vec<InboxMessage> = deliveries
        .into_iter()
        .map(|d| InboxMessage {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            source: d.source,
            content_type: d.content_type,
            body: String::from_utf8_lossy(&d.body).into_owned(),
            withheld: d.withheld,
            created_at: d.created_at,
        })
        .collect();
    let next_after = page.last_seen.unwrap_or(after);
    Ok(HttpResponse::Ok().json(InboxPage {
        messages,
        next_after,
    }))
}

async fn ack(
    req: HttpRequest,
    caller: Caller,
    id: web::Path<u64>,
) -> Result<HttpResponse, Problem> {
    let gateway = gateway(&req)?;
    let id = id.into_inner();
    let not_yours = || Problem::not_found(format!("no delivery {id} in your inbox"));
    // Read and changed in the inbox's turn: a delivery is audited `acknowledged` once.
    let _turn = inbox_turn(gateway, &caller.0.id).await?;
    let delivery = gateway
        .store
        .delivery_metadata(id)
        .map_err(|e| Problem::unavailable(e.to_string()))?
        .filter(|d| d.recipient == caller.0.id && d.channel == Channel::Inbox)
        .ok_or_else(not_yours)?;
    let waiting = gateway
        .store
        .in_inbox(&caller.0.id, id)
        .map_err(|e| Problem::unavailable(e.to_string()))?;
    if !waiting && delivery.state != DeliveryState::Acknowledged {
        return Err(not_yours());
    }
    match delivery.state {
        DeliveryState::Acknowledged => {}
        DeliveryState::Dead | DeliveryState::Discarded => {
            return Err(Problem::not_found(format!(
                "delivery {id} is not in your inbox"
            )));
        }
        // Never listed: the caller cannot have processed it. An id taken for another (ids are
        // an instance's own, and the same id names another message at another instance) must
        // not make a message nobody read leave the inbox, acknowledged.
        DeliveryState::Pending => {
            return Err(Problem::new(
                actix_web::http::StatusCode::CONFLICT,
                "conflict",
                "The delivery was never listed",
                format!(
                    "delivery {id} has not been listed to you yet: read your inbox (GET \
                     /v1/inbox) and acknowledge what it lists, once processed"
                ),
            ));
        }
        DeliveryState::Delivered => {
            record_acknowledgement(gateway, &delivery).await?;
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"id": id, "state": "acknowledged"})))
}

/// Records the acknowledgement of an inbox delivery: audited first, as every delivery step,
/// then changed in the store, and counted.
async fn record_acknowledgement(gateway: &Gateway, delivery: &Delivery) -> Result<(), Problem> {
    gateway
        .audit_delivery(delivery, Kind::Acknowledged, None)
        .await
        .map_err(|_| {
            Problem::unavailable(
                "the acknowledgement was not recorded: the audit log cannot record it now; try \
                 again",
            )
        })?;
    let acknowledged = gateway
        .store
        .update(delivery.id, DeliveryUpdate::Acknowledged)
        .await
        .map_err(|e| Problem::unavailable(e.to_string()))?;
    crate::delivery::delivery_step(&gateway.metrics, &acknowledged, "acknowledged");
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ReceiptQuery {
    source: Option<String>,
}

async fn get_receipt(
    req: HttpRequest,
    caller: Caller,
    event_id: web::Path<String>,
    query: web::Query<ReceiptQuery>,
) -> Result<HttpResponse, Problem> {
    readable_uri(&req)?;
    let gateway = gateway(&req)?;
    let own = partner_source(&caller.0.id);
    let source = match &query.source {
        Some(s) if *s != own && !is_auditor(&caller) => {
            return Err(Problem::forbidden("a partner reads its own receipts only"));
        }
        Some(s) => s.clone(),
        None => own,
    };
    // The store's record and the log's tiles are read from files, off the HTTP worker.
    let (store, log) = (gateway.store.clone(), gateway.log.clone());
    let (looked_up, id) = (source.clone(), event_id.to_string());
    let (record, proof) = web::block(move || {
        let record = store.accepted(&looked_up, &id).map_err(|e| e.to_string())?;
        let proof = match &record {
            Some(record) if record.confirmed => {
                log.inclusion(record.log_index).map_err(|e| e.to_string())?
            }
            _ => None,
        };
        Ok::<_, String>((record, proof))
    })
    .await
    .map_err(|e| Problem::unavailable(e.to_string()))?
    .map_err(Problem::unavailable)?;
    let record = record.ok_or_else(|| {
        // An id no sender can have used is not echoed.
        let named = if !crate::audit::leaf::limits::fits_identifier(&event_id) {
            format!("of that id ({} bytes long)", event_id.len())
        } else {
            event_id.to_string()
        };
        Problem::not_found(format!("no accepted event {named} from {source}"))
    })?;
    if !record.confirmed {
        // Only after a failure between its two writes; it is settled by the next attempt of
        // the same message, or at the next start.
        return Err(Problem::unavailable(format!(
            "the acceptance of event {event_id} is not settled yet"
        )));
    }
    let mut response = HttpResponse::Ok();
    if proof.is_none() {
        response.insert_header(("Retry-After", "1"));
    }
    Ok(response.json(serde_json::json!({
        "event_id": record.event_id,
        "source": record.source,
        "event_type": record.event_type,
        "log_index": record.log_index,
        "leaf_hash": record.leaf_hash,
        "receipt": record.receipt,
        "proof": proof.map(|p| p.to_text()),
    })))
}

/// Serves `checkpoint` and `tile/…` from the log's public folder. The checkpoint and the hash
/// tiles, which every partner needs to check its receipts' proofs and that the log only grows,
/// are served to any partner; the entry bundles (`tile/entries/…`) only to auditors. An entry
/// names its event, sender, recipients and event type, and every entry of a case carries the
/// same case commitment: a partner reading them could follow, from an event id it knows, every
/// step of a case, other partners' messages among them.
async fn get_log_file(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let gateway = gateway(&req)?;
    let path = path.into_inner();
    let safe = !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if !safe || !(path == "checkpoint" || path.starts_with("tile/")) {
        return Err(Problem::not_found("no such log resource"));
    }
    // What a partner may read is named, rather than what it may not: the checkpoint and the
    // hash tiles, `tile/<level>/…`.
    let for_partners = path == "checkpoint"
        || path.strip_prefix("tile/").is_some_and(|rest| {
            rest.split('/')
                .next()
                .is_some_and(|level| !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit()))
        });
    if !for_partners && !is_auditor(&caller) {
        return Err(Problem::forbidden(
            "the log's entry bundles are for auditors; a partner reads the checkpoint and the \
             hash tiles, and its own receipts",
        ));
    }
    let file = gateway.log.layout().public.join(&path);
    let bytes = web::block(move || std::fs::read(file))
        .await
        .map_err(|e| Problem::unavailable(e.to_string()))?
        .map_err(|_| Problem::not_found("no such log resource"))?;
    let mut response = HttpResponse::Ok();
    if path == "checkpoint" {
        response.insert_header((CONTENT_TYPE, "text/plain; charset=utf-8"));
        response.insert_header((CACHE_CONTROL, "no-cache"));
    } else {
        response.insert_header((CONTENT_TYPE, "application/octet-stream"));
        if !path.contains(".p/") {
            // Full tiles never change. The entry bundles are the auditors': no shared cache
            // may keep one to serve it to others.
            let scope = if for_partners { "public" } else { "private" };
            response.insert_header((
                CACHE_CONTROL,
                format!("{scope}, max-age=31536000, immutable"),
            ));
        }
    }
    Ok(response.body(bytes))
}

/// The most entries one trail answer (a page, or a bundle) holds: each is read, proved and
/// written out (a few KiB apiece, in several copies) before the answer goes. A real case has
/// tens; a longer trail (a sender's refusals) is read page by page. A bundle holds a whole
/// trail, and a search by anything but the case reads every message it names to find the
/// rest of their entries: those that match more are refused, and read offline from a copy of
/// the log.
const MOST_TRAIL_ENTRIES: usize = 2000;

/// Trail reads (pages or bundles) under way at once: each reads and proves up to
/// [`MOST_TRAIL_ENTRIES`] entries on a blocking thread, which goes on to its end when its
/// client goes away.
pub(super) const TRAIL_READS_AT_ONCE: usize = 2;

/// How long a trail read waits for its turn before it is answered `503`.
pub(super) const TRAIL_READ_WAIT: Duration = Duration::from_secs(30);

/// The turns of trail reads: at most a few at once, so that auditors asking many trails
/// together (or leaving before their answers) cannot fill the blocking threads and the
/// memory with them.
pub(super) struct TrailReads {
    turns: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl TrailReads {
    /// `at_once` reads at a time, each waiting at most `wait` for its turn.
    pub(super) fn new(at_once: usize, wait: Duration) -> Self {
        TrailReads {
            turns: Arc::new(tokio::sync::Semaphore::new(at_once)),
            wait,
        }
    }

    /// A turn to read a trail, held until every clone of it is dropped (handed to each
    /// blocking task of the read, so that a read whose client left still holds it); `503`
    /// when none comes in time.
    async fn turn(&self) -> Result<Arc<tokio::sync::OwnedSemaphorePermit>, Problem> {
        match tokio::time::timeout(self.wait, self.turns.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Arc::new(permit)),
            _ => {
                let mut problem =
                    Problem::unavailable("other trails are being read: ask again in a few seconds");
                problem.retry_after = Some(5);
                Err(problem)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct TrailQuery {
    case: Option<String>,
    lpc: Option<String>,
    pnr: Option<String>,
    pv: Option<String>,
    iom_case: Option<String>,
    #[serde(default)]
    format: Option<String>,
    /// The page's entries are those past this log index (read by [`whole_number`], which
    /// names the parameter when it is not one).
    after: Option<String>,
    /// The most entries of the page (1 to [`MOST_TRAIL_ENTRIES`]).
    limit: Option<String>,
}

async fn get_trail(
    req: HttpRequest,
    caller: Caller,
    query: web::Query<TrailQuery>,
) -> Result<HttpResponse, Problem> {
    if !is_auditor(&caller) {
        return Err(Problem::forbidden("only auditors read trails"));
    }
    readable_uri(&req)?;
    let gateway = gateway(&req)?;
    let given = [
        query.case.clone().map(Query::Case),
        query.lpc.clone().map(Query::Lpc),
        query.pnr.clone().map(Query::Pnr),
        query.pv.clone().map(Query::Pv),
        query.iom_case.clone().map(Query::IomCase),
    ];
    for (name, value) in [
        ("case", &query.case),
        ("lpc", &query.lpc),
        ("pnr", &query.pnr),
        ("pv", &query.pv),
        ("iom_case", &query.iom_case),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(Problem::bad_request(format!(
                "{name} is empty: give the value to search for"
            )));
        }
    }
    let mut given = given.into_iter().flatten();
    let (Some(q), None) = (given.next(), given.next()) else {
        return Err(Problem::bad_request(
            "give exactly one of case, lpc, pnr, pv or iom_case",
        ));
    };
    let after: Option<u64> = whole_number(query.after.as_deref(), "after")?;
    let limit: Option<usize> = whole_number(query.limit.as_deref(), "limit")?;
    let bundle = match query.format.as_deref() {
        None => false,
        Some("bundle") => true,
        Some(_) => {
            return Err(Problem::bad_request(
                "format takes one value, bundle (for an evidence bundle): leave it out for the \
                 trail",
            ));
        }
    };
    if bundle && (after.is_some() || limit.is_some()) {
        return Err(Problem::bad_request(
            "a bundle holds a whole trail: ask for it without after or limit",
        ));
    }
    let limit = limit.unwrap_or(MOST_TRAIL_ENTRIES);
    if !(1..=MOST_TRAIL_ENTRIES).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be from 1 to {MOST_TRAIL_ENTRIES}; it is {limit}"
        )));
    }
    // Only a trail read in pages may be longer than one answer.
    let whole_trail_at_once = bundle || q.widens();
    let turn = req
        .app_data::<web::Data<TrailReads>>()
        .ok_or_else(|| Problem::unavailable("the gateway is not configured"))?
        .turn()
        .await?;
    let log = gateway.log.clone();
    // One checkpoint for the whole answer, taken before the search: `log.search` would take
    // the latest again, and a checkpoint signed in between would give proofs against another
    // checkpoint than the bundle's (which then fails to verify), entries both found and
    // pending, or a bundle whose checkpoint covers an entry of the case that the search, made
    // before it, did not find.
    let (signed, checkpoint) = log.latest_checkpoint();
    let too_many = |matched: usize| {
        Problem::bad_request(format!(
            "this search matches {matched} entries, more than the {MOST_TRAIL_ENTRIES} {}: read \
             it from a copy of the log with `passerelle audit trail`",
            if bundle {
                "one bundle holds"
            } else {
                "a search by anything but the case may match"
            }
        ))
    };
    // Refused before the messages it names are read, when it matches too many already.
    let named = log.lookup_count(&q);
    if whole_trail_at_once && named > MOST_TRAIL_ENTRIES {
        return Err(too_many(named));
    }
    let matched = if whole_trail_at_once {
        let log = log.clone();
        let size = checkpoint.size;
        let turn = turn.clone();
        web::block(move || {
            let _turn = turn;
            log.trail_indices(&q, size)
        })
        .await
        .map_err(|e| Problem::unavailable(e.to_string()))?
        .map_err(|e| Problem::unavailable(e.to_string()))?
    } else {
        // A case's trail is its indexed entries: only the page's are copied (and one more, to
        // tell whether another page follows), however long the trail.
        log.lookup_page(&q, after, limit + 1)
    };
    if whole_trail_at_once && matched.len() > MOST_TRAIL_ENTRIES {
        return Err(too_many(matched.len()));
    }
    // The trail's indices are in the log's order.
    let (matched, next_after) = trail_page(matched, after, limit);
    let trail = web::block(move || -> Result<Trail, crate::audit::AuditError> {
        let _turn = turn;
        let (covered, pending): (Vec<u64>, Vec<u64>) =
            matched.into_iter().partition(|&i| i < checkpoint.size);
        let found =
            crate::audit::log::evidence(&log.layout().public, &signed, checkpoint.size, &covered)?;
        Ok(Trail {
            checkpoint,
            signed,
            verifier: log.verifier().clone(),
            found,
            pending,
            // The running log restored its public checkpoint when it opened.
            public_behind: None,
            private_ahead: None,
            // The running log's index is its own, built from the journal it wrote: the
            // offline trail is where an auditor ties a case's entries to its id.
            case_binding: None,
        })
    })
    .await
    .map_err(|e| Problem::unavailable(e.to_string()))?
    .map_err(|e| Problem::unavailable(e.to_string()))?;
    if bundle {
        let bundle = trail
            .to_bundle()
            .map_err(|e| Problem::unavailable(e.to_string()))?;
        return Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, "application/json"))
            .insert_header((
                "Content-Disposition",
                "attachment; filename=\"bundle.json\"",
            ))
            .body(bundle));
    }
    let entries: Vec<serde_json::Value> = trail
        .found
        .iter()
        .map(|f| {
            serde_json::json!({
                "index": f.index,
                "leaf": f.leaf,
                "proof": f.proof.to_text(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "checkpoint": trail.signed,
        "verifier_key": trail.verifier.to_verifier_key(),
        "entries": entries,
        "pending": trail.pending,
        "next_after": next_after,
    })))
}

/// The page of a trail (its log indices, in order) past `after`, at most `limit` long, and the
/// `after` of the next page when more of the trail follows.
fn trail_page(indices: Vec<u64>, after: Option<u64>, limit: usize) -> (Vec<u64>, Option<u64>) {
    let start = after.map_or(0, |after| indices.partition_point(|&i| i <= after));
    let mut page: Vec<u64> = indices[start..].iter().copied().take(limit + 1).collect();
    let next_after = if page.len() > limit {
        page.truncate(limit);
        page.last().copied()
    } else {
        None
    };
    (page, next_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trail_reads_take_turns_held_until_their_last_task_ends() {
        let reads = TrailReads::new(2, Duration::from_millis(50));
        let first = reads.turn().await.unwrap();
        let second = reads.turn().await.unwrap();
        let refused = reads.turn().await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after, Some(5));
        // A turn handed to a blocking task is held until the task ends, though its request
        // is gone.
        let handed = first.clone();
        drop(first);
        assert!(reads.turn().await.is_err());
        drop(handed);
        let third = reads.turn().await.unwrap();
        drop((second, third));
    }

    #[test]
    fn a_path_or_query_string_that_is_not_utf8_is_refused() {
        let request = |uri: &str| actix_web::test::TestRequest::with_uri(uri).to_http_request();
        assert!(readable_uri(&request("/v1/audit/trails?pv=DGSN%2FSE%2F7741%C3%89")).is_ok());
        assert!(readable_uri(&request("/v1/receipts/MI-1?source=urn%3Apartner%3Ax")).is_ok());
        for unreadable in [
            "/v1/audit/trails?pv=DGSN%2FSE%2F7741%C9",
            "/v1/audit/trails?case=%FF",
            "/v1/receipts/%FE%FF",
        ] {
            let problem = readable_uri(&request(unreadable)).unwrap_err();
            assert_eq!(problem.status, 400, "{unreadable}");
        }
    }

    #[test]
    fn a_body_over_the_limit_holds_no_more_than_the_limit_and_a_byte() {
        let limit = 1000;
        let mut body = Vec::new();
        for _ in 0..7 {
            append_within(&mut body, &[b'x'; 300], limit);
        }
        assert_eq!(body.len(), limit + 1);
        assert_eq!(body.capacity(), limit + 1);
        // Within the limit, it grows by doubling (a few copies a body, not one a chunk).
        let mut small = Vec::new();
        let mut grown = 0;
        for _ in 0..100 {
            let before = small.capacity();
            append_within(&mut small, &[b'x'; 8], limit);
            grown += usize::from(small.capacity() != before);
        }
        assert_eq!(small.len(), 800);
        assert!(grown <= 8, "{grown} reallocations");
    }
}
