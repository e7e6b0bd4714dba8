//! Command-line flags and environment variables: the one `Config` of the server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use common::units::{parse_duration, parse_size};
use ipnet::IpNet;

const NETWORK: &str = "Network";
const STORAGE: &str = "Storage";
const S3: &str = "S3 storage";
const LIMITS: &str = "Limits";
const AUTH: &str = "Authentication";
const EVENTS: &str = "Events";
const OBSERVABILITY: &str = "Logs and metrics";

/// Resumable, verified file uploads over HTTP.
///
/// Every flag can also be set through the environment variable named in its help.
#[derive(Debug, Clone, Parser)]
#[command(name = "upload-server", version)]
pub struct Config {
    /// Address to listen on: `HOST:PORT`, `:PORT` (every interface) or `localhost:PORT`;
    /// port 0 picks a free port (the log says which).
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// TLS certificate chain (PEM, the server's certificate first): serve https, with
    /// HTTP/2 and HTTP/1.1 (ALPN). Reloaded with the key on SIGHUP; open connections keep
    /// theirs. Without it the server speaks plain http.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The server's address as clients see it (e.g. `https://uploads.example.com`, behind
    /// a reverse proxy): the URLs it hands out (`Location`, signed download URLs, webhook
    /// `content_url`) are absolute ones under it. Without it they are relative, unless a
    /// `--trusted-proxy` says where the request came in.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_PUBLIC_URL", value_name = "URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// Address or network (CIDR) of a reverse proxy whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are believed (repeatable, or
    /// comma-separated in the environment). Nobody else's are.
    #[arg(
        long = "trusted-proxy",
        help_heading = NETWORK,
        env = "UPLOAD_SERVER_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "ADDR|CIDR",
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Connections served at once. When all are taken, new ones wait and the server makes
    /// room by closing connections that do not use theirs: idle for a second (silent,
    /// trickling headers, or between requests), unable to write for a second (a client
    /// that stopped reading), or only following event streams (browsers reconnect).
    /// Connections moving an upload are never closed for this.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Time a client has to send a request's headers (and to complete the TLS handshake);
    /// a connection with no request for this long is closed.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// A chunk body that sends nothing for this long is cut and its bytes discarded.
    #[arg(help_heading = NETWORK, long, env = "UPLOAD_SERVER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// A response that cannot send a byte for this long (the client stopped reading a
    /// download or an event stream) is cut and its connection closed.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(help_heading = NETWORK, long, env = "UPLOAD_SERVER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Offer HTTP/2: by ALPN over TLS, and to clients that open a plain connection with
    /// its preface (h2c prior knowledge). `false`: HTTP/1.1 only.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_HTTP2", default_value_t = true, action = clap::ArgAction::Set)]
    pub http2: bool,

    /// Send `104 Upload Resumption Supported` to IETF upload clients. It goes only to
    /// HTTP/1.1 clients that reach the server directly: never on HTTP/2, to HTTP/1.0, or to a
    /// request that came through a proxy (from a `--trusted-proxy`, or carrying
    /// `Forwarded`, `X-Forwarded-*` or `Via`), since proxies such as nginx 1.22 pass a 1xx
    /// on as if it were the final answer.
    #[arg(long, help_heading = NETWORK, env = "UPLOAD_SERVER_INTERIM_RESPONSES", default_value_t = true, action = clap::ArgAction::Set)]
    pub interim_responses: bool,

    /// Base path of the tus 1.0 endpoint.
    #[arg(help_heading = NETWORK, long, env = "UPLOAD_SERVER_TUS_PATH", default_value = "/files/")]
    pub tus_path: String,

    /// Origin allowed to call the API from a browser (repeatable, or comma-separated in
    /// the environment; `*` allows any). None by default.
    #[arg(
        help_heading = NETWORK,
        long = "cors-origin",
        env = "UPLOAD_SERVER_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Where uploads are stored: `local` (the data directory) or `s3` (a bucket shared by
    /// any number of servers).
    #[arg(help_heading = STORAGE, long, env = "UPLOAD_SERVER_STORAGE", value_enum, default_value_t = StorageKind::Local)]
    pub storage: StorageKind,

    /// Directory where uploads are stored (local storage).
    #[arg(help_heading = STORAGE, long, env = "UPLOAD_SERVER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Idle time after which an unfinished upload expires and its bytes are freed
    /// (e.g. `2s`, `90m`, `24h`).
    #[arg(help_heading = STORAGE, long, env = "UPLOAD_SERVER_UPLOAD_TTL", default_value = "24h", value_parser = parse_duration)]
    pub upload_ttl: Duration,

    /// How long a cancelled, expired or failed upload answers 410 before it is forgotten.
    #[arg(help_heading = STORAGE, long, env = "UPLOAD_SERVER_TOMBSTONE_TTL", default_value = "7d", value_parser = parse_duration)]
    pub tombstone_ttl: Duration,

    /// Completion answers 202 and verifies in the background when more than this many
    /// bytes remain to be hashed.
    #[arg(help_heading = STORAGE, long, env = "UPLOAD_SERVER_INLINE_VERIFY_LIMIT", default_value = "1GiB", value_parser = parse_size)]
    pub inline_verify_limit: u64,

    /// S3 bucket (with `--storage s3`); credentials come from the standard `AWS_*`
    /// environment variables.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_BUCKET", required_if_eq("storage", "s3"))]
    pub s3_bucket: Option<String>,

    /// Key prefix inside the bucket.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// Endpoint of a non-AWS S3-compatible store (MinIO, Garage, Ceph, R2...).
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Region of the bucket.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_REGION")]
    pub s3_region: Option<String>,

    /// Allow a plain-http S3 endpoint.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// Time the S3 store has to answer a small request (a record, a claim, a listing); a
    /// store that hangs is then a failure in seconds, and requests get 503 + Retry-After.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_REQUEST_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub s3_request_timeout: Duration,

    /// A part (or a download) the S3 store stops taking (or sending) bytes of for this long
    /// is cut, however long it takes in all.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_STALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub s3_stall_timeout: Duration,

    /// How old a multipart upload in the bucket that no upload names (left by a crash
    /// during a create or a publishing copy) must be before a sweep aborts it.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_S3_LEFTOVER_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub s3_leftover_grace: Duration,

    /// The address other servers on the same bucket reach this one at (e.g.
    /// `http://10.0.0.5:8080`): each tells the others of the chunks it stores, so that one
    /// upload's chunks spread over several servers cost no reads of each other's claims.
    /// Default: `http://<listen address>` when listening on one address without TLS;
    /// `off` turns it off.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_PEER_URL", value_name = "URL", value_parser = parse_peer_url)]
    pub peer_url: Option<String>,

    /// Memory for chunks that reach an S3-stored upload ahead of its whole-file hash, kept
    /// to be hashed in their turn instead of read back from the bucket at completion.
    #[arg(help_heading = S3, long, env = "UPLOAD_SERVER_HASH_AHEAD_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    pub hash_ahead_memory: u64,

    /// Largest upload accepted (e.g. `10GiB`, `1TiB`).
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_MAX_UPLOAD_SIZE", default_value = "1TiB", value_parser = parse_size)]
    pub max_upload_size: u64,

    /// Uploads an owner may have open at once (without authentication: each client
    /// address, an IPv6 client by its /64); more are refused with 429. 0: no limit.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_MAX_OPEN_UPLOADS", default_value_t = 1000)]
    pub max_open_uploads: u64,

    /// Bytes an owner's (or anonymous client address's) open uploads may reserve together:
    /// their declared sizes, and for an upload of unknown length the bytes it stored, then
    /// its length once said; more is refused with 507. 0: no limit.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_QUOTA", default_value = "10TiB", value_parser = parse_size)]
    pub quota: u64,

    /// Requests a second each owner (each client address when anonymous) may make,
    /// sustained; more get 429 with `Retry-After`. 0: no limit. The default stays above
    /// what a client sending a folder of small files (one request a file, 8 at once) gets
    /// through a local disk, so that only floods are refused.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,

    /// Requests an owner may make at once above the sustained rate.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_RATE_LIMIT_BURST", default_value_t = 2000)]
    pub rate_limit_burst: u32,

    /// A retry of a chunk (or append) whose earlier request has moved no byte this long
    /// stops that one and takes its place, instead of waiting for the body timeout.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_STALL_TAKEOVER", default_value = "5s", value_parser = parse_duration)]
    pub stall_takeover: Duration,

    /// Memory for the state of idle open uploads kept between requests (their records and
    /// chunk tables); past it the least recently active are read from storage again when
    /// next used.
    #[arg(help_heading = LIMITS, long, env = "UPLOAD_SERVER_IDLE_UPLOAD_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    pub idle_upload_memory: u64,

    /// File of `token owner` lines: bearer tokens and who they stand for. Reloaded on
    /// SIGHUP.
    #[arg(help_heading = AUTH, long, env = "UPLOAD_SERVER_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Secret for HMAC-SHA256 (HS256) JWT bearer tokens: `sub` is the owner, `exp` the
    /// expiry. Lets a web app's backend mint short-lived upload tokens.
    #[arg(help_heading = AUTH, long, env = "UPLOAD_SERVER_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Serve without authentication on a non-loopback address (refused by default).
    #[arg(help_heading = AUTH, long, env = "UPLOAD_SERVER_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Owner allowed to use the admin routes (`/v1/admin/...`) when authentication is
    /// configured (repeatable, or comma-separated in the environment). Without
    /// authentication the admin routes are open, like every route.
    #[arg(
        help_heading = AUTH,
        long = "admin-owner",
        env = "UPLOAD_SERVER_ADMIN_OWNER",
        value_delimiter = ','
    )]
    pub admin_owners: Vec<String>,

    /// Host name an anonymous server answers for besides IP addresses and `localhost`
    /// (repeatable, or comma-separated in the environment): the names it is reached by
    /// through a proxy or DNS. Other names are refused (421), so that a site whose name is
    /// made to point at the server (DNS rebinding) cannot use it.
    #[arg(
        help_heading = AUTH,
        long = "allowed-host",
        env = "UPLOAD_SERVER_ALLOWED_HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Longest lifetime of a JWT (`exp` from `iat`, or from now without one); longer-lived
    /// tokens are refused. `0s`: no limit.
    #[arg(help_heading = AUTH, long, env = "UPLOAD_SERVER_JWT_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,

    /// Failed authentications a minute each client address may make; past them, the
    /// address may not authenticate at all (429) until its allowance refills. 0: no limit.
    #[arg(
        help_heading = AUTH,
        long,
        env = "UPLOAD_SERVER_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 30
    )]
    pub auth_failures_per_minute: u32,

    /// URL every upload event is POSTed to, signed (repeatable, or comma-separated in the
    /// environment); `https://` receivers are checked against the system's trust roots.
    /// None: no webhooks, and no events are recorded.
    #[arg(
        long = "webhook-url",
        help_heading = EVENTS,
        env = "UPLOAD_SERVER_WEBHOOK_URL",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,

    /// Secret of the webhooks' `X-Upload-Signature` (HMAC-SHA256); required with
    /// `--webhook-url`.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Delivery attempts of one event before it becomes a dead letter.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_MAX_ATTEMPTS", default_value_t = 15)]
    pub webhook_max_attempts: u32,

    /// Time from an event's first delivery attempt after which it becomes a dead letter.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,

    /// First retry delay of a failed delivery; doubles with each attempt (with jitter).
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,

    /// Longest retry delay of a failed delivery.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_RETRY_MAX", default_value = "10m", value_parser = parse_duration)]
    pub webhook_retry_max: Duration,

    /// Time one delivery request may take before it counts as failed.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Deliveries in flight at once.
    #[arg(help_heading = EVENTS, long, env = "UPLOAD_SERVER_WEBHOOK_CONCURRENCY", default_value_t = 8)]
    pub webhook_concurrency: usize,

    /// Serve Prometheus metrics at `GET /metrics` (public, like `/healthz`); `false` turns
    /// the route and the recording off.
    #[arg(help_heading = OBSERVABILITY, long, env = "UPLOAD_SERVER_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,

    /// `GET /metrics` needs the bearer token of an admin owner (`--admin-owner`) instead
    /// of being public.
    #[arg(help_heading = OBSERVABILITY, long, env = "UPLOAD_SERVER_METRICS_ADMIN_ONLY")]
    pub metrics_admin_only: bool,

    /// Log format.
    #[arg(help_heading = OBSERVABILITY, long, env = "UPLOAD_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Storage faults to inject, for tests only (see `storage::faults`), e.g.
    /// `data-fsync@2`.
    #[arg(help_heading = OBSERVABILITY, long, env = "UPLOAD_SERVER_FAULTS", hide = true)]
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

/// Parses `--listen`: `HOST:PORT`, `[V6]:PORT`, `:PORT` (every interface, as in Go and
/// nginx) or a name that resolves, such as `localhost:8080` (its first IPv4 address, the
/// one browsers and curl try first, else its first address).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad_port = |p: &str| format!("{s:?}: the port {p:?} is not a number from 0 to 65535");
    if let Some(port) = s.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| bad_port(port))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if s.parse::<u16>().is_ok() {
        return Err(format!(
            "{s:?} is a port without an address: use :{s} for every interface or \
             127.0.0.1:{s} for this machine only"
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?}: expected HOST:PORT, e.g. 127.0.0.1:8080, localhost:8080 or :8080"
        ));
    };
    port.parse::<u16>().map_err(|_| bad_port(port))?;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?}: {host:?} resolves to no address"))
}

/// Parses `--public-url`: an `http` or `https` URL with a host and no query or fragment,
/// kept without its trailing slash so that paths are appended to it.
fn parse_peer_url(s: &str) -> Result<String, String> {
    if s.trim() == "off" {
        return Ok("off".into());
    }
    parse_public_url(s)
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?}: expected an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: the URL has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{s:?}: the public URL must not have a query, fragment or user name"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Parses `--trusted-proxy`: an address (`10.0.0.7`, `::1`) or a network (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a network such as 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn listen_takes_the_usual_forms() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("[::1]:0"), "[::1]:0");
        assert_eq!(ok(":8080"), "0.0.0.0:8080");
        assert_eq!(ok(" :9 "), "0.0.0.0:9");
        let local = parse_listen("localhost:8080").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        for bad in [
            "8080",
            ":http",
            "localhost",
            "localhost:99999",
            "nohost.invalid:80",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
        assert!(parse_listen("8080").unwrap_err().contains(":8080"));
    }

    #[test]
    fn public_url_is_an_http_origin_with_an_optional_path() {
        assert_eq!(
            parse_public_url("https://up.example/").unwrap(),
            "https://up.example"
        );
        assert_eq!(
            parse_public_url("https://up.example:8443/uploads/").unwrap(),
            "https://up.example:8443/uploads"
        );
        for bad in [
            "up.example",
            "ftp://up.example",
            "https://up.example/?a=1",
            "https://u@x/",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        assert!(parse_net("10.0.0.0/8")
            .unwrap()
            .contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(parse_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("proxy").is_err());
    }
}
