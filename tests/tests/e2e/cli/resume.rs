//! Pause (Ctrl-C) and resume; a changed file; `--resume ID`; `list`, `status`, `cancel`.

use std::sync::atomic::Ordering;

use serde_json::Value;
use tests::proxy::{Faults, Proxy};
use tests::Server;

use super::support::{random_file, Cli};

const MIB: u64 = 1 << 20;

fn progress_at_least(bytes: u64) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == "progress" && e["bytes"].as_u64().unwrap_or(0) >= bytes
}

/// SIGINT at about half of a 256 MiB upload: exit 130 with a `paused` event naming the
/// command to resume; running it again completes, sends only what is missing (the bytes
/// through the proxy over both runs stay under size + parallel × chunk size), and does not
/// re-read the prefix whose SHA-256 midstate was saved.
#[test]
fn interrupt_at_half_then_resume_sends_each_chunk_about_once() {
    let (server, _data) = Server::start(&[]);
    let proxy = Proxy::start(&server.addr, Faults::none());
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let (chunk, parallel) = (4 * MIB, 4u64);
    let (path, sha) = random_file(dir.path(), "half.bin", size as usize, 9);
    let p = path.to_str().unwrap();
    let url = proxy.url();
    let first = cli.run_interrupted(
        &[
            "upload",
            p,
            "--server",
            &url,
            "--chunk-size",
            "4MiB",
            "-j",
            "4",
            "--limit-rate",
            "128MiB/s",
            "--json",
        ],
        // Progress events come every 500 ms (~24 MiB here) and a loaded machine delays
        // the signal a little: ask at 40% to pause at about half.
        progress_at_least(size * 2 / 5),
    );
    first.expect_code(130);
    let paused = first.one("paused");
    let id = paused["id"].as_str().unwrap().to_string();
    let acked = paused["bytes"].as_u64().unwrap();
    assert!(acked >= size * 2 / 5 && acked < size, "{}", first.dump());
    let resume = paused["resume"].as_str().unwrap();
    assert!(
        resume.starts_with(&format!("uploader upload {p} --server {url}")),
        "{resume}"
    );
    assert!(first.events_of("completed").is_empty());
    assert_eq!(cli.journals().len(), 1);

    // The journal is visible to `list` and `status FILE`.
    let list = cli.run(&["list"]);
    list.expect_code(0);
    assert!(
        list.stdout.contains(&id) && list.stdout.contains(p),
        "{}",
        list.dump()
    );
    let st = cli.run(&["status", p, "--json"]);
    st.expect_code(0);
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["state"], "uploading");
    assert!(st["received_bytes"].as_u64().unwrap() >= acked);

    let second = cli.run(&["upload", p, "--server", &url, "--json", "-j", "4"]);
    second.expect_code(0);
    let started = second.one("started");
    assert_eq!(started["id"], id.as_str());
    assert!(
        started["resumed_bytes"].as_u64().unwrap() >= acked,
        "{}",
        second.dump()
    );
    let done = second.one("completed");
    assert_eq!(done["sha256"], sha.as_str());
    assert_eq!(done["id"], id.as_str());
    let read = done["read_bytes"].as_u64().unwrap();
    assert!(
        read <= size - acked + parallel * chunk,
        "the resumed run re-read {read} bytes; {acked} were acknowledged before"
    );
    let up = proxy.stats().bytes_up.load(Ordering::Relaxed);
    eprintln!(
        "interrupt/resume: paused at {acked} of {size}; second run read {read} bytes; {up} bytes sent in total (+{} over the file size)",
        up.saturating_sub(size)
    );
    assert!(
        up < size + parallel * chunk,
        "{up} bytes sent in total for a {size}-byte file"
    );
    assert!(
        cli.journals().is_empty(),
        "the journal is removed on completion"
    );
}

/// A file changed after a pause starts a new upload and says so; the old one is cancelled.
#[test]
fn changed_file_after_pause_starts_a_new_upload() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "c.bin", 8 * MIB as usize, 5);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = cli.run_interrupted(
        &[
            "upload",
            p,
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "2",
            "--limit-rate",
            "4MiB/s",
            "--json",
        ],
        progress_at_least(1),
    );
    first.expect_code(130);
    let old = first.one("paused")["id"].as_str().unwrap().to_string();

    let new_bytes = tests::random_bytes(8 * MIB as usize + 10, 6);
    std::fs::write(&path, &new_bytes).unwrap();
    let second = cli.run(&["upload", p, "--server", &url, "--json"]);
    second.expect_code(0);
    let notice = second.one("notice");
    assert!(
        notice["message"].as_str().unwrap().contains("changed"),
        "{}",
        second.dump()
    );
    let done = second.one("completed");
    assert_ne!(done["id"], old.as_str());
    assert_eq!(done["sha256"], tests::sha256_hex(&new_bytes).as_str());
    assert_eq!(second.one("started")["resumed_bytes"], 0);
    // The abandoned upload is gone from the server.
    let st = cli.run(&["status", &old, "--server", &url]);
    st.expect_code(1);
    assert!(
        st.stderr.contains("410") || st.stderr.contains("404"),
        "{}",
        st.dump()
    );
}

/// `--resume ID` continues an upload that this machine has no journal for (after checking
/// the size), sending only the missing chunks.
#[test]
fn resume_by_id_without_a_journal() {
    let (server, _data) = Server::start(&[]);
    let elsewhere = Cli::new();
    let here = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let (path, sha) = random_file(dir.path(), "r.bin", size as usize, 7);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = elsewhere.run_interrupted(
        &[
            "upload",
            p,
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "2",
            "--limit-rate",
            "4MiB/s",
            "--json",
        ],
        progress_at_least(2 * MIB),
    );
    first.expect_code(130);
    let id = first.one("paused")["id"].as_str().unwrap().to_string();

    // Wrong size: refused with a clear message, exit 1.
    let (other, _) = random_file(dir.path(), "other.bin", 1000, 8);
    let bad = here.run(&[
        "upload",
        other.to_str().unwrap(),
        "--server",
        &url,
        "--resume",
        &id,
    ]);
    bad.expect_code(1);
    assert!(bad.stderr.contains("bytes"), "{}", bad.dump());
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.dump());

    let run = here.run(&["upload", p, "--server", &url, "--resume", &id, "--json"]);
    run.expect_code(0);
    assert!(run.one("started")["resumed_bytes"].as_u64().unwrap() >= 2 * MIB);
    let done = run.one("completed");
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["sha256"], sha.as_str());
    // No midstate here: the whole file is read (and hashed) once.
    assert_eq!(done["read_bytes"], size);
}

/// `cancel FILE` deletes the upload on the server and forgets it locally.
#[test]
fn cancel_deletes_on_the_server_and_forgets_locally() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "x.bin", 8 * MIB as usize, 3);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = cli.run_interrupted(
        &[
            "upload",
            p,
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "--limit-rate",
            "4MiB/s",
            "--json",
        ],
        progress_at_least(1),
    );
    first.expect_code(130);
    let id = first.one("paused")["id"].as_str().unwrap().to_string();
    assert_eq!(cli.journals().len(), 1);

    let run = cli.run(&["cancel", p]);
    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!("cancelled {id}")),
        "{}",
        run.dump()
    );
    assert!(cli.journals().is_empty());
    let list = cli.run(&["list"]);
    assert!(!list.stdout.contains(&id), "{}", list.dump());
    let st = cli.run(&["status", &id, "--server", &url]);
    st.expect_code(1);
    assert!(
        st.stderr.contains("410") || st.stderr.contains("404"),
        "{}",
        st.dump()
    );
    assert_eq!(st.stderr.trim().lines().count(), 1, "{}", st.dump());
    // Cancelling an unknown id is an error.
    let again = cli.run(&["cancel", &id, "--server", &url]);
    again.expect_code(1);
}

/// A crash (SIGKILL) mid-upload: the journal written before it lets the next run skip the
/// prefix whose SHA-256 midstate was saved (it reads less than the file) and complete.
#[test]
fn resume_after_a_crash_skips_the_hashed_prefix() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let (path, sha) = random_file(dir.path(), "crash.bin", size as usize, 17);
    let p = path.to_str().unwrap();
    let url = server.url();
    let journal_has_midstate = || {
        cli.journal_values()
            .iter()
            .any(|j| j["midstate"]["chunks"].as_u64().unwrap_or(0) >= 4)
    };
    let first = cli.run_signalled(
        &[
            "upload",
            p,
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "2",
            "--limit-rate",
            "8MiB/s",
            "--json",
        ],
        "KILL",
        // Observable condition: the journal on disk holds a midstate of 4+ chunks.
        |_| journal_has_midstate(),
    );
    assert_eq!(first.code, -1, "killed by a signal\n{}", first.dump());
    assert!(first.events_of("paused").is_empty());
    let saved = cli.journal_values()[0]["midstate"]["chunks"]
        .as_u64()
        .unwrap();

    let second = cli.run(&["upload", p, "--server", &url, "--json"]);
    second.expect_code(0);
    let done = second.one("completed");
    assert_eq!(done["sha256"], sha.as_str());
    let read = done["read_bytes"].as_u64().unwrap();
    // After the prefix, only the chunks that were in flight (2) or read ahead (1) when it
    // crashed are read again.
    assert!(
        read <= size - saved * MIB + 3 * MIB,
        "read {read} bytes although {saved} chunks were hashed before the crash"
    );
    assert!(second.one("started")["resumed_bytes"].as_u64().unwrap() > 0);
}
