//! HTTPS and HTTP/2 end to end: the CLI over https (trust roots, `--cacert`,
//! `SSL_CERT_FILE`, certificate errors), the server's TLS (start-up errors, reload on
//! SIGHUP), HTTP/2 (multiplexed chunks, h2c, slow clients), the rules of the `104`,
//! webhooks to https receivers, and browsers over https. Every certificate is made in the
//! test by a throwaway CA (`tests::tls`).

mod browser;
mod cli;
mod h2;
mod server;
mod webhooks;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tests::tls::{ServerCert, TestCa};
use tests::Server;

pub const MIB: usize = 1 << 20;

/// An `upload-server` serving https with a certificate of its own throwaway CA.
pub struct TlsServer {
    pub server: Server,
    pub ca: TestCa,
    pub cert: ServerCert,
    /// The CA's certificate (PEM), for `--cacert`, `SSL_CERT_FILE` or `NODE_EXTRA_CA_CERTS`.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    _certs: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl TlsServer {
    /// Starts a server with a fresh CA and certificate (for localhost and 127.0.0.1),
    /// and `args`.
    pub fn start(args: &[&str]) -> Self {
        let ca = TestCa::new("upload-server test CA");
        let cert = ca.issue(&[]);
        Self::start_with(ca, cert, args, &[])
    }

    /// Starts a server with `cert` (signed by `ca`), `args` and `env`.
    pub fn start_with(ca: TestCa, cert: ServerCert, args: &[&str], env: &[(&str, String)]) -> Self {
        let certs = tempfile::tempdir().expect("cert dir");
        let ca_file = ca.write(certs.path(), "ca.pem");
        let (cert_file, key_file) = cert.write(certs.path(), "server");
        let data = tempfile::tempdir().expect("data dir");
        let mut all = vec![
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let server = Server::start_with_env(data.path(), &all, env);
        assert!(server.url().starts_with("https://"), "{}", server.url());
        Self {
            server,
            ca,
            cert,
            ca_file,
            cert_file,
            key_file,
            _certs: certs,
            _data: data,
        }
    }

    /// `https://localhost:PORT`: the name the certificate is for.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.server
            .addr
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A client that trusts the CA (HTTP/2 by ALPN).
    pub fn client(&self) -> reqwest::Client {
        tests::tls::client_trusting(&self.ca)
    }

    /// [`metric`] of this server, read over a connection of its own.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.ca_client_h1(), &self.url(), series).await
    }

    fn ca_client_h1(&self) -> reqwest::Client {
        tests::tls::client_builder(&self.ca)
            .http1_only()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }
}

/// The value of one series of `GET {url}/metrics` (e.g.
/// `upload_http_connections_total{protocol="h2",tls="true"}`), 0 when absent. `client`
/// should keep no idle connection, so that reading does not count as an idle one.
pub async fn metric(client: &reqwest::Client, url: &str, series: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().expect("a number"))
        .unwrap_or(0.0)
}

/// A plain-http client that keeps no idle connection (for metrics).
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .http1_only()
        .build()
        .unwrap()
}

/// Sends `request` on a new TCP connection to `addr` and reads until the server closes
/// it (bounded): every response head on it, interim ones included, in order.
pub fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status lines of a raw exchange, in order (`HTTP/1.1 104 …`, `HTTP/1.1 201 …`).
pub fn status_lines(raw: &str) -> Vec<String> {
    raw.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .map(str::to_string)
        .collect()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; panics with `what`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/uploads` of `size` bytes in chunks of `chunk` with `client`; the upload's id.
pub async fn create(client: &reqwest::Client, url: &str, size: usize, chunk: usize) -> String {
    let resp = client
        .post(format!("{url}/v1/uploads"))
        .json(&serde_json::json!({"size": size, "chunk_size": chunk, "filename": "f.bin"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}
