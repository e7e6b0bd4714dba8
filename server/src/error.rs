//! HTTP errors: the one place where failures become status codes, RFC 9457 problem
//! documents and the headers that go with them, rendered as each protocol says.
//!
//! One table ([`ApiError::classify`]) gives every failure its status, problem type and
//! title; where a protocol defines its own (tus's `460 Checksum Mismatch`, the IETF
//! draft's registered problem types and `Upload-*` headers), the table says so in the same
//! row. The native API and tus answer `/problems/{slug}` types; tus answers also carry
//! `Tus-Resumable` (added for every tus path by [`crate::routes::tus::headers`]).

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::api::Problem;
use common::PROBLEM_JSON;

/// Which protocol an answer speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The native JSON API (and every route that is not tus or IETF).
    #[default]
    Native,
    /// tus 1.0.
    Tus,
    /// The IETF resumable-upload draft, at this interop version.
    Ietf(u64),
}

/// Prefix of the problem types registered with IANA (the IETF draft's).
const REGISTERED: &str = "https://iana.org/assignments/http-problem-types#";

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
    /// The request names a `Host` this server does not answer for (anonymous mode: a name
    /// that may have been pointed at it, as DNS rebinding does).
    #[error("{0}")]
    MisdirectedHost(String),
    /// A browser sent a state-changing request from another site's page (anonymous mode).
    #[error("{0}")]
    CrossOrigin(String),
    /// The client sent more requests than its rate allows; it may retry after the wait.
    #[error("too many requests; retry in {}s", retry_secs(.0))]
    RateLimited(std::time::Duration),
}

/// A wait as whole `Retry-After` seconds, never zero.
fn retry_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// A problem's type: one of ours, or one the IETF draft registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ours(&'static str),
    Registered(&'static str),
}

impl ApiError {
    /// The table: status code, problem type and title of every failure, in `protocol`.
    fn classify(&self, protocol: Protocol) -> (StatusCode, Kind, &'static str) {
        use storage::Error as E;
        use Kind::{Ours, Registered};
        let ietf = match protocol {
            Protocol::Ietf(v) => Some(v),
            _ => None,
        };
        let (status, kind, title) = match self {
            ApiError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, Ours("bad-request"), "Bad request")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, Ours("not-found"), "Not found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, Ours("forbidden"), "Forbidden"),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                Ours("unauthorized"),
                "Authentication required",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Ours("unsupported-media-type"),
                "Unsupported media type",
            ),
            ApiError::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                Ours("precondition-failed"),
                "Precondition failed",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                Ours("method-not-allowed"),
                "Method not allowed",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Ours("unavailable"),
                "Service unavailable",
            ),
            ApiError::MisdirectedHost(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                Ours("misdirected-request"),
                "Host not served here",
            ),
            ApiError::CrossOrigin(_) => (
                StatusCode::FORBIDDEN,
                Ours("cross-origin-request"),
                "Cross-origin request refused",
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                Ours("rate-limited"),
                "Too many requests",
            ),
            ApiError::Domain(e) => match e {
                E::NotFound => (StatusCode::NOT_FOUND, Ours("not-found"), "Upload not found"),
                E::Gone(_) => (StatusCode::GONE, Ours("upload-gone"), "Upload gone"),
                E::Invalid(_) => (
                    StatusCode::BAD_REQUEST,
                    Ours("invalid-request"),
                    "Invalid request",
                ),
                E::InconsistentLength(_) | E::EndedEarly { .. } => (
                    StatusCode::BAD_REQUEST,
                    match ietf {
                        Some(_) => Registered("inconsistent-upload-length"),
                        None => Ours("inconsistent-upload-length"),
                    },
                    "Inconsistent upload length values",
                ),
                // From interop version 7 on, bytes for a complete upload are an
                // inconsistent length; an empty append (and any before 7) is
                // `completed-upload`.
                E::UploadComplete { body } => match ietf {
                    Some(v) if *body && v >= 7 => (
                        StatusCode::BAD_REQUEST,
                        Registered("inconsistent-upload-length"),
                        "Inconsistent upload length values",
                    ),
                    Some(_) => (
                        StatusCode::BAD_REQUEST,
                        Registered("completed-upload"),
                        "Upload is completed",
                    ),
                    None => (
                        StatusCode::CONFLICT,
                        Ours("upload-complete"),
                        "Upload is complete",
                    ),
                },
                E::OffsetMismatch { .. } => (
                    StatusCode::CONFLICT,
                    match ietf {
                        Some(_) => Registered("mismatching-upload-offset"),
                        None => Ours("mismatching-upload-offset"),
                    },
                    "Mismatching upload offset",
                ),
                // tus: "MUST respond with 403 Forbidden to PATCH requests against a final
                // upload".
                E::FinalUpload => (
                    StatusCode::FORBIDDEN,
                    Ours("final-upload"),
                    "Final upload takes no appends",
                ),
                E::TooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Ours("upload-too-large"),
                    "Upload too large",
                ),
                E::BodyTooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Ours("body-too-large"),
                    "Body too large for one request",
                ),
                E::LengthRequired(_) => (
                    StatusCode::LENGTH_REQUIRED,
                    Ours("length-required"),
                    "Length required",
                ),
                E::ChunkDigestMismatch { .. } => (
                    StatusCode::BAD_REQUEST,
                    Ours("chunk-digest-mismatch"),
                    "Chunk digest mismatch",
                ),
                E::ChunkConflict { .. } => (
                    StatusCode::CONFLICT,
                    Ours("chunk-conflict"),
                    "Chunk already stored with other bytes",
                ),
                // Handled by the service (the request becomes a retry); answered as
                // "stored by another request" should it ever get here.
                E::StoredMeanwhile { .. } => (
                    StatusCode::CONFLICT,
                    Ours("chunk-stored"),
                    "Chunk stored by another request",
                ),
                E::BodyTooShort { .. } | E::BodyTooLong { .. } => (
                    StatusCode::BAD_REQUEST,
                    Ours("wrong-chunk-length"),
                    "Wrong chunk length",
                ),
                E::BodyTimeout(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    Ours("body-timeout"),
                    "Request body stalled",
                ),
                E::BodyRead(_) => (
                    StatusCode::BAD_REQUEST,
                    Ours("body-incomplete"),
                    "Request body incomplete",
                ),
                E::WrongState(_) => (
                    StatusCode::CONFLICT,
                    Ours("wrong-state"),
                    "Not allowed in the upload's state",
                ),
                E::MissingChunks(_) => (
                    StatusCode::CONFLICT,
                    Ours("missing-chunks"),
                    "Chunks are missing",
                ),
                E::AssemblyFailed(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Ours("assembly-failed"),
                    "The stored bytes cannot become the file",
                ),
                E::Sha256Mismatch { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Ours("sha256-mismatch"),
                    "File SHA-256 mismatch",
                ),
                E::ChunksDiffer(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Ours("chunk-mismatch"),
                    "Stored chunks differ from the ones sent",
                ),
                E::Locked => (StatusCode::LOCKED, Ours("upload-locked"), "Upload locked"),
                E::Unavailable { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Ours("storage-unavailable"),
                    "Storage unavailable",
                ),
                E::Conflict => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Ours("concurrent-change"),
                    "Changed concurrently; retry",
                ),
                E::Superseded => (
                    StatusCode::CONFLICT,
                    Ours("superseded"),
                    "Superseded by a newer request",
                ),
                E::WrongMode(_) => (
                    StatusCode::CONFLICT,
                    Ours("wrong-protocol"),
                    "Upload takes another kind of write",
                ),
                // tus's checksum extension answers 460 Checksum Mismatch; elsewhere (the
                // IETF draft's Content-Digest) it is a bad request.
                E::BodyChecksumMismatch { .. } => (
                    match protocol {
                        Protocol::Tus => {
                            StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
                        }
                        _ => StatusCode::BAD_REQUEST,
                    },
                    Ours("checksum-mismatch"),
                    "Checksum mismatch",
                ),
                E::IdempotencyConflict => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Ours("idempotency-key-reused"),
                    "Idempotency key reused",
                ),
                E::StorageFull => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    Ours("storage-full"),
                    "Storage full",
                ),
                E::QuotaExceeded { .. } => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    Ours("quota-exceeded"),
                    "Storage quota exceeded",
                ),
                E::TooManyOpenUploads { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Ours("too-many-open-uploads"),
                    "Too many open uploads",
                ),
                E::Corrupt(_) | E::Io(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Ours("internal"),
                    "Internal error",
                ),
            },
        };
        (status, kind, title)
    }

    /// The problem document for this error, in `protocol`.
    pub fn problem(&self, protocol: Protocol) -> Problem {
        let (status, kind, title) = self.classify(protocol);
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause is logged; clients get no internals. Other 5xx (503, 507) say
            // what the client can do about them.
            "the server failed to handle this request; it was logged".to_string()
        } else {
            self.to_string()
        };
        let mut p = Problem {
            kind: match kind {
                Kind::Ours(slug) => format!("/problems/{slug}"),
                Kind::Registered(slug) => format!("{REGISTERED}{slug}"),
            },
            title: title.into(),
            status: status.as_u16(),
            detail,
            missing: None,
            mismatched: None,
            expected_sha256: None,
            actual_sha256: None,
            expected_offset: None,
            provided_offset: None,
        };
        match self {
            ApiError::Domain(storage::Error::MissingChunks(m)) => p.missing = Some(m.clone()),
            ApiError::Domain(storage::Error::ChunksDiffer(m)) => p.mismatched = Some(m.clone()),
            ApiError::Domain(storage::Error::Sha256Mismatch { expected, actual }) => {
                p.expected_sha256 = Some(*expected);
                p.actual_sha256 = Some(*actual);
            }
            ApiError::Domain(storage::Error::ChunkDigestMismatch { declared, actual }) => {
                p.expected_sha256 = Some(*declared);
                p.actual_sha256 = Some(*actual);
            }
            ApiError::Domain(storage::Error::OffsetMismatch { expected, got }) => {
                p.expected_offset = Some(*expected);
                p.provided_offset = Some(*got);
            }
            _ => {}
        }
        p
    }

    /// Headers a failure carries besides its problem document, in `protocol`.
    fn headers(&self, protocol: Protocol, status: StatusCode) -> HeaderMap {
        use storage::Error as E;
        let mut hs = HeaderMap::new();
        let retry = match self {
            ApiError::Domain(E::Unavailable { retry_after }) => Some(retry_after),
            ApiError::RateLimited(wait) => Some(wait),
            _ => None,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE
            || matches!(self, ApiError::Domain(E::StorageFull))
            || retry.is_some()
        {
            hs.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry.map_or(1, retry_secs)),
            );
        }
        if protocol == Protocol::Tus {
            hs.insert(
                HeaderName::from_static("tus-version"),
                HeaderValue::from_static(crate::routes::tus::VERSION),
            );
        }
        let ApiError::Domain(e) = self else {
            return hs;
        };
        match protocol {
            Protocol::Ietf(_) => {
                let name = |n| HeaderName::from_static(n);
                match e {
                    E::OffsetMismatch { expected, .. } => {
                        hs.insert(name("upload-offset"), HeaderValue::from(*expected));
                    }
                    E::EndedEarly { offset, .. } => {
                        hs.insert(name("upload-offset"), HeaderValue::from(*offset));
                        hs.insert(name("upload-complete"), HeaderValue::from_static("?0"));
                    }
                    E::UploadComplete { .. }
                    | E::Sha256Mismatch { .. }
                    | E::AssemblyFailed(_)
                    | E::Gone("failed") => {
                        hs.insert(name("upload-complete"), HeaderValue::from_static("?1"));
                    }
                    E::TooLarge { max, .. } => {
                        if let Ok(v) = HeaderValue::from_str(&format!("max-size={max}")) {
                            hs.insert(name("upload-limit"), v);
                        }
                    }
                    _ => {}
                }
            }
            Protocol::Native | Protocol::Tus => {}
        }
        hs
    }

    /// The answer to a request that failed, in `protocol`.
    pub fn render(self, protocol: Protocol) -> Response {
        let problem = self.problem(protocol);
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
        resp.headers_mut().extend(self.headers(protocol, status));
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(Protocol::Native)
    }
}
