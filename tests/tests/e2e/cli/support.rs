//! Running the `uploader` binary: isolated state directory, captured output, JSON events,
//! and interrupting a run at a chosen point of its progress.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The outcome of one CLI run.
pub struct Run {
    pub cmd: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole run if the exit code is not `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.dump());
        self
    }

    /// Everything about the run, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "$ {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }

    /// The JSON events on stdout; panics if a line is not a JSON object with `event`.
    #[track_caller]
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}\n{}", self.dump()));
                assert!(
                    v["event"].is_string(),
                    "no event field: {l}\n{}",
                    self.dump()
                );
                v
            })
            .collect()
    }

    /// The events of one kind.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// The single event of a kind.
    #[track_caller]
    pub fn one(&self, kind: &str) -> Value {
        let v = self.events_of(kind);
        assert_eq!(v.len(), 1, "expected one {kind} event\n{}", self.dump());
        v.into_iter().next().unwrap()
    }
}

/// A CLI environment: its own state directory (journals), so tests do not see each other.
pub struct Cli {
    pub state: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Self {
        Self {
            state: tempfile::tempdir().expect("state dir"),
        }
    }

    /// A command for `uploader ARGS` with this environment and no inherited `UPLOADER_*`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tests::bin_path("uploader"));
        for (k, _) in std::env::vars() {
            if k.starts_with("UPLOADER_") {
                c.env_remove(k);
            }
        }
        c.env("UPLOADER_STATE_DIR", self.state.path())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `uploader ARGS` to the end.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run uploader");
        Run {
            cmd: format!("uploader {}", args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `uploader ARGS` (which must include `--json`), sends SIGINT once an event
    /// satisfies `when`, and returns the finished run. Panics if the run ends first.
    pub fn run_interrupted(&self, args: &[&str], when: impl Fn(&Value) -> bool) -> Run {
        self.run_signalled(args, "INT", when)
    }

    /// Like [`Cli::run_interrupted`] with any signal (`KILL` for a crash).
    pub fn run_signalled(&self, args: &[&str], signal: &str, when: impl Fn(&Value) -> bool) -> Run {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn uploader");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel::<String>();
        let out_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let mut sent = false;
        // Bounded: the run must reach the point within a minute.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            let hit = serde_json::from_str::<Value>(&line)
                .map(|v| when(&v))
                .unwrap_or(false);
            lines.push(line);
            if hit && !sent {
                let ok = Command::new("kill")
                    .arg(format!("-{signal}"))
                    .arg(child.id().to_string())
                    .status()
                    .expect("kill");
                assert!(ok.success());
                sent = true;
            }
        }
        let status = child.wait().expect("wait");
        let _ = out_thread.join();
        let run = Run {
            cmd: format!("uploader {}", args.join(" ")),
            code: status.code().unwrap_or(-1),
            stdout: lines.join("\n"),
            stderr: err_thread.join().unwrap_or_default(),
        };
        assert!(
            sent,
            "the run ended before the interrupt point\n{}",
            run.dump()
        );
        run
    }

    /// The journals' content.
    pub fn journal_values(&self) -> Vec<Value> {
        self.journals()
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Journal files present.
    pub fn journals(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state.path().join("uploads")) {
            Ok(d) => d
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// `bytes` of a progress event stream, checked monotonic and bounded by `total`.
#[track_caller]
pub fn assert_progress_monotonic(run: &Run, total: u64) -> Vec<u64> {
    let bytes: Vec<u64> = run
        .events_of("progress")
        .iter()
        .map(|e| {
            assert_eq!(e["total"], total, "{e}");
            assert!(e["speed_bps"].is_u64(), "{e}");
            assert!(e["eta_s"].is_u64() || e["eta_s"].is_null(), "{e}");
            e["bytes"].as_u64().expect("bytes")
        })
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {bytes:?}"
    );
    assert!(bytes.iter().all(|b| *b <= total), "{bytes:?}");
    bytes
}

/// Writes a deterministic random file of `len` bytes and returns its path and SHA-256.
pub fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, String) {
    let bytes = tests::random_bytes(len, seed);
    let sha = tests::sha256_hex(&bytes);
    (tests::write_file(dir, name, &bytes), sha)
}

/// SHA-256 of a file's content.
pub fn file_sha(path: &Path) -> String {
    tests::sha256_hex(&std::fs::read(path).expect("read file"))
}
