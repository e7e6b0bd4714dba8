//! Failures: one clear line on stderr and the documented exit code.

use tests::proxy::{Faults, Proxy};
use tests::Server;

use super::support::{random_file, Cli, Run};

#[track_caller]
fn one_line_error(run: &Run, code: i32, needle: &str) {
    run.expect_code(code);
    let err = run.stderr.trim();
    assert!(err.contains(needle), "expected {needle:?}\n{}", run.dump());
    if code != 2 {
        // clap's usage errors carry a usage hint; ours are exactly one line.
        assert_eq!(err.lines().count(), 1, "not one line\n{}", run.dump());
        assert!(err.starts_with("uploader: error: "), "{}", run.dump());
    }
}

fn free_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn missing_and_unreadable_files_fail_with_exit_1() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();

    let missing = dir.path().join("nope.bin");
    let run = cli.run(&["upload", missing.to_str().unwrap(), "--server", &url]);
    one_line_error(&run, 1, "No such file");
    assert!(run.stderr.contains("nope.bin"));

    // A FIFO is not a file that can be uploaded (and would block a naive reader).
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let run = cli.run(&["upload", fifo.to_str().unwrap(), "--server", &url]);
    one_line_error(&run, 1, "not a regular file");

    // Permission denied (meaningless as root, who reads everything).
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        use std::os::unix::fs::PermissionsExt;
        let (locked, _) = random_file(dir.path(), "locked.bin", 10, 1);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let run = cli.run(&["upload", locked.to_str().unwrap(), "--server", &url]);
        one_line_error(&run, 1, "Permission denied");
    }

    // With --json the failure is an event too.
    let run = cli.run(&[
        "upload",
        missing.to_str().unwrap(),
        "--server",
        &url,
        "--json",
    ]);
    run.expect_code(1);
    let failed = run.one("failed");
    assert_eq!(failed["exit_code"], 1);
    assert!(failed["error"].as_str().unwrap().contains("nope.bin"));
    // Nothing was created on the server for a file that cannot be read.
    assert!(cli.journals().is_empty());
}

#[test]
fn server_down_and_wrong_urls() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = random_file(dir.path(), "f.bin", 1000, 2);
    let f = file.to_str().unwrap();

    let run = cli.run(&["upload", f, "--server", &free_port_url()]);
    one_line_error(&run, 1, "cannot reach the server");

    // A server that is not an upload server (here: the right host, wrong path prefix).
    let run = cli.run(&[
        "upload",
        f,
        "--server",
        &format!("{}/not/here", server.url()),
    ]);
    one_line_error(
        &run,
        1,
        &format!(
            "not an upload-server at {}/not/here (got 404 ",
            server.url()
        ),
    );

    for bad in ["not a url", "ftp://127.0.0.1/"] {
        let run = cli.run(&["upload", f, "--server", bad]);
        one_line_error(&run, 2, "--server");
    }
    // Without a scheme: a usage error that suggests the URL meant.
    for (bad, meant) in [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("localhost:8080", "http://localhost:8080"),
    ] {
        let run = cli.run(&["upload", f, "--server", bad]);
        one_line_error(&run, 2, &format!("did you mean {meant}?"));
    }
    // https is a URL like any other: nothing listens there.
    let run = cli.run(&["upload", f, "--server", "https://127.0.0.1:1"]);
    one_line_error(&run, 1, "cannot reach the server");
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let cli = Cli::new();
    for args in [
        &["upload"][..],
        &["upload", "f", "-j", "0"],
        &["upload", "f", "--chunk-size", "lots"],
        &["upload", "f", "--limit-rate", "0"],
        &["status"],
        &["download", "not-an-id"],
        &["frobnicate"],
    ] {
        let run = cli.run(args);
        run.expect_code(2);
        assert!(run.stderr.contains("error"), "{}", run.dump());
    }
    let help = cli.run(&["--help"]);
    help.expect_code(0);
    for line in ["0 ", "1 ", "2 ", "3 ", "130 "] {
        assert!(
            help.stdout.contains(&format!("  {line}")),
            "{}",
            help.dump()
        );
    }
    let help = cli.run(&["upload", "--help"]);
    help.expect_code(0);
    for opt in [
        "--parallel",
        "--chunk-size",
        "--retries",
        "--limit-rate",
        "--json",
        "--quiet",
        "--resume",
        "UPLOADER_SERVER",
        "130",
    ] {
        assert!(help.stdout.contains(opt), "{opt}\n{}", help.dump());
    }
}

#[test]
fn unknown_upload_id_is_a_one_line_error() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let id = "00000000-0000-4000-8000-000000000000";
    let run = cli.run(&["status", id, "--server", &server.url()]);
    one_line_error(&run, 1, "404");
    let run = cli.run(&["download", id, "--server", &server.url()]);
    one_line_error(&run, 1, "404");
}

/// The server's SHA-256 differs from the client's (here the proxy changes the hash the
/// client declares at completion, so the real server refuses it): exit 3, with both hashes.
/// Chunks of 1 MiB, so that the file goes in chunks and a completion rather than in one
/// request.
#[test]
fn verification_mismatch_exits_3_with_both_hashes() {
    let (server, _data) = Server::start(&[]);
    let proxy = Proxy::start(
        &server.addr,
        Faults {
            tamper_complete: true,
            ..Faults::none()
        },
    );
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(dir.path(), "m.bin", 1_500_000, 13);
    let url = proxy.url();
    let upload = |extra: &[&str]| {
        let mut args = vec!["upload", file.to_str().unwrap(), "--server", &url];
        args.extend_from_slice(&["--chunk-size", "1MiB"]);
        args.extend_from_slice(extra);
        cli.run(&args)
    };
    let run = upload(&[]);
    one_line_error(&run, 3, "SHA-256 mismatch");
    assert!(run.stderr.contains(&sha), "{}", run.dump());
    assert!(
        run.stderr.contains(&"0".repeat(64)) || run.stderr.contains("server has"),
        "{}",
        run.dump()
    );
    let run = upload(&["--json"]);
    run.expect_code(3);
    assert_eq!(run.one("failed")["exit_code"], 3);
}

/// `-q` prints just the id on success, for scripts: nothing else on either stream.
#[test]
fn quiet_prints_just_the_id() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(dir.path(), "q.bin", 100_000, 14);
    let run = cli.run(&[
        "upload",
        file.to_str().unwrap(),
        "--server",
        &server.url(),
        "-q",
    ]);
    run.expect_code(0);
    assert!(run.stderr.is_empty(), "{}", run.dump());
    let id = run.stdout.trim_end_matches('\n');
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.dump());
    let st = cli.run(&["status", id, "--server", &server.url(), "--json"]);
    st.expect_code(0);
    let st: serde_json::Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["sha256"], sha.as_str());
}
