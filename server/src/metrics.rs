//! Metrics of the HTTP layer, and the Prometheus exporter that renders every series
//! (the domain's, recorded in `storage::metrics`, and these) for `GET /metrics`.
//!
//! The exporter is `metrics-exporter-prometheus` without its own listener: the text is
//! rendered on demand by the route, on the server's one port.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: requests being handled (from arrival to the response's head).
pub const IN_FLIGHT: &str = "upload_http_requests_in_flight";
/// Histogram: time to handle a request carrying upload bytes (native chunk `PUT`, tus
/// and IETF `PATCH`), by `protocol` (`native`, `tus`, `ietf`) and `outcome` (`success`,
/// `client_error`, `server_error`).
pub const CHUNK_SECONDS: &str = "upload_chunk_request_duration_seconds";

/// Bucket bounds (seconds) of every duration histogram: from a cached retry to a large
/// chunk over a slow link.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Renders the Prometheus text exposition of every series of this process.
#[derive(Clone)]
pub struct Exporter(PrometheusHandle);

impl Exporter {
    /// Installs the process-wide recorder once and returns its exporter; later calls
    /// return the same one. `None` if another recorder was installed first (then metrics
    /// go there, and `/metrics` is not served).
    pub fn install() -> Option<Exporter> {
        static INSTALLED: OnceLock<Option<Exporter>> = OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let handle = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                    .and_then(PrometheusBuilder::install_recorder);
                match handle {
                    Ok(handle) => {
                        describe();
                        storage::metrics::describe();
                        spawn_upkeep(handle.clone());
                        Some(Exporter(handle))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics are not exported");
                        None
                    }
                }
            })
            .clone()
    }

    /// The current values in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        // Without the exporter's own listener nothing else drains histogram samples.
        self.0.run_upkeep();
        self.0.render()
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds histogram samples into their buckets now and then. The recorder keeps every raw
/// sample until an upkeep runs; without its own listener that happened only on a scrape,
/// so a server nobody scraped grew by every request it served (found by the soak test).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "histogram upkeep is not running");
    }
}

/// Help texts of the HTTP layer's series.
fn describe() {
    describe_gauge!(IN_FLIGHT, "Requests being handled.");
    describe_histogram!(
        CHUNK_SECONDS,
        "Time to handle a request carrying upload bytes, by protocol and outcome."
    );
    gauge!(IN_FLIGHT).set(0.0);
}

/// Which protocol a request carrying upload bytes speaks, if it is one.
fn upload_protocol(method: &Method, path: &str) -> Option<&'static str> {
    let native = (method == Method::PUT && path.contains("/chunks/"))
        || (method == Method::POST && path.ends_with("/chunks"));
    if native && path.starts_with("/v1/uploads/") {
        Some("native")
    } else if method == Method::PATCH && path.starts_with("/uploads/") {
        Some("ietf")
    } else if method == Method::PATCH {
        Some("tus")
    } else {
        None
    }
}

/// Counts one request in flight until dropped (also when the client goes away first).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        gauge!(IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Middleware: requests in flight, and the duration of requests carrying upload bytes.
pub async fn track(req: Request, next: Next) -> Response {
    let _in_flight = InFlight::enter();
    let protocol = upload_protocol(req.method(), req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some(protocol) = protocol {
        let s = resp.status();
        let outcome = if s.is_server_error() {
            "server_error"
        } else if s.is_client_error() {
            "client_error"
        } else {
            "success"
        };
        histogram!(CHUNK_SECONDS, "protocol" => protocol, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_requests_carrying_upload_bytes() {
        let id = "/v1/uploads/67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(
            upload_protocol(&Method::PUT, &format!("{id}/chunks/3")),
            Some("native")
        );
        assert_eq!(upload_protocol(&Method::PUT, id), None);
        assert_eq!(upload_protocol(&Method::GET, id), None);
        assert_eq!(
            upload_protocol(&Method::PATCH, "/uploads/67e55044"),
            Some("ietf")
        );
        assert_eq!(upload_protocol(&Method::PATCH, "/files/abc"), Some("tus"));
    }
}
