//! `upload-server`: resumable, verified uploads over HTTP, on the `storage` domain core.
//!
//! # Layout
//! - [`auth`]: bearer tokens (tokens file, signed JWTs) and the owner a request acts for.
//! - [`config`]: flags and environment variables.
//! - [`state`]: what handlers share.
//! - [`error`]: the single mapping from failures to HTTP statuses and problem documents.
//! - [`extract`]: typed request parts (ids, digests, streamed bodies).
//! - [`access_log`]: one log line per request.
//! - [`metrics`]: the HTTP layer's metrics and the Prometheus exporter.
//! - [`openapi`]: the OpenAPI document of the native API, generated from the handlers.
//! - [`rate_limit`]: request rate per owner (per address when anonymous).
//! - [`routes`]: the router and its handlers.
//! - [`serve`]: the accept loop (timeouts, connection cap, graceful shutdown).
//! - [`shutdown`]: signal handling.
//! - [`webhooks`]: delivery of upload events to webhook URLs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config::StorageKind;
use storage::backend::s3::{S3Backend, S3Config};
use storage::{Backend, LocalBackend, Uploads, UploadsConfig};
use tokio::net::TcpListener;

pub mod access_log;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod interim;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod routes;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod webhooks;

#[cfg(test)]
mod fuzz;

pub use config::Config;
pub use routes::app;
pub use state::AppState;

/// Opens storage and serves on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for at most the configured shutdown timeout.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), storage::Error> {
    if let Some(spec) = &config.faults {
        storage::faults::install(spec).map_err(storage::Error::Invalid)?;
    }
    let backend: Arc<dyn Backend> = match config.storage {
        StorageKind::Local => Arc::new(LocalBackend::open(&config.data_dir)?),
        StorageKind::S3 => Arc::new(S3Backend::new(&s3_config(&config))?),
    };
    let webhooks = webhooks::settings(&config).map_err(storage::Error::Invalid)?;
    let outbox: Option<Arc<dyn storage::events::Outbox>> = match (&webhooks, config.storage) {
        (None, _) => None,
        (Some(_), StorageKind::Local) => Some(Arc::new(storage::events::local::LocalOutbox::open(
            &config.data_dir,
        )?)),
        (Some(_), StorageKind::S3) => Some(Arc::new(storage::events::s3::S3Outbox::connect(
            &s3_config(&config),
        )?)),
    };
    let events = storage::events::Events::new(outbox);
    let uploads = Uploads::open_with_events(
        backend,
        UploadsConfig {
            max_upload_size: config.max_upload_size,
            upload_ttl: config.upload_ttl,
            tombstone_ttl: config.tombstone_ttl,
            inline_verify_limit: config.inline_verify_limit,
            hash_ahead_memory: config.hash_ahead_memory,
            stall_takeover: config.stall_takeover,
            quota: storage::quota::QuotaLimits {
                max_open_uploads: config.max_open_uploads,
                max_reserved_bytes: config.quota,
            },
        },
        events,
    )
    .await?;
    let deliverer = match (webhooks, uploads.events().outbox()) {
        (Some(settings), Some(outbox)) => Some(tokio::spawn(webhooks::deliver_forever(
            outbox.clone(),
            uploads.events().queued_signal(),
            settings,
        ))),
        _ => None,
    };
    let state = AppState {
        uploads: uploads.clone(),
        shutting_down: Arc::new(AtomicBool::new(false)),
        body_timeout: config.body_timeout,
        tus_path: normalize_base(&config.tus_path),
        auth: auth::Auth::new(
            config.tokens_file.as_deref(),
            config.token_secret.as_deref(),
        )?,
        admin_owners: Arc::new(config.admin_owners.clone()),
        metrics: if config.metrics {
            metrics::Exporter::install()
        } else {
            None
        },
        rate_limit: rate_limit::RateLimit::new(config.rate_limit, config.rate_limit_burst),
    };
    #[cfg(unix)]
    {
        let auth = state.auth.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    auth.reload();
                }
            });
        }
    }
    let sweeper = tokio::spawn(sweep_forever(uploads, sweep_interval(config.upload_ttl)));
    let rate_limit = state.rate_limit.clone();
    let forgetter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            rate_limit.forget_idle();
        }
    });

    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flag = state.shutting_down.clone();
    tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let limits = serve::ConnLimits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    if !serve::serve(
        listener,
        app(state, &config.cors_origins),
        limits,
        stop_rx,
        config.shutdown_timeout,
    )
    .await
    {
        tracing::warn!("shutdown timeout reached; dropping unfinished requests");
    }
    sweeper.abort();
    if let Some(d) = deliverer {
        d.abort();
    }
    forgetter.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `files` → `/files/`.
fn normalize_base(path: &str) -> String {
    format!("/{}/", path.trim_matches('/'))
}

/// The bucket settings of `config` (`--storage s3`).
fn s3_config(config: &Config) -> S3Config {
    S3Config {
        bucket: config.s3_bucket.clone().unwrap_or_default(),
        prefix: config.s3_prefix.clone(),
        endpoint: config.s3_endpoint.clone(),
        region: config.s3_region.clone(),
        allow_http: config.s3_allow_http,
        leftover_grace: Some(config.s3_leftover_grace),
        deadlines: Some(storage::backend::s3::deadline::Deadlines {
            request: config.s3_request_timeout,
            stall: config.s3_stall_timeout,
        }),
    }
}

/// How often the sweeper runs: often enough that a short TTL is honoured promptly.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
}

async fn sweep_forever(uploads: Arc<Uploads>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match uploads.sweep().await {
            Ok(r) if r.expired + r.purged > 0 || r.leftovers > 0 => {
                tracing::info!(
                    expired = r.expired,
                    purged = r.purged,
                    leftovers = r.leftovers,
                    "sweep"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}
