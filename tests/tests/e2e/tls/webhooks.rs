//! Webhooks to https receivers, checked against the trust roots (`SSL_CERT_FILE` here, for
//! the test's CA), and never redirected: a receiver that answers `307` to another host
//! gets its attempts counted as failures, and the other host never sees the signed body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tests::tls::{ServerCert, TestCa};

use super::{create, wait_for, TlsServer, MIB};

/// `(path, x-upload-event)` of every request a receiver got.
type Hits = Arc<Mutex<Vec<(String, String)>>>;

#[derive(Clone)]
struct Recorder {
    hits: Hits,
    /// Where `/redirect` sends its callers.
    redirect_to: Option<String>,
}

async fn hit(State(r): State<Recorder>, uri: Uri, headers: HeaderMap) -> Response {
    let kind = headers
        .get("x-upload-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.hits.lock().unwrap().push((uri.path().to_string(), kind));
    match (&r.redirect_to, uri.path()) {
        (Some(to), "/redirect") => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, to.clone())],
        )
            .into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

fn recorder(hits: Hits, redirect_to: Option<String>) -> Router {
    Router::new()
        .route("/{*path}", post(hit))
        .with_state(Recorder { hits, redirect_to })
}

/// Serves `router` over TLS with `cert` on a free loopback port.
async fn serve_tls(router: Router, cert: &ServerCert) -> SocketAddr {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_https_receivers_and_never_follow_redirects() {
    let hits: Hits = Arc::default();
    // Where a redirect would send the signed body: a plain receiver of its own.
    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_addr = thief.local_addr().unwrap();
    let stolen = recorder(hits.clone(), None);
    tokio::spawn(async move { axum::serve(thief, stolen).await });

    let ca = TestCa::new("receiver CA");
    let receiver_cert = ca.issue(&[]);
    let receiver = serve_tls(
        recorder(hits.clone(), Some(format!("http://{thief_addr}/stolen"))),
        &receiver_cert,
    )
    .await;
    let certs = tempfile::tempdir().unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem");

    let hook = format!("https://localhost:{}/hook", receiver.port());
    let redirect = format!("https://localhost:{}/redirect", receiver.port());
    let args = [
        "--webhook-url",
        hook.as_str(),
        "--webhook-url",
        redirect.as_str(),
        "--webhook-secret",
        "s3cret",
        "--webhook-retry-base",
        "100ms",
        "--webhook-retry-max",
        "200ms",
        "--webhook-max-attempts",
        "3",
    ];
    let server_ca = TestCa::new("server CA");
    let server_cert = server_ca.issue(&[]);
    let s = TlsServer::start_with(
        server_ca,
        server_cert,
        &args,
        &[("SSL_CERT_FILE", ca_file.display().to_string())],
    );
    let http = s.client();
    let id = create(&http, &s.url(), 5, MIB).await;

    let count = |path: &str, kind: &str| {
        hits.lock()
            .unwrap()
            .iter()
            .filter(|(p, k)| p == path && (kind.is_empty() || k == kind))
            .count()
    };
    wait_for(
        Duration::from_secs(30),
        "the created event at the https receiver",
        || async { count("/hook", "upload.created") == 1 },
    )
    .await;
    // Three attempts at the redirecting URL, then a dead letter that says why.
    wait_for(
        Duration::from_secs(30),
        "the redirected event to be given up",
        || async {
            let dead: serde_json::Value = http
                .get(format!("{}/v1/admin/events/dead", s.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            dead.to_string().contains("redirects are not followed")
        },
    )
    .await;
    assert_eq!(count("/redirect", ""), 3, "{:?}", hits.lock().unwrap());
    assert_eq!(count("/stolen", ""), 0, "a redirect was followed");
    // The https receiver got the one event there is (the upload is still open).
    assert_eq!(count("/hook", ""), 1, "{id}: {:?}", hits.lock().unwrap());
}
