//! What a user of rclone or aws-cli expects: clear one-line errors that say what to do,
//! usage errors exiting 2, shell completions and a man page.

use std::io::{Read, Write};
use std::net::TcpListener;

use tests::Server;

use super::support::{random_file, Cli, Run};

#[track_caller]
fn one_line(run: &Run, code: i32, needles: &[&str]) {
    run.expect_code(code);
    let err = run.stderr.trim();
    for n in needles {
        assert!(err.contains(n), "expected {n:?}\n{}", run.dump());
    }
    assert_eq!(err.lines().count(), 1, "not one line\n{}", run.dump());
    assert!(err.starts_with("uploader: error: "), "{}", run.dump());
}

/// Something that is not an upload server: a web server answering every request with an
/// HTML 404 page. Stopped when the test ends (its thread dies with the listener's owner).
fn html_404_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = "<html><body><h1>Not Found</h1></body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// A URL where something else answers: every command says so in one line, with the status
/// and media type, and never dumps the HTML.
#[test]
fn a_web_server_that_is_not_an_upload_server_is_named_as_such() {
    let url = html_404_server();
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = random_file(dir.path(), "f.bin", 1000, 81);
    let want = format!("not an upload-server at {url} (got 404 text/html)");
    let id = "00000000-0000-4000-8000-000000000000";
    for args in [
        vec!["upload", file.to_str().unwrap()],
        vec!["status", id],
        vec!["download", id, "-o", "/dev/null"],
        vec!["cancel", id],
    ] {
        let mut args = args;
        args.extend(["--server", url.as_str()]);
        let run = cli.run(&args);
        one_line(&run, 1, &[&want]);
        assert!(!run.stderr.contains("<html>"), "{}", run.dump());
    }
}

/// A server that requires a token: without one, and with a wrong one, the error names
/// `--token` and `UPLOADER_TOKEN`; with the right one (from the environment) it works.
#[test]
fn token_errors_name_the_flag_and_the_variable() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, "token-a alice\n").unwrap();
    let server = Server::start_in(
        &data.path().join("d"),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = random_file(dir.path(), "t.bin", 1000, 82);
    let f = file.to_str().unwrap();
    let url = server.url();
    let run = cli.run(&["upload", f, "--server", &url]);
    one_line(&run, 1, &["requires a token", "--token", "UPLOADER_TOKEN"]);
    let id = "00000000-0000-4000-8000-000000000000";
    let run = cli.run(&["status", id, "--server", &url]);
    one_line(&run, 1, &["--token", "UPLOADER_TOKEN"]);
    let run = cli.run(&["upload", f, "--server", &url, "--token", "wrong"]);
    one_line(&run, 1, &["refused the token", "--token", "UPLOADER_TOKEN"]);
    assert!(!run.stderr.contains("wrong"), "{}", run.dump());
    let mut ok = cli.command(&["upload", f, "--server", &url, "-q"]);
    ok.env("UPLOADER_TOKEN", "token-a");
    let out = ok.output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Usage errors exit 2 in one line, also those only the server's limits reveal
/// (`--chunk-size 1KiB` below its minimum), and nothing is created on the server.
#[test]
fn chunk_size_outside_the_server_bounds_is_a_usage_error() {
    let (server, data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = random_file(dir.path(), "c.bin", 100_000, 83);
    for size in ["1KiB", "64GiB"] {
        let run = cli.run(&[
            "upload",
            file.to_str().unwrap(),
            "--server",
            &server.url(),
            "--chunk-size",
            size,
        ]);
        one_line(
            &run,
            2,
            &["--chunk-size", "the server accepts chunk sizes from"],
        );
    }
    let run = cli.run(&["upload", file.to_str().unwrap(), "--chunk-size", "0"]);
    run.expect_code(2);
    assert!(cli.journals().is_empty());
    let uploads = data.path().join("uploads");
    let created = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(created, 0, "an upload was created on the server");
}

/// Shell completions and the man page come from the command-line definitions, so they
/// name every subcommand and option.
#[test]
fn completions_and_man_page_cover_the_options() {
    let cli = Cli::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = cli.run(&["completions", shell]);
        run.expect_code(0);
        // fish names long options without their dashes (`-l transfers`).
        for word in [
            "upload",
            "download",
            "transfers",
            "give-up-after",
            "chunk-size",
        ] {
            assert!(run.stdout.contains(word), "{shell}: {word}\n{}", run.dump());
        }
    }
    cli.run(&["completions", "tcsh"]).expect_code(2);
    let man = cli.run(&["man"]);
    man.expect_code(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH uploader"),
        "{}",
        man.dump()
    );
    for word in ["upload", "download", "completions", "UPLOADER_SERVER"] {
        assert!(man.stdout.contains(word), "{word}");
    }
}
