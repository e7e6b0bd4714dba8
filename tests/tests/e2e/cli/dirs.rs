//! Directories: relative paths kept on the server, shown by `status` and `list`, and
//! recreated by `download --dir`; several files at once; a second run sends nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tests::proxy::{Faults, Proxy};
use tests::Server;

use super::support::{file_sha, random_file, Cli};

/// A tree of files under `root/tree`, returning (relative path, sha) of each.
fn make_tree(root: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let specs: [(&str, usize); 7] = [
        ("a.bin", 300_000),
        ("empty", 0),
        ("sub/b.bin", 2_100_000),
        ("sub/deeper/c.bin", 5),
        ("sub/deeper/with space.txt", 70_000),
        ("z/d.bin", 1_000_001),
        ("z/e.bin", 64 << 10),
    ];
    for (i, (rel, len)) in specs.iter().enumerate() {
        let full = root.join("tree").join(rel);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        let name = full.file_name().unwrap().to_str().unwrap().to_string();
        let (_, sha) = random_file(full.parent().unwrap(), &name, *len, 100 + i as u64);
        files.insert(format!("tree/{rel}"), sha);
    }
    files
}

/// `uploader upload tree/ --transfers 3`: every file is stored with `relative_path`
/// `tree/…`, several files are in flight at once (seen at the server through a proxy),
/// `status` and `list --all` show the paths, `-q` prints the ids, and `download --dir`
/// recreates the tree byte for byte.
#[test]
fn directory_keeps_relative_paths_and_downloads_back_into_a_tree() {
    let (server, _data) = Server::start(&[]);
    let proxy = Proxy::start(&server.addr, Faults::none());
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let files = make_tree(dir.path());
    let tree = dir.path().join("tree");
    let run = cli.run(&[
        "upload",
        tree.to_str().unwrap(),
        "--server",
        &proxy.url(),
        "--transfers",
        "3",
        "-j",
        "4",
        "--chunk-size",
        "64KiB",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.events_of("completed");
    assert_eq!(done.len(), files.len(), "{}", run.dump());
    let mut ids = BTreeMap::new();
    for e in &done {
        let rel = e["relative_path"].as_str().unwrap().to_string();
        assert_eq!(
            e["sha256"].as_str(),
            files.get(&rel).map(String::as_str),
            "{e}"
        );
        assert_eq!(e["existing"], false);
        ids.insert(rel, e["id"].as_str().unwrap().to_string());
    }
    // Files overlapped: at some point two were started and not yet completed.
    let mut open = 0i32;
    let mut most = 0;
    for e in run.events() {
        match e["event"].as_str() {
            Some("started") => open += 1,
            Some("completed") => open -= 1,
            _ => {}
        }
        most = most.max(open);
    }
    assert!(
        most >= 2,
        "no two files were in flight at once\n{}",
        run.dump()
    );

    // The server keeps the relative path as metadata, and `status` shows it.
    let (rel, id) = ids.iter().find(|(r, _)| r.contains("deeper/c")).unwrap();
    let st = cli.run(&["status", id, "--server", &server.url(), "--json"]);
    st.expect_code(0);
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["metadata"]["relative_path"], rel.as_str());
    assert_eq!(st["filename"], "c.bin");
    let human = cli.run(&["status", id, "--server", &server.url()]);
    assert!(
        human.stdout.contains(&format!("path      {rel}")),
        "{}",
        human.dump()
    );
    let list = cli.run(&["list", "--all"]);
    list.expect_code(0);
    assert!(
        list.stdout.contains(&format!("as {rel}")),
        "{}",
        list.dump()
    );

    // Uploading the same tree again sends nothing and reports the same ids; -q prints
    // just the ids, one a line.
    let before = proxy
        .stats()
        .bytes_up
        .load(std::sync::atomic::Ordering::Relaxed);
    let again = cli.run(&[
        "upload",
        tree.to_str().unwrap(),
        "--server",
        &proxy.url(),
        "-q",
    ]);
    again.expect_code(0);
    let after = proxy
        .stats()
        .bytes_up
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut printed: Vec<&str> = again.stdout.lines().collect();
    printed.sort();
    let mut want: Vec<&str> = ids.values().map(String::as_str).collect();
    want.sort();
    assert_eq!(printed, want, "{}", again.dump());
    assert!(again.stderr.is_empty(), "{}", again.dump());
    assert!(
        after - before < 64 << 10,
        "{} bytes sent for files already uploaded",
        after - before
    );

    // Download everything into another directory: the tree comes back.
    let out = dir.path().join("out");
    let url = server.url();
    let mut args = vec!["download", "--server", &url, "--dir"];
    let out_s = out.to_str().unwrap().to_string();
    args.push(&out_s);
    let id_list: Vec<String> = ids.values().cloned().collect();
    args.extend(id_list.iter().map(String::as_str));
    let down = cli.run(&args);
    down.expect_code(0);
    for (rel, sha) in &files {
        assert_eq!(&file_sha(&out.join(rel)), sha, "{rel}\n{}", down.dump());
    }
    // Again: the files are there with the same content, so nothing fails.
    cli.run(&args).expect_code(0);
}

/// `--force` uploads a file this machine already uploaded; a changed file is uploaded
/// again without it.
#[test]
fn force_and_changed_files_upload_again() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "f.bin", 200_000, 61);
    let p = path.to_str().unwrap();
    let url = server.url();
    let first = cli.run(&["upload", p, "--server", &url, "--json"]);
    first.expect_code(0);
    let id = first.one("completed")["id"].as_str().unwrap().to_string();
    // `status FILE` finds the upload this machine completed.
    let st = cli.run(&["status", p, "--json"]);
    st.expect_code(0);
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["state"], "completed");

    let same = cli.run(&["upload", p, "--server", &url]);
    same.expect_code(0);
    assert!(
        same.stdout.contains("already uploaded") && same.stdout.contains(&id),
        "{}",
        same.dump()
    );
    let forced = cli.run(&["upload", p, "--server", &url, "--json", "--force"]);
    forced.expect_code(0);
    let f = forced.one("completed");
    assert_ne!(f["id"], id.as_str());
    assert_eq!(f["existing"], false);
    assert_eq!(f["sha256"], sha.as_str());

    // Same size, other bytes: not the same file.
    let new = tests::random_bytes(200_000, 62);
    std::fs::write(&path, &new).unwrap();
    let changed = cli.run(&["upload", p, "--server", &url, "--json"]);
    changed.expect_code(0);
    let c = changed.one("completed");
    assert_eq!(c["existing"], false);
    assert_eq!(c["sha256"], tests::sha256_hex(&new).as_str());
}

/// The tree written by a download never leaves the target directory: a symbolic link
/// planted where a directory of the tree goes is refused, and nothing is written through
/// it.
#[test]
fn download_refuses_to_follow_a_planted_symlink() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    random_file(&dir.path().join("tree/sub"), "x.bin", 1000, 71);
    let run = cli.run(&[
        "upload",
        dir.path().join("tree").to_str().unwrap(),
        "--server",
        &server.url(),
        "-q",
    ]);
    run.expect_code(0);
    let id = run.stdout.trim().to_string();

    let out = dir.path().join("out");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(out.join("tree")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("tree/sub")).unwrap();
    let down = cli.run(&[
        "download",
        &id,
        "--dir",
        out.to_str().unwrap(),
        "--server",
        &server.url(),
    ]);
    down.expect_code(1);
    assert!(down.stderr.contains("symbolic link"), "{}", down.dump());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// The server refuses relative paths that lead out of a directory, whoever sends them.
#[test]
fn server_refuses_relative_paths_that_lead_out() {
    let (server, _data) = Server::start(&[]);
    for bad in ["../evil", "/etc/passwd", "a//b", "a/./b", ""] {
        let body = serde_json::json!({"size": 1, "metadata": {"relative_path": bad}});
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{}/v1/uploads", server.url()))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "{bad:?}");
    }
    let body = serde_json::json!({"size": 1, "metadata": {"relative_path": "ok/x.bin"}});
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(body.to_string())
        .arg(format!("{}/v1/uploads", server.url()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
}
