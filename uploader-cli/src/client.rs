//! A typed client for the native API v1: each method is one request and returns the
//! `common` wire types, or an [`Error`] carrying the server's problem `detail`.
//!
//! One `reqwest::Client` is shared by every request, so connections are kept alive and
//! reused. Retrying is the caller's business ([`crate::retry`]); this module only says
//! whether an error is worth a retry.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, RANGE, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use common::api::{
    Capabilities, ChunkReceipt, CompleteUpload, CreateUpload, Problem, UploadList, UploadState,
    UploadStatus,
};
use common::{headers, Sha256Digest, UploadId};

use crate::error::{Error, Result};
use crate::limit::RateLimiter;

/// The API client for one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    display: String,
    /// Limit for requests without a streamed body (create, status, complete, cancel).
    timeout: Duration,
    /// Whether a token is sent (a 401 then means a refused token, not a missing one).
    has_token: bool,
}

/// The answer to `POST /complete`.
#[derive(Debug)]
pub enum Completion {
    /// 200: verified and published.
    Done(UploadStatus),
    /// 202: verification goes on; poll the status.
    Verifying,
}

/// How a chunk's body is sent: rate limit, stall detection and a byte counter.
#[derive(Clone)]
pub struct SendOptions {
    /// Shared total rate limit, if any.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Abort the request when no byte moved for this long.
    pub stall_timeout: Duration,
    /// Counts body bytes handed to the connection, for the progress bar.
    pub on_sent: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Parses and checks `--server`: an `http://` or `https://` URL.
pub fn parse_server_url(s: &str) -> std::result::Result<String, String> {
    if !s.contains("://") {
        return Err(format!(
            "{s}: no scheme; did you mean http://{}?",
            s.trim().trim_start_matches('/')
        ));
    }
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{s}: unsupported scheme {:?}, expected https:// or http://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s}: the URL has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s}: the server URL must not have a query or fragment"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Trust roots added by `--cacert`, process-wide like `SSL_CERT_FILE`.
static EXTRA_ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();

/// Trusts the certificates of the PEM file `path` (`--cacert`: a private CA) besides the
/// system's, for every client made afterwards. A file that cannot be read or holds no
/// certificate is a usage error naming it.
pub fn trust_ca_file(path: &Path) -> Result<()> {
    let flag = || format!("--cacert {}", path.display());
    let pem = std::fs::read(path).map_err(|e| Error::Usage(format!("{}: {e}", flag())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Usage(format!("{}: not PEM certificates: {e}", flag())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no certificate in the file (expected PEM `-----BEGIN CERTIFICATE-----`)",
            flag()
        )));
    }
    let _ = EXTRA_ROOTS.set(certs);
    Ok(())
}

impl Client {
    /// A client for the server at `server` (already checked by [`parse_server_url`]),
    /// sending `token` as a bearer token when given.
    pub fn new(server: &str, token: Option<&str>) -> Result<Self> {
        let display = parse_server_url(server).map_err(Error::Usage)?;
        let base = Url::parse(&format!("{display}/")).map_err(|e| Error::Usage(e.to_string()))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Usage("the token must be printable ASCII".into()))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let extra = EXTRA_ROOTS.get().cloned().unwrap_or_default();
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("uploader/", env!("CARGO_PKG_VERSION")))
            // Downloads over HTTP/2: windows that keep a fast link full.
            .http2_initial_stream_window_size(8 << 20)
            .http2_initial_connection_window_size(32 << 20);
        let builder = if base.scheme() == "https" {
            // The system's roots (or SSL_CERT_FILE's) and --cacert's; HTTP/2 when the
            // server offers it (ALPN). Never a request in clear text, redirects included.
            builder.tls_certs_merge(extra).https_only(true)
        } else {
            // Plain http needs no roots: none are loaded, so that a machine without any
            // can still talk to a local server.
            builder.tls_certs_only(extra)
        };
        let http = builder
            .build()
            .map_err(|e| Error::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            display,
            timeout: Duration::from_secs(30),
            has_token: token.is_some(),
        })
    }

    /// Sets the time limit of requests without a streamed body; a stalled one is aborted
    /// (and, being a timeout, retried by the caller).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.display
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| Error::Usage(format!("bad URL path {path}: {e}")))
    }

    /// The URL where a completed upload's content is served.
    pub fn content_url(&self, id: &UploadId) -> String {
        format!("{}/v1/uploads/{id}/content", self.display)
    }

    /// `GET /v1`. Connection failures here mean the server is down or the URL is wrong,
    /// so they are reported as [`Error::Unreachable`] and anything but the API as
    /// [`Error::NotAnUploadServer`].
    pub async fn capabilities(&self) -> Result<Capabilities> {
        let url = self.url("v1")?;
        let resp = self
            .http
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| match tls_failure(&e) {
                Some(usage) => usage,
                None => Error::Unreachable {
                    url: self.display.clone(),
                    reason: describe(&e),
                },
            })?;
        let status = resp.status();
        if is_retryable(status) || status == StatusCode::UNAUTHORIZED {
            return Err(self.api_error("GET /v1", resp).await);
        }
        let what = answer_kind(&resp);
        if !status.is_success() {
            return Err(Error::NotAnUploadServer {
                url: self.display.clone(),
                status: what,
            });
        }
        let bytes = resp.bytes().await.map_err(|e| transport("GET /v1", &e))?;
        serde_json::from_slice::<Capabilities>(&bytes).map_err(|_| Error::NotAnUploadServer {
            url: self.display.clone(),
            status: what,
        })
    }

    /// Whether the server answers at all (`GET /v1` with a short time limit): used while
    /// it is unreachable. Only an answer that says "still down" (no connection, 502, 503,
    /// 504) is an error; anything else means it is back.
    pub async fn probe(&self) -> Result<()> {
        match self.capabilities().await {
            Err(e) if e.is_outage() || e.is_retryable() => Err(e),
            _ => Ok(()),
        }
    }

    /// `POST /v1/uploads` with an idempotency key, so a retry cannot create a second upload.
    pub async fn create(&self, body: &CreateUpload, idempotency_key: &str) -> Result<UploadStatus> {
        let ctx = "create upload";
        let resp = self
            .http
            .post(self.url("v1/uploads")?)
            .header(headers::IDEMPOTENCY_KEY, idempotency_key)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| transport(ctx, &e))?;
        self.json_or_error(ctx, resp).await
    }

    /// `POST /v1/uploads` with the whole file as the body (at most one chunk): the server
    /// creates, stores, verifies (against `digest`, sent as `Content-Digest`) and completes
    /// the upload in this one request. The name travels in `Content-Disposition`, the
    /// metadata as tus writes it (`Upload-Metadata`).
    pub async fn create_whole(
        &self,
        data: Bytes,
        digest: &Sha256Digest,
        filename: Option<&str>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<UploadStatus> {
        use base64::Engine;
        let ctx = "upload in one request";
        let mut req = self
            .http
            .post(self.url("v1/uploads")?)
            .header(headers::IDEMPOTENCY_KEY, idempotency_key)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, data.len())
            .header(headers::CONTENT_DIGEST, digest.to_header());
        if let Some(name) = filename {
            let encoded =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
            req = req.header(
                reqwest::header::CONTENT_DISPOSITION,
                format!("attachment; filename*=UTF-8''{encoded}"),
            );
        }
        if !metadata.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD;
            let pairs: Vec<String> = metadata
                .iter()
                .map(|(k, v)| format!("{k} {}", b64.encode(v)))
                .collect();
            req = req.header("upload-metadata", pairs.join(","));
        }
        // The limit covers the sending of the body too: a second more per MiB.
        let timeout = self.timeout + Duration::from_secs(data.len() as u64 >> 20);
        let resp = req
            .timeout(timeout)
            .body(data)
            .send()
            .await
            .map_err(|e| transport(ctx, &e))?;
        self.json_or_error(ctx, resp).await
    }

    /// `GET /v1/uploads/{id}`.
    pub async fn status(&self, id: &UploadId) -> Result<UploadStatus> {
        let ctx = format!("status of {id}");
        let resp = self
            .http
            .get(self.url(&format!("v1/uploads/{id}"))?)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&ctx, &e))?;
        self.json_or_error(&ctx, resp).await
    }

    /// `GET /v1/uploads`: one page of the caller's uploads, newest first, from `cursor`
    /// (the previous page's `next`).
    pub async fn list(
        &self,
        state: Option<UploadState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UploadList> {
        let ctx = "list of uploads";
        let mut url = self.url("v1/uploads")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            if let Some(s) = state {
                q.append_pair("state", state_name(s));
            }
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
        }
        let resp = self
            .http
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(ctx, &e))?;
        self.json_or_error(ctx, resp).await
    }

    /// `PUT /v1/uploads/{id}/chunks/{index}` with `Content-Digest`. The body is streamed in
    /// pieces so the rate limit and the stall watchdog see every piece.
    pub async fn put_chunk(
        &self,
        id: &UploadId,
        index: u64,
        data: Bytes,
        digest: &Sha256Digest,
        opts: &SendOptions,
    ) -> Result<ChunkReceipt> {
        let ctx = format!("PUT chunk {index}");
        let len = data.len();
        let start = Instant::now();
        let last_progress = Arc::new(AtomicU64::new(0));
        let piece = opts.limiter.as_ref().map_or(256 << 10, |l| l.piece_size());
        let body = {
            let limiter = opts.limiter.clone();
            let last_progress = last_progress.clone();
            let on_sent = opts.on_sent.clone();
            futures_util::stream::unfold(0usize, move |off| {
                let data = data.clone();
                let limiter = limiter.clone();
                let last_progress = last_progress.clone();
                let on_sent = on_sent.clone();
                async move {
                    if off >= data.len() {
                        return None;
                    }
                    let n = piece.min(data.len() - off);
                    if let Some(l) = &limiter {
                        l.acquire(n as u64).await;
                    }
                    last_progress.store(elapsed_ms(start), Ordering::Relaxed);
                    on_sent(n as u64);
                    Some((
                        Ok::<Bytes, std::io::Error>(data.slice(off..off + n)),
                        off + n,
                    ))
                }
            })
        };
        let request = async {
            let resp = self
                .http
                .put(self.url(&format!("v1/uploads/{id}/chunks/{index}"))?)
                .header(CONTENT_LENGTH, len)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(headers::CONTENT_DIGEST, digest.to_header())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map_err(|e| transport(&ctx, &e))?;
            last_progress.store(elapsed_ms(start), Ordering::Relaxed);
            self.json_or_error::<ChunkReceipt>(&ctx, resp).await
        };
        let watchdog = async {
            let stall_ms = u64::try_from(opts.stall_timeout.as_millis()).unwrap_or(u64::MAX);
            loop {
                let idle = elapsed_ms(start).saturating_sub(last_progress.load(Ordering::Relaxed));
                if idle >= stall_ms {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(stall_ms - idle)).await;
            }
        };
        tokio::select! {
            r = request => r,
            () = watchdog => Err(Error::Transport {
                context: ctx.clone(),
                reason: format!("stalled: no progress for {:?}", opts.stall_timeout),
                retryable: true,
                connect: false,
            }),
        }
    }

    /// `POST /v1/uploads/{id}/complete` declaring the client's SHA-256, and the size of an
    /// upload created without one (`defer_length`).
    pub async fn complete(
        &self,
        id: &UploadId,
        sha256: Sha256Digest,
        size: Option<u64>,
    ) -> Result<Completion> {
        let ctx = "complete";
        let resp = self
            .http
            .post(self.url(&format!("v1/uploads/{id}/complete"))?)
            .timeout(self.timeout)
            .json(&CompleteUpload {
                sha256: Some(sha256),
                size,
                chunk_sha256: None,
            })
            .send()
            .await
            .map_err(|e| transport(ctx, &e))?;
        if resp.status() == StatusCode::ACCEPTED {
            return Ok(Completion::Verifying);
        }
        self.json_or_error(ctx, resp).await.map(Completion::Done)
    }

    /// `DELETE /v1/uploads/{id}`.
    pub async fn cancel(&self, id: &UploadId) -> Result<()> {
        let ctx = format!("cancel {id}");
        let resp = self
            .http
            .delete(self.url(&format!("v1/uploads/{id}"))?)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport(&ctx, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.api_error(&ctx, resp).await)
        }
    }

    /// `GET /v1/uploads/{id}/content`, from byte `from` on (a `Range` request when above
    /// zero). The caller checks for 206 versus 200.
    pub async fn content(&self, id: &UploadId, from: u64) -> Result<reqwest::Response> {
        let ctx = format!("download {id}");
        let mut req = self
            .http
            .get(self.url(&format!("v1/uploads/{id}/content"))?);
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        let resp = req.send().await.map_err(|e| transport(&ctx, &e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.api_error(&ctx, resp).await)
        }
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn is_retryable(status: StatusCode) -> bool {
    crate::retry::is_retryable_status(status.as_u16())
}

/// `404 text/html`: an answer's status and media type, to say what answered instead.
fn answer_kind(resp: &reqwest::Response) -> String {
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("without a content type");
    format!("{} {ct}", resp.status().as_u16())
}

/// Whether an error answer is one of the API's (problem JSON, or JSON at all).
fn is_api_answer(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

impl Client {
    async fn json_or_error<T: serde::de::DeserializeOwned>(
        &self,
        ctx: &str,
        resp: reqwest::Response,
    ) -> Result<T> {
        if !resp.status().is_success() {
            return Err(self.api_error(ctx, resp).await);
        }
        let what = answer_kind(&resp);
        let api = is_api_answer(&resp);
        let bytes = resp.bytes().await.map_err(|e| transport(ctx, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            if api {
                Error::Protocol {
                    context: ctx.to_string(),
                    reason: e.to_string(),
                }
            } else {
                Error::NotAnUploadServer {
                    url: self.display.clone(),
                    status: what,
                }
            }
        })
    }

    /// Turns an error response into an [`Error`]: [`Error::Unauthorized`] for a 401
    /// (naming `--token`), [`Error::NotAnUploadServer`] for an answer that is not the
    /// API's (an HTML 404 page), else [`Error::Api`] with the problem's `detail`.
    pub(crate) async fn api_error(&self, ctx: &str, resp: reqwest::Response) -> Error {
        let status = resp.status().as_u16();
        let api = is_api_answer(&resp);
        if !api && matches!(status, 300..=399 | 404 | 405 | 501) {
            return Error::NotAnUploadServer {
                url: self.display.clone(),
                status: answer_kind(&resp),
            };
        }
        let kind = answer_kind(&resp);
        let mut e = api_error(ctx, resp).await;
        if let Error::Api { detail, .. } = &mut e {
            if !api {
                // A page from something in front of the server (a proxy's 502, 413):
                // say what it was rather than dump its HTML.
                *detail = format!(
                    "{} (a {kind} answer, not the API's)",
                    StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("error")
                );
            }
        }
        match e {
            Error::Api {
                status: 401,
                context,
                detail,
                ..
            } => Error::Unauthorized {
                context,
                given: self.has_token,
                detail,
            },
            e => e,
        }
    }
}

/// Turns an error response into [`Error::Api`], keeping the problem's `detail`.
async fn api_error(ctx: &str, resp: reqwest::Response) -> Error {
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return transport(ctx, &e),
    };
    let problem = serde_json::from_slice::<Problem>(&body).ok();
    let detail = match &problem {
        Some(p) if !p.detail.is_empty() => p.detail.clone(),
        Some(p) => p.title.clone(),
        None => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text.chars()
                    .take(200)
                    .collect::<String>()
                    .replace('\n', " ")
            }
        }
    };
    Error::Api {
        context: ctx.to_string(),
        status: status.as_u16(),
        detail,
        retry_after,
        problem: problem.map(Box::new),
    }
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?;
    crate::retry::parse_retry_after(v, SystemTime::now())
}

/// A transport error as a one-line reason ("connection refused", "timed out", ...). A
/// TLS failure (an untrusted certificate, a server that does not speak TLS) is a usage
/// error instead: no retry can mend it.
pub(crate) fn transport(ctx: &str, e: &reqwest::Error) -> Error {
    if let Some(usage) = tls_failure(e) {
        return usage;
    }
    Error::Transport {
        context: ctx.to_string(),
        reason: describe(e),
        connect: e.is_connect(),
        retryable: e.is_connect()
            || e.is_timeout()
            || e.is_request()
            || e.is_body()
            || e.is_decode(),
    }
}

/// The innermost cause of a reqwest error, which is the one that says what happened.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.is_empty() {
        e.to_string()
    } else {
        text
    }
}

/// The TLS failure among `e`'s causes, as a usage error of one line naming the host and
/// the reason; `None` when TLS is not what failed.
pub(crate) fn tls_failure(e: &reqwest::Error) -> Option<Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut found = None;
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            found = Some(tls);
            break;
        }
        // An `io::Error` (rustls' error travels in one, sometimes in two) hides what it
        // wraps from `source`.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    let tls = found?;
    let host = e
        .url()
        .map(|u| match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => u.to_string(),
        })
        .unwrap_or_else(|| "the server".into());
    use rustls::CertificateError as C;
    let reason = match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "its certificate is not signed by an authority this machine trusts (for a private \
             CA, pass --cacert FILE or set SSL_CERT_FILE)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("its certificate has expired ({tls})")
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("its certificate is not valid yet ({tls})")
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!("its certificate is for another name ({tls})")
        }
        rustls::Error::InvalidCertificate(_) => format!("its certificate is refused ({tls})"),
        rustls::Error::InvalidMessage(_) => {
            format!("it does not answer in TLS; is it an http:// server? ({tls})")
        }
        _ => format!("the TLS handshake failed ({tls})"),
    };
    Some(Error::Usage(format!(
        "TLS: cannot connect securely to {host}: {reason}"
    )))
}

/// A state as the API spells it.
pub fn state_name(s: UploadState) -> &'static str {
    match s {
        UploadState::Uploading => "uploading",
        UploadState::Completing => "completing",
        UploadState::Completed => "completed",
        UploadState::Failed => "failed",
    }
}
