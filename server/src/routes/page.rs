//! The built-in upload page at `/`: plain HTML, CSS and JavaScript compiled into the binary
//! (no CDN, no build step). The page talks to the native API v1 on the same origin and
//! resumes from `localStorage` after a reload; a dedicated Worker (`/upload-worker.js`)
//! reads the chunks ahead, computes each one's SHA-256 for its `Content-Digest` and sends
//! them 4 at a time, so that the page's main thread only draws. The whole file's SHA-256
//! is the server's, computed from the chunks it checked.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
const WORKER_JS: &str = include_str!("../../assets/upload-worker.js");

/// Only this origin's scripts, worker, styles and API; nothing inline, no eval, no
/// WebAssembly (the page hashes with WebCrypto), no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the upload page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /app.js`: the page's script.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /style.css`: the page's style sheet.
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /upload-worker.js`: the page's chunk sender (a dedicated Worker).
pub async fn worker_js() -> Response {
    asset("text/javascript; charset=utf-8", WORKER_JS)
}
