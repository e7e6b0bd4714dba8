//! The native JSON API v1. Handlers parse, call the domain, and shape the answer.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::api::{
    ChunkReceipt, CompleteUpload, ContentUrl, CreateContentUrl, CreateUpload, Problem,
    ServerCapabilities, UploadList, UploadState, UploadStatus,
};
use common::UploadId;
use serde::Deserialize;
use storage::{Completion, Created, ListQuery};

use crate::error::ApiError;
use crate::extract::{
    content_digest, content_length, digits, idempotency_key, IdPath, IndexPath, JsonBody,
    OptionalJsonBody, UploadBody, COMPLETION_LIMIT,
};
use crate::forwarded::PublicBase;
use crate::state::AppState;

fn location(id: common::UploadId) -> HeaderValue {
    HeaderValue::from_str(&format!("/v1/uploads/{id}")).unwrap_or(HeaderValue::from_static("/"))
}

/// `GET /v1`: what this server accepts, and whether it needs a token.
#[utoipa::path(
    get,
    path = "/v1",
    tag = "uploads",
    security(()),
    responses(
        (status = 200, description = "What this server accepts.", body = ServerCapabilities),
    )
)]
pub async fn capabilities(State(state): State<AppState>) -> Response {
    Json(ServerCapabilities {
        capabilities: state.uploads.capabilities(),
        token_required: state.auth.enabled(),
    })
    .into_response()
}

/// `POST /v1/uploads`: creates an upload (idempotently with `Idempotency-Key`); with an
/// `application/octet-stream` body, the upload's whole bytes: created, stored, verified and
/// completed in one request.
#[utoipa::path(
    post,
    path = "/v1/uploads",
    tag = "uploads",
    request_body(
        description = "JSON: the upload to create, whose chunks follow. Bytes \
            (`application/octet-stream`, with `Content-Length`): the whole file, at most \
            `chunk_size.max` bytes, stored and completed in this one request.",
        content(
            (CreateUpload = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        ),
    ),
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "1 to 255 visible ASCII characters: the same key and body return the same upload."),
        ("Content-Digest" = Option<String>, Header,
         description = "With bytes: RFC 9530 digest of the file, `sha-256=:<base64>:`; checked before anything is stored."),
        ("Content-Disposition" = Option<String>, Header,
         description = "With bytes: the file name, as `attachment; filename*=UTF-8''<name>` (RFC 6266)."),
        ("Upload-Metadata" = Option<String>, Header,
         description = "With bytes: metadata as tus writes it, `key base64,key base64`."),
    ),
    responses(
        (status = 201, description = "Created (with bytes: completed).", body = UploadStatus,
         headers(("Location" = String, description = "The upload's URL."))),
        (status = 200, description = "The upload an earlier request with this Idempotency-Key created.",
         body = UploadStatus, headers(("Location" = String, description = "The upload's URL."))),
        (status = 400, description = "Malformed body, header, size or chunk size; bytes shorter or longer than Content-Length.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body stalled; nothing was stored.", body = Problem, content_type = "application/problem+json"),
        (status = 411, description = "Bytes without Content-Length.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the maximum upload size, or bytes above what one request may carry.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The upload this Idempotency-Key created was cancelled or expired.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key was used with another request, or the bytes' SHA-256 is not the Content-Digest (nothing is stored).", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "No room left for the upload.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    if is_octet_stream(&headers) {
        let body = UploadBody::from_request(req, &state).await?;
        return create_whole(&state, &headers, body).await;
    }
    let JsonBody(body) = JsonBody::<CreateUpload>::from_request(req, &state).await?;
    let key = idempotency_key(&headers)?;
    let created = state.uploads.create(body, key.as_deref()).await?;
    Ok(created_answer(created))
}

/// 201 for a new upload, 200 for the one an idempotent repeat found, with its URL.
fn created_answer(created: Created) -> Response {
    let status = if created.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let loc = location(created.status.id);
    (status, [(header::LOCATION, loc)], Json(created.status)).into_response()
}

/// Whether the body is bytes rather than JSON.
fn is_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case(mime::APPLICATION_OCTET_STREAM.as_ref())
        })
}

/// A whole upload in one request: its description from the headers, its bytes from the
/// body.
async fn create_whole(
    state: &AppState,
    headers: &HeaderMap,
    body: UploadBody,
) -> Result<Response, ApiError> {
    let described = (|| {
        let metadata = match headers.get("upload-metadata") {
            Some(v) => Some(super::tus::parse_metadata(v.to_str().map_err(|_| {
                ApiError::BadRequest("Upload-Metadata is not ASCII".into())
            })?)?),
            None => None,
        };
        let filename = match headers.get(header::CONTENT_DISPOSITION) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(super::ietf::disposition_filename)
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "Content-Disposition names no file name (attachment; filename*=UTF-8''<name>)"
                                .into(),
                        )
                    })?,
            ),
            None => metadata.as_ref().and_then(|m| m.get("filename").cloned()),
        };
        // Without Content-Length and Transfer-Encoding a request has no body (RFC 9112
        // section 6.3): an empty file.
        let size = match content_length(headers)? {
            None if !headers.contains_key(header::TRANSFER_ENCODING) => Some(0),
            other => other,
        };
        let req = CreateUpload {
            size,
            sha256: content_digest(headers)?,
            filename,
            metadata,
            ..CreateUpload::default()
        };
        Ok::<_, ApiError>((req, idempotency_key(headers)?))
    })();
    let (req, key) = match described {
        Ok(d) => d,
        Err(e) => return body.refuse(e).await,
    };
    let mut body = body;
    let created = state
        .uploads
        .create_whole(req, key.as_deref(), &mut body)
        .await;
    let created = body.settle(created).await?;
    Ok(created_answer(created))
}

/// The query of `GET /v1/uploads`, as text: each field is checked below, so that a bad
/// one gets its own message.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    state: Option<String>,
}

/// `GET /v1/uploads`: the caller's uploads, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/uploads",
    tag = "uploads",
    params(
        ("limit" = Option<u64>, Query, description = "Most uploads on the page, 1 to 1000 (default 100)."),
        ("cursor" = Option<String>, Query, description = "Where the previous page's `next` said to go on."),
        ("state" = Option<UploadState>, Query, description = "Only uploads in this state."),
    ),
    responses(
        (status = 200, description = "One page, newest first; `next` (and a `Link: rel=\"next\"` header) when more may follow. A page may hold fewer than `limit` uploads, even none, while `next` is there.",
         body = UploadList,
         headers(("Link" = String, description = "The next page's URL, `<...>; rel=\"next\"` (RFC 8288)."))),
        (status = 400, description = "A limit, cursor or state that is not one.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params
        .limit
        .as_deref()
        .map(|l| {
            digits(l)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| ApiError::BadRequest(format!("limit {l:?} is not a number")))
        })
        .transpose()?;
    let wanted = params
        .state
        .as_deref()
        .map(|s| {
            serde_json::from_value::<UploadState>(serde_json::Value::String(s.into())).map_err(
                |_| {
                    ApiError::BadRequest(format!(
                        "state {s:?} is not one of uploading, completing, completed, failed"
                    ))
                },
            )
        })
        .transpose()?;
    let page = state
        .uploads
        .list(ListQuery {
            state: wanted,
            limit,
            cursor: params.cursor.clone(),
        })
        .await?;
    let mut resp = (
        [(header::CACHE_CONTROL, "no-store")],
        Json(UploadList {
            uploads: page.uploads,
            next: page.next.clone(),
        }),
    )
        .into_response();
    if let Some(next) = &page.next {
        let mut url = format!("/v1/uploads?cursor={next}");
        if let Some(l) = limit {
            url.push_str(&format!("&limit={l}"));
        }
        if let Some(s) = &params.state {
            url.push_str(&format!("&state={s}"));
        }
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// `GET /v1/uploads/{id}`: the status document.
#[utoipa::path(
    get,
    path = "/v1/uploads/{id}",
    tag = "uploads",
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
    ),
    responses(
        (status = 200, description = "The upload's status.", body = UploadStatus),
        (status = 404, description = "No such upload (or another owner's).", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled, expired or failed.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let status = state.uploads.status(id).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(status)).into_response())
}

/// `PUT /v1/uploads/{id}/chunks/{index}`: stores one chunk, streamed.
#[utoipa::path(
    put,
    path = "/v1/uploads/{id}/chunks/{index}",
    tag = "uploads",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "Exactly the chunk's bytes (chunk_size, the last one shorter; while the size is deferred, the last one is the one shorter)."),
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
        ("index" = u64, Path, description = "Chunk index, from 0."),
        ("Content-Digest" = Option<String>, Header,
         description = "RFC 9530 digest of the body: `sha-256=:<base64>:`."),
    ),
    responses(
        (status = 201, description = "Stored durably.", body = ChunkReceipt),
        (status = 200, description = "The same bytes were already stored.", body = ChunkReceipt),
        (status = 400, description = "Wrong length, digest or index.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body stalled; nothing was stored.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other bytes are stored for this index, or the upload is completing.", body = Problem, content_type = "application/problem+json"),
        (status = 411, description = "A chunk of an upload whose size is deferred, without Content-Length.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled, expired or failed.", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "No room left; the upload stays resumable.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_chunk(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    IndexPath(index): IndexPath,
    headers: HeaderMap,
    body: UploadBody,
) -> Result<Response, ApiError> {
    // A bad header is refused before the body is read.
    let (len, digest) =
        match content_length(&headers).and_then(|l| Ok((l, content_digest(&headers)?))) {
            Ok(parsed) => parsed,
            Err(e) => return body.refuse(e).await,
        };
    let mut body = body;
    let stored = state
        .uploads
        .put_chunk(id, index, len, digest, &mut body)
        .await;
    let stored = body.settle(stored).await?;
    let status = if stored.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored.receipt)).into_response())
}

/// The query of `POST /v1/uploads/{id}/chunks`.
#[derive(Debug, Default, Deserialize)]
pub struct RunParams {
    from: Option<String>,
}

/// `POST /v1/uploads/{id}/chunks`: stores a run of chunks sent in one body.
#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/chunks",
    tag = "uploads",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The bytes of chunks `from`, `from + 1`, ... in order, ending at a chunk's end or at the file's end. Each chunk is stored and acknowledged as its last byte arrives, so a run cut short keeps every whole chunk before the cut. The chunks carry no digest of their own: give every chunk's SHA-256 at completion (`chunk_sha256`)."),
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
        ("from" = Option<u64>, Query, description = "The first chunk's index (default 0)."),
    ),
    responses(
        (status = 200, description = "Every chunk of the run is stored durably.", body = UploadStatus),
        (status = 400, description = "A length that does not end at a chunk's end or the file's end, a bad index, a `Content-Digest` (give chunk digests at completion), an upload whose size is deferred, or a body cut short (the whole chunks before the cut are stored).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body stalled; the whole chunks before it are stored.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other bytes are stored for one of the chunks (those before it are stored), or the upload is completing.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled, expired or failed.", body = Problem, content_type = "application/problem+json"),
        (status = 411, description = "No Content-Length.", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "No room left; the upload stays resumable.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_chunk_run(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    params: Result<Query<RunParams>, QueryRejection>,
    headers: HeaderMap,
    body: UploadBody,
) -> Result<Response, ApiError> {
    // A bad header or query is refused before the body is read.
    let parsed = (|| {
        let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let from = match params.from.as_deref() {
            None => 0,
            Some(f) => digits(f)
                .ok_or_else(|| ApiError::BadRequest(format!("from {f:?} is not a chunk index")))?,
        };
        if headers.contains_key("content-digest") {
            return Err(ApiError::BadRequest(
                "a run of chunks takes no Content-Digest: give every chunk's SHA-256 at completion (chunk_sha256)"
                    .into(),
            ));
        }
        // Without Content-Length and Transfer-Encoding a request has no body (RFC 9112
        // section 6.3): a run of no bytes.
        let len = match content_length(&headers)? {
            None if !headers.contains_key(header::TRANSFER_ENCODING) => Some(0),
            other => other,
        };
        Ok((from, len))
    })();
    let (from, len) = match parsed {
        Ok(p) => p,
        Err(e) => return body.refuse(e).await,
    };
    let mut body = body;
    let stored = state.uploads.put_chunk_run(id, from, len, &mut body).await;
    let status = body.settle(stored).await?;
    Ok(Json(status).into_response())
}

/// `POST /v1/uploads/{id}/complete`: verifies and publishes.
#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/complete",
    tag = "uploads",
    request_body(content = Option<CompleteUpload>, content_type = "application/json",
        description = "May be empty; `size` is required for an upload created with `defer_length`; `chunk_sha256` covers chunks sent without a digest of their own."),
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
    ),
    responses(
        (status = 200, description = "Verified and published.", body = UploadStatus),
        (status = 202, description = "Verification continues in the background; poll the status.",
         body = UploadStatus, headers(("Location" = String, description = "The upload's URL."))),
        (status = 400, description = "Malformed body, a SHA-256 other than the declared one, or a size that is not the upload's (or that the chunks stored do not fit).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Chunks are missing (listed in `missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled or expired.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The size declared at completion (for an upload created without one) is above the server's maximum upload size.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file's SHA-256 does not match: the upload failed. Or chunks stored differ from `chunk_sha256` (listed in `mismatched`): nothing is published.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn complete(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    OptionalJsonBody(req): OptionalJsonBody<CompleteUpload, COMPLETION_LIMIT>,
) -> Result<Response, ApiError> {
    Ok(
        match state
            .uploads
            .complete_sized(id, req.sha256, req.size, req.chunk_sha256.as_deref())
            .await?
        {
            Completion::Done(status) => (StatusCode::OK, Json(status)).into_response(),
            Completion::Verifying(status) => (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location(id))],
                Json(status),
            )
                .into_response(),
        },
    )
}

/// `DELETE /v1/uploads/{id}`: cancels and frees the bytes.
#[utoipa::path(
    delete,
    path = "/v1/uploads/{id}",
    tag = "uploads",
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
    ),
    responses(
        (status = 204, description = "Cancelled; its bytes are removed."),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Already cancelled or expired.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    state.uploads.cancel(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/uploads/{id}/content-url`: a signed, expiring URL of the verified file that
/// needs no token (for a browser link, or a service that downloads on the owner's behalf).
#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/content-url",
    tag = "uploads",
    request_body(content = Option<CreateContentUrl>, content_type = "application/json",
        description = "May be empty."),
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
    ),
    responses(
        (status = 200, description = "A signed download URL.", body = ContentUrl),
        (status = 400, description = "Malformed body, or a `ttl_s` outside 1 s to seven days.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not completed yet.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled, expired or failed.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn content_url(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    base: PublicBase,
    OptionalJsonBody(req): OptionalJsonBody<CreateContentUrl>,
) -> Result<Response, ApiError> {
    // The owner check and "completed" come from the domain, as for a download.
    state.uploads.content(id).await?;
    let ttl = req.ttl_s.unwrap_or(3600);
    if !(1..=common::api::MAX_CONTENT_URL_TTL_S).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl_s is {ttl}: a download URL stays valid from 1 second to {} (seven days)",
            common::api::MAX_CONTENT_URL_TTL_S
        )));
    }
    let (query, exp) = state
        .auth
        .sign_content_until(&id.to_string(), crate::auth::now() + ttl as i64);
    let url = base.absolute(&format!("/v1/uploads/{id}/content?{query}"));
    let expires_at = time::OffsetDateTime::from_unix_timestamp(exp)
        .map_err(|_| ApiError::BadRequest("ttl_s is out of range".into()))?;
    Ok(Json(ContentUrl { url, expires_at }).into_response())
}

/// `GET /v1/uploads/{id}/content`: the verified file, with ranges and an ETag.
#[utoipa::path(
    get,
    path = "/v1/uploads/{id}/content",
    tag = "uploads",
    params(
        ("id" = UploadId, Path, description = "The upload's id."),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-99`."),
        ("If-None-Match" = Option<String>, Header, description = "ETags (the quoted SHA-256), compared weakly."),
        ("If-Range" = Option<String>, Header, description = "Serve the range only if the ETag is still this one."),
        ("exp" = Option<i64>, Query, description = "Expiry of a signed URL (unix seconds)."),
        ("sig" = Option<String>, Query, description = "Signature of a signed URL."),
    ),
    responses(
        (status = 200, description = "The file.", body = Vec<u8>, content_type = "application/octet-stream",
         headers(("ETag" = String, description = "The quoted SHA-256."),
                 ("Content-Disposition" = String, description = "attachment, with the file name."))),
        (status = 206, description = "The requested range.", body = Vec<u8>, content_type = "application/octet-stream",
         headers(("Content-Range" = String, description = "The range sent."))),
        (status = 304, description = "Not modified (If-None-Match)."),
        (status = 404, description = "No such upload.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not completed yet.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Cancelled, expired or failed.", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range is not satisfiable."),
    )
)]
pub async fn content(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    req: Request,
) -> Result<Response, ApiError> {
    let (record, _) = state.uploads.content(id).await?;
    let size = record.size;
    let etag = record
        .sha256
        .map(|d| format!("\"{d}\""))
        .unwrap_or_default();
    let headers = req.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if !etag.is_empty() && text(header::IF_NONE_MATCH).is_some_and(|v| none_match(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // A range is served only for the representation the client has (If-Range, compared
    // strongly; a date never matches, as no Last-Modified is sent).
    let range = text(header::RANGE)
        .filter(|_| text(header::IF_RANGE).is_none_or(|v| v.trim() == etag))
        .map(|r| parse_range(r, size));
    let (status, start, len) = match range {
        None | Some(RangeAsk::Ignore) => (StatusCode::OK, 0, size),
        Some(RangeAsk::Unsatisfiable) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response())
        }
        Some(RangeAsk::Range(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
    };
    let body = if req.method() == axum::http::Method::HEAD || len == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.uploads.read_content(&record, start, len).await?)
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(record.filename.as_deref())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `If-None-Match` against `etag` (RFC 9110 §13.1.2): `*`, or any listed tag equal to it
/// by the weak comparison (a `W/` prefix is ignored).
fn none_match(field: &str, etag: &str) -> bool {
    field
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// Serve the whole file (no valid byte range, or several ranges, which are not served).
    Ignore,
    /// No byte of the range exists.
    Unsatisfiable,
    /// Inclusive first and last byte.
    Range(u64, u64),
}

/// A single byte range as RFC 9110 §14.1.2 resolves it against the file: clamped to its
/// end, a suffix longer than the file being the whole file. The syntax is
/// `http-range-header`'s; its `validate` is not used, as it refuses a suffix longer than
/// the file.
pub(crate) fn parse_range(raw: &str, size: u64) -> RangeAsk {
    use http_range_header::{EndPosition, RangeUnsatisfiableError, StartPosition};
    let ranges = match http_range_header::parse_range_header(raw.trim()) {
        Ok(parsed) => parsed.ranges,
        // `bytes=-0`: a suffix of no bytes.
        Err(RangeUnsatisfiableError::ZeroSuffix) => return RangeAsk::Unsatisfiable,
        Err(_) => return RangeAsk::Ignore,
    };
    let [range] = ranges.as_slice() else {
        return RangeAsk::Ignore;
    };
    let end = size.saturating_sub(1);
    match (range.start, range.end) {
        (_, _) if size == 0 => RangeAsk::Unsatisfiable,
        (StartPosition::FromLast(n), _) => RangeAsk::Range(size - n.min(size), end),
        (StartPosition::Index(first), _) if first >= size => RangeAsk::Unsatisfiable,
        (StartPosition::Index(first), EndPosition::LastByte) => RangeAsk::Range(first, end),
        (StartPosition::Index(first), EndPosition::Index(last)) if last >= first => {
            RangeAsk::Range(first, last.min(end))
        }
        _ => RangeAsk::Ignore,
    }
}

/// `attachment`, with the file name in RFC 6266 / RFC 8187 form (`filename*=UTF-8''…`),
/// plus a plain ASCII fallback.
pub(crate) fn content_disposition(filename: Option<&str>) -> String {
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
    fn ranges() {
        use super::{parse_range, RangeAsk::*};
        assert_eq!(parse_range("bytes=0-9", 100), Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Range(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), Range(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=9-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

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
