//! As a person sees it: the CLI in a real terminal (tmux), read back with `capture-pane`.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::Server;

use super::support::{random_file, Cli};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (is it installed?)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls the pane until `pred` holds (bounded), returning that screen.
    fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
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
    let tmux = Tmux {
        socket: format!("uploader-test-{}", std::process::id()),
    };
    let script = format!(
        "UPLOADER_STATE_DIR='{}' '{}' upload '{}' --server {} --chunk-size 1MiB --limit-rate 4MiB/s; echo \"EXIT=$?\"; exec sleep 600",
        cli.state.path().display(),
        tests::bin_path("uploader").display(),
        path.display(),
        server.url()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "150",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );

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
