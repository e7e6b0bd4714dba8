//! Power cut: a kill -9 keeps the page cache, a power cut does not. What a
//! power cut can take is every write not yet made durable, so the promise "a chunk is
//! acknowledged only once it would survive a crash" is a rule about order: before each
//! 2xx answer leaves, every write to the upload's files was followed by an fsync of that
//! file, and every new name (a created file, a directory, a rename) by an fsync of its
//! directory. A power cut at any moment after an answer then loses nothing it
//! acknowledged.
//!
//! This test checks the rule at every answer, on the real server: it runs `upload-server`
//! under `strace -f -y` (the file behind every descriptor), uploads hundreds of chunks
//! one at a time (so that each answer covers exactly the writes before it), completes,
//! and replays the trace: each 2xx written to a socket is a crash point, and at each one
//! no write or new name may still be waiting for its fsync. `hash.json` (the advisory
//! hash midstate, documented as not fsync'd) and `index/` (the listing index, rewritten
//! from the records at start-up) are exempt. `make test-deps` installs strace.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::fs_replay::{calls, fd_path, strings, Replay};
use tests::{random_bytes, sha256_hex};

const KIB: usize = 1 << 10;

/// `upload-server` under strace, in a process group of their own; both killed when
/// dropped (killing strace alone would leave the traced server running).
struct Traced {
    child: Child,
    url: String,
    trace: PathBuf,
}

impl Drop for Traced {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What strace records: only the calls (`Brief`), or the bytes of every write too, so
/// that the file system can be rebuilt from the trace (`Bytes`).
#[derive(Clone, Copy, PartialEq)]
enum Detail {
    Brief,
    Bytes,
}

fn start_traced(data: &Path, trace: &Path, detail: Detail) -> Option<Traced> {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("STRACE_REQUIRED").is_none(),
            "STRACE_REQUIRED is set but strace is not installed (make test-deps)"
        );
        eprintln!("SKIPPED power cut: strace is not installed");
        return None;
    }
    let mut cmd = Command::new("strace");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(["-f", "-y", "-qq"]);
    match detail {
        Detail::Brief => cmd.args(["-s", "24"]),
        Detail::Bytes => cmd.args(["-x", "-s", "2000000"]),
    };
    let mut child = cmd
        .arg("-o")
        .arg(trace)
        .args([
            "-e",
            "trace=openat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,\
             ftruncate,write,writev,pwrite64,pwritev,sendto,sendmsg,fsync,fdatasync",
        ])
        .arg(tests::bin_path("upload-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the traced server did not start");
    Some(Traced {
        child,
        url: format!("http://{addr}"),
        trace: trace.to_path_buf(),
    })
}

/// Quoted string arguments of a syscall line, in order.
fn quoted(line: &str) -> Vec<String> {
    strings(line)
        .into_iter()
        .map(|(s, _)| String::from_utf8_lossy(&s).into_owned())
        .collect()
}

fn parent(p: &str) -> String {
    Path::new(p)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Replays the trace: at every 2xx answer, what under `root` still waited for an fsync.
/// Returns (answers checked, violations, changes that needed an fsync). A change takes effect when its call completed,
/// an fsync when it completed (covering the changes completed before it started), and an
/// answer is checked when it started to be written.
fn check(trace: &str, root: &str) -> (usize, Vec<String>, usize) {
    let exempt = |p: &str| {
        p.contains("/hash.") || p.ends_with("/.lock") || p.starts_with(&format!("{root}/index"))
    };
    enum Effect {
        /// Key (a file, or `dir:` + a directory) now needs an fsync.
        Dirty(String, String),
        /// An fsync of this path that started at this line completed.
        Synced(String, usize),
        Answer,
    }
    let mut effects: Vec<(usize, Effect)> = Vec::new();
    let mut created: HashSet<String> = HashSet::new();
    for c in calls(trace) {
        let first = c.args.split(',').next().unwrap_or("");
        let socket = first.contains("TCP") || first.contains("socket");
        match c.name.as_str() {
            "write" | "writev" | "sendto" | "sendmsg"
                if socket && c.args.contains("HTTP/1.1 2") =>
            {
                effects.push((c.started, Effect::Answer));
            }
            "write" | "writev" | "pwrite64" | "pwritev" if c.ok() => {
                if let Some(p) = fd_path(first).filter(|p| p.starts_with(root) && !exempt(p)) {
                    effects.push((
                        c.done,
                        Effect::Dirty(p.to_string(), format!("write to {p}")),
                    ));
                }
            }
            "fsync" | "fdatasync" if c.ok() => {
                if let Some(p) = fd_path(first) {
                    effects.push((c.done, Effect::Synced(p.to_string(), c.started)));
                }
            }
            "openat" if c.ok() && c.args.contains("O_CREAT") => {
                let Some(p) = quoted(&c.args).into_iter().next() else {
                    continue;
                };
                if p.starts_with(root)
                    && !exempt(&p)
                    && !p.ends_with(".tmp")
                    && created.insert(p.clone())
                {
                    let key = format!("dir:{}", parent(&p));
                    effects.push((c.done, Effect::Dirty(key, format!("new file {p}"))));
                }
            }
            "mkdir" | "mkdirat" if c.ok() => {
                if let Some(p) = quoted(&c.args)
                    .first()
                    .filter(|p| p.starts_with(root) && !exempt(p))
                {
                    let key = format!("dir:{}", parent(p));
                    effects.push((c.done, Effect::Dirty(key, format!("new directory {p}"))));
                }
            }
            "rename" | "renameat" | "renameat2" if c.ok() => {
                let q = quoted(&c.args);
                if let Some(to) = q.get(1).filter(|p| p.starts_with(root) && !exempt(p)) {
                    let key = format!("dir:{}", parent(to));
                    effects.push((c.done, Effect::Dirty(key, format!("rename to {to}"))));
                }
            }
            _ => {}
        }
    }
    effects.sort_by_key(|(line, _)| *line);
    // Key → (line its latest unsynced change completed, what it was).
    let mut dirty: HashMap<String, (usize, String)> = HashMap::new();
    let mut answers = 0;
    let mut changes = 0;
    let mut violations = Vec::new();
    for (line, effect) in effects {
        match effect {
            Effect::Dirty(key, what) => {
                changes += 1;
                dirty.insert(key, (line, what));
            }
            Effect::Synced(path, started) => {
                for key in [path.clone(), format!("dir:{path}")] {
                    if dirty.get(&key).is_some_and(|(at, _)| *at < started) {
                        dirty.remove(&key);
                    }
                }
            }
            Effect::Answer => {
                answers += 1;
                if !dirty.is_empty() {
                    let mut what: Vec<_> = dirty.values().map(|(_, w)| w.clone()).collect();
                    what.sort();
                    violations.push(format!("answer {answers}: not yet durable: {what:?}"));
                }
            }
        }
    }
    (answers, violations, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_follows_the_fsyncs_it_promises() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.canonicalize().unwrap();
    let trace = work.path().join("trace.txt");
    let Some(server) = start_traced(&data, &trace, Detail::Brief) else {
        return;
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let cs = 64 * KIB;
    let count = 520;
    let file = random_bytes(count * cs - 1000, 80);
    let st: Value = http
        .post(format!("{}/v1/uploads", server.url))
        .json(&json!({"size": file.len(), "chunk_size": cs}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = st["id"].as_str().unwrap().to_string();
    // One at a time, so that each answer covers exactly the writes before it.
    for (i, chunk) in file.chunks(cs).enumerate() {
        let resp = http
            .put(format!("{}/v1/uploads/{id}/chunks/{i}", server.url))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "chunk {i}");
    }
    let done = http
        .post(format!("{}/v1/uploads/{id}/complete", server.url))
        .json(&json!({"sha256": sha256_hex(&file)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    drop(http);
    let trace_path = server.trace.clone();
    drop(server);
    let text = std::fs::read_to_string(&trace_path).expect("the trace");
    let root = data.to_string_lossy().into_owned();
    let (answers, violations, changes) = check(&text, &root);
    eprintln!(
        "power cut: {answers} acknowledgements checked as crash points, {changes} writes \
         and new names traced, {} violations",
        violations.len()
    );
    let report = format!(
        "| power cut: each acknowledgement a crash point (strace) | value |\n\
         | --- | --- |\n\
         | acknowledgements checked | {answers} |\n\
         | writes and new names traced | {changes} |\n\
         | acknowledged before their fsyncs | {} |\n",
        violations.len()
    );
    tests::torture_report("power-cut", &report);
    // Each chunk is a data write and a receipt: the trace must show them.
    assert!(
        changes > 2 * count,
        "only {changes} writes traced (is strace -y showing the files?)"
    );
    assert!(
        answers > count,
        "only {answers} answers found in the trace (is strace tracing the sockets?)"
    );
    assert!(
        violations.is_empty(),
        "{} of {answers} answers left writes not durable, e.g.:\n{}",
        violations.len(),
        violations
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker finds a missing fsync (so that the test above can fail).
#[test]
fn the_checker_finds_an_answer_before_the_fsync() {
    let root = "/d";
    let good = "1 openat(AT_FDCWD, \"/d/u/data\", O_WRONLY|O_CREAT, 0666) = 9</d/u/data>\n\
                1 fsync(8</d/u>) = 0\n\
                1 pwrite64(9</d/u/data>, \"abc\", 3, 0) = 3\n\
                1 fdatasync(9</d/u/data>) = 0\n\
                2 writev(12<TCP:[1->2]>, [{iov_base=\"HTTP/1.1 201 Created\"...}], 1) = 40\n";
    assert_eq!(check(good, root), (1, vec![], 2));
    let bad = "1 pwrite64(9</d/u/data>, \"abc\", 3, 0) = 3\n\
               2 writev(12<TCP:[1->2]>, [{iov_base=\"HTTP/1.1 201 Created\"...}], 1) = 40\n\
               1 fdatasync(9</d/u/data>) = 0\n";
    assert_eq!(check(bad, root).1.len(), 1);
    let no_dir_sync = "1 rename(\"/d/u/record.tmp\", \"/d/u/record.json\") = 0\n\
                       2 write(12<TCP:[1->2]>, \"HTTP/1.1 200 OK\", 15) = 15\n";
    assert_eq!(check(no_dir_sync, root).1.len(), 1);
    let unfinished = "1 pwrite64(9</d/u/data>, \"abc\", 3, 0) = 3\n\
                      1 fdatasync(9</d/u/data> <unfinished ...>\n\
                      2 writev(12<TCP:[1->2]>, [{iov_base=\"HTTP/1.1 201 Created\"...}], 1) = 40\n\
                      1 <... fdatasync resumed>) = 0\n";
    assert_eq!(
        check(unfinished, root).1.len(),
        1,
        "an fsync still running is no fsync yet"
    );
}

/// What the client sent, and what the server acknowledged, in the replay test.
struct Sent {
    /// The native upload: its id, chunk size and bytes.
    native: (String, usize, Vec<u8>),
    /// The tus upload: its id and bytes.
    tus: (String, Vec<u8>),
}

/// What the answers started before a crash point acknowledged.
#[derive(Default, Debug)]
struct Acked {
    native_created: bool,
    chunks: Vec<u64>,
    native_completed: bool,
    tus_created: bool,
    tus_offset: u64,
}

fn acked(answers: &[tests::fs_replay::Answer], line: usize, sent: &Sent) -> Acked {
    let mut a = Acked::default();
    let header = |text: &str, name: &str| -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    for ans in answers.iter().filter(|a| a.line < line) {
        let t = &ans.text;
        if let Some(loc) = header(t, "location") {
            a.native_created |= loc.ends_with(&sent.native.0) && loc.starts_with("/v1/");
            a.tus_created |= loc.ends_with(&sent.tus.0) && loc.starts_with("/files/");
        }
        if let Some(i) = t.split("{\"index\":").nth(1) {
            let i: String = i.chars().take_while(char::is_ascii_digit).collect();
            a.chunks.push(i.parse().expect("chunk index"));
        }
        if t.contains(&format!("\"id\":\"{}\"", sent.native.0))
            && t.contains("\"state\":\"completed\"")
        {
            a.native_completed = true;
        }
        if t.starts_with("HTTP/1.1 204") {
            if let Some(off) = header(t, "upload-offset") {
                a.tus_offset = a.tus_offset.max(off.parse().expect("offset"));
            }
        }
    }
    a
}

async fn read_all(
    backend: &storage::LocalBackend,
    record: &storage::record::UploadRecord,
    off: u64,
    len: u64,
) -> Vec<u8> {
    use futures_util::TryStreamExt;
    use storage::Backend;
    let pieces: Vec<bytes::Bytes> = backend
        .read_range(record, off, len)
        .await
        .expect("read back")
        .try_collect()
        .await
        .expect("read back");
    pieces.concat()
}

/// One power cut: the disk as `replay` says it could be just before `line`, opened by the
/// real recovery code. Checks I1, I2 and I4, then finishes both uploads from where they
/// were. Returns the changes the power cut lost.
async fn power_cut(replay: &Replay, line: usize, seed: u64, sent: &Sent) -> Result<usize, String> {
    use sha2::Digest as _;
    use storage::{Backend, Completion, Uploads, UploadsConfig};
    let tmp = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .map_err(|e| e.to_string())?;
    let lost = replay
        .crash(line, seed, tmp.path())
        .map_err(|e| e.to_string())?;
    let a = acked(replay.answers(), line, sent);
    let backend = std::sync::Arc::new(
        storage::LocalBackend::open(tmp.path()).map_err(|e| format!("recovery failed: {e}"))?,
    );
    let (nid, cs, nbytes) = &sent.native;
    let nid: common::UploadId = nid.parse().unwrap();
    let loaded = backend.load(nid).await.map_err(|e| e.to_string())?;
    match &loaded {
        None if a.native_created => return Err("the acknowledged upload is gone".into()),
        None => {}
        Some(l) => {
            let mut stored = HashSet::new();
            for r in &l.receipts {
                let storage::backend::Receipt::Chunk(c) = r else {
                    continue;
                };
                let off = c.index as usize * cs;
                let want = &nbytes[off..(off + cs).min(nbytes.len())];
                if c.sha256.0 != <[u8; 32]>::from(sha2::Sha256::digest(want)) {
                    return Err(format!("chunk {} has a receipt for other bytes", c.index));
                }
                if l.record.state != storage::record::StoredState::Completed {
                    let got = read_all(&backend, &l.record, off as u64, want.len() as u64).await;
                    if got != want {
                        return Err(format!("I4: chunk {} counted but not on disk", c.index));
                    }
                }
                stored.insert(c.index);
            }
            if let Some(i) = a.chunks.iter().find(|i| !stored.contains(i)) {
                if l.record.state != storage::record::StoredState::Completed {
                    return Err(format!("I1: acknowledged chunk {i} lost"));
                }
            }
            if a.native_completed && l.record.state != storage::record::StoredState::Completed {
                return Err(format!(
                    "the acknowledged completion is lost ({:?})",
                    l.record.state
                ));
            }
        }
    }
    let (tid, tbytes) = &sent.tus;
    let tid: common::UploadId = tid.parse().unwrap();
    let tus_loaded = backend.load(tid).await.map_err(|e| e.to_string())?;
    if tus_loaded.is_none() && a.tus_created {
        return Err("the acknowledged tus upload is gone".into());
    }
    // Recovery as the server does it, then both uploads finished from where they are.
    let up = Uploads::open(backend.clone(), UploadsConfig::default())
        .await
        .map_err(|e| format!("the service did not open: {e}"))?;
    if loaded.is_some() {
        let st = up.status(nid).await.map_err(|e| e.to_string())?;
        let missing: Vec<u64> = st.missing.iter().flat_map(|r| r[0]..=r[1]).collect();
        for i in missing {
            let off = i as usize * cs;
            let piece = bytes::Bytes::copy_from_slice(&nbytes[off..(off + cs).min(nbytes.len())]);
            let body = futures_util::stream::iter([Ok(piece.clone())]);
            up.put_chunk(nid, i, Some(piece.len() as u64), None, body)
                .await
                .map_err(|e| format!("resending chunk {i}: {e}"))?;
        }
        let done = up
            .complete(
                nid,
                Some(common::Sha256Digest(sha2::Sha256::digest(nbytes).into())),
            )
            .await
            .map_err(|e| format!("I2: completion after the power cut: {e}"))?;
        let st = match done {
            Completion::Done(st) => st,
            // A verification the power cut interrupted, resumed by the service's start.
            Completion::Verifying(_) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let st = up.status(nid).await.map_err(|e| e.to_string())?;
                    if st.state == common::api::UploadState::Completed {
                        break st;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(format!("the resumed verification ended as {:?}", st.state));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let (record, _) = up.content(nid).await.map_err(|e| e.to_string())?;
        let got = read_all(&backend, &record, 0, st.size).await;
        if got != *nbytes {
            return Err("I2: the published file differs from the upload".into());
        }
    }
    if tus_loaded.is_some() {
        let pos = up.position(tid).await.map_err(|e| e.to_string())?;
        if pos.offset < a.tus_offset {
            return Err(format!(
                "I1: tus offset {} after an acknowledged {}",
                pos.offset, a.tus_offset
            ));
        }
        if pos.offset < tbytes.len() as u64 {
            let have = read_all(&backend, &pos.record, 0, pos.offset).await;
            if have != tbytes[..pos.offset as usize] {
                return Err("I4: the tus offset counts bytes not on disk".into());
            }
            let rest = bytes::Bytes::copy_from_slice(&tbytes[pos.offset as usize..]);
            let req = storage::Append {
                offset: pos.offset,
                body_len: Some(rest.len() as u64),
                has_body: true,
                ..Default::default()
            };
            let body = futures_util::stream::iter([Ok(rest)]);
            up.append_stream(tid, storage::Dialect::Tus, req, body)
                .await
                .map_err(|e| format!("appending the rest: {e}"))?;
        }
        // A verification the power cut interrupted, or an upload whose every byte was
        // stored before it, is completed in the background by the service's start.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let st = loop {
            let st = up.status(tid).await.map_err(|e| e.to_string())?;
            let settled = matches!(
                st.state,
                common::api::UploadState::Completed | common::api::UploadState::Failed
            );
            if settled || std::time::Instant::now() > deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let want = sha256_hex(tbytes);
        if st.sha256.map(|d| d.to_hex()) != Some(want) {
            return Err(format!("I2: tus upload ended as {:?}", st.state));
        }
    }
    Ok(lost)
}

/// Power cuts replayed: the server runs under strace with the bytes of every
/// write; the test rebuilds, for each seed, what a disk could hold after a power cut at a
/// random point of the run (unsynced writes lost or torn, unsynced names rolled back, see
/// `tests::fs_replay`), opens it with the real recovery code, checks that nothing
/// acknowledged was lost and nothing counted is missing, and finishes both uploads from
/// there with the right SHA-256. `POWER_CUT_SEEDS` (default 500) sets the number of seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_points_lose_nothing_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.canonicalize().unwrap();
    let trace = work.path().join("trace.txt");
    let Some(server) = start_traced(&data, &trace, Detail::Bytes) else {
        return;
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // A native upload, 4 chunks in flight.
    let cs = 64 * KIB;
    let native = random_bytes(40 * cs - 777, 91);
    let st: Value = http
        .post(format!("{}/v1/uploads", server.url))
        .json(&json!({"size": native.len(), "chunk_size": cs}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nid = st["id"].as_str().unwrap().to_string();
    let chunks: Vec<(usize, Vec<u8>)> = native.chunks(cs).map(<[u8]>::to_vec).enumerate().collect();
    for batch in chunks.chunks(4) {
        let sends = batch.iter().map(|(i, c)| {
            http.put(format!("{}/v1/uploads/{nid}/chunks/{i}", server.url))
                .body(c.clone())
                .send()
        });
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.unwrap().status(), StatusCode::CREATED);
        }
    }
    let done = http
        .post(format!("{}/v1/uploads/{nid}/complete", server.url))
        .json(&json!({"sha256": sha256_hex(&native)}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    // A tus upload in appends that do not fall on chunk boundaries.
    let tus = random_bytes(700 * KIB + 3, 92);
    let created = http
        .post(format!("{}/files/", server.url))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", tus.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let loc = created.headers()["location"].to_str().unwrap().to_string();
    let tid = loc.rsplit('/').next().unwrap().to_string();
    let mut off = 0;
    for piece in tus.chunks(100 * KIB + 1) {
        let r = http
            .patch(format!("{}/files/{tid}", server.url))
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", off.to_string())
            .body(piece.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        off += piece.len();
    }
    drop(http);
    let trace_path = server.trace.clone();
    drop(server);
    let text = std::fs::read_to_string(&trace_path).expect("the trace");
    let replay = Replay::new(&text, &data.to_string_lossy());
    assert_eq!(replay.cut_writes(), 0, "strace cut writes short: raise -s");
    let sent = Sent {
        native: (nid, cs, native),
        tus: (tid, tus),
    };
    let all = acked(replay.answers(), usize::MAX, &sent);
    assert!(
        all.native_created && all.native_completed && all.tus_created,
        "the trace shows every answer: {all:?}"
    );
    assert_eq!(all.chunks.len(), 40, "every chunk answer is in the trace");
    assert_eq!(all.tus_offset, sent.tus.1.len() as u64);
    let seeds: u64 = std::env::var("POWER_CUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let points = replay.points();
    let base: u64 = std::env::var("POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    eprintln!("power cut replay: seeds {base}..{}", base + seeds);
    let (mut failures, mut lost_total, mut acked_total) = (Vec::new(), 0, 0);
    for seed in base..base + seeds {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        // A crash just before a change under the data directory, or after the last.
        let k = rand::Rng::random_range(&mut rng, 0..=points.len());
        let line = points.get(k).copied().unwrap_or(usize::MAX);
        let a = acked(replay.answers(), line, &sent);
        acked_total += a.chunks.len();
        match power_cut(&replay, line, seed, &sent).await {
            Ok(lost) => lost_total += lost,
            Err(e) => failures.push(format!("seed {seed} (crash before line {line}): {e}")),
        }
    }
    let (data_changes, name_changes) = replay.changes();
    eprintln!(
        "power cut replay: {seeds} seeds, {} failed; {data_changes} data and {name_changes} \
         name changes traced; {lost_total} unsynced changes dropped or torn; {acked_total} \
         acknowledged chunks checked",
        failures.len()
    );
    let report = format!(
        "| power cut replayed (unsynced writes dropped or torn) | value |\n\
         | --- | --- |\n\
         | seeds passed / run | {} / {seeds} |\n\
         | unsynced changes dropped or torn | {lost_total} |\n\
         | acknowledged chunks checked after a cut | {acked_total} |\n",
        seeds as usize - failures.len()
    );
    tests::torture_report("power-cut-replay", &report);
    assert!(
        lost_total > 0,
        "the power cuts dropped nothing: the replay is too kind"
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} power cuts broke a promise:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
