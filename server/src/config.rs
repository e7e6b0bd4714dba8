//! Command-line flags and environment variables: the one `Config` of the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use common::units::{parse_duration, parse_size};

/// Resumable, verified file uploads over HTTP.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Debug, Clone, Parser)]
#[command(name = "upload-server", version, about)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "UPLOAD_SERVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where uploads are stored: `local` (the data directory) or `s3` (a bucket shared by
    /// any number of servers).
    #[arg(long, env = "UPLOAD_SERVER_STORAGE", value_enum, default_value_t = StorageKind::Local)]
    pub storage: StorageKind,

    /// S3 bucket (with `--storage s3`); credentials come from the standard `AWS_*`
    /// environment variables.
    #[arg(long, env = "UPLOAD_SERVER_S3_BUCKET", required_if_eq("storage", "s3"))]
    pub s3_bucket: Option<String>,

    /// Key prefix inside the bucket.
    #[arg(long, env = "UPLOAD_SERVER_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// Endpoint of a non-AWS S3-compatible store (MinIO, Garage, Ceph, R2...).
    #[arg(long, env = "UPLOAD_SERVER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Region of the bucket.
    #[arg(long, env = "UPLOAD_SERVER_S3_REGION")]
    pub s3_region: Option<String>,

    /// Allow a plain-http S3 endpoint.
    #[arg(long, env = "UPLOAD_SERVER_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// Time the S3 store has to answer a small request (a record, a claim, a listing); a
    /// store that hangs is then a failure in seconds, and requests get 503 + Retry-After.
    #[arg(long, env = "UPLOAD_SERVER_S3_REQUEST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub s3_request_timeout: Duration,

    /// A part (or a download) the S3 store stops taking (or sending) bytes of for this long
    /// is cut, however long it takes in all.
    #[arg(long, env = "UPLOAD_SERVER_S3_STALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub s3_stall_timeout: Duration,

    /// How old a multipart upload in the bucket that no upload names (left by a crash
    /// during a create or a publishing copy) must be before a sweep aborts it.
    #[arg(long, env = "UPLOAD_SERVER_S3_LEFTOVER_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub s3_leftover_grace: Duration,

    /// Directory where uploads are stored (local storage).
    #[arg(long, env = "UPLOAD_SERVER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Idle time after which an unfinished upload expires and its bytes are freed
    /// (e.g. `2s`, `90m`, `24h`).
    #[arg(long, env = "UPLOAD_SERVER_UPLOAD_TTL", default_value = "24h", value_parser = parse_duration)]
    pub upload_ttl: Duration,

    /// How long a cancelled, expired or failed upload answers 410 before it is forgotten.
    #[arg(long, env = "UPLOAD_SERVER_TOMBSTONE_TTL", default_value = "7d", value_parser = parse_duration)]
    pub tombstone_ttl: Duration,

    /// Largest upload accepted (e.g. `10GiB`, `1TiB`).
    #[arg(long, env = "UPLOAD_SERVER_MAX_UPLOAD_SIZE", default_value = "1TiB", value_parser = parse_size)]
    pub max_upload_size: u64,

    /// A chunk body that sends nothing for this long is cut and its bytes discarded.
    #[arg(long, env = "UPLOAD_SERVER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// A retry of a chunk (or append) whose earlier request has moved no byte this long
    /// stops that one and takes its place, instead of waiting for the body timeout.
    #[arg(long, env = "UPLOAD_SERVER_STALL_TAKEOVER", default_value = "5s", value_parser = parse_duration)]
    pub stall_takeover: Duration,

    /// Time a client has to send a request's headers before its connection is closed.
    #[arg(long, env = "UPLOAD_SERVER_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, env = "UPLOAD_SERVER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "UPLOAD_SERVER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Completion answers 202 and verifies in the background when more than this many
    /// bytes remain to be hashed.
    #[arg(long, env = "UPLOAD_SERVER_INLINE_VERIFY_LIMIT", default_value = "1GiB", value_parser = parse_size)]
    pub inline_verify_limit: u64,

    /// Memory for chunks that reach an S3-stored upload ahead of its whole-file hash, kept
    /// to be hashed in their turn instead of read back from the bucket at completion.
    #[arg(long, env = "UPLOAD_SERVER_HASH_AHEAD_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    pub hash_ahead_memory: u64,

    /// Base path of the tus 1.0 endpoint.
    #[arg(long, env = "UPLOAD_SERVER_TUS_PATH", default_value = "/files/")]
    pub tus_path: String,

    /// Origin allowed to call the API from a browser (repeatable, or comma-separated in
    /// the environment; `*` allows any). None by default.
    #[arg(
        long = "cors-origin",
        env = "UPLOAD_SERVER_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// File of `token owner` lines: bearer tokens and who they stand for. Reloaded on
    /// SIGHUP.
    #[arg(long, env = "UPLOAD_SERVER_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Secret for HMAC-SHA256 (HS256) JWT bearer tokens: `sub` is the owner, `exp` the
    /// expiry. Lets a web app's backend mint short-lived upload tokens.
    #[arg(long, env = "UPLOAD_SERVER_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Serve without authentication on a non-loopback address (refused by default).
    #[arg(long, env = "UPLOAD_SERVER_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Uploads an owner may have open at once (anonymous clients count as one owner);
    /// more are refused with 429. 0: no limit.
    #[arg(long, env = "UPLOAD_SERVER_MAX_OPEN_UPLOADS", default_value_t = 1000)]
    pub max_open_uploads: u64,

    /// Bytes an owner's open uploads may reserve together (their declared sizes); an
    /// upload that would exceed it is refused with 507. 0: no limit.
    #[arg(long, env = "UPLOAD_SERVER_QUOTA", default_value = "10TiB", value_parser = parse_size)]
    pub quota: u64,

    /// Requests a second each owner (each client address when anonymous) may make,
    /// sustained; more get 429 with `Retry-After`. 0: no limit.
    #[arg(long, env = "UPLOAD_SERVER_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Requests an owner may make at once above the sustained rate.
    #[arg(long, env = "UPLOAD_SERVER_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub rate_limit_burst: u32,

    /// Serve Prometheus metrics at `GET /metrics` (public, like `/healthz`); `false` turns
    /// the route and the recording off.
    #[arg(long, env = "UPLOAD_SERVER_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// URL every upload event is POSTed to, signed (repeatable, or comma-separated in the
    /// environment). None: no webhooks, and no events are recorded.
    #[arg(
        long = "webhook-url",
        env = "UPLOAD_SERVER_WEBHOOK_URL",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,

    /// Secret of the webhooks' `X-Upload-Signature` (HMAC-SHA256); required with
    /// `--webhook-url`.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Delivery attempts of one event before it becomes a dead letter.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_MAX_ATTEMPTS", default_value_t = 15)]
    pub webhook_max_attempts: u32,

    /// Time from an event's first delivery attempt after which it becomes a dead letter.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,

    /// First retry delay of a failed delivery; doubles with each attempt (with jitter).
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,

    /// Longest retry delay of a failed delivery.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_RETRY_MAX", default_value = "10m", value_parser = parse_duration)]
    pub webhook_retry_max: Duration,

    /// Time one delivery request may take before it counts as failed.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Deliveries in flight at once.
    #[arg(long, env = "UPLOAD_SERVER_WEBHOOK_CONCURRENCY", default_value_t = 8)]
    pub webhook_concurrency: usize,

    /// Owner allowed to use the admin routes (`/v1/admin/...`) when authentication is
    /// configured (repeatable, or comma-separated in the environment). Without
    /// authentication the admin routes are open, like every route.
    #[arg(
        long = "admin-owner",
        env = "UPLOAD_SERVER_ADMIN_OWNER",
        value_delimiter = ','
    )]
    pub admin_owners: Vec<String>,

    /// Log format.
    #[arg(long, env = "UPLOAD_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Storage faults to inject, for tests only (see `storage::faults`), e.g.
    /// `data-fsync@2`.
    #[arg(long, env = "UPLOAD_SERVER_FAULTS", hide = true)]
    pub faults: Option<String>,
}

/// Where uploads are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// Local disk, under `--data-dir`.
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}
