//! RFC 9457 problem details: every error the REST API answers.

use crate::pipeline::Refusal;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document, and the answer that carries it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request. Never quotes personal data.
    pub detail: String,
    /// Where, in the message or the event, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds to wait before trying again (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of the given status; `code` names it under `urn:passerelle:problem:`.
    pub fn new(
        status: StatusCode,
        code: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: format!("urn:passerelle:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            path: None,
            retry_after: None,
        }
    }

    /// 403: the certificate or the role does not allow this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "Malformed request",
            detail,
        )
    }

    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        p.retry_after = Some(1);
        p
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.detail)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((CONTENT_TYPE, PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.body(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A `422`: the message does not map to a valid event, at `path` when known.
fn unprocessable(detail: String, path: Option<String>) -> Problem {
    let mut p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable",
        "The message does not map to a valid event",
        detail,
    );
    p.path = path;
    p
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Self {
        let detail = refusal.to_string();
        match refusal {
            Refusal::Malformed(_) => Problem::bad_request(detail),
            Refusal::Forbidden(_) => Problem::forbidden(detail),
            Refusal::TooLarge { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Message too large",
                detail,
            ),
            Refusal::UnsupportedMediaType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                detail,
            ),
            Refusal::Unprocessable { .. } | Refusal::CaseErased => {
                unprocessable(detail, refusal.path().map(str::to_owned))
            }
            Refusal::RateLimited { retry_after, .. } => {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many messages",
                    detail,
                );
                p.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
                p
            }
            Refusal::Conflict(_) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The reference names another message",
                detail,
            ),
            Refusal::Unavailable(_) => Problem::unavailable(
                "the message could not be made durable; it was not accepted, send it again",
            ),
        }
    }
}
