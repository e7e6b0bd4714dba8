//! The router: routes, and the layers every request goes through (request id, one log
//! line per request, `nosniff`).

use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, head, post, put};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

pub mod events;
pub mod health;
pub mod ietf;
pub mod metrics;
pub mod native;
pub mod openapi;
pub mod page;
pub mod tus;

/// Headers browsers may send cross-origin.
const ALLOW_HEADERS: [&str; 19] = [
    "authorization",
    "content-type",
    "content-digest",
    "idempotency-key",
    "x-request-id",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "upload-defer-length",
    "upload-concat",
    "x-http-method-override",
    "range",
    "upload-complete",
    "upload-draft-interop-version",
    "repr-digest",
    "want-repr-digest",
    "content-disposition",
];

/// Headers browser scripts may read cross-origin.
const EXPOSE_HEADERS: [&str; 17] = [
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-expires",
    "tus-version",
    "tus-resumable",
    "tus-max-size",
    "tus-extension",
    "tus-checksum-algorithm",
    "x-request-id",
    "etag",
    "content-range",
    "upload-complete",
    "upload-limit",
    "repr-digest",
    "content-location",
];

/// CORS for the configured origins; `None` when none are (same-origin only).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = |list: &[&'static str]| {
        list.iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(names(&ALLOW_HEADERS))
            .expose_headers(names(&EXPOSE_HEADERS))
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// An error answer to a request with a body may leave the body unread, and then the
/// connection cannot carry another request: say so with `Connection: close`, so that a
/// keep-alive client does not send its next request into a closing socket.
async fn close_after_unread_body(req: axum::extract::Request, next: Next) -> Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The whole HTTP application; `cors_origins` may call it from browsers.
pub fn app(state: AppState, cors_origins: &[String]) -> Router {
    let request_id = HeaderName::from_static(common::headers::REQUEST_ID);
    let base = state.tus_path.clone();
    let auth = state.auth.clone();
    let metrics_auth = state.auth.clone();
    let exporter = state.metrics.clone();
    let rate_limit = state.rate_limit.clone();
    let tus_base: std::sync::Arc<str> = base.as_str().into();
    let peers = state.peers.clone();
    let tus_routes = Router::new()
        .route(&base, post(tus::create).options(tus::options))
        .route(
            base.trim_end_matches('/'),
            post(tus::create).options(tus::options),
        )
        .route(
            &format!("{base}{{id}}"),
            head(tus::head)
                .patch(tus::patch)
                .delete(tus::delete)
                .options(tus::options),
        );
    let app = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::app_js))
        .route("/style.css", get(page::style_css))
        .route("/upload-worker.js", get(page::worker_js))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1", get(native::capabilities))
        .route("/v1/uploads", post(native::create).get(native::list))
        .route(
            "/v1/uploads/{id}",
            get(native::status).delete(native::cancel),
        )
        .route("/v1/uploads/{id}/chunks", post(native::put_chunk_run))
        .route("/v1/uploads/{id}/chunks/{index}", put(native::put_chunk))
        .route("/v1/uploads/{id}/complete", post(native::complete))
        .route("/v1/uploads/{id}/content", get(native::content))
        .route("/v1/uploads/{id}/content-url", post(native::content_url))
        .route("/v1/uploads/{id}/events", get(events::follow))
        .route("/v1/admin/events/dead", get(events::dead))
        .route("/v1/admin/events/{id}/replay", post(events::replay))
        .merge(tus_routes)
        .merge(ietf::routes(&base))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            rate_limit,
            crate::rate_limit::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::authenticate,
        ))
        // Public like `/healthz` (unless restricted), added after the authentication layer.
        .merge(
            metrics::routes(exporter).layer(axum::middleware::from_fn_with_state(
                metrics_auth,
                crate::auth::guard_metrics,
            )),
        )
        .merge(openapi::routes())
        .merge(peers.map(crate::peers::routes).unwrap_or_default())
        .layer(axum::middleware::from_fn(close_after_unread_body))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::access_log::log))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(common::headers::REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The path only: a query may hold a signed URL's signature.
                    let path = req.uri().path();
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %path,
                        request_id = %id,
                        upload_id = crate::access_log::upload_id(path).map(tracing::field::display),
                    )
                })
                .on_request(())
                // `access_log` writes the request's line, with the bytes sent.
                .on_response(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(tower::util::option_layer(cors(cors_origins)));
    // Outside the router, so that a tus request's method is rewritten before it is
    // routed, and the router's own answers (404, 405) carry the tus headers too.
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::from_fn_with_state(tus_base, tus::headers))
}
