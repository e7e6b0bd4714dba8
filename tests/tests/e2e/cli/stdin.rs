//! Uploads from standard input: `uploader upload - --name NAME` (or `/dev/stdin` when it
//! is a pipe) reads a stream whose size is known only at its end. The bytes are piped
//! into the real process; the server's copy and SHA-256 must be the stream's, a chunk that
//! fails is retried within the run, an empty stream is a 0-byte upload, and a stream
//! without a name is a usage error.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tests::proxy::{Fault, Faults, Proxy};
use tests::{random_bytes, sha256_hex, Server};

use super::support::{Cli, Run};

/// Starts `cmd` with pipes for its standard input, output and error.
fn spawn_piped(mut cmd: Command) -> std::process::Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start uploader")
}

/// Runs `cmd` with `input` written to its standard input (from another thread, as a pipe
/// fills) and returns the finished run.
fn run_piped(cmd: Command, what: &str, input: Vec<u8>) -> Run {
    let mut child = spawn_piped(cmd);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // The process may stop reading early (a usage error): that is for the test to judge.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for uploader");
    writer.join().unwrap();
    Run {
        cmd: format!("uploader {what}"),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn upload(cli: &Cli, args: &[&str], input: Vec<u8>) -> Run {
    run_piped(cli.command(args), &args.join(" "), input)
}

/// `GET` of `url`, from a thread of its own (some tests run in an async runtime): the
/// status and the body.
fn get(url: String) -> (u16, Vec<u8>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.bytes().await.unwrap().to_vec())
        })
    })
    .join()
    .unwrap()
}

/// The content the server serves for `id`.
fn content(server_url: &str, id: &str) -> Vec<u8> {
    let (code, body) = get(format!("{server_url}/v1/uploads/{id}/content"));
    assert_eq!(code, 200);
    body
}

/// The status document of `id`.
fn status(server_url: &str, id: &str) -> Value {
    let (code, body) = get(format!("{server_url}/v1/uploads/{id}"));
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A few MiB of random bytes piped in, in several chunks (the last one short): the server
/// holds exactly them under the name given, and its SHA-256 is theirs.
#[test]
fn stdin_is_streamed_in_chunks_and_the_server_has_its_bytes() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let bytes = random_bytes((5 << 20) + 12_345, 21);
    let sha = sha256_hex(&bytes);
    let args = [
        "upload",
        "-",
        "--name",
        "backup.tar",
        "--chunk-size",
        "1MiB",
        "-j",
        "3",
        "--json",
        "--server",
        &server.url(),
    ];
    let run = upload(&cli, &args, bytes.clone());
    run.expect_code(0);
    // Its size is not known when it starts.
    let started = run.one("started");
    assert!(started["size"].is_null(), "{}", run.dump());
    let done = run.one("completed");
    assert_eq!(done["size"], bytes.len() as u64, "{}", run.dump());
    assert_eq!(done["sha256"], sha.as_str());
    let id = done["id"].as_str().unwrap();
    let st = status(&server.url(), id);
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["filename"], "backup.tar");
    assert_eq!(st["size"], bytes.len() as u64);
    assert_eq!(st["chunk_count"], 6, "{st}");
    assert_eq!(st["sha256"], sha.as_str());
    assert!(
        content(&server.url(), id) == bytes,
        "the server's copy differs"
    );
}

/// A chunk whose connection is reset is sent again within the run; the upload completes
/// with the stream's bytes.
#[test]
fn stdin_chunk_that_fails_once_is_retried() {
    let (server, _data) = Server::start(&[]);
    let proxy = Proxy::start(
        &server.addr,
        Faults {
            rate: 1.0,
            matching: "PUT /v1/uploads/*/chunks/2".into(),
            kinds: vec![Fault::Reset],
            ..Faults::none()
        },
    );
    proxy.limit_faults(1);
    let cli = Cli::new();
    let bytes = random_bytes(4 << 20, 22);
    let args = [
        "upload",
        "-",
        "--name",
        "dump.sql",
        "--chunk-size",
        "1MiB",
        "--retry-max-delay",
        "1s",
        "--json",
        "--server",
        &proxy.url(),
    ];
    let run = upload(&cli, &args, bytes.clone());
    run.expect_code(0);
    let resets = proxy
        .stats()
        .resets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(resets, 1, "{}", run.dump());
    let retries = run.events_of("retry");
    assert!(
        retries.iter().any(|r| r["chunk"] == 2),
        "no retry of chunk 2\n{}",
        run.dump()
    );
    let done = run.one("completed");
    assert_eq!(done["sha256"], sha256_hex(&bytes).as_str());
    assert!(content(&server.url(), done["id"].as_str().unwrap()) == bytes);
}

/// `/dev/stdin` that is a pipe is standard input; `-q` prints just the id.
#[test]
fn dev_stdin_as_a_pipe_is_read_like_dash_and_quiet_prints_the_id() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let bytes = random_bytes(300_000, 23);
    let args = [
        "-q",
        "upload",
        "/dev/stdin",
        "--name",
        "notes.txt",
        "--server",
        &server.url(),
    ];
    let run = upload(&cli, &args, bytes.clone());
    run.expect_code(0);
    let id = run.stdout.trim();
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.dump());
    assert!(id.parse::<common::UploadId>().is_ok(), "{}", run.dump());
    assert!(run.stderr.is_empty(), "{}", run.dump());
    let st = status(&server.url(), id);
    assert_eq!(st["filename"], "notes.txt");
    assert_eq!(st["sha256"], sha256_hex(&bytes).as_str());
}

/// Ctrl-C while standard input is still open (the process blocked reading it): the
/// process ends at once with 130, says the upload cannot be resumed, and cancels it on the
/// server (no run could finish it).
#[test]
fn interrupted_stdin_upload_ends_at_once_and_is_cancelled() {
    use std::io::{BufRead, BufReader, Read};
    use std::time::{Duration, Instant};

    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let url = server.url();
    let args = [
        "upload",
        "-",
        "--name",
        "open.bin",
        "--chunk-size",
        "1MiB",
        "--json",
        "--server",
        &url,
    ];
    let mut child = spawn_piped(cli.command(&args));
    // Two chunks and a half, and the pipe left open: the next read blocks.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(5 << 19, 25)).unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut id = None;
    // Until two chunks are acknowledged (progress events come every half second).
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let v: Value = serde_json::from_str(&line).unwrap();
        lines.push(line);
        if v["event"] == "started" {
            id = v["id"].as_str().map(str::to_string);
        }
        if v["event"] == "progress" && v["bytes"].as_u64().unwrap_or(0) >= 2 << 20 {
            break;
        }
    }
    let id = id.unwrap_or_else(|| panic!("no started event: {lines:?}"));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after Ctrl-C, waiting for its standard input"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    let stderr = err_thread.join().unwrap();
    assert_eq!(status.code(), Some(130), "{lines:?}\n{stderr}");
    let failed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(error.contains("cannot be resumed"), "{error}");
    let (code, _) = get(format!("{url}/v1/uploads/{id}"));
    assert!(
        code == 404 || code == 410,
        "upload {id} answers {code} after the interrupt"
    );
}

/// Empty standard input is a 0-byte upload, in one request or (with a rate limit, which
/// one request could not keep) as an upload whose size, 0, is declared at completion.
#[test]
fn empty_stdin_is_a_zero_byte_upload() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let url = server.url();
    for extra in [&[][..], &["--limit-rate", "1MiB/s"][..]] {
        let mut args = vec!["upload", "-", "--name", "empty", "--json", "--server", &url];
        args.extend_from_slice(extra);
        let run = upload(&cli, &args, Vec::new());
        run.expect_code(0);
        let done = run.one("completed");
        assert_eq!(done["size"], 0, "{}", run.dump());
        assert_eq!(done["sha256"], sha256_hex(b"").as_str());
        let st = status(&url, done["id"].as_str().unwrap());
        assert_eq!(
            (st["state"].as_str(), st["size"].as_u64()),
            (Some("completed"), Some(0))
        );
        assert!(content(&url, done["id"].as_str().unwrap()).is_empty());
    }
}

/// Without `--name`, or with other files, standard input is a usage error (exit 2), found
/// before any server is asked: none listens at the URL given.
#[test]
fn stdin_without_name_is_a_usage_error() {
    let cli = Cli::new();
    let nowhere = "http://127.0.0.1:9";
    let run = upload(
        &cli,
        &["upload", "-", "--server", nowhere],
        b"data".to_vec(),
    );
    run.expect_code(2);
    assert!(run.stderr.contains("--name"), "{}", run.dump());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.dump());
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let run = upload(
        &cli,
        &["upload", "-", path, "--name", "x", "--server", nowhere],
        b"data".to_vec(),
    );
    run.expect_code(2);
    assert!(run.stderr.contains("only FILE"), "{}", run.dump());
    // --name is for streams only.
    let run = upload(
        &cli,
        &["upload", path, "--name", "x", "--server", nowhere],
        Vec::new(),
    );
    run.expect_code(2);
}

/// The same over S3 (skipped when the S3 test store is not installed): chunks of S3's
/// smallest part size and a short last one, the size declared at completion.
#[tokio::test]
async fn stdin_is_streamed_to_s3() {
    let (server, _store) = tests::start_or_skip!(tests::fixture::Storage::S3, &[]);
    let bytes = random_bytes((12 << 20) + 7, 24);
    let url = server.url();
    let run = {
        let (url, input) = (url.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || {
            let args = [
                "upload",
                "-",
                "--name",
                "s3.bin",
                "--chunk-size",
                "5MiB",
                "--json",
                "--server",
                &url,
            ];
            upload(&Cli::new(), &args, input)
        })
        .await
        .unwrap()
    };
    run.expect_code(0);
    let done = run.one("completed");
    assert_eq!(
        done["sha256"],
        sha256_hex(&bytes).as_str(),
        "{}",
        run.dump()
    );
    let id = done["id"].as_str().unwrap();
    assert_eq!(status(&url, id)["chunk_count"], 3);
    assert!(content(&url, id) == bytes, "the server's copy differs");
}
