//! Request parts turned into domain values; every rejection is an [`ApiError`].

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use common::{Sha256Digest, UploadId};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
        raw.parse().map(IndexPath).map_err(|_| {
            ApiError::BadRequest(format!("chunk index {raw:?} is not a non-negative integer"))
        })
    }
}

/// A JSON body; an empty body reads as the type's default (e.g. `POST .../complete`).
pub struct JsonBody<T>(pub T);

/// Largest JSON body accepted.
const JSON_LIMIT: usize = 64 * 1024;

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), JSON_LIMIT)
            .await
            .map_err(|_| {
                ApiError::BadRequest(format!("the JSON body is larger than {JSON_LIMIT} bytes"))
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// The `Content-Length`, when the body has one (not with chunked transfer encoding).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
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
) -> impl Stream<Item = storage::Result<Bytes>> + Send + Unpin {
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
    .boxed()
}
