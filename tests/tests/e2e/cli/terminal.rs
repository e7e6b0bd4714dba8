//! As a person sees it: the CLI in a real terminal (tmux), read back with `capture-pane`.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::Server;

use super::support::{random_file, Cli};

/// A tmux server of its own running one shell script in a pane of a given size; killed
/// on drop.
pub(super) struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `script` (run by `sh -c`) in a `cols` × `rows` pane.
    pub(super) fn start(name: &str, cols: u16, rows: u16, script: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("uploader-{name}-{}", std::process::id()),
        };
        let out = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "sh",
            "-c",
            script,
        ]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (is it installed?)")
    }

    pub(super) fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls the pane until `pred` holds (bounded), returning that screen.
    pub(super) fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        let mut screen = String::new();
        while start.elapsed() < limit {
            screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            // Polling interval of the observer, not a synchronisation sleep.
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; last screen:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// While uploading, the pane shows a bar with the file name, percent, speed and ETA; at
/// the end the bar is gone and a clean summary (id, size, SHA-256, URL) remains.
#[test]
fn terminal_shows_bar_with_percent_speed_eta_then_a_clean_summary() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "movie.bin", 12 << 20, 31);
    let script = format!(
        "UPLOADER_STATE_DIR='{}' '{}' upload '{}' --server {} --chunk-size 1MiB --limit-rate 4MiB/s; echo \"EXIT=$?\"; exec sleep 600",
        cli.state.path().display(),
        tests::bin_path("uploader").display(),
        path.display(),
        server.url()
    );
    let tmux = Tmux::start("bar", 150, 30, &script);

    // e.g. "movie.bin  [=====>     ]  3.00 MiB / 12.00 MiB  25%  3.98 MiB/s  ETA 2s"
    let bar_line = |screen: &str| -> Option<(String, u32)> {
        screen.lines().find_map(|l| {
            if !(l.contains("movie.bin") && l.contains("ETA") && l.contains("MiB/s")) {
                return None;
            }
            let percent: u32 = l
                .split('%')
                .next()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            (1..100)
                .contains(&percent)
                .then(|| (l.to_string(), percent))
        })
    };
    // Past the rate limiter's first-second burst (4 MiB of 12), so the smoothed speed has settled.
    let during = tmux.wait_for("a progress bar in motion", Duration::from_secs(20), |s| {
        bar_line(s).is_some_and(|(_, percent)| percent >= 50) && !s.contains("EXIT=")
    });
    let (bar, _percent) = bar_line(&during).unwrap();
    assert!(bar.contains("12.00 MiB"), "{bar}");
    // The bar itself: "[=====>    ]" (only ">" at the very start).
    assert!(bar.contains("[=") || bar.contains("[>"), "{bar}");
    // The speed shown is about the limit (4 MiB/s), smoothed.
    let speed: f64 = bar
        .split("MiB/s")
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no speed in {bar:?}"));
    assert!((1.0..=8.0).contains(&speed), "speed {speed} in {bar}");

    let end = tmux.wait_for("the end of the run", Duration::from_secs(60), |s| {
        s.contains("EXIT=")
    });
    assert!(end.contains("EXIT=0"), "{end}");
    assert!(end.contains("uploaded "), "{end}");
    assert!(end.contains(&format!("sha256  {sha}")), "{end}");
    assert!(
        end.contains(&format!("size    {} bytes", 12 << 20)),
        "{end}"
    );
    assert!(
        end.contains(&format!("url     {}/v1/uploads/", server.url())),
        "{end}"
    );
    // Clean: no bar left behind, no stray retry noise.
    assert!(!end.contains("ETA"), "the bar was not cleared:\n{end}");
    assert!(!end.contains("[="), "the bar was not cleared:\n{end}");
    assert!(!end.contains("retrying"), "{end}");
}

/// The script that runs `uploader ARGS` in a pane with `cli`'s state, then prints its exit
/// code and stays open.
pub(super) fn pane_script(cli: &Cli, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut s = format!("UPLOADER_STATE_DIR='{}'", cli.state.path().display());
    for (k, v) in env {
        s.push_str(&format!(" {k}='{v}'"));
    }
    s.push_str(&format!(" '{}'", tests::bin_path("uploader").display()));
    for a in args {
        s.push_str(&format!(" '{a}'"));
    }
    s.push_str("; echo \"EXIT=$?\"; exec sleep 600");
    s
}

/// In a narrow terminal (60 columns) the bars fit: no line of the pane is a wrapped piece
/// of a bar, each bar line holds the name and the percent; with several files there is one
/// total line and large files get a line of their own, small ones not.
#[test]
fn bars_fit_a_narrow_terminal_with_one_total_line() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree")).unwrap();
    random_file(&dir.path().join("tree"), "large-file.bin", 72 << 20, 41);
    for i in 0..5 {
        random_file(
            &dir.path().join("tree"),
            &format!("small{i}.bin"),
            100_000,
            42 + i,
        );
    }
    let tree = dir.path().join("tree");
    let url = server.url();
    let script = pane_script(
        &cli,
        &[
            "upload",
            tree.to_str().unwrap(),
            "--server",
            &url,
            "--limit-rate",
            "16MiB/s",
            "--transfers",
            "2",
        ],
        &[],
    );
    let tmux = Tmux::start("narrow", 60, 20, &script);
    let during = tmux.wait_for(
        "the total line and the large file's bar",
        Duration::from_secs(30),
        |s| s.contains("total") && s.contains("large-file") && s.contains('%'),
    );
    let bar_lines: Vec<&str> = during.lines().filter(|l| l.contains('%')).collect();
    assert_eq!(
        bar_lines.iter().filter(|l| l.contains("total")).count(),
        1,
        "{during}"
    );
    for l in &bar_lines {
        assert!(l.chars().count() <= 60, "wider than the pane: {l:?}");
        assert!(
            l.contains('[') && l.contains(']'),
            "a bar cut short: {l:?}\n{during}"
        );
    }
    assert!(
        !bar_lines.iter().any(|l| l.contains("small")),
        "small files get no bar of their own:\n{during}"
    );
    let end = tmux.wait_for("the end of the run", Duration::from_secs(60), |s| {
        s.contains("EXIT=")
    });
    assert!(end.contains("EXIT=0"), "{end}");
}

/// A download shows a bar with the file name and percent, then a summary.
#[test]
fn download_shows_a_progress_bar() {
    let (server, _data) = Server::start(&[]);
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = random_file(dir.path(), "fetched.bin", 64 << 20, 43);
    let url = server.url();
    let up = cli.run(&["upload", path.to_str().unwrap(), "--server", &url, "-q"]);
    up.expect_code(0);
    let id = up.stdout.trim().to_string();
    let out = dir.path().join("copy.bin");
    // Paced, so that the bar is seen moving.
    let script = pane_script(
        &cli,
        &[
            "download",
            &id,
            "-o",
            out.to_str().unwrap(),
            "--server",
            &url,
            "--limit-rate",
            "16MiB/s",
        ],
        &[],
    );
    let tmux = Tmux::start("download", 220, 20, &script);
    tmux.wait_for("a download bar in motion", Duration::from_secs(30), |s| {
        s.lines()
            .any(|l| l.contains("copy.bin") && l.contains('%') && l.contains("MiB/s"))
            && !s.contains("EXIT=")
    });
    let end = tmux.wait_for("the end of the download", Duration::from_secs(60), |s| {
        s.contains("EXIT=")
    });
    assert!(end.contains("EXIT=0") && end.contains(&sha), "{end}");
    assert!(!end.contains("MiB/s"), "the bar was not cleared:\n{end}");
}
