//! What every handler can reach.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storage::Uploads;

use crate::auth::Auth;
use crate::rate_limit::RateLimit;

/// Shared state of the HTTP layer; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The domain service.
    pub uploads: Arc<Uploads>,
    /// Set once shutdown began: `/readyz` turns 503.
    pub shutting_down: Arc<AtomicBool>,
    /// Idle limit between two pieces of a request body.
    pub body_timeout: Duration,
    /// Where the tus endpoint lives, with a trailing slash (e.g. `/files/`).
    pub tus_path: String,
    /// How requests are authenticated.
    pub auth: Auth,
    /// Owners allowed on the admin routes (when authentication is configured).
    pub admin_owners: Arc<Vec<String>>,
    /// Renders `GET /metrics`; `None` when metrics are off.
    pub metrics: Option<crate::metrics::Exporter>,
    /// Request rate limits.
    pub rate_limit: RateLimit,
    /// Takes notes from the other servers on the bucket; `None` when they send none.
    pub peers: Option<Arc<crate::peers::Hearing>>,
}

impl AppState {
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
