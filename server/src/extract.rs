//! Request parts turned into domain values; every rejection is an [`ApiError`].

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use common::{Sha256Digest, UploadId};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// The `{id}` path segment as an upload id; anything that is not one is a 404 at once,
/// before storage is touched.
pub struct IdPath(pub UploadId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("no such upload".into()))?;
        let raw = params
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        raw.parse()
            .map(IdPath)
            .map_err(|_| ApiError::NotFound("no such upload: the id is not an upload id".into()))
    }
}

/// The `{index}` path segment of a chunk route.
pub struct IndexPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for IndexPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let raw = params
            .iter()
            .find(|(k, _)| k == "index")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        chunk_index(raw).map(IndexPath).ok_or_else(|| {
            ApiError::BadRequest(format!("chunk index {raw:?} is not a non-negative integer"))
        })
    }
}

/// A chunk index as its path segment spells it: decimal digits only, within `u64`.
pub(crate) fn chunk_index(raw: &str) -> Option<u64> {
    digits(raw)
}

/// A number written as decimal digits only, within `u64`: `u64::from_str` alone would
/// also take a leading `+`, a second spelling of the same value.
pub(crate) fn digits(s: &str) -> Option<u64> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse().ok())
        .flatten()
}

/// A JSON object body (e.g. `POST /v1/uploads`), sent as JSON: `Content-Type:
/// application/json` (or `application/*+json`). A body sent as another type is refused
/// (415), so that a web page cannot post one cross-site as a form or as text, which
/// browsers send without asking the server first.
pub struct JsonBody<T>(pub T);

/// A JSON object body that may be empty, reading as the type's default (e.g.
/// `POST .../complete`); a body that is not empty must be sent as JSON, as for
/// [`JsonBody`]. At most `LIMIT` bytes.
pub struct OptionalJsonBody<T, const LIMIT: usize = JSON_LIMIT>(pub T);

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
    else {
        return false;
    };
    ct.type_() == mime::APPLICATION
        && (ct.subtype() == mime::JSON || ct.suffix() == Some(mime::JSON))
}

fn not_json() -> ApiError {
    ApiError::UnsupportedMediaType(
        "the body must be sent as JSON (Content-Type: application/json)".into(),
    )
}

/// Largest JSON body accepted.
pub const JSON_LIMIT: usize = 64 * 1024;

/// Largest completion body: room for the SHA-256 of every chunk of the largest upload
/// (`chunk_sha256`, 67 bytes a chunk in hex), which a browser gives for a file sent in one
/// request.
pub const COMPLETION_LIMIT: usize = JSON_LIMIT + 70 * 100_000;

/// Reads a small body whole, bounded in size (`limit`) and in idle time.
pub(crate) async fn small_body(
    req: Request,
    idle: Duration,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut stream = body_stream(req.into_body(), idle);
    let mut buf = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(ApiError::Domain)?;
        if buf.len() + piece.len() > limit {
            return Err(ApiError::BadRequest(format!(
                "the JSON body is larger than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf)
}

/// Parses a JSON object (an array or a scalar is refused even where serde would take it).
pub(crate) fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the JSON body must be an object".into(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        let bytes = small_body(req, state.body_timeout, JSON_LIMIT).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "a JSON object body is required".into(),
            ));
        }
        parse_object(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default, const LIMIT: usize> FromRequest<AppState>
    for OptionalJsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = small_body(req, state.body_timeout, LIMIT).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !json {
            return Err(not_json());
        }
        parse_object(&bytes).map(OptionalJsonBody)
    }
}

/// The `Content-Length`, when the body has one (not with chunked transfer encoding).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| digits(s.trim()))
                .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))
        })
        .transpose()
}

/// The SHA-256 in `Content-Digest`, if the client sent one.
pub fn content_digest(headers: &HeaderMap) -> Result<Option<Sha256Digest>, ApiError> {
    let Some(v) = headers.get(common::headers::CONTENT_DIGEST) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Content-Digest is not ASCII".into()))?;
    Sha256Digest::from_header(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The `Idempotency-Key`, if any: at most 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(common::headers::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_string()))
        }
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )),
    }
}

/// The request body as a stream of bytes that fails when nothing arrives for `idle`, so
/// a stalled client frees its worker and its partial chunk is discarded.
pub fn body_stream(
    body: axum::body::Body,
    idle: Duration,
) -> futures_util::stream::BoxStream<'static, storage::Result<Bytes>> {
    let inner = body.into_data_stream();
    futures_util::stream::unfold(Some(inner), move |state| async move {
        let mut inner = state?;
        match tokio::time::timeout(idle, inner.next()).await {
            Err(_) => Some((Err(storage::Error::BodyTimeout(idle)), None)),
            Ok(None) => None,
            Ok(Some(Ok(b))) => Some((Ok(b), Some(inner))),
            Ok(Some(Err(e))) => Some((Err(storage::Error::BodyRead(e.to_string())), None)),
        }
    })
    .fuse()
    .boxed()
}

/// Largest unread body drained before an error answer; past it the connection is closed
/// instead (see `routes::close_after_unread_body`).
pub const DRAIN_LIMIT: u64 = 64 << 20;

/// The bytes of an upload request (a chunk, an append), streamed, never buffered whole.
/// A request refused before or while its body is read has what is left of the body read
/// and dropped, so that the answer reaches a client that is still sending (an HTTP/1.1
/// client writing its body does not read the answer until it has sent it all): at most
/// [`DRAIN_LIMIT`] bytes announced by `Content-Length`, and never after the body itself
/// failed (stalled, cut, or taken over).
pub struct UploadBody {
    stream: futures_util::stream::BoxStream<'static, storage::Result<Bytes>>,
    /// The body's `Content-Length`, if it had a valid one.
    len: Option<u64>,
}

impl FromRequest<AppState> for UploadBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let len = content_length(req.headers()).ok().flatten();
        Ok(Self {
            stream: body_stream(req.into_body(), state.body_timeout),
            len,
        })
    }
}

impl futures_util::Stream for UploadBody {
    type Item = storage::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl UploadBody {
    /// What the domain made of the body: when it failed, what is left of the body is
    /// drained before the error is answered.
    pub async fn settle<T>(mut self, result: storage::Result<T>) -> Result<T, ApiError> {
        if let Err(e) = &result {
            self.drain_after(e).await;
        }
        Ok(result?)
    }

    /// Reads and drops what is left of a body the domain did not need (a repeated
    /// request answered from what the first one stored), so the answer reaches a client
    /// that is still sending.
    pub async fn discard(mut self) {
        self.drain_after(&storage::Error::Invalid(String::new()))
            .await;
    }

    /// Refuses the request with `error` before its body is read: drains the body first.
    pub async fn refuse<T>(mut self, error: ApiError) -> Result<T, ApiError> {
        if self.len.is_some_and(|l| l > 0) {
            self.drain_after(&storage::Error::Invalid(String::new()))
                .await;
        }
        Err(error)
    }

    async fn drain_after(&mut self, error: &storage::Error) {
        use storage::Error as E;
        if matches!(error, E::BodyTimeout(_) | E::BodyRead(_) | E::Superseded)
            || self.len.is_none_or(|l| l > DRAIN_LIMIT)
        {
            return;
        }
        let mut seen = 0u64;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(piece)) = self.stream.next().await {
                seen += piece.len() as u64;
                if seen > DRAIN_LIMIT {
                    return;
                }
            }
        })
        .await;
    }
}
