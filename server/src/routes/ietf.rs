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
use common::api::{CreateUpload, UploadState, UploadStatus};
use common::{Sha256Digest, UploadId, PROBLEM_JSON};
use storage::record::StoredState;
use storage::{BodyChecksum, UploadMode};

use crate::error::ApiError;
use crate::extract::{body_stream, content_length, drain_after, IdPath, DRAIN_LIMIT};
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
/// Prefix of the draft's problem type URIs.
const PROBLEM_TYPES: &str = "https://iana.org/assignments/http-problem-types#";

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version(u64);

fn version(headers: &HeaderMap) -> Result<Version, Failure> {
    let Some(v) = headers.get("upload-draft-interop-version") else {
        return Ok(Version(INTEROP_VERSION));
    };
    match v.to_str().ok().and_then(sf_integer) {
        Some(n) if INTEROP_VERSIONS.contains(&n) => Ok(Version(n)),
        _ => Err(ApiError::BadRequest(format!(
            "Upload-Draft-Interop-Version {:?} is not supported; this server speaks {}",
            String::from_utf8_lossy(v.as_bytes()),
            INTEROP_VERSIONS.map(|n| n.to_string()).join(", ")
        ))
        .into()),
    }
}

/// The bare item of a structured field, without its parameters.
fn bare_item(raw: &str) -> &str {
    raw.split(';').next().unwrap_or("").trim()
}

/// A structured-field Integer that is not negative (RFC 9651 §3.3.1: at most 15 digits).
pub(crate) fn sf_integer(raw: &str) -> Option<u64> {
    let s = bare_item(raw);
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A structured-field Boolean (`?0`, `?1`).
pub(crate) fn sf_boolean(raw: &str) -> Option<bool> {
    match bare_item(raw) {
        "?1" => Some(true),
        "?0" => Some(false),
        _ => None,
    }
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
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|s| !s.is_empty())
}

/// The SHA-256 in an RFC 9530 digest header (`Repr-Digest`, `Content-Digest`); other
/// algorithms are not checked.
fn digest_header(headers: &HeaderMap, name: &str) -> Result<Option<Sha256Digest>, Failure> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII")))?;
    Sha256Digest::from_header(s).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")).into())
}

/// `Content-Digest` as a check of one request's body: all or nothing.
fn content_checksum(headers: &HeaderMap) -> Result<Option<BodyChecksum>, Failure> {
    Ok(digest_header(headers, "content-digest")?.and_then(|d| BodyChecksum::new("sha256", &d.0)))
}

/// The body's length when known in advance: `Content-Length`, or 0 when there is neither
/// that nor `Transfer-Encoding` (an HTTP/1.1 request without either has no body).
fn known_length(headers: &HeaderMap) -> Result<Option<u64>, Failure> {
    Ok(match content_length(headers)? {
        Some(l) => Some(l),
        None if !headers.contains_key(header::TRANSFER_ENCODING) => Some(0),
        None => None,
    })
}

/// Whether the request has a body (a non-zero `Content-Length`, or chunked).
fn has_body(headers: &HeaderMap) -> Result<bool, Failure> {
    Ok(
        content_length(headers)?.unwrap_or(0) > 0
            || headers.contains_key(header::TRANSFER_ENCODING),
    )
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

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits: `from_str_radix` alone would also take `+F`.
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|n| !n.is_empty())
}

/// What went wrong, as the draft's problem types where it defines one.
enum Kind {
    /// Any other error, as everywhere else on this server.
    Api(ApiError),
    /// `Upload-Offset` is not the upload's offset.
    MismatchingOffset { expected: u64, provided: u64 },
    /// The upload is complete; nothing can be appended.
    CompletedUpload(String),
    /// The request's length indications contradict each other or the upload's length.
    InconsistentLength(String),
}

/// An error answer and the headers that go with it (boxed: it travels in `Result`s).
struct Failure(Box<FailureParts>);

struct FailureParts {
    kind: Kind,
    headers: HeaderMap,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Kind::Api(e).into()
    }
}

impl From<storage::Error> for Failure {
    fn from(e: storage::Error) -> Self {
        ApiError::Domain(e).into()
    }
}

impl From<Kind> for Failure {
    fn from(kind: Kind) -> Self {
        Failure(Box::new(FailureParts {
            kind,
            headers: HeaderMap::new(),
        }))
    }
}

impl Failure {
    fn with(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.0.headers.insert(h(name), value);
        self
    }

    fn into_response(self) -> Response {
        let draft = |status: StatusCode, slug: &str, title: &str, detail: String| {
            serde_json::json!({
                "type": format!("{PROBLEM_TYPES}{slug}"),
                "title": title,
                "status": status.as_u16(),
                "detail": detail,
            })
        };
        let FailureParts { kind, headers } = *self.0;
        let (base, body) = match kind {
            Kind::Api(e) => (e.into_response(), None),
            Kind::MismatchingOffset { expected, provided } => {
                let mut doc = draft(
                    StatusCode::CONFLICT,
                    "mismatching-upload-offset",
                    "Mismatching upload offset",
                    format!(
                        "the upload's offset is {expected}, but the request starts at {provided}"
                    ),
                );
                doc["expected-offset"] = expected.into();
                doc["provided-offset"] = provided.into();
                (StatusCode::CONFLICT.into_response(), Some(doc))
            }
            Kind::CompletedUpload(detail) => (
                StatusCode::BAD_REQUEST.into_response(),
                Some(draft(
                    StatusCode::BAD_REQUEST,
                    "completed-upload",
                    "Upload is completed",
                    detail,
                )),
            ),
            Kind::InconsistentLength(detail) => (
                StatusCode::BAD_REQUEST.into_response(),
                Some(draft(
                    StatusCode::BAD_REQUEST,
                    "inconsistent-upload-length",
                    "Inconsistent upload length values",
                    detail,
                )),
            ),
        };
        let mut resp = match body {
            None => base,
            Some(doc) => {
                let mut r = (base.status(), doc.to_string()).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
                r
            }
        };
        resp.headers_mut().extend(headers);
        resp
    }
}

/// `Upload-Limit`: the largest upload, and how long an idle upload lives (`max-age`, and
/// `expires` for interop version 6, which named it so).
fn limits(state: &AppState, status: Option<&UploadStatus>, v: Version) -> HeaderValue {
    let mut parts = vec![format!(
        "max-size={}",
        state.uploads.capabilities().max_upload_size
    )];
    if let Some(at) = status.and_then(|s| s.expires_at) {
        let secs = (at - time::OffsetDateTime::now_utc())
            .whole_seconds()
            .max(0);
        parts.push(format!("max-age={secs}"));
        if v.0 == 6 {
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
fn completed_answer(state: &AppState, status: &UploadStatus, v: Version) -> Response {
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

/// Reads and drops a small unread body, so that the error answer reaches a client that is
/// still sending (as the tus endpoint does); larger ones are cut with `Connection: close`.
async fn discard(headers: &HeaderMap, body: Body, state: &AppState) {
    if content_length(headers)
        .ok()
        .flatten()
        .is_some_and(|l| l > 0 && l <= DRAIN_LIMIT)
    {
        let mut stream = body_stream(body, state.body_timeout);
        drain_after(&storage::Error::Invalid(String::new()), &mut stream).await;
    }
}

/// An append refused by the domain core, as the draft names it.
fn append_failure(e: storage::Error, v: Version, nonempty: bool) -> Failure {
    use storage::Error as E;
    match e {
        E::OffsetMismatch { expected, got } => Failure::from(Kind::MismatchingOffset {
            expected,
            provided: got,
        })
        .with("upload-offset", HeaderValue::from(expected)),
        E::WrongState(s @ ("completed" | "completing")) => completed_failure(v, nonempty, s),
        E::Invalid(msg) => Kind::InconsistentLength(msg).into(),
        // tus answers 460 for its Upload-Checksum; here it is RFC 9530's Content-Digest.
        E::BodyChecksumMismatch { .. } => ApiError::BadRequest(
            "the body does not match its Content-Digest; nothing was appended".into(),
        )
        .into(),
        e @ E::Sha256Mismatch { .. } => {
            Failure::from(e).with("upload-complete", complete_value(true))
        }
        e => e.into(),
    }
}

/// An append to a complete upload: from interop version 7 on, a non-empty one is an
/// inconsistent length; an empty one, and any in earlier versions, `completed-upload`.
fn completed_failure(v: Version, nonempty: bool, state: &str) -> Failure {
    let failure = if nonempty && v.0 >= 7 {
        Kind::InconsistentLength(format!("the upload is {state}: it takes no more bytes"))
    } else {
        Kind::CompletedUpload(format!("the upload is {state}; nothing can be appended"))
    };
    Failure::from(failure).with("upload-complete", complete_value(true))
}

/// `OPTIONS`: resumable uploads are supported here, within these limits.
pub async fn options(State(state): State<AppState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let hs = resp.headers_mut();
    hs.insert(h("accept-patch"), HeaderValue::from_static(PARTIAL_UPLOAD));
    hs.insert(
        h("upload-limit"),
        limits(&state, None, Version(INTEROP_VERSION)),
    );
    resp
}

/// `POST /uploads/`: creates an upload (`Upload-Complete` required) and appends the body.
pub async fn create(
    State(state): State<AppState>,
    interim: Option<Extension<Interim>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let interim = interim.map(|Extension(i)| i);
    match create_inner(&state, &headers, body, interim).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn create_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    interim: Option<Interim>,
) -> Result<Response, Failure> {
    let checked = async {
        let v = version(headers)?;
        let Some(complete) = upload_complete(headers) else {
            let hint = if headers.contains_key("tus-resumable") {
                format!(
                    "; tus requests go to the tus endpoint at {}",
                    state.tus_path
                )
            } else {
                String::new()
            };
            return Err(Failure::from(ApiError::BadRequest(format!(
                "Upload-Complete (?0 or ?1) is required to create a resumable upload{hint}"
            ))));
        };
        let declared = integer_header(headers, "upload-length");
        let content_len = known_length(headers)?;
        // Upload-Complete: ?1 with Content-Length says the length too (draft §4.1.3).
        let implied = content_len.filter(|_| complete);
        let size = match (declared, implied) {
            (Some(a), Some(b)) if a != b => {
                return Err(Kind::InconsistentLength(format!(
                    "Upload-Length is {a}, but the request completes the upload with {b} bytes"
                ))
                .into())
            }
            (Some(a), _) => Some(a),
            (None, Some(b)) => Some(b),
            // Not known yet: declared by the append that completes the upload.
            (None, None) => None,
        };
        if let Some((len, size)) = content_len.zip(size).filter(|(l, s)| l > s) {
            return Err(Kind::InconsistentLength(format!(
                "the body has {len} bytes, more than the upload's length of {size}"
            ))
            .into());
        }
        let repr = digest_header(headers, "repr-digest")?;
        let checksum = content_checksum(headers)?;
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
        let req = CreateUpload {
            size: size.unwrap_or(0),
            chunk_size: None,
            sha256: repr,
            filename,
            metadata: Some(metadata),
        };
        Ok((v, complete, size, checksum, req))
    }
    .await;
    let (v, complete, size, checksum, req) = match checked {
        Ok(c) => c,
        Err(f) => {
            discard(headers, body, state).await;
            return Err(f);
        }
    };
    let created = match size {
        Some(_) => {
            state
                .uploads
                .create_with_mode(req, None, UploadMode::Stream)
                .await
        }
        None => state.uploads.create_deferred(req).await,
    };
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            let too_large = matches!(e, storage::Error::TooLarge { .. });
            discard(headers, body, state).await;
            let f = Failure::from(e);
            return Err(if too_large {
                f.with("upload-limit", limits(state, None, v))
            } else {
                f
            });
        }
    };
    let id = created.status.id;
    // From here on every answer names the upload, so the client can resume it: the 104
    // names it before the body is read, so that a client whose request breaks off can
    // resume even the upload this request created.
    if let Some(interim) = interim {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, location(id));
        h.insert("upload-limit", limits(state, Some(&created.status), v));
        h.insert("upload-draft-interop-version", HeaderValue::from(v.0));
        interim.send(104, "Upload Resumption Supported", &h);
    }
    let with_location = |f: Failure| f.with("location", location(id));
    let mut offset = 0;
    let mut status = created.status;
    if size == Some(0) {
        let (storage::Completion::Done(s) | storage::Completion::Verifying(s)) = state
            .uploads
            .complete(id, None)
            .await
            .map_err(|e| with_location(append_failure(e, v, false)))?;
        status = s;
    } else if has_body(headers)? {
        let mut stream = body_stream(body, state.body_timeout);
        let result = state
            .uploads
            .append(id, 0, content_length(headers)?, checksum, &mut stream)
            .await;
        let appended = match result {
            Ok(a) => a,
            Err(e) => {
                if content_length(headers)
                    .ok()
                    .flatten()
                    .is_some_and(|l| l <= DRAIN_LIMIT)
                {
                    drain_after(&e, &mut stream).await;
                }
                return Err(with_location(append_failure(e, v, true)));
            }
        };
        offset = appended.offset;
        if let Some(s) = appended.completed {
            status = s;
        }
    }
    if size.is_none() && complete {
        // The body was the whole upload: its end is the length.
        if let Some(s) = state
            .uploads
            .declare_length(id, offset)
            .await
            .map_err(|e| with_location(append_failure(e, v, false)))?
        {
            status = s;
        }
    }
    if is_done(status.state) {
        let mut resp = completed_answer(state, &status, v);
        if !complete {
            // Complete because its length was reached: still the answer that created it.
            *resp.status_mut() = StatusCode::CREATED;
        }
        return Ok(resp);
    }
    if complete {
        return Err(with_location(
            Failure::from(Kind::InconsistentLength(format!(
                "the request said it completes the upload, but its body ended at {offset} of \
                 {} bytes; append the rest at that offset",
                size.unwrap_or(offset)
            )))
            .with("upload-offset", HeaderValue::from(offset))
            .with("upload-complete", complete_value(false)),
        ));
    }
    let mut resp = status_answer(StatusCode::CREATED, &state.uploads.status(id).await?);
    let hs = resp.headers_mut();
    hs.insert(header::LOCATION, location(id));
    hs.insert(h("upload-offset"), HeaderValue::from(offset));
    hs.insert(h("upload-complete"), complete_value(false));
    if let Some(size) = size {
        hs.insert(h("upload-length"), HeaderValue::from(size));
    }
    hs.insert(h("upload-limit"), limits(state, Some(&status), v));
    Ok(resp)
}

/// `HEAD /uploads/{id}`: where to resume.
pub async fn offset(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        let v = version(&headers)?;
        let storage::Position {
            record,
            offset: stored,
            status,
        } = state.uploads.offset(id).await?;
        if record.state == StoredState::Failed {
            // Its bytes were discarded: the upload resource is no longer usable.
            return Err(Failure::from(storage::Error::Gone("failed")));
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
        Ok::<_, Failure>(resp)
    };
    match inner.await {
        Ok(r) => r,
        Err(f) => {
            let mut r = f.into_response();
            *r.body_mut() = Body::empty();
            r
        }
    }
}

/// `PATCH /uploads/{id}`: appends at `Upload-Offset`; `Upload-Complete: ?1` on the last one.
pub async fn append(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let result = append_inner(&state, id, &headers, &mut body).await;
    if let Some(b) = body {
        // Refused before the body was read.
        if result.is_err() {
            discard(&headers, b, &state).await;
        }
    }
    match result {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn append_inner(
    state: &AppState,
    id: UploadId,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<Response, Failure> {
    let v = version(headers)?;
    let media = media_type(headers);
    // Draft -03 (interop version 5) had no media type for appends.
    if media.as_deref() != Some(PARTIAL_UPLOAD) && !(v.0 == 5 && media.is_none()) {
        return Err(
            ApiError::UnsupportedMediaType(format!("appends must be {PARTIAL_UPLOAD}")).into(),
        );
    }
    let provided = integer_header(headers, "upload-offset").ok_or_else(|| {
        ApiError::BadRequest("Upload-Offset (a non-negative integer) is required".into())
    })?;
    let complete = upload_complete(headers).unwrap_or(false);
    let content_len = known_length(headers)?;
    let nonempty = has_body(headers)?;
    let repr = digest_header(headers, "repr-digest")?;
    let checksum = content_checksum(headers)?;

    let storage::Position {
        record,
        offset: current,
        status,
    } = state.uploads.offset(id).await?;
    match record.state {
        StoredState::Failed => {
            return Err(match (record.declared_sha256, record.sha256) {
                (Some(expected), Some(actual)) => {
                    Failure::from(storage::Error::Sha256Mismatch { expected, actual })
                }
                _ => Failure::from(storage::Error::Gone("failed")),
            }
            .with("upload-complete", complete_value(true)))
        }
        StoredState::Completed | StoredState::Completing => {
            // The client completing an upload whose length was already reached.
            if complete && !nonempty && provided == record.size {
                if let (Some(r), Some(s)) = (repr, status.sha256) {
                    if r != s {
                        return Err(Failure::from(storage::Error::Sha256Mismatch {
                            expected: r,
                            actual: s,
                        })
                        .with("upload-complete", complete_value(true)));
                    }
                }
                return Ok(completed_answer(state, &status, v));
            }
            return Err(completed_failure(v, nonempty, record.state.name()));
        }
        _ => {}
    }
    if provided != current {
        return Err(Failure::from(Kind::MismatchingOffset {
            expected: current,
            provided,
        })
        .with("upload-offset", HeaderValue::from(current)));
    }
    // An upload created without a length learns it from Upload-Length, or from the
    // completing append's Content-Length: checked as a known length is, and said only
    // once the append is stored, so a refused request leaves it unknown.
    let said = integer_header(headers, "upload-length");
    if let Some(len) = said.filter(|l| !record.length_deferred && *l != record.size) {
        return Err(Kind::InconsistentLength(format!(
            "Upload-Length is {len}, but the upload's length is {}",
            record.size
        ))
        .into());
    }
    let declared = said
        .or_else(|| content_len.filter(|_| complete).map(|l| current + l))
        .filter(|_| record.length_deferred);
    if let Some(len) = declared.filter(|l| *l < current) {
        return Err(Kind::InconsistentLength(format!(
            "Upload-Length is {len}, less than the {current} bytes stored"
        ))
        .into());
    }
    let size = declared.unwrap_or(record.size);
    let remaining = size - current;
    if let Some(len) = content_len {
        if record.length_deferred && declared.is_none() && len > remaining {
            // No length yet: the ceiling is the largest upload, not this one's length.
            return Err(Failure::from(storage::Error::TooLarge {
                size: current + len,
                max: record.size,
            })
            .with("upload-limit", limits(state, Some(&status), v)));
        }
        if len > remaining || (complete && len != remaining) {
            return Err(Kind::InconsistentLength(format!(
                "the body has {len} bytes, but {remaining} remain of the upload's {size}"
            ))
            .into());
        }
    }
    if let (Some(r), Some(d)) = (repr, record.declared_sha256) {
        if r != d {
            return Err(ApiError::BadRequest(format!(
                "Repr-Digest says {r}, but {d} was declared at creation"
            ))
            .into());
        }
    }
    let mut stream = body_stream(body.take().unwrap_or_default(), state.body_timeout);
    let appended = match state
        .uploads
        .append(id, provided, content_len, checksum, &mut stream)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            if content_len.is_some_and(|l| l <= DRAIN_LIMIT) {
                drain_after(&e, &mut stream).await;
            }
            return Err(append_failure(e, v, nonempty));
        }
    };
    // The length learnt (or, for a chunked `?1` body, where it ended) is said now.
    let learnt = declared.or_else(|| complete.then_some(appended.offset));
    let completed = match (appended.completed, learnt) {
        (Some(s), _) => Some(s),
        (None, Some(len)) if record.length_deferred => state
            .uploads
            .declare_length(id, len)
            .await
            .map_err(|e| append_failure(e, v, false))?,
        (None, _) => None,
    };
    if let Some(status) = completed {
        // A Repr-Digest that only the completing request carried: checked now.
        if let (Some(r), None, Some(actual)) = (repr, record.declared_sha256, status.sha256) {
            if r != actual && status.state == UploadState::Completed {
                state.uploads.cancel(id).await?;
                return Err(Failure::from(storage::Error::Sha256Mismatch {
                    expected: r,
                    actual,
                })
                .with("upload-complete", complete_value(true)));
            }
        }
        return Ok(completed_answer(state, &status, v));
    }
    if complete {
        return Err(Failure::from(Kind::InconsistentLength(format!(
            "the request said it completes the upload, but it ended at {} of {size} bytes",
            appended.offset
        )))
        .with("upload-offset", HeaderValue::from(appended.offset))
        .with("upload-complete", complete_value(false)));
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let hs = resp.headers_mut();
    hs.insert(h("upload-offset"), HeaderValue::from(appended.offset));
    hs.insert(h("upload-complete"), complete_value(false));
    Ok(resp)
}

/// `DELETE /uploads/{id}`: cancels the upload; later requests answer 410.
pub async fn cancel(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        version(&headers)?;
        state.uploads.cancel(id).await?;
        Ok::<_, Failure>(StatusCode::NO_CONTENT.into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
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
        assert_eq!(version(&hs).ok(), Some(Version(INTEROP_VERSION)));
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
