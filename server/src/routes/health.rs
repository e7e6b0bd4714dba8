//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: ready for traffic; 503 while shutting down or when storage fails.
pub async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, &'static str), ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    state
        .uploads
        .health()
        .await
        .map_err(|e| ApiError::Unavailable(format!("storage is failing: {e}")))?;
    Ok((StatusCode::OK, "ready\n"))
}
