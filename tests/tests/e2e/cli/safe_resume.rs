//! Resumes that cannot publish a file other than the local one: a file edited between the
//! interrupted run and the resume (even with its size and mtime put back, `touch -r`), a
//! file whose metadata alone changed, and a file edited while it is being sent.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use tests::Server;

use super::support::{file_sha, random_file, Cli};

const MIB: u64 = 1 << 20;

fn progress_at_least(bytes: u64) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "progress" && e["bytes"].as_u64().unwrap_or(0) >= bytes
}

fn slow_upload_args<'a>(p: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "upload",
        p,
        "--server",
        url,
        "--chunk-size",
        "1MiB",
        "-j",
        "2",
        "--limit-rate",
        "4MiB/s",
        "--json",
    ]
}

/// Overwrites `bytes` at `offset` in place (same size).
fn edit_in_place(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// The case from the field: paused, then edited in place from byte 1,001 on with its size
/// and mtime restored (`touch -r`). The resume notices (the ctime cannot be put back),
/// reads the file again, finds that a chunk the server holds differs, and uploads the new
/// content as a new upload: the server's copy is the local file.
#[test]
fn edit_with_size_and_mtime_restored_is_detected_on_resume() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "edited.bin", 8 * MIB as usize, 93);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = cli.run_interrupted(&slow_upload_args(p, &url), progress_at_least(2 * MIB));
    first.expect_code(130);
    let old = first.one("paused")["id"].as_str().unwrap().to_string();

    let reference = dir.path().join("reference");
    std::fs::write(&reference, b"").unwrap();
    let touch = |args: &[&Path]| {
        let ok = Command::new("touch").arg("-r").args(args).status().unwrap();
        assert!(ok.success());
    };
    touch(&[&path, &reference]);
    let mtime_before = std::fs::metadata(&path).unwrap().modified().unwrap();
    edit_in_place(&path, 1000, &tests::random_bytes(5000, 94));
    touch(&[&reference, &path]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        mtime_before
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * MIB);
    let sha = file_sha(&path);

    let second = cli.run(&["upload", p, "--server", &url, "--json"]);
    second.expect_code(0);
    let notices: Vec<String> = second
        .events_of("notice")
        .iter()
        .map(|n| n["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("changed since upload") && n.contains("ctime")),
        "{}",
        second.dump()
    );
    assert!(
        notices.iter().any(|n| n.contains("chunk 0 differs")),
        "{}",
        second.dump()
    );
    let done = second.one("completed");
    assert_eq!(done["sha256"], sha.as_str());
    assert_ne!(done["id"], old.as_str());
    // The server's copy is the local file, byte for byte.
    let out = dir.path().join("back.bin");
    cli.run(&[
        "download",
        done["id"].as_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--server",
        &url,
    ])
    .expect_code(0);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
}

/// Only the metadata changed (chmod moves the ctime): the file is read again from the
/// start rather than trusting the saved hash midstate, every chunk the server holds
/// matches, and the same upload completes.
#[test]
fn metadata_change_rereads_but_keeps_the_upload() {
    use std::os::unix::fs::PermissionsExt;
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let (path, sha) = random_file(dir.path(), "chmod.bin", size as usize, 95);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = cli.run_interrupted(&slow_upload_args(p, &url), progress_at_least(2 * MIB));
    first.expect_code(130);
    let old = first.one("paused")["id"].as_str().unwrap().to_string();
    assert!(
        cli.journal_values()[0]["midstate"]["chunks"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let second = cli.run(&["upload", p, "--server", &url, "--json"]);
    second.expect_code(0);
    let done = second.one("completed");
    assert_eq!(done["id"], old.as_str(), "{}", second.dump());
    assert_eq!(done["sha256"], sha.as_str());
    assert_eq!(done["read_bytes"], size, "the midstate was trusted");
    assert!(second.one("started")["resumed_bytes"].as_u64().unwrap() >= 2 * MIB);
}

/// A file edited while it is being sent is never reported as uploaded: the run fails
/// (exit 1) saying so, and the server publishes nothing.
#[test]
fn a_file_changed_while_uploading_is_not_a_success() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "moving.bin", 8 * MIB as usize, 96);
    let p = path.to_str().unwrap();
    let url = server.url();
    let mut child = cli
        .command(&slow_upload_args(p, &url))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut events = Vec::new();
    let mut edited = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let v: Value = serde_json::from_str(&line).unwrap();
        if !edited && progress_at_least(MIB)(&v) {
            // Chunk 0 is on the server by now; change it locally.
            edit_in_place(&path, 10, b"changed");
            edited = true;
        }
        events.push(v);
    }
    let status = child.wait().unwrap();
    assert!(edited, "{events:?}");
    assert_eq!(status.code(), Some(1), "{events:?}");
    assert!(
        !events.iter().any(|e| e["event"] == "completed"),
        "reported as uploaded: {events:?}"
    );
    let failed = events.iter().find(|e| e["event"] == "failed").unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("changed while it was being uploaded"),
        "{failed}"
    );
    let id = events.iter().find(|e| e["event"] == "started").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let st = cli.run(&["status", &id, "--server", &url, "--json"]);
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_ne!(st["state"], "completed", "{st}");
}
