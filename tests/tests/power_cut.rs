//! Power cut (issue 9): a kill -9 keeps the page cache, a power cut does not. What a
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
//! hash midstate, documented as not fsync'd) is exempt. `make test-deps` installs strace.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::{random_bytes, sha256_hex};

const KIB: usize = 1 << 10;

/// `upload-server` under strace; killed when dropped.
struct Traced {
    child: Child,
    url: String,
    trace: PathBuf,
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_traced(data: &Path, trace: &Path) -> Option<Traced> {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("STRACE_REQUIRED").is_none(),
            "STRACE_REQUIRED is set but strace is not installed (make test-deps)"
        );
        eprintln!("SKIPPED power cut: strace is not installed");
        return None;
    }
    let mut child = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "24", "-o"])
        .arg(trace)
        .args([
            "-e",
            "trace=openat,mkdir,mkdirat,rename,renameat,renameat2,write,writev,pwrite64,pwritev,\
             sendto,sendmsg,fsync,fdatasync",
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

/// The path in a `-y` annotated descriptor: `9</tmp/x/data>` → `/tmp/x/data`.
fn fd_path(arg: &str) -> Option<&str> {
    let start = arg.find('<')? + 1;
    let end = arg[start..].find('>')? + start;
    Some(&arg[start..end])
}

/// Quoted string arguments of a syscall line, in order.
fn quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        out.push(after[..j].to_string());
        rest = &after[j + 1..];
    }
    out
}

fn parent(p: &str) -> String {
    Path::new(p)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One syscall from the trace.
struct Call {
    name: String,
    /// The line where it started (an fsync covers only what completed before it).
    started: usize,
    /// The line where it completed.
    done: usize,
    /// Its arguments as printed at the start.
    args: String,
    ok: bool,
}

/// The trace's syscalls, joining `<unfinished ...>` with `<... resumed>` lines of the
/// same thread.
fn calls(trace: &str) -> Vec<Call> {
    let mut pending: HashMap<String, (String, usize, String)> = HashMap::new();
    let mut out = Vec::new();
    for (n, line) in trace.lines().enumerate() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("").to_string();
            if let Some((pname, started, args)) = pending.remove(tid) {
                if pname == name {
                    let ok = !r.contains("= -1");
                    out.push(Call {
                        name,
                        started,
                        done: n,
                        args,
                        ok,
                    });
                }
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let name = rest[..paren].to_string();
        let args = rest[paren + 1..].to_string();
        if rest.ends_with("<unfinished ...>") {
            pending.insert(tid.to_string(), (name, n, args));
        } else {
            let ok = !rest.contains("= -1");
            out.push(Call {
                name,
                started: n,
                done: n,
                args,
                ok,
            });
        }
    }
    out
}

/// Replays the trace: at every 2xx answer, what under `root` still waited for an fsync.
/// Returns (answers checked, violations, changes that needed an fsync). A change takes effect when its call completed,
/// an fsync when it completed (covering the changes completed before it started), and an
/// answer is checked when it started to be written.
fn check(trace: &str, root: &str) -> (usize, Vec<String>, usize) {
    let exempt = |p: &str| p.contains("/hash.") || p.ends_with("/.lock");
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
            "write" | "writev" | "pwrite64" | "pwritev" if c.ok => {
                if let Some(p) = fd_path(first).filter(|p| p.starts_with(root) && !exempt(p)) {
                    effects.push((
                        c.done,
                        Effect::Dirty(p.to_string(), format!("write to {p}")),
                    ));
                }
            }
            "fsync" | "fdatasync" if c.ok => {
                if let Some(p) = fd_path(first) {
                    effects.push((c.done, Effect::Synced(p.to_string(), c.started)));
                }
            }
            "openat" if c.ok && c.args.contains("O_CREAT") => {
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
            "mkdir" | "mkdirat" if c.ok => {
                if let Some(p) = quoted(&c.args).first().filter(|p| p.starts_with(root)) {
                    let key = format!("dir:{}", parent(p));
                    effects.push((c.done, Effect::Dirty(key, format!("new directory {p}"))));
                }
            }
            "rename" | "renameat" | "renameat2" if c.ok => {
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
    let Some(server) = start_traced(&data, &trace) else {
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
    let out = tests::webclients::repo_root()
        .join("target")
        .join("torture");
    if std::fs::create_dir_all(&out).is_ok() {
        let report = format!(
            "| power cut: each acknowledgement a crash point (strace) | value |\n\
             | --- | --- |\n\
             | acknowledgements checked | {answers} |\n\
             | writes and new names traced | {changes} |\n\
             | acknowledged before their fsyncs | {} |\n",
            violations.len()
        );
        let _ = std::fs::write(out.join("power-cut.md"), report);
    }
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
