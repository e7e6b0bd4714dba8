//! The native JSON API v1. Handlers parse, call the domain, and shape the answer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::api::{CompleteUpload, CreateUpload};
use storage::{Completion, Content};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::extract::{
    body_stream, content_digest, content_length, drain_after, idempotency_key, IdPath, IndexPath,
    JsonBody, OptionalJsonBody, DRAIN_LIMIT,
};
use crate::state::AppState;

fn location(id: common::UploadId) -> HeaderValue {
    HeaderValue::from_str(&format!("/v1/uploads/{id}")).unwrap_or(HeaderValue::from_static("/"))
}

/// `GET /v1`: what this server accepts.
pub async fn capabilities(State(state): State<AppState>) -> Response {
    Json(state.uploads.capabilities()).into_response()
}

/// `POST /v1/uploads`: creates an upload (idempotently with `Idempotency-Key`).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateUpload>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let created = state.uploads.create(req, key.as_deref()).await?;
    let status = if created.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let loc = location(created.status.id);
    Ok((status, [(header::LOCATION, loc)], Json(created.status)).into_response())
}

/// `GET /v1/uploads/{id}`: the status document.
pub async fn status(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let status = state.uploads.status(id).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(status)).into_response())
}

/// `PUT /v1/uploads/{id}/chunks/{index}`: stores one chunk, streamed.
pub async fn put_chunk(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    IndexPath(index): IndexPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let len = content_length(&headers)?;
    let digest = content_digest(&headers)?;
    let mut stream = body_stream(body, state.body_timeout);
    let result = state
        .uploads
        .put_chunk(id, index, len, digest, &mut stream)
        .await;
    if let Err(e) = &result {
        if len.is_some_and(|l| l <= DRAIN_LIMIT) {
            drain_after(e, &mut stream).await;
        }
    }
    let stored = result?;
    let status = if stored.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored.receipt)).into_response())
}

/// `POST /v1/uploads/{id}/complete`: verifies and publishes.
pub async fn complete(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    OptionalJsonBody(req): OptionalJsonBody<CompleteUpload>,
) -> Result<Response, ApiError> {
    Ok(match state.uploads.complete(id, req.sha256).await? {
        Completion::Done(status) => (StatusCode::OK, Json(status)).into_response(),
        Completion::Verifying(status) => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, location(id))],
            Json(status),
        )
            .into_response(),
    })
}

/// `DELETE /v1/uploads/{id}`: cancels and frees the bytes.
pub async fn cancel(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.uploads.cancel(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/uploads/{id}/content`: the verified file, with ranges and an ETag.
pub async fn content(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    req: Request,
) -> Result<Response, ApiError> {
    let (record, content) = state.uploads.content(id).await?;
    let etag = record
        .sha256
        .map(|d| format!("\"{d}\""))
        .unwrap_or_default();
    if !etag.is_empty()
        && req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let Content::File(path) = content;
    let served =
        tower_http::services::ServeFile::new_with_mime(path, &mime::APPLICATION_OCTET_STREAM)
            .oneshot(req)
            .await;
    let mut resp = match served {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(record.filename.as_deref())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `attachment`, with the file name in RFC 6266 / RFC 8187 form (`filename*=UTF-8''…`),
/// plus a plain ASCII fallback.
fn content_disposition(filename: Option<&str>) -> String {
    let Some(name) = filename.filter(|n| !n.is_empty()) else {
        return "attachment".into();
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_. ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn disposition_is_encoded() {
        assert_eq!(content_disposition(None), "attachment");
        assert_eq!(
            content_disposition(Some("a b.txt")),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        assert_eq!(
            content_disposition(Some("\"x\";é/..")),
            "attachment; filename=\"_x____..\"; filename*=UTF-8''%22x%22%3B%C3%A9%2F.."
        );
    }
}
