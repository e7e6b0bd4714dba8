//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) on the same domain core as the
//! native API: an upload created here is the same upload in `GET /v1/uploads/{id}` and
//! its content URL, verified the same way.
//!
//! Extensions: creation, creation-with-upload, creation-defer-length (the length said by a
//! later PATCH's `Upload-Length`), expiration, checksum (sha1, sha256, md5), termination
//! and concatenation (parts uploaded in parallel, then joined: how tus-js-client's
//! `parallelUploads` works). Appends of any length map onto the upload's chunks; one
//! append at a time per upload (a concurrent one is answered 423).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::api::{CreateUpload, UploadStatus};
use common::UploadId;
use std::collections::BTreeMap;
use std::time::SystemTime;
use storage::checksum::ALGORITHMS;
use storage::{BodyChecksum, Concat, UploadMode};

use crate::error::ApiError;
use crate::extract::{body_stream, drain_after, IdPath, DRAIN_LIMIT};
use crate::state::AppState;

/// The protocol version spoken.
pub const VERSION: &str = "1.0.0";
/// Extensions advertised in `Tus-Extension`.
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,expiration,\
checksum,termination,concatenation";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Adds `Tus-Resumable` to a response.
fn tus(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(h("tus-resumable"), HeaderValue::from_static(VERSION));
    resp
}

/// An error answer, with the tus headers clients look for.
fn tus_error(e: ApiError) -> Response {
    let mut resp = tus(e.into_response());
    resp.headers_mut()
        .insert(h("tus-version"), HeaderValue::from_static(VERSION));
    resp
}

/// Every request but OPTIONS must speak our version.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(VERSION) => Ok(()),
        Some(other) => Err(ApiError::PreconditionFailed(format!(
            "Tus-Resumable {other} is not supported; this server speaks {VERSION}"
        ))),
        None => Err(ApiError::PreconditionFailed(format!(
            "the Tus-Resumable header is required (this server speaks {VERSION})"
        ))),
    }
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("{name} must be a non-negative integer"))
                })
        })
        .transpose()
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be
/// absent). Values must be UTF-8 text; keys are unique.
pub fn parse_metadata(raw: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    if raw.trim().is_empty() {
        return Ok(out);
    }
    for pair in raw.split(',') {
        let mut parts = pair.trim().splitn(2, ' ');
        let key = parts.next().unwrap_or_default();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(ApiError::BadRequest(
                "Upload-Metadata keys must be non-empty ASCII without spaces or commas".into(),
            ));
        }
        let value = match parts.next().map(str::trim) {
            None | Some("") => String::new(),
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "Upload-Metadata value of {key:?} is not base64"
                        ))
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    ApiError::BadRequest(format!("Upload-Metadata value of {key:?} is not UTF-8"))
                })?
            }
        };
        if out.insert(key.to_string(), value).is_some() {
            return Err(ApiError::BadRequest(format!(
                "Upload-Metadata repeats {key:?}"
            )));
        }
    }
    Ok(out)
}

/// Writes metadata back in `Upload-Metadata` form.
pub(crate) fn format_metadata(meta: &BTreeMap<String, String>) -> String {
    meta.iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!(
                    "{k} {}",
                    base64::engine::general_purpose::STANDARD.encode(v)
                )
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `Upload-Concat`: `partial`, or `final;` and the parts' URLs (absolute or paths)
/// separated by spaces.
pub fn parse_concat(raw: &str) -> Result<Concat, ApiError> {
    let raw = raw.trim();
    if raw == "partial" {
        return Ok(Concat::Partial);
    }
    let Some(list) = raw.strip_prefix("final;") else {
        return Err(ApiError::BadRequest(
            "Upload-Concat must be `partial` or `final;<url> <url>...`".into(),
        ));
    };
    let parts = list
        .split_whitespace()
        .map(|url| {
            url.trim_end_matches('/')
                .rsplit('/')
                .next()
                .and_then(|id| id.parse::<UploadId>().ok())
                .ok_or_else(|| ApiError::BadRequest(format!("{url:?} is not an upload URL")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if parts.is_empty() {
        return Err(ApiError::BadRequest(
            "a final upload names its parts".into(),
        ));
    }
    Ok(Concat::Final { parts })
}

/// Parses `Upload-Checksum: <algorithm> <base64>`.
pub fn parse_checksum(raw: &str) -> Result<BodyChecksum, ApiError> {
    let (alg, b64) = raw.trim().split_once(' ').ok_or_else(|| {
        ApiError::BadRequest("Upload-Checksum must be `<algorithm> <base64>`".into())
    })?;
    if !ALGORITHMS.contains(&alg) {
        return Err(ApiError::BadRequest(format!(
            "checksum algorithm {alg:?} is not supported; use one of {}",
            ALGORITHMS.join(", ")
        )));
    }
    let digest = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::BadRequest("Upload-Checksum's digest is not base64".into()))?;
    BodyChecksum::new(alg, &digest).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "Upload-Checksum's {alg} digest has the wrong length"
        ))
    })
}

fn expires(status: &UploadStatus) -> Option<HeaderValue> {
    let at: SystemTime = status.expires_at?.into();
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()
}

fn location(base: &str, id: UploadId) -> HeaderValue {
    HeaderValue::from_str(&format!("{base}{id}")).unwrap_or(HeaderValue::from_static("/"))
}

/// `OPTIONS`: what this server supports.
pub async fn options(State(state): State<AppState>) -> Response {
    let max = state.uploads.capabilities().max_upload_size;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let hs = resp.headers_mut();
    hs.insert(h("tus-version"), HeaderValue::from_static(VERSION));
    hs.insert(h("tus-extension"), HeaderValue::from_static(EXTENSIONS));
    hs.insert(h("tus-max-size"), HeaderValue::from(max));
    hs.insert(
        h("tus-checksum-algorithm"),
        HeaderValue::from_static("sha1,sha256,md5"),
    );
    tus(resp)
}

/// `POST`: creation, and creation-with-upload when a body comes along.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match create_inner(state, headers, body).await {
        Ok(r) => tus(r),
        Err(e) => tus_error(e),
    }
}

async fn create_inner(
    state: AppState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let deferred = match headers.get("upload-defer-length") {
        None => false,
        Some(v) if v == "1" => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Upload-Defer-Length must be 1 when present".into(),
            ))
        }
    };
    if deferred && headers.contains_key("upload-length") {
        return Err(ApiError::BadRequest(
            "send Upload-Length or Upload-Defer-Length: 1, not both".into(),
        ));
    }
    let concat = headers
        .get("upload-concat")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Upload-Concat is not ASCII".into()))
                .and_then(parse_concat)
        })
        .transpose()?;
    let metadata = match headers.get("upload-metadata") {
        Some(v) => parse_metadata(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Upload-Metadata is not ASCII".into()))?,
        )?,
        None => BTreeMap::new(),
    };
    if let Some(Concat::Final { parts }) = concat {
        if headers.contains_key("upload-length") {
            return Err(ApiError::BadRequest(
                "a final upload takes no Upload-Length: it is the sum of its parts".into(),
            ));
        }
        let filename = metadata.get("filename").cloned();
        let status = state.uploads.concatenate(parts, filename, metadata).await?;
        let mut resp = StatusCode::CREATED.into_response();
        resp.headers_mut()
            .insert(header::LOCATION, location(&state.tus_path, status.id));
        return Ok(resp);
    }
    if deferred && concat.is_some() {
        return Err(ApiError::BadRequest(
            "a partial upload needs its Upload-Length at creation".into(),
        ));
    }
    let size = match header_u64(&headers, "upload-length")? {
        Some(size) => size,
        None if deferred => 0,
        None => {
            return Err(ApiError::BadRequest(
                "Upload-Length (or Upload-Defer-Length: 1) is required".into(),
            ))
        }
    };
    let has_body = header_u64(&headers, header::CONTENT_LENGTH.as_str())?.unwrap_or(0) > 0
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && content_type(&headers) != Some(OFFSET_OCTET_STREAM) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "an upload body must be {OFFSET_OCTET_STREAM}"
        )));
    }
    let checksum = upload_checksum(&headers)?;
    let req = CreateUpload {
        size,
        chunk_size: None,
        sha256: None,
        filename: metadata.get("filename").cloned(),
        metadata: Some(metadata),
    };
    let created = match concat {
        Some(_) => state.uploads.create_partial(req).await?,
        None if deferred => state.uploads.create_deferred(req).await?,
        None => {
            state
                .uploads
                .create_with_mode(req, None, UploadMode::Stream)
                .await?
        }
    };
    let id = created.status.id;
    let mut status = created.status;
    let mut offset = 0;
    if size == 0 && !deferred {
        let (storage::Completion::Done(s) | storage::Completion::Verifying(s)) =
            state.uploads.complete(id, None).await?;
        status = s;
    } else if has_body {
        let appended = state
            .uploads
            .append(
                id,
                0,
                crate::extract::content_length(&headers)?,
                checksum,
                body_stream(body, state.body_timeout),
            )
            .await?;
        offset = appended.offset;
        if let Some(s) = appended.completed {
            status = s;
        }
    }
    let mut resp = StatusCode::CREATED.into_response();
    let hs = resp.headers_mut();
    hs.insert(header::LOCATION, location(&state.tus_path, id));
    hs.insert(h("upload-offset"), HeaderValue::from(offset));
    if let Some(v) = expires(&status) {
        hs.insert(h("upload-expires"), v);
    }
    Ok(resp)
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim())
}

fn upload_checksum(headers: &HeaderMap) -> Result<Option<BodyChecksum>, ApiError> {
    headers
        .get("upload-checksum")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Upload-Checksum is not ASCII".into()))
                .and_then(parse_checksum)
        })
        .transpose()
}

/// `HEAD`: where to resume.
pub async fn head(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        check_version(&headers)?;
        let storage::Position {
            record,
            offset,
            status,
        } = state.uploads.offset(id).await?;
        let mut resp = StatusCode::OK.into_response();
        let hs = resp.headers_mut();
        hs.insert(h("upload-offset"), HeaderValue::from(offset));
        if record.length_deferred {
            hs.insert(h("upload-defer-length"), HeaderValue::from_static("1"));
        } else {
            hs.insert(h("upload-length"), HeaderValue::from(record.size));
        }
        hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if !record.metadata.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&format_metadata(&record.metadata)) {
                hs.insert(h("upload-metadata"), v);
            }
        }
        if let Some(v) = expires(&status) {
            hs.insert(h("upload-expires"), v);
        }
        let concat = match &record.concat {
            Some(Concat::Partial) => Some("partial".to_string()),
            Some(Concat::Final { parts }) => Some(format!(
                "final;{}",
                parts
                    .iter()
                    .map(|p| format!("{}{p}", state.tus_path))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            None => None,
        };
        if let Some(v) = concat.and_then(|c| HeaderValue::from_str(&c).ok()) {
            hs.insert(h("upload-concat"), v);
        }
        Ok::<_, ApiError>(resp)
    };
    match inner.await {
        Ok(r) => tus(r),
        Err(e) => {
            // HEAD answers carry no body.
            let mut r = tus_error(e);
            *r.body_mut() = Body::empty();
            r
        }
    }
}

/// `PATCH`: appends at `Upload-Offset`.
pub async fn patch(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let inner = async {
        check_version(&headers)?;
        if content_type(&headers) != Some(OFFSET_OCTET_STREAM) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "PATCH bodies must be {OFFSET_OCTET_STREAM}"
            )));
        }
        let offset = header_u64(&headers, "upload-offset")?
            .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
        let checksum = upload_checksum(&headers)?;
        let length = header_u64(&headers, "upload-length")?;
        if let Some(length) = length {
            check_length(&state, id, offset, length, &headers).await?;
        }
        let mut stream = body_stream(body, state.body_timeout);
        let result = state
            .uploads
            .append(
                id,
                offset,
                crate::extract::content_length(&headers)?,
                checksum,
                &mut stream,
            )
            .await;
        let small = header_u64(&headers, header::CONTENT_LENGTH.as_str())
            .ok()
            .flatten()
            .is_some_and(|l| l <= DRAIN_LIMIT);
        if let (Err(e), true) = (&result, small) {
            drain_after(e, &mut stream).await;
        }
        let appended = result?;
        // Said once the bytes are stored, so a refused PATCH leaves the length unknown.
        let completed = match (appended.completed, length) {
            (Some(s), _) => Some(s),
            (None, Some(length)) => state.uploads.declare_length(id, length).await?,
            (None, None) => None,
        };
        let status = match completed {
            Some(s) => s,
            None => state.uploads.status(id).await?,
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let hs = resp.headers_mut();
        hs.insert(h("upload-offset"), HeaderValue::from(appended.offset));
        if let Some(v) = expires(&status) {
            hs.insert(h("upload-expires"), v);
        }
        Ok(resp)
    };
    match inner.await {
        Ok(r) => tus(r),
        Err(e) => tus_error(e),
    }
}

/// Checks a PATCH's `Upload-Length` (creation-defer-length) before its body is appended:
/// a known length must be the same, a deferred one must hold what the PATCH ends at.
/// Nothing is checked for a PATCH at the wrong offset (the append answers 409).
async fn check_length(
    state: &AppState,
    id: UploadId,
    offset: u64,
    length: u64,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let position = state.uploads.offset(id).await?;
    if position.offset != offset {
        return Ok(());
    }
    if !position.record.length_deferred {
        return Ok(position.record.same_length(length)?);
    }
    let body = header_u64(headers, header::CONTENT_LENGTH.as_str())?.unwrap_or(0);
    if offset + body > length {
        return Err(ApiError::BadRequest(format!(
            "Upload-Length is {length}, but this PATCH ends at byte {}",
            offset + body
        )));
    }
    Ok(())
}

/// `DELETE`: termination.
pub async fn delete(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        check_version(&headers)?;
        state.uploads.cancel(id).await?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    };
    match inner.await {
        Ok(r) => tus(r),
        Err(e) => tus_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip_and_rejects() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(parse_metadata(&format_metadata(&m)).unwrap(), m);
        assert!(parse_metadata("").unwrap().is_empty());
        for bad in ["a !!!", "a YQ==,a YQ==", ",", "k /w==", "a\tb YQ=="] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn concat_header() {
        let a = UploadId::new_random();
        let b = UploadId::new_random();
        assert_eq!(parse_concat("partial").unwrap(), Concat::Partial);
        assert_eq!(
            parse_concat(&format!("final;/files/{a} http://h:1/files/{b}")).unwrap(),
            Concat::Final { parts: vec![a, b] }
        );
        for bad in ["", "final;", "final;/files/x", "whole"] {
            assert!(parse_concat(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checksum_header() {
        let c = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(c.algorithm(), "sha1");
        assert!(parse_checksum("crc32 AAAA").is_err());
        assert!(parse_checksum("sha256 AAAA").is_err());
        assert!(parse_checksum("sha256").is_err());
    }
}
