//! `upload-server`: resumable, verified uploads over HTTP, on the `storage` domain core.
//!
//! # Layout
//! - [`auth`]: bearer tokens (tokens file, signed JWTs) and the owner a request acts for.
//! - [`config`]: flags and environment variables.
//! - [`conn`]: connection slots, idle and send timeouts.
//! - [`forwarded`]: trusted proxies, the client's address, the public URL.
//! - [`state`]: what handlers share.
//! - [`error`]: the single mapping from failures to HTTP statuses and problem documents.
//! - [`extract`]: typed request parts (ids, digests, streamed bodies).
//! - [`access_log`]: one log line per request.
//! - [`metrics`]: the HTTP layer's metrics and the Prometheus exporter.
//! - [`openapi`]: the OpenAPI document of the native API, generated from the handlers.
//! - [`peers`]: servers on one bucket telling each other of the chunks they store.
//! - [`rate_limit`]: request rate per owner (per address when anonymous).
//! - [`routes`]: the router and its handlers.
//! - [`serve`]: the accept loop (HTTP/1.1 and HTTP/2, TLS, timeouts, graceful shutdown).
//! - [`shutdown`]: signal handling.
//! - [`site`]: which web pages may drive a server without authentication.
//! - [`tls`]: the certificate, reloaded on SIGHUP.
//! - [`webhooks`]: delivery of upload events to webhook URLs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use common::units::format_size;
use config::StorageKind;
use storage::backend::s3::{S3Backend, S3Config};
use storage::{Backend, LocalBackend, Uploads, UploadsConfig};
use tokio::net::TcpListener;

pub mod access_log;
pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod extract;
pub mod forwarded;
pub mod interim;
pub mod metrics;
pub mod openapi;
pub mod peers;
pub mod rate_limit;
pub mod routes;
pub mod serve;
pub mod shutdown;
pub mod site;
pub mod state;
pub mod tls;
pub mod webhooks;

#[cfg(test)]
mod fuzz;

pub use config::Config;
pub use routes::app;
pub use state::AppState;

/// Opens storage and serves on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for at most the configured shutdown timeout. A start-up error names
/// the flag (and file) at fault.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(spec) = &config.faults {
        storage::faults::install(spec).map_err(|e| anyhow!("--faults {spec}: {e}"))?;
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::Tls::load(cert, key, config.http2)?)),
        _ => None,
    };
    let backend: Arc<dyn Backend> = match config.storage {
        StorageKind::Local => Arc::new(
            LocalBackend::open(&config.data_dir)
                .map_err(|e| anyhow!("--data-dir {}: {e}", config.data_dir.display()))?,
        ),
        StorageKind::S3 => {
            Arc::new(S3Backend::new(&s3_config(&config)).map_err(|e| anyhow!("--storage s3: {e}"))?)
        }
    };
    let webhooks = webhooks::settings(&config).map_err(|e| anyhow!(e))?;
    let outbox: Option<Arc<dyn storage::events::Outbox>> = match (&webhooks, config.storage) {
        (None, _) => None,
        (Some(_), StorageKind::Local) => Some(Arc::new(
            storage::events::local::LocalOutbox::open(&config.data_dir).map_err(|e| {
                anyhow!(
                    "--data-dir {} (event outbox): {e}",
                    config.data_dir.display()
                )
            })?,
        )),
        (Some(_), StorageKind::S3) => Some(Arc::new(
            storage::events::s3::S3Outbox::connect(&s3_config(&config))
                .map_err(|e| anyhow!("--storage s3 (event outbox): {e}"))?,
        )),
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
            idle_upload_memory: config.idle_upload_memory,
            stall_takeover: config.stall_takeover,
            quota: storage::quota::QuotaLimits {
                max_open_uploads: config.max_open_uploads,
                max_reserved_bytes: config.quota,
            },
        },
        events,
    )
    .await
    .map_err(|e| match config.storage {
        StorageKind::Local => anyhow!("--data-dir {}: {e}", config.data_dir.display()),
        StorageKind::S3 => anyhow!("--storage s3: {e}"),
    })?;
    let deliverer = match (webhooks, uploads.events().outbox()) {
        (Some(settings), Some(outbox)) => Some(tokio::spawn(webhooks::deliver_forever(
            outbox.clone(),
            uploads.events().queued_signal(),
            settings,
        ))),
        _ => None,
    };
    let addr = listener.local_addr()?;
    let peers = match (config.storage, config.peer_url.as_deref()) {
        (StorageKind::Local, _) | (_, Some("off")) => None,
        (StorageKind::S3, Some(url)) => peers::Peers::start(&uploads, url.to_string()).await,
        (StorageKind::S3, None) if tls.is_none() && !addr.ip().is_unspecified() => {
            peers::Peers::start(&uploads, format!("http://{addr}")).await
        }
        (StorageKind::S3, None) => {
            tracing::info!("peers: off (listening on every address, or with TLS): --peer-url says where the other servers on the bucket reach this one");
            None
        }
    };
    let state = AppState {
        uploads: uploads.clone(),
        shutting_down: Arc::new(AtomicBool::new(false)),
        body_timeout: config.body_timeout,
        tus_path: normalize_base(&config.tus_path),
        auth: auth_of(&config)?,
        admin_owners: Arc::new(config.admin_owners.clone()),
        metrics: if config.metrics {
            let exporter = metrics::Exporter::install();
            conn::describe_metrics();
            exporter
        } else {
            None
        },
        rate_limit: rate_limit::RateLimit::new(config.rate_limit, config.rate_limit_burst),
        peers: peers.as_ref().map(peers::Peers::hearing),
    };
    #[cfg(unix)]
    {
        let auth = state.auth.clone();
        let tls = tls.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    auth.reload();
                    if let Some(tls) = &tls {
                        match tls.reload() {
                            Ok(()) => tracing::info!("TLS certificate reloaded"),
                            Err(e) => tracing::error!(
                                "TLS certificate not reloaded, the previous one stays: {e}"
                            ),
                        }
                    }
                }
            });
        }
    }
    let sweeper = tokio::spawn(sweep_forever(uploads, sweep_interval(config.upload_ttl)));
    let rate_limit = state.rate_limit.clone();
    let auth_failures = state.auth.failures().clone();
    let forgetter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            rate_limit.forget_idle();
            auth_failures.forget_idle();
        }
    });

    let edge = forwarded::Edge {
        public_url: config.public_url.as_deref().map(Arc::from),
        trusted: config.trusted_proxies.clone(),
    };
    log_summary(&config, tls.as_deref(), &edge);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flag = state.shutting_down.clone();
    tokio::spawn(async move {
        shutdown.await;
        flag.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let opts = serve::ServeOptions {
        header_timeout: config.header_timeout,
        send_timeout: config.send_timeout,
        max_connections: config.max_connections,
        tls,
        edge,
        interim: config.interim_responses,
        http2: config.http2,
    };
    if !serve::serve(
        listener,
        app(state, &config.cors_origins),
        opts,
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
    if let Some(p) = peers {
        p.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// How requests are authenticated, from the flags.
fn auth_of(config: &Config) -> anyhow::Result<auth::Auth> {
    let mut auth = auth::Auth::new(
        config.tokens_file.as_deref(),
        config.token_secret.as_deref(),
    )
    .with_context(|| match &config.tokens_file {
        Some(f) => format!("--tokens-file {}", f.display()),
        None => "--token-secret".into(),
    })?
    .max_jwt_lifetime(Some(config.jwt_max_lifetime).filter(|d| !d.is_zero()))
    .limit_failures(config.auth_failures_per_minute)
    .site(
        &config.allowed_hosts,
        &config.cors_origins,
        config.public_url.as_deref(),
    );
    if config.metrics_admin_only {
        if !auth.enabled() || config.admin_owners.is_empty() {
            return Err(anyhow!(
                "--metrics-admin-only needs authentication (--tokens-file or --token-secret) \
                 and at least one --admin-owner"
            ));
        }
        auth = auth.restrict_metrics(config.admin_owners.clone());
    }
    Ok(auth)
}

/// One start-up line per area, so that the log says what this server does before it
/// does it.
fn log_summary(config: &Config, tls: Option<&tls::Tls>, edge: &forwarded::Edge) {
    match config.storage {
        StorageKind::Local => {
            let dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
            tracing::info!("storage: local disk under {}", dir.display());
        }
        StorageKind::S3 => tracing::info!(
            "storage: S3 bucket {}{} at {}",
            config.s3_bucket.as_deref().unwrap_or_default(),
            if config.s3_prefix.is_empty() {
                String::new()
            } else {
                format!(" (prefix {})", config.s3_prefix)
            },
            config.s3_endpoint.as_deref().unwrap_or("AWS")
        ),
    }
    let auth = match (&config.tokens_file, &config.token_secret) {
        (Some(f), Some(_)) => format!("bearer tokens from {} and HS256 JWTs", f.display()),
        (Some(f), None) => format!("bearer tokens from {}", f.display()),
        (None, Some(_)) => "HS256 JWTs (--token-secret)".into(),
        (None, None) if config.listen.ip().is_loopback() => {
            "none: anonymous, on a loopback address only".into()
        }
        (None, None) => "none: anonymous (--allow-anonymous)".into(),
    };
    tracing::info!("auth: {auth}");
    let per_owner = |n: u64, what: String| {
        if n == 0 {
            "no limit".to_string()
        } else {
            what
        }
    };
    tracing::info!(
        "limits: uploads up to {}; per owner {} open uploads, {} reserved, {} requests/s \
         (burst {}); {} connections; timeouts: headers {}, bodies {}, sending {}",
        format_size(config.max_upload_size),
        per_owner(config.max_open_uploads, config.max_open_uploads.to_string()),
        per_owner(config.quota, format_size(config.quota)),
        per_owner(u64::from(config.rate_limit), config.rate_limit.to_string()),
        config.rate_limit_burst,
        config.max_connections,
        humantime::format_duration(config.header_timeout),
        humantime::format_duration(config.body_timeout),
        humantime::format_duration(config.send_timeout),
    );
    if config.webhook_urls.is_empty() {
        tracing::info!("events: off (no --webhook-url)");
    } else {
        tracing::info!("events: webhooks to {} URL(s)", config.webhook_urls.len());
    }
    tracing::info!("public URL: {}", serve::describe_base(edge));
    match tls {
        Some(t) => tracing::info!("TLS: {}", t.describe()),
        None if config.http2 => tracing::info!(
            "TLS: off, plain HTTP/1.1 (and HTTP/2 for clients with prior knowledge); \
             --tls-cert and --tls-key turn it on"
        ),
        None => tracing::info!("TLS: off, plain HTTP/1.1; --tls-cert and --tls-key turn it on"),
    }
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
