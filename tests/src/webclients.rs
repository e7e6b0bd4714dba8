//! Harness for the tests that drive real tus clients (`scripts/webclients/`, issue 6):
//! tus-js-client in Node, tuspy, and Uppy in headless Chromium.
//!
//! The clients are installed by `scripts/webclients/setup.sh install` (`make test` does it)
//! under `target/tools` (or `WEBCLIENTS_TOOLS`). When they are missing, [`available_or_skip`]
//! prints `SKIPPED name: …` and the test returns early, unless [`REQUIRED_ENV`] is set, in
//! which case it panics, so that CI cannot pass by skipping.
//!
//! Each driver prints one JSON line on stdout and exits non-zero on failure. [`run`] starts
//! one in its own process group, bounds it with a timeout, kills the whole group (Node,
//! Python, Chromium) if it overruns, and returns its parsed JSON.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Environment variable that turns missing web clients from a skip into a test failure
/// (`make test` sets it).
pub const REQUIRED_ENV: &str = "WEBCLIENTS_REQUIRED";

/// Root of the repository (the parent of the `tests` crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// `scripts/webclients/`.
pub fn scripts_dir() -> PathBuf {
    repo_root().join("scripts").join("webclients")
}

/// Where `setup.sh` installs the clients (`WEBCLIENTS_TOOLS`, as for `setup.sh`, or
/// `<repo>/target/tools`).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("WEBCLIENTS_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target").join("tools"),
    }
}

/// The tuspy venv's Python interpreter.
pub fn tuspy_python() -> PathBuf {
    tools_dir().join("tus-venv").join("bin").join("python")
}

/// Directory for artifacts a human may want to look at (screenshots):
/// `<repo>/target/webclients-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    repo_root().join("target").join("webclients-artifacts")
}

/// `Ok` when `setup.sh status` says every client is installed and current; otherwise what
/// it said. Asked once per test binary.
pub fn available() -> Result<(), String> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    STATUS
        .get_or_init(|| {
            let script = scripts_dir().join("setup.sh");
            let out = run_with_timeout(
                Command::new("bash").arg(&script).arg("status"),
                Duration::from_secs(60),
            );
            match out {
                Err(e) => Err(format!("{}: {e}", script.display())),
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "`scripts/webclients/setup.sh status` failed ({}):\n{}{}",
                    o.status, o.stdout, o.stderr
                )),
            }
        })
        .clone()
}

/// Whether the test `name` can run. When the clients are missing: panics if
/// [`REQUIRED_ENV`] is set, otherwise prints `SKIPPED name: …` and returns `false`.
pub fn available_or_skip(name: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var_os(REQUIRED_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
                panic!(
                    "{name}: the web clients are required ({REQUIRED_ENV} is set) but not \
                     installed; run `scripts/webclients/setup.sh install` (`make test` does): {why}"
                );
            }
            // One line, so that `grep SKIPPED` shows every skip whole.
            let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!(
                "SKIPPED {name}: the web clients are not installed (run \
                 `scripts/webclients/setup.sh install`): {why}"
            );
            false
        }
    }
}

/// What a finished child process printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` in its own process group with stdin closed. If it has not exited after
/// `timeout`, the whole group is killed (SIGKILL) and an error is returned.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let pgid = child.id();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = pipe.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    // Wait for the leader to exit *without reaping it*: while it is a zombie its PID, and so
    // the group id, cannot be reused, so killing the group below can only hit what it started.
    let finished = loop {
        if exited_unreaped(pgid) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    // Whatever the outcome, nothing the child started outlives it (Chromium, page server).
    kill_group(pgid);
    let status = child.wait().map_err(|e| format!("wait {cmd:?}: {e}"))?;
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if !finished {
        return Err(format!(
            "{cmd:?} did not finish within {timeout:?} and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Whether process `pid` (our child) has exited and is a zombie waiting to be reaped.
fn exited_unreaped(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// SIGKILL to every process left in the group `pgid` (a no-op if it is empty).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A driver's result: its one JSON line, and how it exited.
#[derive(Debug)]
pub struct DriverResult {
    pub json: Value,
    pub status: ExitStatus,
    pub stderr: String,
}

impl DriverResult {
    /// `json[key]`, panicking with the whole result if it is missing.
    pub fn get(&self, key: &str) -> &Value {
        match self.json.get(key) {
            Some(v) if !v.is_null() => v,
            _ => panic!("driver result has no `{key}`: {self}"),
        }
    }

    /// `json[key]` as a string.
    pub fn str(&self, key: &str) -> &str {
        self.get(key)
            .as_str()
            .unwrap_or_else(|| panic!("`{key}` is not a string: {self}"))
    }

    /// `json[key]` as an integer.
    pub fn u64(&self, key: &str) -> u64 {
        self.get(key)
            .as_u64()
            .unwrap_or_else(|| panic!("`{key}` is not an integer: {self}"))
    }

    /// Panics (with the whole result) unless the driver exited 0 with `"ok": true`.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success() && self.json["ok"] == Value::Bool(true),
            "driver failed: {self}"
        );
        self
    }
}

impl std::fmt::Display for DriverResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; json: {}\nstderr:\n{}",
            self.status, self.json, self.stderr
        )
    }
}

/// Runs a driver (`program args…`) with a timeout and parses the last line of its stdout as
/// JSON. `timeout` bounds the whole process; drivers are also given their own, shorter
/// `--timeout` by the wrappers below so that they report a timeout themselves first.
pub fn run(program: &str, args: &[String], timeout: Duration) -> DriverResult {
    run_env(program, args, &[], timeout)
}

/// [`run`] with extra environment variables (e.g. `NODE_EXTRA_CA_CERTS` for a test CA).
pub fn run_env(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> DriverResult {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo_root());
    let out = run_with_timeout(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"));
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{program} {args:?} printed nothing (exit {}); stderr:\n{}",
                out.status, out.stderr
            )
        });
    let json: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{program} {args:?}: its last line is not JSON ({e}): {line}\nstderr:\n{}",
            out.stderr
        )
    });
    DriverResult {
        json,
        status: out.status,
        stderr: out.stderr,
    }
}

/// Seconds a driver may take by itself (its `--timeout`); the process is killed
/// [`KILL_GRACE`] later.
pub const DRIVER_TIMEOUT_S: u64 = 90;
/// Extra time after a driver's own timeout before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(15);

fn with_timeout(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--timeout".into());
    v.push(DRIVER_TIMEOUT_S.to_string());
    v
}

fn total_timeout() -> Duration {
    Duration::from_secs(DRIVER_TIMEOUT_S) + KILL_GRACE
}

/// `node scripts/webclients/tusjs.mjs ARGS --timeout …` (tus-js-client in Node).
pub fn tusjs(args: &[&str]) -> DriverResult {
    tusjs_env(args, &[])
}

/// [`tusjs`] with extra environment variables.
pub fn tusjs_env(args: &[&str], env: &[(&str, &str)]) -> DriverResult {
    let script = scripts_dir().join("tusjs.mjs");
    let mut all = vec![script.display().to_string()];
    all.extend(with_timeout(args));
    run_env("node", &all, env, total_timeout())
}

/// `tus-venv/bin/python scripts/webclients/tuspy_client.py ARGS --timeout …` (tuspy).
pub fn tuspy(args: &[&str]) -> DriverResult {
    let script = scripts_dir().join("tuspy_client.py");
    let mut all = vec![script.display().to_string()];
    all.extend(with_timeout(args));
    run(
        tuspy_python().to_str().expect("UTF-8 path"),
        &all,
        total_timeout(),
    )
}

/// `node scripts/webclients/uppy.mjs ARGS --timeout …` (Uppy in headless Chromium).
pub fn uppy(args: &[&str]) -> DriverResult {
    let script = scripts_dir().join("uppy.mjs");
    let mut all = vec![script.display().to_string()];
    all.extend(with_timeout(args));
    run("node", &all, total_timeout())
}
