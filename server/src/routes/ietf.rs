//! Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload, interop version 8,
//! drafts -09 to the current editor's copy), on the same domain core as the native API and
//! tus: an upload created here is the same upload in `GET /v1/uploads/{id}` and its
//! content URL, verified the same way.
//!
//! # Paths
//! - `POST /uploads/` (or `/uploads`) creates an upload. `Upload-Complete: ?1` says the body
//!   is the whole file, `?0` that more follows; the body (possibly empty) is appended at once.
//! - `HEAD /uploads/{id}`: `Upload-Offset`, `Upload-Complete`, `Upload-Length`,
//!   `Upload-Limit`, `Cache-Control: no-store`.
//! - `PATCH /uploads/{id}` with `Content-Type: application/partial-upload` and
//!   `Upload-Offset` appends; `Upload-Complete: ?1` marks the last append.
//! - `DELETE /uploads/{id}` cancels.
//! - `OPTIONS` on both: `Accept-Patch: application/partial-upload` and `Upload-Limit`.
//!
//! The id in `/uploads/{id}` is the native upload id.
//!
//! # Versions
//! `Upload-Draft-Interop-Version` 8 (the current draft) and no header at all (read as the
//! current draft), plus 7 (drafts -06 to -08), 6 (drafts -04/-05; tus-js-client's
//! `ietf-draft-05`) and 5 (draft -03; tus-js-client's `ietf-draft-03`, whose appends carry
//! no `Content-Type`). Other versions are refused with 400.
//!
//! # Differences from the draft
//! - `104 (Upload Resumption Supported)`, with `Location` and `Upload-Limit`, is sent once
//!   the upload exists and before its body is read. hyper 1.x servers cannot send 1xx
//!   responses (its HTTP/1 encoder turns one into a 500), so it is written on the
//!   connection beside hyper (see [`crate::interim`]).
//! - The upload is completed (hashed, verified, published) as soon as its offset reaches
//!   its length, even by a request that said `Upload-Complete: ?0`; a later empty
//!   `Upload-Complete: ?1` append at that offset is then answered like the completing one.
//! - `Repr-Digest` (sha-256) is checked on the creation request (the domain then fails the
//!   upload on a mismatch and never serves it) and on the request that completes the upload
//!   (a mismatch there cancels the upload before the answer); it is not kept from an
//!   intermediate append.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use axum::Router;
use common::api::{UploadState, UploadStatus};
use common::{Sha256Digest, UploadId};
use storage::record::StoredState;
use storage::{Append, Appended, BodyChecksum, Dialect, NewStream};

use crate::error::{ApiError, Protocol};
use crate::extract::{content_length, IdPath, UploadBody};
use crate::interim::Interim;
use crate::state::AppState;

/// Base path of the endpoint.
pub const BASE: &str = "/uploads/";
/// The interop version of the current draft.
pub const INTEROP_VERSION: u64 = 8;
/// Every `Upload-Draft-Interop-Version` accepted.
pub const INTEROP_VERSIONS: [u64; 4] = [5, 6, 7, 8];
/// Media type of an append.
pub const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// The routes of the endpoint at [`BASE`]; none when the tus endpoint was configured at the
/// same path (the two protocols share header names with other meanings).
pub fn routes(tus_path: &str) -> Router<AppState> {
    if tus_path.trim_end_matches('/') == BASE.trim_end_matches('/') {
        tracing::error!(
            tus_path,
            "the tus endpoint is configured at the IETF endpoint's path; IETF resumable uploads are off"
        );
        return Router::new();
    }
    Router::new()
        .route(BASE, post(create).options(options))
        .route(BASE.trim_end_matches('/'), post(create).options(options))
        .route(
            &format!("{BASE}{{id}}"),
            head(offset).patch(append).delete(cancel).options(options),
        )
}

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Which draft the client speaks: its `Upload-Draft-Interop-Version`, or the current one
/// when it sent none.
fn version(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(v) = headers.get("upload-draft-interop-version") else {
        return Ok(INTEROP_VERSION);
    };
    match v.to_str().ok().and_then(sf_integer) {
        Some(n) if INTEROP_VERSIONS.contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "Upload-Draft-Interop-Version {:?} is not supported; this server speaks {}",
            String::from_utf8_lossy(v.as_bytes()),
            INTEROP_VERSIONS.map(|n| n.to_string()).join(", ")
        ))),
    }
}

/// A structured-field Integer (RFC 9651) that is not negative, parameters ignored.
pub(crate) fn sf_integer(raw: &str) -> Option<u64> {
    let item = sfv::Parser::new(raw).parse_item().ok()?;
    u64::try_from(i64::from(item.bare_item.as_integer()?)).ok()
}

/// A structured-field Boolean (`?0`, `?1`), parameters ignored.
pub(crate) fn sf_boolean(raw: &str) -> Option<bool> {
    sfv::Parser::new(raw)
        .parse_item()
        .ok()?
        .bare_item
        .as_boolean()
}

/// A header holding a structured-field Integer; a value of another form is ignored, as the
/// draft says.
pub(crate) fn integer_header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(sf_integer)
}

/// `Upload-Complete`, when present and well-formed.
pub(crate) fn upload_complete(headers: &HeaderMap) -> Option<bool> {
    headers
        .get("upload-complete")
        .and_then(|v| v.to_str().ok())
        .and_then(sf_boolean)
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<mime::Mime>().ok())
        .map(|m| m.essence_str().to_ascii_lowercase())
}

/// The SHA-256 in an RFC 9530 digest header (`Repr-Digest`, `Content-Digest`); other
/// algorithms are not checked.
fn digest_header(headers: &HeaderMap, name: &str) -> Result<Option<Sha256Digest>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII")))?;
    Sha256Digest::from_header(s).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
}

/// The file name of a `Content-Disposition` header: `filename*` (RFC 8187, UTF-8) first,
/// then `filename`.
pub(crate) fn disposition_filename(raw: &str) -> Option<String> {
    let mut plain = None;
    for param in raw.split(';').skip(1) {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if key == "filename*" {
            let mut parts = value.splitn(3, '\'');
            // A malformed `filename*` is skipped like an unknown charset: `filename` stays.
            let (Some(charset), Some(encoded)) = (parts.next(), parts.nth(1)) else {
                continue;
            };
            if !charset.eq_ignore_ascii_case("utf-8") {
                continue;
            }
            if let Some(name) = percent_decode(encoded) {
                return Some(name);
            }
        } else if key == "filename" {
            let v = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                .unwrap_or_else(|| value.to_string());
            plain = Some(v);
        }
    }
    plain.filter(|n| !n.is_empty())
}

/// RFC 8187's percent-encoded UTF-8; `None` for a stray `%` or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    // `percent_decode_str` passes a malformed `%` through; RFC 8187 does not allow one.
    let wellformed = s.split('%').skip(1).all(|rest| {
        rest.get(..2)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !wellformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
        .filter(|n| !n.is_empty())
}

/// `Upload-Limit`: the largest upload, and how long an idle upload lives (`max-age`, and
/// `expires` for interop version 6, which named it so).
fn limits(state: &AppState, status: Option<&UploadStatus>, v: u64) -> HeaderValue {
    let mut parts = vec![format!(
        "max-size={}",
        state.uploads.capabilities().max_upload_size
    )];
    if let Some(at) = status.and_then(|s| s.expires_at) {
        let secs = (at - time::OffsetDateTime::now_utc())
            .whole_seconds()
            .max(0);
        parts.push(format!("max-age={secs}"));
        if v == 6 {
            parts.push(format!("expires={secs}"));
        }
    }
    HeaderValue::from_str(&parts.join(", ")).unwrap_or(HeaderValue::from_static("max-size=0"))
}

fn location(id: UploadId) -> HeaderValue {
    HeaderValue::from_str(&format!("{BASE}{id}")).unwrap_or(HeaderValue::from_static(BASE))
}

fn complete_value(done: bool) -> HeaderValue {
    HeaderValue::from_static(if done { "?1" } else { "?0" })
}

fn is_done(state: UploadState) -> bool {
    matches!(state, UploadState::Completed | UploadState::Completing)
}

/// The answer to the request that completed the upload: what the service made of the file
/// (its native status), `200`, or `202` while the verification continues in the background.
fn completed_answer(state: &AppState, status: &UploadStatus, v: u64) -> Response {
    let code = if status.state == UploadState::Completing {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut resp = status_answer(code, status);
    let hs = resp.headers_mut();
    hs.insert(h("upload-complete"), complete_value(true));
    hs.insert(h("upload-offset"), HeaderValue::from(status.size));
    hs.insert(h("upload-length"), HeaderValue::from(status.size));
    hs.insert(header::LOCATION, location(status.id));
    hs.insert(h("upload-limit"), limits(state, Some(status), v));
    if let Some(sha) = status
        .sha256
        .filter(|_| status.state == UploadState::Completed)
    {
        if let Ok(v) = HeaderValue::from_str(&sha.to_header()) {
            hs.insert(h("repr-digest"), v);
        }
    }
    resp
}

/// The native status as JSON, with `Content-Location` naming the native resource.
fn status_answer(code: StatusCode, status: &UploadStatus) -> Response {
    let body = serde_json::to_vec(status).unwrap_or_default();
    let mut resp = (code, body).into_response();
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/uploads/{}", status.id)) {
        hs.insert(header::CONTENT_LOCATION, v);
    }
    resp
}

/// An append as the request states it: where it starts (`Upload-Offset`, given for
/// appends, 0 for a creation), its body, whether it is the last (`Upload-Complete`), the
/// length and digest it says.
fn append_of(headers: &HeaderMap, offset: u64, last: bool) -> Result<Append, ApiError> {
    let len = content_length(headers)?;
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let checksum =
        digest_header(headers, "content-digest")?.and_then(|d| BodyChecksum::new("sha256", &d.0));
    Ok(Append {
        offset,
        // An HTTP/1.1 request with neither Content-Length nor chunked encoding has no body.
        body_len: len.or(Some(0).filter(|_| !chunked)),
        has_body: len.unwrap_or(0) > 0 || chunked,
        length: integer_header(headers, "upload-length"),
        last,
        checksum,
        file_sha256: digest_header(headers, "repr-digest")?,
    })
}

/// `OPTIONS`: resumable uploads are supported here, within these limits.
pub async fn options(State(state): State<AppState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let hs = resp.headers_mut();
    hs.insert(h("accept-patch"), HeaderValue::from_static(PARTIAL_UPLOAD));
    hs.insert(h("upload-limit"), limits(&state, None, INTEROP_VERSION));
    resp
}

/// What a creation request asks for.
fn creation(state: &AppState, headers: &HeaderMap) -> Result<(NewStream, Append), ApiError> {
    let Some(last) = upload_complete(headers) else {
        let hint = if headers.contains_key("tus-resumable") {
            format!(
                "; tus requests go to the tus endpoint at {}",
                state.tus_path
            )
        } else {
            String::new()
        };
        return Err(ApiError::BadRequest(format!(
            "Upload-Complete (?0 or ?1) is required to create a resumable upload{hint}"
        )));
    };
    let mut first = append_of(headers, 0, last)?;
    let mut metadata = match headers.get("upload-metadata") {
        Some(m) => super::tus::parse_metadata(
            m.to_str()
                .map_err(|_| ApiError::BadRequest("Upload-Metadata is not ASCII".into()))?,
        )?,
        None => BTreeMap::new(),
    };
    let filename = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_filename)
        .or_else(|| metadata.get("filename").cloned());
    if let Some(name) = &filename {
        metadata
            .entry("filename".into())
            .or_insert_with(|| name.clone());
    }
    if let Some(t) = media_type(headers).filter(|t| t != PARTIAL_UPLOAD) {
        metadata.entry("filetype".into()).or_insert(t);
    }
    let new = NewStream {
        length: first.length.take(),
        sha256: first.file_sha256.take(),
        filename,
        metadata,
        ..NewStream::default()
    };
    Ok((new, first))
}

/// `POST /uploads/`: creates an upload (`Upload-Complete` required) and appends the body.
/// Once the upload exists, and before the body is read, an HTTP/1.1 client is told where
/// it is with `104 Upload Resumption Supported`, so that a client whose request breaks off
/// can resume even the upload this request created; every later answer names it too.
pub async fn create(
    State(state): State<AppState>,
    version_of: axum::http::Version,
    interim: Option<Extension<Interim>>,
    headers: HeaderMap,
    body: UploadBody,
) -> Response {
    let v = match version(&headers) {
        Ok(v) => v,
        Err(e) => return answer(body.refuse(e).await, INTEROP_VERSION),
    };
    let (new, first) = match creation(&state, &headers) {
        Ok(c) => c,
        Err(e) => return answer(body.refuse(e).await, v),
    };
    let last = first.last;
    // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
    let interim = interim
        .map(|Extension(i)| i)
        .filter(|_| version_of >= axum::http::Version::HTTP_11);
    let created = std::sync::Mutex::new(None);
    let told = |status: &UploadStatus| {
        *created.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.id);
        if let Some(interim) = &interim {
            let mut hs = HeaderMap::new();
            hs.insert(header::LOCATION, location(status.id));
            hs.insert("upload-limit", limits(&state, Some(status), v));
            hs.insert("upload-draft-interop-version", HeaderValue::from(v));
            interim.send(104, "Upload Resumption Supported", &hs);
        }
    };
    let mut body = body;
    let appended = state
        .uploads
        .create_stream(Dialect::Ietf, new, first, &mut body, told)
        .await;
    let appended = body.settle(appended).await;
    let mut resp = match appended {
        Ok(a) if a.done() => {
            let mut resp = completed_answer(&state, &a.status, v);
            if !last {
                // Complete because its length was reached: still the answer that created it.
                *resp.status_mut() = StatusCode::CREATED;
            }
            resp
        }
        Ok(Appended { offset, status }) => {
            let mut resp = status_answer(StatusCode::CREATED, &status);
            let hs = resp.headers_mut();
            hs.insert(h("upload-offset"), HeaderValue::from(offset));
            hs.insert(h("upload-complete"), complete_value(false));
            if !status.length_deferred {
                hs.insert(h("upload-length"), HeaderValue::from(status.size));
            }
            hs.insert(h("upload-limit"), limits(&state, Some(&status), v));
            resp
        }
        Err(e) => e.render(Protocol::Ietf(v)),
    };
    // From the moment it exists, every answer names the upload.
    let created = *created.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(id) = created {
        resp.headers_mut().insert(header::LOCATION, location(id));
    }
    resp
}

/// An answer in the IETF draft's dialect, at interop version `v`.
fn answer(result: Result<Response, ApiError>, v: u64) -> Response {
    result.unwrap_or_else(|e| e.render(Protocol::Ietf(v)))
}

/// `HEAD /uploads/{id}`: where to resume.
pub async fn offset(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let v = version(&headers).unwrap_or(INTEROP_VERSION);
    let inner = async {
        version(&headers)?;
        let storage::Position {
            record,
            offset: stored,
            status,
        } = state.uploads.position(id).await?;
        if record.state == StoredState::Failed {
            // Its bytes were discarded: the upload resource is no longer usable.
            return Err(storage::Error::Gone("failed").into());
        }
        let done = is_done(status.state);
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let hs = resp.headers_mut();
        hs.insert(
            h("upload-offset"),
            HeaderValue::from(if done { record.size } else { stored }),
        );
        hs.insert(h("upload-complete"), complete_value(done));
        if !record.length_deferred {
            hs.insert(h("upload-length"), HeaderValue::from(record.size));
        }
        hs.insert(h("upload-limit"), limits(&state, Some(&status), v));
        hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(sha) = status
            .sha256
            .filter(|_| status.state == UploadState::Completed)
        {
            if let Ok(v) = HeaderValue::from_str(&sha.to_header()) {
                hs.insert(h("repr-digest"), v);
            }
        }
        Ok::<_, ApiError>(resp)
    };
    let mut resp = answer(inner.await, v);
    // HEAD answers carry no body.
    *resp.body_mut() = Body::empty();
    resp
}

/// `PATCH /uploads/{id}`: appends at `Upload-Offset`; `Upload-Complete: ?1` on the last one.
pub async fn append(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: UploadBody,
) -> Response {
    let v = match version(&headers) {
        Ok(v) => v,
        Err(e) => return answer(body.refuse(e).await, INTEROP_VERSION),
    };
    let parsed = (|| {
        let media = media_type(&headers);
        // Draft -03 (interop version 5) had no media type for appends.
        if media.as_deref() != Some(PARTIAL_UPLOAD) && !(v == 5 && media.is_none()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "appends must be {PARTIAL_UPLOAD}"
            )));
        }
        let offset = integer_header(&headers, "upload-offset").ok_or_else(|| {
            ApiError::BadRequest("Upload-Offset (a non-negative integer) is required".into())
        })?;
        append_of(&headers, offset, upload_complete(&headers).unwrap_or(false))
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => return answer(body.refuse(e).await, v),
    };
    let mut body = body;
    let appended = state
        .uploads
        .append_stream(id, Dialect::Ietf, req, &mut body)
        .await;
    let appended = body.settle(appended).await;
    match appended {
        Ok(a) if a.done() => completed_answer(&state, &a.status, v),
        Ok(a) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            let hs = resp.headers_mut();
            hs.insert(h("upload-offset"), HeaderValue::from(a.offset));
            hs.insert(h("upload-complete"), complete_value(false));
            resp
        }
        Err(e) => e.render(Protocol::Ietf(v)),
    }
}

/// `DELETE /uploads/{id}`: cancels the upload; later requests answer 410.
pub async fn cancel(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let v = version(&headers).unwrap_or(INTEROP_VERSION);
    let inner = async {
        version(&headers)?;
        state.uploads.cancel(id).await?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    };
    answer(inner.await, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_fields() {
        assert_eq!(sf_integer("42"), Some(42));
        assert_eq!(sf_integer("42;a=1"), Some(42));
        assert_eq!(sf_integer(" 7 "), Some(7));
        for bad in ["", "-1", "1.5", "x", "1234567890123456"] {
            assert_eq!(sf_integer(bad), None, "{bad}");
        }
        assert_eq!(sf_boolean("?1"), Some(true));
        assert_eq!(sf_boolean("?0"), Some(false));
        for bad in ["1", "true", "?", "?2"] {
            assert_eq!(sf_boolean(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_disposition_names() {
        assert_eq!(
            disposition_filename(
                "inline; filename=\"file name.jpg\"; filename*=UTF-8''file%20n%C3%A4me.jpg"
            )
            .as_deref(),
            Some("file näme.jpg")
        );
        assert_eq!(
            disposition_filename("attachment; filename=plain.txt").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(disposition_filename("inline"), None);
    }

    #[test]
    fn versions() {
        let mut hs = HeaderMap::new();
        assert_eq!(version(&hs).ok(), Some(INTEROP_VERSION));
        for (v, ok) in [
            ("5", true),
            ("6", true),
            ("7", true),
            ("8", true),
            ("3", false),
            ("9", false),
        ] {
            hs.insert("upload-draft-interop-version", HeaderValue::from_static(v));
            assert_eq!(version(&hs).is_ok(), ok, "{v}");
        }
    }
}
