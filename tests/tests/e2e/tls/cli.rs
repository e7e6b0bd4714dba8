//! The CLI over https: HTTP/2 when the server offers it (ALPN), HTTP/1.1 otherwise; a
//! private CA by `--cacert` or `SSL_CERT_FILE`; a certificate it cannot trust is one line
//! naming the host and the reason, exit 2, and no retry.

use super::{TlsServer, MIB};
use crate::cli::support::{random_file, Cli};
use tests::tls::TestCa;
use tests::Server;

const H2: &str = r#"upload_http_connections_total{protocol="h2",tls="true"}"#;
const H1: &str = r#"upload_http_connections_total{protocol="http/1.1",tls="true"}"#;
const HANDSHAKES_FAILED: &str = r#"upload_http_connections_closed_total{reason="tls_handshake"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uploads_over_https_on_one_http2_connection_or_over_http1() {
    let s = TlsServer::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "tls.bin", 24 * MIB, 41);
    let p = path.to_str().unwrap();
    let ca = s.ca_file.to_str().unwrap();
    let url = s.url();
    let run = cli.run(&[
        "upload",
        p,
        "--server",
        &url,
        "--cacert",
        ca,
        "--chunk-size",
        "2MiB",
        "-j",
        "4",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.one("completed");
    assert_eq!(done["sha256"], sha.as_str(), "{}", run.dump());
    assert!(
        done["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{url}/v1/uploads/")),
        "{}",
        run.dump()
    );
    // Twelve chunks, four at a time, and the status requests: one HTTP/2 connection.
    assert_eq!(s.metric(H2).await, 1.0);

    // SSL_CERT_FILE stands for the system's roots: the same CA, without --cacert.
    let (path2, sha2) = random_file(dir.path(), "tls2.bin", 3 * MIB, 42);
    let run = cli
        .command(&[
            "upload",
            path2.to_str().unwrap(),
            "--server",
            &url,
            "--json",
        ])
        .env("SSL_CERT_FILE", &s.ca_file)
        .output()
        .expect("run uploader");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains(&sha2));

    // A server that offers only HTTP/1.1: parallel chunks on parallel connections.
    let h1 = TlsServer::start(&["--http2", "false"]);
    let run = cli.run(&[
        "upload",
        p,
        "--server",
        &h1.url(),
        "--cacert",
        h1.ca_file.to_str().unwrap(),
        "--chunk-size",
        "2MiB",
        "-j",
        "4",
        "--json",
    ]);
    run.expect_code(0);
    assert_eq!(run.one("completed")["sha256"], sha.as_str());
    assert_eq!(h1.metric(H2).await, 0.0);
    // Chunks in parallel need connections in parallel: more than one besides the
    // metrics read (how many more depends on timing: a connection freed before the next
    // chunk starts is used again).
    let h1_connections = h1.metric(H1).await;
    assert!(h1_connections >= 2.0 + 1.0, "{h1_connections}");
}

/// Runs `uploader ARGS` and checks the certificate failure: exit 2, one line on stderr
/// naming `host` and containing `reason`.
fn refused(cli: &Cli, args: &[&str], host: &str, reason: &str) {
    let run = cli.run(args);
    run.expect_code(2);
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{}", run.dump());
    assert!(err.contains(host) && err.contains(reason), "{}", run.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_a_certificate_it_cannot_trust_in_one_line_with_exit_2() {
    let s = TlsServer::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "f.bin", MIB, 7);
    let p = path.to_str().unwrap();
    let url = s.url();
    let host = format!("localhost:{}", s.port());
    // Not signed by anything this machine trusts.
    refused(
        &cli,
        &["upload", p, "--server", &url],
        &host,
        "not signed by an authority",
    );
    // Nothing retried: the one failed handshake is all the server saw (it may count it
    // a moment after the client has gone).
    let t0 = std::time::Instant::now();
    while s.metric(HANDSHAKES_FAILED).await < 1.0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the failed handshake was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s.metric(HANDSHAKES_FAILED).await, 1.0);
    // --cacert naming another CA does not help.
    let other = TestCa::new("another CA").write(dir.path(), "other.pem");
    refused(
        &cli,
        &[
            "upload",
            p,
            "--server",
            &url,
            "--cacert",
            other.to_str().unwrap(),
        ],
        &host,
        "not signed by an authority",
    );
    // The other subcommands say the same.
    refused(
        &cli,
        &[
            "download",
            "00000000-0000-4000-8000-000000000000",
            "--server",
            &url,
        ],
        &host,
        "not signed",
    );

    // Expired, and for another name, with the right CA.
    let ca = TestCa::new("expired CA");
    let expired = ca.issue_expired();
    let e = TlsServer::start_with(ca, expired, &[], &[]);
    refused(
        &cli,
        &[
            "upload",
            p,
            "--server",
            &e.url(),
            "--cacert",
            e.ca_file.to_str().unwrap(),
        ],
        &format!("localhost:{}", e.port()),
        "expired",
    );
    let ca = TestCa::new("name CA");
    let elsewhere = ca.issue_only(&["files.example"]);
    let n = TlsServer::start_with(ca, elsewhere, &[], &[]);
    refused(
        &cli,
        &[
            "upload",
            p,
            "--server",
            &n.url(),
            "--cacert",
            n.ca_file.to_str().unwrap(),
        ],
        &format!("localhost:{}", n.port()),
        "another name",
    );

    // https:// to a plain http server.
    let (plain, _data) = Server::start(&[]);
    let port = plain.addr.rsplit(':').next().unwrap();
    refused(
        &cli,
        &[
            "upload",
            p,
            "--server",
            &format!("https://localhost:{port}"),
        ],
        &format!("localhost:{port}"),
        "does not answer in TLS",
    );

    // A --cacert that is not there, or not a certificate.
    let run = cli.run(&[
        "upload",
        p,
        "--server",
        &url,
        "--cacert",
        "/nonexistent/ca.pem",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("--cacert /nonexistent/ca.pem"),
        "{}",
        run.dump()
    );
    let run = cli.run(&["upload", p, "--server", &url, "--cacert", p]);
    run.expect_code(2);
    assert!(run.stderr.contains("no certificate"), "{}", run.dump());
}
