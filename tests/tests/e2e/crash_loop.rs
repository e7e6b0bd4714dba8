//! The crash loop: the `uploader` CLI uploads a file with 8 chunks in flight
//! while the harness `kill -9`s the server at random points of the upload (seeded, the
//! seed printed), restarts it on the same data directory and port, and lets the CLI carry
//! on (or runs it again, when its retries ran out: it resumes from its journal). Checked
//! at every kill and at the end of every round:
//!
//! - I1/I4: after each restart the server reports at least every byte the CLI had seen
//!   acknowledged before the kill (`bytes acknowledged then lost` must be 0);
//! - I2: the published file's SHA-256 is the source file's, and the CLI verified it;
//! - I3: the upload was completed once (one "upload completed" log line over all the
//!   server processes of the round).
//!
//! `make test` runs 20 rounds of 256 MiB (`CRASH_ROUNDS`, `CRASH_SIZE_MIB`, `CRASH_SEED`
//! change that); `make torture` runs 200 and writes the figures to
//! `target/torture/crash-loop.md`. Build the binaries first (`cargo build --workspace
//! --bins`).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::Server;

const MIB: u64 = 1 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running `uploader upload --json`: its acknowledged bytes as it reports them, and its
/// exit.
struct CliRun {
    child: Child,
    acked: Arc<AtomicU64>,
    id: Arc<std::sync::Mutex<Option<String>>>,
    events: mpsc::Receiver<Value>,
    /// Every event received so far.
    seen: Vec<Value>,
    stderr: std::thread::JoinHandle<String>,
}

impl CliRun {
    fn start(url: &str, state: &Path, file: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(tests::bin_path("uploader"));
        for (k, _) in std::env::vars() {
            if k.starts_with("UPLOADER_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("UPLOADER_STATE_DIR", state)
            .args(["--server", url, "--json", "upload", "-j", "8"])
            .args(extra)
            // Retry long enough to outlast a restart, with short waits.
            .args(["--retries", "30", "--retry-max-delay", "500ms"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn uploader");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let acked = Arc::new(AtomicU64::new(0));
        let id = Arc::new(std::sync::Mutex::new(None));
        let (tx, events) = mpsc::channel();
        {
            let (acked, id) = (acked.clone(), id.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if let Some(i) = v["id"].as_str() {
                        *id.lock().unwrap() = Some(i.to_string());
                    }
                    if v["event"] == "progress" {
                        if let Some(b) = v["bytes"].as_u64() {
                            acked.fetch_max(b, Ordering::SeqCst);
                        }
                    }
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            child,
            acked,
            id,
            events,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits until the CLI has reported `bytes` acknowledged (or exited): the moment to
    /// strike. Returns `false` if it exited first.
    fn wait_for_acked(&mut self, bytes: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.acked.load(Ordering::SeqCst) >= bytes {
                return true;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            // Woken by each event line; the timeout only re-checks the exit.
            if let Ok(e) = self.events.recv_timeout(Duration::from_millis(20)) {
                self.seen.push(e);
            }
        }
        panic!("the CLI did not reach {bytes} acknowledged bytes within {limit:?}");
    }

    /// Waits for the CLI to exit; its code, every event it printed, and its stderr.
    fn finish(mut self, limit: Duration) -> (i32, Vec<Value>, String) {
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the CLI did not finish");
            if let Ok(e) = self.events.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(e);
            }
        };
        let stderr = self.stderr.join().unwrap_or_default();
        // The reader ends with stdout: everything it read is in the channel.
        let mut events = self.seen;
        events.extend(self.events.iter());
        (code, events, stderr)
    }
}

/// The server's status of upload `id`.
fn status(url: &str, id: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "30"])
        .arg(format!("{url}/v1/uploads/{id}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "status of {id}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// SHA-256 of the published content, streamed.
fn content_sha256(url: &str, id: &str) -> String {
    let mut child = Command::new("curl")
        .args(["-sf", "--max-time", "120"])
        .arg(format!("{url}/v1/uploads/{id}/content"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = out.read(&mut buf).expect("read content");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert!(child.wait().expect("curl").success(), "download of {id}");
    hex::encode(h.finalize())
}

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Writes `size` pseudo-random bytes from `seed` to `path`, returning their SHA-256.
fn write_random(path: &Path, size: u64, seed: u64) -> String {
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    hex::encode(h.finalize())
}

/// Bytes the CLI saw acknowledged (`acked`) that the server no longer reports for upload
/// `id` after a restart: must be 0.
fn lost_bytes(url: &str, id: &str, acked: u64, round: u32) -> u64 {
    let st = status(url, id);
    let received = st["received_bytes"].as_u64().unwrap_or(0);
    if received < acked && st["state"] == "uploading" {
        eprintln!("round {round}: {acked} bytes acknowledged before the kill, {received} after");
        return acked - received;
    }
    0
}

/// Lets `run` finish, running the CLI again (it resumes from its journal) while it
/// fails, at most three times. Returns its `completed` event and how many runs it took
/// beyond the first.
fn finish_resuming(
    run: CliRun,
    url: &str,
    state: &Path,
    file: &Path,
    extra: &[&str],
    round: u32,
    seed: u64,
) -> (Value, u64) {
    let mut result = run.finish(Duration::from_secs(600));
    let mut reruns = 0;
    while result.0 != 0 {
        reruns += 1;
        assert!(
            reruns <= 3,
            "round {round} (CRASH_SEED={seed}): the CLI keeps failing (exit {}):\n{}",
            result.0,
            result.2
        );
        result = CliRun::start(url, state, file, extra).finish(Duration::from_secs(600));
    }
    let completed = result
        .1
        .iter()
        .rev()
        .find(|e| e["event"] == "completed")
        .cloned()
        .unwrap_or_else(|| panic!("round {round}: no completed event: {:?}", result.1));
    (completed, reruns)
}

/// Counts the completions of `id` in a server process's log.
fn completions(logs: &str, id: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("upload completed") && l.contains(id))
        .count()
}

#[test]
fn uploads_survive_kill_9_of_the_server_at_random_moments() {
    let rounds: u32 = env_or("CRASH_ROUNDS", 20);
    let size = env_or::<u64>("CRASH_SIZE_MIB", 256) * MIB;
    let seed: u64 = env_or(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!(
        "crash loop: {rounds} rounds of {} MiB, CRASH_SEED={seed}",
        size / MIB
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let state = work.path().join("state");
    let mut server = Server::start_in(&data, &[]);
    let started = Instant::now();
    let (mut kills, mut cli_reruns, mut lost, mut mismatches, mut doubles) = (0u64, 0, 0, 0, 0);
    let mut peak_rss = 0;

    for round in 0..rounds {
        let file = work.path().join(format!("round-{round}.bin"));
        let sha = write_random(&file, size, seed ^ u64::from(round));
        let mut logs = String::new();
        let mut run = CliRun::start(&server.url(), &state, &file, &[]);
        // One or two kills a round, at random fractions of the upload; one round in five
        // also strikes once every byte is acknowledged (the completion is under way).
        let mut strikes: Vec<u64> = (0..rng.random_range(1..=2))
            .map(|_| rng.random_range(size / 20..size))
            .collect();
        if rng.random_ratio(1, 5) {
            strikes.push(size);
        }
        strikes.sort();
        for at in strikes {
            if !run.wait_for_acked(at, Duration::from_secs(300)) {
                break;
            }
            let acked = run.acked.load(Ordering::SeqCst);
            peak_rss = peak_rss.max(peak_rss_mib(server.pid()));
            logs.push_str(&server.logs());
            server.restart();
            kills += 1;
            let Some(id) = run.id.lock().unwrap().clone() else {
                continue;
            };
            lost += lost_bytes(&server.url(), &id, acked, round);
        }
        let (completed, reruns) =
            finish_resuming(run, &server.url(), &state, &file, &[], round, seed);
        cli_reruns += reruns;
        let id = completed["id"].as_str().unwrap().to_string();
        assert_eq!(
            completed["sha256"], sha,
            "round {round}: the CLI's verified hash"
        );
        let st = status(&server.url(), &id);
        assert_eq!(st["state"], "completed", "round {round}: {st}");
        if st["sha256"] != sha.as_str() || content_sha256(&server.url(), &id) != sha {
            mismatches += 1;
        }
        logs.push_str(&server.logs());
        if completions(&logs, &id) > 1 {
            doubles += 1;
        }
        // Free the round's bytes.
        let _ = Command::new("curl")
            .args(["-sf", "-X", "DELETE"])
            .arg(format!("{}/v1/uploads/{id}", server.url()))
            .status();
        let _ = std::fs::remove_file(&file);
    }
    peak_rss = peak_rss.max(peak_rss_mib(server.pid()));

    let report = format!(
        "| figure | value |\n| --- | --- |\n\
         | crash rounds survived / run | {rounds} / {rounds} |\n\
         | file per round | {} MiB, 8 chunks in flight |\n\
         | server kill -9s | {kills} |\n\
         | CLI runs that gave up and were resumed | {cli_reruns} |\n\
         | bytes acknowledged then lost | {lost} |\n\
         | SHA-256 mismatches published | {mismatches} |\n\
         | double completions | {doubles} |\n\
         | peak server RSS | {peak_rss} MiB |\n\
         | time | {:.0} s |\n\
         | seed | {seed} |\n",
        size / MIB,
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{report}");
    tests::torture_report("crash-loop", &report);
    tests::tally(
        "crash-kills",
        "fault",
        "server kill -9 at a random point (crash loop, local disk)",
        kills,
    );
    assert_eq!(lost, 0, "acknowledged bytes were lost (CRASH_SEED={seed})");
    assert_eq!(
        mismatches, 0,
        "a wrong file was published (CRASH_SEED={seed})"
    );
    assert_eq!(doubles, 0, "an upload completed twice (CRASH_SEED={seed})");
}

/// A connection-level round-robin balancer in front of several servers, as a load
/// balancer without sticky sessions would be: each new client connection goes to the
/// next server that accepts it.
struct Balancer {
    addr: String,
}

impl Balancer {
    fn start(upstreams: Vec<String>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let next = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let upstreams = upstreams.clone();
                let next = next.clone();
                std::thread::spawn(move || {
                    let n = upstreams.len() as u64;
                    let first = next.fetch_add(1, Ordering::SeqCst);
                    // A server that is down refuses: try the next one.
                    let Some(up) = (0..n).find_map(|k| {
                        let i = ((first + k) % n) as usize;
                        std::net::TcpStream::connect(&upstreams[i]).ok()
                    }) else {
                        return;
                    };
                    let (mut c_r, mut u_w) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                    let (mut u_r, mut c_w) = (up, client);
                    let up_thread = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_r, &mut u_w);
                        let _ = u_w.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut u_r, &mut c_w);
                    let _ = c_w.shutdown(std::net::Shutdown::Both);
                    let _ = up_thread.join();
                });
            }
        });
        Self { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The crash loop with three servers on one S3 bucket behind a balancer: at random points
/// of each upload one of them (at random) is `kill -9`ed and started again, while the CLI
/// carries on through the others. The same checks as on local disk: nothing acknowledged
/// lost, the right SHA-256 published, one completion over all three servers.
/// `CRASH_S3_ROUNDS` (default 2; `make torture` runs 20).
#[test]
fn three_servers_on_one_bucket_survive_kill_9_of_one() {
    let Some(s3) = tests::s3::S3Server::shared_or_skip("three_servers_on_one_bucket") else {
        return;
    };
    let rounds: u32 = env_or("CRASH_S3_ROUNDS", 2);
    let size = 40 * MIB;
    let seed: u64 = env_or(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!("S3 crash loop: {rounds} rounds, 3 servers, CRASH_SEED={seed}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let (mut kills, mut lost, mut mismatches, mut doubles) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..rounds {
        let bucket = rt.block_on(s3.new_bucket());
        let args = [
            "--storage",
            "s3",
            "--s3-bucket",
            &bucket,
            "--s3-endpoint",
            &s3.endpoint,
            "--s3-allow-http",
            "--s3-region",
            "us-east-1",
        ];
        let env = s3.aws_env();
        let mut servers: Vec<Server> = (0..3)
            .map(|i| {
                let dir = work.path().join(format!("r{round}-s{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Server::start_with_env(&dir, &args, &env)
            })
            .collect();
        let lb = Balancer::start(servers.iter().map(|s| s.addr.clone()).collect());
        let file = work.path().join(format!("s3-round-{round}.bin"));
        let sha = write_random(&file, size, seed ^ (1000 + u64::from(round)));
        let mut logs = String::new();
        let mut run = CliRun::start(&lb.url(), &state, &file, &["--chunk-size", "5MiB"]);
        let at = rng.random_range(size / 10..size * 9 / 10);
        if run.wait_for_acked(at, Duration::from_secs(300)) {
            let acked = run.acked.load(Ordering::SeqCst);
            let victim = rng.random_range(0..3);
            logs.push_str(&servers[victim].logs());
            servers[victim].restart();
            kills += 1;
            if let Some(id) = run.id.lock().unwrap().clone() {
                lost += lost_bytes(&lb.url(), &id, acked, round);
            }
        }
        let extra = ["--chunk-size", "5MiB"];
        let (completed, _) = finish_resuming(run, &lb.url(), &state, &file, &extra, round, seed);
        let id = completed["id"].as_str().unwrap().to_string();
        assert_eq!(completed["sha256"], sha, "round {round}");
        if status(&lb.url(), &id)["sha256"] != sha.as_str() || content_sha256(&lb.url(), &id) != sha
        {
            mismatches += 1;
        }
        for s in &servers {
            logs.push_str(&s.logs());
        }
        if completions(&logs, &id) != 1 {
            doubles += 1;
        }
        drop(servers);
        s3.drop_bucket(&bucket);
        let _ = std::fs::remove_file(&file);
    }
    let report = format!(
        "| three servers on one S3 bucket (Ceph RGW), one kill -9'd a round | value |\n\
         | --- | --- |\n\
         | rounds survived / run | {rounds} / {rounds} |\n\
         | file per round | {} MiB in 5 MiB chunks, 8 in flight |\n\
         | server kill -9s | {kills} |\n\
         | bytes acknowledged then lost | {lost} |\n\
         | SHA-256 mismatches published | {mismatches} |\n\
         | rounds without exactly one completion | {doubles} |\n\
         | seed | {seed} |\n",
        size / MIB
    );
    eprintln!("{report}");
    tests::torture_report("crash-loop-s3", &report);
    tests::tally(
        "crash-kills-s3",
        "fault",
        "server kill -9 at a random point (three servers on one S3 bucket)",
        kills,
    );
    assert_eq!(lost, 0, "acknowledged bytes were lost (CRASH_SEED={seed})");
    assert_eq!(
        mismatches, 0,
        "a wrong file was published (CRASH_SEED={seed})"
    );
    assert_eq!(doubles, 0, "not exactly one completion (CRASH_SEED={seed})");
}
