//! tus 1.0.0 (<https://tus.io/protocols/resumable-upload>) on the same domain core as the
//! native API: an upload created here is the same upload in `GET /v1/uploads/{id}` and
//! its content URL, verified the same way.
//!
//! Extensions: creation, creation-with-upload, creation-defer-length (the length said by a
//! later PATCH's `Upload-Length`), expiration, checksum (sha1, sha256, md5), termination
//! and concatenation (parts uploaded in parallel, then joined: how tus-js-client's
//! `parallelUploads` works). Appends of any length map onto the upload's chunks; one
//! append at a time per upload (a concurrent one is answered 423).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::api::UploadStatus;
use common::UploadId;
use storage::checksum::ALGORITHMS;
use storage::{Append, BodyChecksum, Concat, Dialect, NewStream};

use crate::error::{ApiError, Protocol};
use crate::extract::{content_length, IdPath, UploadBody};
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

/// Whether `path` is under the tus endpoint at `base` (`/files/`).
pub fn under(base: &str, path: &str) -> bool {
    path.starts_with(base) || path == base.trim_end_matches('/')
}

/// Every request under the tus endpoint passes here before it is routed: a `POST` with
/// `X-HTTP-Method-Override` is the method it names (for clients that cannot send PATCH or
/// DELETE; tus says a server MUST interpret it), and every answer, the router's own 404 and
/// 405 included, carries `Tus-Resumable`.
pub async fn headers(
    State(base): State<std::sync::Arc<str>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !under(&base, req.uri().path()) {
        return next.run(req).await;
    }
    if req.method() == Method::POST {
        let named = req
            .headers()
            .get("x-http-method-override")
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
        if let Some(m) = named.filter(|m| [Method::PATCH, Method::DELETE, Method::HEAD].contains(m))
        {
            *req.method_mut() = m;
        }
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(h("tus-resumable"), HeaderValue::from_static(VERSION));
    resp
}

/// An answer in tus's dialect.
fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.render(Protocol::Tus))
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
/// separated by spaces, kept as they came.
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
    let urls: Vec<String> = list.split_whitespace().map(str::to_string).collect();
    let parts = urls
        .iter()
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
    Ok(Concat::Final { parts, urls })
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

/// A request's body as an append at `offset`: its length, its checksum, the upload's
/// length if it says it. Bodies must be `application/offset+octet-stream`.
fn append_of(headers: &HeaderMap, offset: u64) -> Result<Append, ApiError> {
    let body_len = content_length(headers)?;
    let has_body = body_len.unwrap_or(0) > 0 || headers.contains_key(header::TRANSFER_ENCODING);
    Ok(Append {
        offset,
        body_len,
        has_body,
        length: header_u64(headers, "upload-length")?,
        last: false,
        checksum: upload_checksum(headers)?,
        file_sha256: None,
    })
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
    resp
}

/// What a creation request asks for.
struct Creation {
    new: NewStream,
    first: Append,
    concat: Option<Concat>,
}

fn creation(headers: &HeaderMap) -> Result<Creation, ApiError> {
    check_version(headers)?;
    let defer_length = match headers.get("upload-defer-length") {
        None => false,
        Some(v) if v == "1" => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Upload-Defer-Length must be 1 when present".into(),
            ))
        }
    };
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
    let mut first = append_of(headers, 0)?;
    if first.has_body && content_type(headers) != Some(OFFSET_OCTET_STREAM) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "an upload body must be {OFFSET_OCTET_STREAM}"
        )));
    }
    let new = NewStream {
        length: first.length.take(),
        defer_length,
        partial: concat == Some(Concat::Partial),
        filename: metadata.get("filename").cloned(),
        metadata,
        sha256: None,
    };
    Ok(Creation { new, first, concat })
}

/// `POST`: creation, and creation-with-upload when a body comes along.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: UploadBody,
) -> Response {
    let created = async {
        let Creation { new, first, concat } = match creation(&headers) {
            Ok(c) => c,
            Err(e) => return body.refuse(e).await,
        };
        let mut body = body;
        let appended = match concat {
            Some(Concat::Final { parts, urls }) => {
                if new.length.is_some() {
                    let e = "a final upload takes no Upload-Length: it is the sum of its parts";
                    return body.refuse(ApiError::BadRequest(e.into())).await;
                }
                let (filename, metadata) = (new.filename, new.metadata);
                state
                    .uploads
                    .concatenate(parts, urls, filename, metadata)
                    .await
            }
            _ => {
                state
                    .uploads
                    .create_stream(Dialect::Tus, new, first, &mut body, |_| {})
                    .await
            }
        };
        let appended = body.settle(appended).await?;
        let mut resp = StatusCode::CREATED.into_response();
        let hs = resp.headers_mut();
        hs.insert(
            header::LOCATION,
            location(&state.tus_path, appended.status.id),
        );
        hs.insert(h("upload-offset"), HeaderValue::from(appended.offset));
        if let Some(v) = expires(&appended.status) {
            hs.insert(h("upload-expires"), v);
        }
        Ok(resp)
    };
    answer(created.await)
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
        } = state.uploads.position(id).await?;
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
            // As the creating request named the parts.
            Some(Concat::Final { urls, .. }) if !urls.is_empty() => {
                Some(format!("final;{}", urls.join(" ")))
            }
            Some(Concat::Final { parts, .. }) => Some(format!(
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
    let mut resp = answer(inner.await);
    // HEAD answers carry no body.
    *resp.body_mut() = Body::empty();
    resp
}

/// `PATCH`: appends at `Upload-Offset`.
pub async fn patch(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: UploadBody,
) -> Response {
    let inner = async {
        let parsed = check_version(&headers).and_then(|()| {
            if content_type(&headers) != Some(OFFSET_OCTET_STREAM) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "PATCH bodies must be {OFFSET_OCTET_STREAM}"
                )));
            }
            let offset = header_u64(&headers, "upload-offset")?
                .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
            append_of(&headers, offset)
        });
        let req = match parsed {
            Ok(r) => r,
            Err(e) => return body.refuse(e).await,
        };
        let mut body = body;
        let appended = state
            .uploads
            .append_stream(id, Dialect::Tus, req, &mut body)
            .await;
        let appended = body.settle(appended).await?;
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let hs = resp.headers_mut();
        hs.insert(h("upload-offset"), HeaderValue::from(appended.offset));
        if let Some(v) = expires(&appended.status) {
            hs.insert(h("upload-expires"), v);
        }
        Ok(resp)
    };
    answer(inner.await)
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
    answer(inner.await)
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
            Concat::Final {
                parts: vec![a, b],
                urls: vec![format!("/files/{a}"), format!("http://h:1/files/{b}")]
            }
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
