//! Plain uploads: edge sizes, JSON events, human output, directories, download.

use std::sync::atomic::Ordering;

use tests::proxy::{Faults, Proxy};
use tests::Server;

use super::support::{assert_progress_monotonic, file_sha, random_file, Cli};

const MIB: usize = 1 << 20;

/// 0 bytes, 1 byte, exactly 3 chunks, 3 chunks + 1 byte: each uploads, the final event
/// carries the right hash, and downloading gives the same bytes back.
#[test]
fn edge_sizes_upload_and_download_identically() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    for (i, size) in [0, 1, 3 * MIB, 3 * MIB + 1].into_iter().enumerate() {
        let (path, sha) = random_file(dir.path(), &format!("f{i}.bin"), size, i as u64);
        let run = cli.run(&[
            "upload",
            path.to_str().unwrap(),
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "3",
            "--json",
        ]);
        run.expect_code(0);
        let events = run.events();
        assert_eq!(
            events.first().unwrap()["event"],
            "started",
            "{}",
            run.dump()
        );
        let started = run.one("started");
        assert_eq!(started["size"], size as u64);
        assert_eq!(started["chunk_size"], MIB as u64);
        assert_eq!(started["resumed_bytes"], 0);
        let last = events.last().unwrap();
        assert_eq!(last["event"], "completed", "{}", run.dump());
        assert_eq!(last["sha256"], sha.as_str());
        assert_eq!(last["size"], size as u64);
        assert_eq!(last["id"], started["id"]);
        let id = last["id"].as_str().unwrap().to_string();
        assert_eq!(
            last["url"],
            format!("{url}/v1/uploads/{id}/content").as_str()
        );
        let progress = assert_progress_monotonic(&run, size as u64);
        assert_eq!(
            progress.last().copied(),
            Some(size as u64),
            "{}",
            run.dump()
        );
        assert!(run.stderr.is_empty(), "{}", run.dump());
        // Nothing left in the journal once completed.
        assert!(cli.journals().is_empty());

        // The server's view agrees, and the bytes come back identical.
        let st = cli.run(&["status", &id, "--server", &url, "--json"]);
        st.expect_code(0);
        let st: serde_json::Value = serde_json::from_str(st.stdout.trim()).unwrap();
        assert_eq!(st["state"], "completed");
        assert_eq!(st["sha256"], sha.as_str());
        let out = dir.path().join(format!("out{i}"));
        cli.run(&[
            "download",
            &id,
            "-o",
            out.to_str().unwrap(),
            "--server",
            &url,
        ])
        .expect_code(0);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&path).unwrap(),
            "size {size}"
        );
    }
}

/// Without `--json` and without a terminal: no bar, and a summary per file on stdout with
/// id, size, SHA-256 and URL. A directory uploads every file under it.
#[test]
fn directory_upload_prints_a_summary_per_file() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    let (a, sha_a) = random_file(&dir.path().join("tree"), "a.bin", 2 * MIB + 5, 11);
    let (b, sha_b) = random_file(&dir.path().join("tree/sub"), "b.bin", 700_000, 12);
    let run = cli.run(&[
        "upload",
        dir.path().join("tree").to_str().unwrap(),
        "--server",
        &server.url(),
    ]);
    run.expect_code(0);
    assert!(run.stderr.is_empty(), "{}", run.dump());
    for (path, sha, size) in [(&a, &sha_a, 2 * MIB + 5), (&b, &sha_b, 700_000)] {
        assert!(
            run.stdout.contains(&format!("uploaded {}", path.display())),
            "{}",
            run.dump()
        );
        assert!(
            run.stdout.contains(&format!("sha256  {sha}")),
            "{}",
            run.dump()
        );
        assert!(
            run.stdout.contains(&format!("size    {size} bytes")),
            "{}",
            run.dump()
        );
    }
    assert_eq!(
        run.stdout.matches("  id      ").count(),
        2,
        "{}",
        run.dump()
    );
    assert_eq!(
        run.stdout
            .matches(&format!("  url     {}/v1/uploads/", server.url()))
            .count(),
        2
    );
    // No bar characters or carriage returns outside a terminal.
    assert!(!run.stdout.contains('\r') && !run.stderr.contains('\r'));
}

/// A download interrupted earlier (a `.part` file with a prefix) resumes with `Range`:
/// only the rest crosses the network, and the result is verified.
#[test]
fn download_resumes_a_partial_file() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB + 123;
    let (path, sha) = random_file(dir.path(), "d.bin", size, 21);
    let run = cli.run(&[
        "upload",
        path.to_str().unwrap(),
        "--server",
        &server.url(),
        "--json",
    ]);
    run.expect_code(0);
    let id = run.one("completed")["id"].as_str().unwrap().to_string();

    let proxy = Proxy::start(&server.addr, Faults::none());
    let out = dir.path().join("copy.bin");
    let prefix = 3 * MIB;
    std::fs::write(
        dir.path().join("copy.bin.part"),
        &std::fs::read(&path).unwrap()[..prefix],
    )
    .unwrap();
    let run = cli.run(&[
        "download",
        &id,
        "-o",
        out.to_str().unwrap(),
        "--server",
        &proxy.url(),
        "--json",
    ]);
    run.expect_code(0);
    let ev = run.one("downloaded");
    assert_eq!(ev["resumed_bytes"], prefix as u64);
    assert_eq!(ev["sha256"], sha.as_str());
    assert_eq!(file_sha(&out), sha);
    assert!(!dir.path().join("copy.bin.part").exists());
    let down = proxy.stats().bytes_down.load(Ordering::Relaxed);
    assert!(
        down < (size - prefix + 64 * 1024) as u64,
        "{down} bytes downloaded for {} missing",
        size - prefix
    );
}
