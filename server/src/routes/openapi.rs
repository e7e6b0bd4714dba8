//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the native API. Public, like
//! `GET /v1`.

use axum::routing::get;
use axum::{Json, Router};

/// The route serving [`crate::openapi::document`].
pub fn routes() -> Router {
    Router::new().route(
        "/v1/openapi.json",
        get(|| async { Json(crate::openapi::document()) }),
    )
}
