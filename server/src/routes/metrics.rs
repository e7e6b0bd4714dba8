//! `GET /metrics`: every series of this process in Prometheus text format. Public, like
//! `/healthz`: it carries counts and timings, no ids, names or tokens; `--metrics false`
//! removes the route.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Exporter;

/// Media type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route, when metrics are exported.
pub fn routes(exporter: Option<Exporter>) -> Router {
    let Some(exporter) = exporter else {
        return Router::new();
    };
    Router::new().route(
        "/metrics",
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, PROMETHEUS_TEXT),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                exporter.render(),
            )
                .into_response()
        }),
    )
}
