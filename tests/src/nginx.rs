//! Debian's nginx as a TLS-terminating reverse proxy in front of `upload-server`, for the
//! proxy tests: installed by `scripts/nginx/setup.sh install` (`make test` does), started
//! per test on a free loopback port with a generated configuration, and stopped by PID
//! (its whole process group: the master and its worker).
//!
//! [`site_config`] is the configuration the README recommends, tested here as written.
//! When nginx is missing, [`available_or_skip`] prints `SKIPPED …` and the test returns,
//! unless [`REQUIRED_ENV`] is set.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that turns a missing nginx from a skip into a failure.
pub const REQUIRED_ENV: &str = "NGINX_REQUIRED";

/// The nginx binary `setup.sh` unpacks.
pub fn binary() -> PathBuf {
    crate::webclients::tools_dir().join("nginx/usr/sbin/nginx")
}

/// Whether the test `name` can run: nginx is installed, else a skip (or a panic with
/// [`REQUIRED_ENV`] set).
pub fn available_or_skip(name: &str) -> bool {
    let ok = Command::new(binary())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why = format!(
        "{} is missing; run `scripts/nginx/setup.sh install`",
        binary().display()
    );
    if std::env::var(REQUIRED_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{name}: nginx is required ({REQUIRED_ENV} is set): {why}");
    }
    eprintln!("SKIPPED {name}: {why}");
    false
}

/// The `server { … }` block of the README: TLS and HTTP/2 towards clients, HTTP/1.1 with
/// keep-alive towards `upload-server` at `upstream`, request bodies streamed (not spooled
/// to disk first), no size limit, and the forwarding headers the server believes from a
/// `--trusted-proxy`. `listen` is `443` in production.
pub fn site_config(
    listen: &str,
    server_name: &str,
    cert: &Path,
    key: &Path,
    upstream: &str,
) -> String {
    format!(
        r#"upstream upload_server {{
    server {upstream};
    keepalive 16;
}}

server {{
    listen {listen} ssl http2;
    server_name {server_name};
    ssl_certificate     {cert};
    ssl_certificate_key {key};

    # Uploads of any size, streamed to the server as they arrive: no spooling to disk,
    # which would stall large chunks and break resumption.
    client_max_body_size 0;
    proxy_request_buffering off;
    # Unbuffered, an HTTP/2 upload gets no more flow-control window than this buffer.
    client_body_buffer_size 4m;
    # Downloads and event streams go out as the server writes them.
    proxy_buffering off;
    # Completion may verify a large file before it answers.
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;

    location / {{
        proxy_pass http://upload_server;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
    }}
}}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// A running nginx; stopped (its process group killed) on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Nginx {
    /// Starts nginx on a free port of 127.0.0.1, terminating TLS with `cert` and `key`
    /// (for `localhost`) and forwarding to `upstream` (`127.0.0.1:PORT`).
    pub fn start(cert: &Path, key: &Path, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(d.join(sub)).expect("nginx temp dir");
        }
        // A free port: bound and released just before nginx binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let site = site_config(
            &format!("127.0.0.1:{port}"),
            "localhost",
            cert,
            key,
            upstream,
        );
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{site}}}
"#,
            d = d.display()
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            port,
        };
        // Up once it accepts connections (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            let exited = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("nginx did not start ({exited:?}):\n{}", nginx.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far (`$request` and status of each request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The master and its worker share the group the master leads.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- nginx error log ---\n{}\n--- end ---", self.error_log());
        }
    }
}
