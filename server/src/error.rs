//! HTTP errors: the one place where failures become status codes and RFC 9457 problem
//! documents.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::api::Problem;
use common::PROBLEM_JSON;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A failure of the domain core.
    #[error(transparent)]
    Domain(#[from] storage::Error),
    /// A header or body that could not be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// No route, or an id that cannot be an upload id.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// The request's media type is not the one the route takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A precondition header (e.g. `Tus-Resumable`) names something this server lacks.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The server is shutting down or its storage is failing.
    #[error("{0}")]
    Unavailable(String),
    /// Authenticated, but not allowed (e.g. an admin route by a non-admin owner).
    #[error("{0}")]
    Forbidden(String),
    /// The client sent more requests than its rate allows; it may retry after the wait.
    #[error("too many requests; retry in {}s", retry_secs(.0))]
    RateLimited(std::time::Duration),
}

/// A wait as whole `Retry-After` seconds, never zero.
fn retry_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl ApiError {
    /// Status code, stable problem type slug and title.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use storage::Error as E;
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::Domain(e) => match e {
                E::NotFound => (StatusCode::NOT_FOUND, "not-found", "Upload not found"),
                E::Gone(_) => (StatusCode::GONE, "upload-gone", "Upload gone"),
                E::Invalid(_) => (
                    StatusCode::BAD_REQUEST,
                    "invalid-request",
                    "Invalid request",
                ),
                E::LengthMismatch { .. } => (
                    StatusCode::BAD_REQUEST,
                    "inconsistent-upload-length",
                    "Inconsistent upload length",
                ),
                E::TooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "upload-too-large",
                    "Upload too large",
                ),
                E::ChunkDigestMismatch { .. } => (
                    StatusCode::BAD_REQUEST,
                    "chunk-digest-mismatch",
                    "Chunk digest mismatch",
                ),
                E::ChunkConflict { .. } => (
                    StatusCode::CONFLICT,
                    "chunk-conflict",
                    "Chunk already stored with other bytes",
                ),
                // Handled by the service (the request becomes a retry); answered as
                // "stored by another request" should it ever get here.
                E::StoredMeanwhile { .. } => (
                    StatusCode::CONFLICT,
                    "chunk-stored",
                    "Chunk stored by another request",
                ),
                E::BodyTooShort { .. } | E::BodyTooLong { .. } => (
                    StatusCode::BAD_REQUEST,
                    "wrong-chunk-length",
                    "Wrong chunk length",
                ),
                E::BodyTimeout(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request body stalled",
                ),
                E::BodyRead(_) => (
                    StatusCode::BAD_REQUEST,
                    "body-incomplete",
                    "Request body incomplete",
                ),
                E::WrongState(_) => (
                    StatusCode::CONFLICT,
                    "wrong-state",
                    "Not allowed in the upload's state",
                ),
                E::MissingChunks(_) => {
                    (StatusCode::CONFLICT, "missing-chunks", "Chunks are missing")
                }
                E::Sha256Mismatch { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "sha256-mismatch",
                    "File SHA-256 mismatch",
                ),
                E::OffsetMismatch { .. } => (
                    StatusCode::CONFLICT,
                    "mismatching-upload-offset",
                    "Mismatching upload offset",
                ),
                E::Locked => (StatusCode::LOCKED, "upload-locked", "Upload locked"),
                E::Unavailable { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "Storage unavailable",
                ),
                E::Conflict => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "concurrent-change",
                    "Changed concurrently; retry",
                ),
                E::Superseded => (
                    StatusCode::CONFLICT,
                    "superseded",
                    "Superseded by a newer request",
                ),
                E::WrongMode(_) => (
                    StatusCode::CONFLICT,
                    "wrong-protocol",
                    "Upload takes another kind of write",
                ),
                E::BodyChecksumMismatch { .. } => (
                    // tus's checksum extension: 460 Checksum Mismatch.
                    StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                    "checksum-mismatch",
                    "Checksum mismatch",
                ),
                E::IdempotencyConflict => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Idempotency key reused",
                ),
                E::StorageFull => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage-full",
                    "Storage full",
                ),
                E::QuotaExceeded { .. } => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "quota-exceeded",
                    "Storage quota exceeded",
                ),
                E::TooManyOpenUploads { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-open-uploads",
                    "Too many open uploads",
                ),
                E::Corrupt(_) | E::Io(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                ),
            },
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.classify();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause is logged; clients get no internals. Other 5xx (503, 507) say
            // what the client can do about them.
            "the server failed to handle this request; it was logged".to_string()
        } else {
            self.to_string()
        };
        let mut p = Problem {
            kind: format!("/problems/{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            missing: None,
            expected_sha256: None,
            actual_sha256: None,
        };
        match self {
            ApiError::Domain(storage::Error::MissingChunks(m)) => p.missing = Some(m.clone()),
            ApiError::Domain(storage::Error::Sha256Mismatch { expected, actual }) => {
                p.expected_sha256 = Some(*expected);
                p.actual_sha256 = Some(*actual);
            }
            ApiError::Domain(storage::Error::ChunkDigestMismatch { declared, actual }) => {
                p.expected_sha256 = Some(*declared);
                p.actual_sha256 = Some(*actual);
            }
            _ => {}
        }
        p
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(error = %self, "request refused");
        }
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        let retry = match &self {
            ApiError::Domain(storage::Error::Unavailable { retry_after }) => Some(retry_after),
            ApiError::RateLimited(wait) => Some(wait),
            _ => None,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE
            || matches!(self, ApiError::Domain(storage::Error::StorageFull))
            || retry.is_some()
        {
            let secs = retry.map_or(1, retry_secs);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
