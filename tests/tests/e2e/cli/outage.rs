//! A server that goes away mid-upload: really stopped (its process killed) and started
//! again later on the same port and data directory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::Server;

use super::support::{random_file, Cli};
use super::terminal::{pane_script, Tmux};

const MIB: u64 = 1 << 20;

/// The server is down for 90 s in the middle of an upload: the terminal shows one status
/// line that updates ("server unreachable, retrying in N s, for 1m05s"), never a line per
/// chunk; when the server is back the upload continues by itself and completes verified.
#[test]
fn rides_out_a_ninety_second_outage_with_one_status_line() {
    let (mut server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "outage.bin", 48 * MIB as usize, 91);
    let url = server.url();
    let script = pane_script(
        &cli,
        &[
            "upload",
            path.to_str().unwrap(),
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "4",
            "--limit-rate",
            "4MiB/s",
        ],
        &[],
    );
    let tmux = Tmux::start("outage", 160, 30, &script);
    tmux.wait_for("a quarter of the upload", Duration::from_secs(30), |s| {
        s.lines().any(|l| {
            l.contains("outage.bin")
                && l.split('%')
                    .next()
                    .and_then(|p| p.split_whitespace().last())
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| (25..100).contains(&p))
        })
    });
    server.kill9();
    let down_at = Instant::now();

    let status_lines = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("server unreachable"))
            .map(str::to_string)
            .collect()
    };
    tmux.wait_for("the outage status line", Duration::from_secs(30), |s| {
        status_lines(s)
            .iter()
            .any(|l| l.contains("retrying in ") && l.contains(" s, for "))
    });
    // Until the server is back: one status line at most, updating; no line per chunk.
    let mut seen_a_minute = false;
    let mut texts = std::collections::BTreeSet::new();
    while down_at.elapsed() < Duration::from_secs(90) {
        let screen = tmux.capture();
        let lines = status_lines(&screen);
        assert!(lines.len() <= 1, "more than one status line:\n{screen}");
        assert!(
            !screen.contains("retrying chunk"),
            "a line per chunk:\n{screen}"
        );
        assert!(!screen.contains("EXIT="), "the upload gave up:\n{screen}");
        if let Some(l) = lines.first() {
            texts.insert(l.trim().to_string());
            seen_a_minute |= l.contains(", for 1m");
        }
        // The observer's polling interval, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen_a_minute,
        "the status line never said 'for 1m…': {texts:?}"
    );
    assert!(
        texts.len() >= 5,
        "the status line did not update: {texts:?}"
    );

    server.restart();
    let end = tmux.wait_for("the end of the upload", Duration::from_secs(90), |s| {
        s.contains("EXIT=")
    });
    assert!(end.contains("EXIT=0"), "{end}");
    assert!(end.contains(&format!("sha256  {sha}")), "{end}");
    assert!(end.contains("reachable again after 1m"), "{end}");
    assert!(
        status_lines(&end).is_empty(),
        "the status line was left behind:\n{end}"
    );
}

/// With `--give-up-after`, a server that stays down ends the run with exit 1 and the exact
/// command to resume, keeping `-j`, `--chunk-size`, `--limit-rate` and the others but not
/// the token; that command, run once the server is back, completes the upload from where
/// it stopped.
#[test]
fn gives_up_with_the_exact_command_to_resume() {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, "token-a alice\n").unwrap();
    let mut server = Server::start_in(
        &data.path().join("d"),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "give up.bin", 24 * MIB as usize, 92);
    let url = server.url();
    let args = [
        "upload",
        path.to_str().unwrap(),
        "--server",
        &url,
        "--token",
        "token-a",
        "-j",
        "3",
        "--chunk-size",
        "1MiB",
        "--limit-rate",
        "4MiB/s",
        "--retry-max-delay",
        "1s",
        "--give-up-after",
        "3s",
    ];
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cli
        .command(&args)
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    // Observable: the journal on disk records 2 MiB acknowledged.
    let start = Instant::now();
    while !cli
        .journal_values()
        .iter()
        .any(|j| j["acked_bytes"].as_u64().unwrap_or(0) >= 2 * MIB)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill9();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "it never gave up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unreachable for") && stderr.contains("giving up"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying chunk"), "{stderr}");
    assert!(
        stderr.matches("server unreachable, retrying in").count() <= 1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("token-a"),
        "the token was printed:\n{stderr}"
    );
    let hint = stderr
        .lines()
        .skip_while(|l| !l.starts_with("Resume with:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no resume hint:\n{stderr}"))
        .trim()
        .to_string();
    let quoted = format!("'{}'", path.display());
    for part in [
        format!("uploader upload {quoted} --server {url}"),
        "-j 3".into(),
        "--chunk-size 1MiB".into(),
        "--limit-rate 4MiB/s".into(),
        "--retry-max-delay 1s".into(),
        "--give-up-after 3s".into(),
    ] {
        assert!(hint.contains(&part), "{part:?} missing from {hint:?}");
    }
    assert!(stderr.contains("UPLOADER_TOKEN"), "{stderr}");

    server.restart();
    let command = hint.replacen(
        "uploader",
        &format!("'{}'", tests::bin_path("uploader").display()),
        1,
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("UPLOADER_TOKEN", "token-a")
        .env_remove("UPLOADER_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}\n{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains(&format!("sha256  {sha}")), "{so}");
    assert!(
        so.contains("resumed with"),
        "the hint did not resume:\n{so}"
    );
}

/// With `--json`: one `unreachable` event per try to reach the server (not per chunk), a
/// `paused` event carrying the command to resume, and a `failed` one with exit code 1.
#[test]
fn json_reports_each_try_and_the_resume_command() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "j.bin", 16 * MIB as usize, 97);
    let url = server.url();
    let server = std::cell::RefCell::new(server);
    let run = cli.run_signalled(
        &[
            "upload",
            path.to_str().unwrap(),
            "--server",
            &url,
            "--chunk-size",
            "1MiB",
            "-j",
            "4",
            "--limit-rate",
            "4MiB/s",
            "--retry-max-delay",
            "1s",
            "--give-up-after",
            "4s",
            "--json",
        ],
        // Signal 0 only checks that the CLI is alive; the real fault is the server's death.
        "0",
        |e| {
            let hit = e["event"] == "progress" && e["bytes"].as_u64().unwrap_or(0) >= 2 * MIB;
            if hit {
                // Idempotent: only the first call kills.
                server.borrow_mut().kill9();
            }
            hit
        },
    );
    run.expect_code(1);
    let tries = run.events_of("unreachable");
    assert!(
        (2..=8).contains(&tries.len()),
        "{} tries in 4 s\n{}",
        tries.len(),
        run.dump()
    );
    for t in &tries {
        assert!(
            t["for_ms"].is_u64() && t["retry_in_ms"].as_u64().unwrap() >= 1000,
            "{t}"
        );
    }
    let first = run
        .events()
        .iter()
        .position(|e| e["event"] == "unreachable")
        .unwrap();
    assert!(
        !run.events()[first..].iter().any(|e| e["event"] == "retry"),
        "retries reported during the outage\n{}",
        run.dump()
    );
    let paused = run.one("paused");
    assert!(
        paused["resume"]
            .as_str()
            .unwrap()
            .contains("--give-up-after 4s"),
        "{paused}"
    );
    assert_eq!(run.one("failed")["exit_code"], 1);
}
