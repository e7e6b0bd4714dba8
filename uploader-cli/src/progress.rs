//! What the user sees: bars on a terminal, plain lines elsewhere, or one JSON event per
//! line on stdout with `--json`.
//!
//! Bars (indicatif) go to stderr, one per file plus a total line, with bytes, percent,
//! smoothed speed and ETA; retries and notices are printed above them so they never tear a
//! bar. Results go to stdout. JSON events: `started`, `progress` (at most every 500 ms),
//! `retry`, `notice`, `paused`, `completed`, `failed`; each is an object with an `event`
//! field.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use common::units::format_size;
use common::{Sha256Digest, UploadId};

/// How output is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars on stderr (a terminal), results on stdout.
    Bars,
    /// No bars (not a terminal): results on stdout, retries and notices on stderr.
    Plain,
    /// JSON events on stdout, nothing else.
    Json,
    /// Only errors, on stderr.
    Quiet,
}

impl Mode {
    /// Picks the mode from the flags and whether stderr is a terminal.
    pub fn choose(json: bool, quiet: bool) -> Self {
        use std::io::IsTerminal;
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

/// Live counters of one file's transfer, updated by the senders and read by the ticker.
#[derive(Debug, Default)]
pub struct FileProgress {
    /// Bytes the server acknowledged (including those found there on resume).
    pub acked: AtomicU64,
    /// Body bytes of requests still in flight, already handed to the connection.
    pub in_flight: AtomicU64,
}

/// What a finished upload reports.
#[derive(Clone, Debug)]
pub struct Completed {
    /// Upload id.
    pub id: UploadId,
    /// Bytes.
    pub size: u64,
    /// Verified SHA-256.
    pub sha256: Sha256Digest,
    /// Where the content is served.
    pub url: String,
    /// Bytes this run read from the file (less than `size` when a resume skipped a prefix
    /// whose hash was saved).
    pub read_bytes: u64,
    /// Bytes already on the server when this run started.
    pub resumed_bytes: u64,
    /// Wall time of this run for this file.
    pub elapsed: Duration,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    file: Option<ProgressBar>,
}

struct JsonTicker {
    last_emit: Option<Instant>,
    last_bytes: u64,
    speed: f64,
    emitted_bytes: Option<u64>,
}

/// Renders events in the chosen [`Mode`]. Shared by reference across tasks.
pub struct Reporter {
    mode: Mode,
    bars: Mutex<Option<Bars>>,
    json: Mutex<JsonTicker>,
    /// Bytes of the files finished so far, for the total line.
    done_bytes: AtomicU64,
    total_bytes: u64,
}

fn bar_style(prefix: &str) -> ProgressStyle {
    let template = format!(
        "{prefix}{{msg:24!}} [{{bar:28}}] {{bytes:>10}} / {{total_bytes:<10}} {{percent:>3}}%  {{binary_bytes_per_sec:>12}}  ETA {{eta:>4}}"
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Reporter {
    /// A reporter for a run that will send `total_bytes` over all its files.
    pub fn new(mode: Mode, total_bytes: u64, files: usize) -> Self {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let total = if files > 1 {
                let t = multi.add(ProgressBar::new(total_bytes));
                t.set_style(bar_style(""));
                t.set_message(format!("total ({files} files)"));
                t
            } else {
                ProgressBar::hidden()
            };
            Bars {
                multi,
                total,
                file: None,
            }
        });
        Self {
            mode,
            bars: Mutex::new(bars),
            json: Mutex::new(JsonTicker {
                last_emit: None,
                last_bytes: 0,
                speed: 0.0,
                emitted_bytes: None,
            }),
            done_bytes: AtomicU64::new(0),
            total_bytes,
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn emit(&self, v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    fn with_bars(&self, f: impl FnOnce(&mut Bars)) {
        let mut guard = match self.bars.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(b) = guard.as_mut() {
            f(b);
        }
    }

    /// A line for people on stderr, above the bars if there are any (not in JSON or quiet
    /// mode).
    fn say(&self, line: &str) {
        match self.mode {
            Mode::Bars => self.with_bars(|b| {
                let _ = b.multi.println(line);
            }),
            Mode::Plain => eprintln!("{line}"),
            Mode::Json | Mode::Quiet => {}
        }
    }

    /// Result lines for people on stdout (not in JSON or quiet mode).
    fn result(&self, text: &str) {
        match self.mode {
            Mode::Bars => self.with_bars(|b| b.multi.suspend(|| println!("{text}"))),
            Mode::Plain => println!("{text}"),
            Mode::Json | Mode::Quiet => {}
        }
    }

    /// Something the user should know that is not an error (a resume, a changed file).
    pub fn notice(&self, file: &Path, message: &str) {
        if self.mode == Mode::Json {
            self.emit(json!({"event": "notice", "file": file, "message": message}));
        } else {
            self.say(&format!("uploader: {message}"));
        }
    }

    /// An upload starts (or resumes) sending.
    pub fn started(
        &self,
        id: &UploadId,
        file: &Path,
        size: u64,
        chunk_size: u64,
        resumed_bytes: u64,
    ) {
        match self.mode {
            Mode::Json => {
                if let Ok(mut j) = self.json.lock() {
                    *j = JsonTicker {
                        last_emit: Some(Instant::now()),
                        last_bytes: resumed_bytes,
                        speed: 0.0,
                        emitted_bytes: None,
                    };
                }
                self.emit(json!({
                    "event": "started", "id": id, "file": file, "size": size,
                    "chunk_size": chunk_size, "resumed_bytes": resumed_bytes,
                }))
            }
            Mode::Bars => self.with_bars(|b| {
                let bar = b.multi.insert(0, ProgressBar::new(size));
                bar.set_style(bar_style(""));
                bar.set_message(display_name(file));
                bar.set_position(resumed_bytes);
                bar.reset_eta();
                b.file = Some(bar);
            }),
            Mode::Plain | Mode::Quiet => {}
        }
    }

    /// Called about every 100 ms while a file uploads; renders at the mode's pace.
    pub fn tick(&self, id: &UploadId, size: u64, p: &FileProgress) {
        let acked = p.acked.load(Ordering::Relaxed);
        match self.mode {
            Mode::Json => self.json_progress(id, acked, size, false),
            Mode::Bars => {
                let shown = (acked + p.in_flight.load(Ordering::Relaxed)).min(size);
                let done = self.done_bytes.load(Ordering::Relaxed);
                self.with_bars(|b| {
                    if let Some(bar) = &b.file {
                        // Monotonic: a retried chunk's bytes are not taken back.
                        if shown > bar.position() {
                            bar.set_position(shown);
                        }
                        let pos = (done + bar.position()).min(self.total_bytes);
                        if pos > b.total.position() {
                            b.total.set_position(pos);
                        }
                    }
                });
            }
            Mode::Plain | Mode::Quiet => {}
        }
    }

    /// Emits the last progress event of a file (all acknowledged bytes), whatever the pace.
    pub fn final_tick(&self, id: &UploadId, size: u64, p: &FileProgress) {
        if self.mode == Mode::Json {
            self.json_progress(id, p.acked.load(Ordering::Relaxed), size, true);
        } else {
            self.tick(id, size, p);
        }
    }

    fn json_progress(&self, id: &UploadId, bytes: u64, total: u64, force: bool) {
        let now = Instant::now();
        let event = {
            let Ok(mut j) = self.json.lock() else { return };
            let since = j.last_emit.map_or(Duration::from_secs(1), |t| now - t);
            if since < Duration::from_millis(500) && !force {
                return;
            }
            if j.emitted_bytes == Some(bytes) {
                return;
            }
            let dt = since.as_secs_f64().max(1e-3);
            let inst = bytes.saturating_sub(j.last_bytes) as f64 / dt;
            // Exponential smoothing with a ~3 s time constant.
            let alpha = 1.0 - (-dt / 3.0).exp();
            j.speed = if j.speed == 0.0 {
                inst
            } else {
                j.speed + alpha * (inst - j.speed)
            };
            j.last_emit = Some(now);
            j.last_bytes = bytes;
            j.emitted_bytes = Some(bytes);
            let remaining = total.saturating_sub(bytes);
            let eta = if remaining == 0 {
                Some(0)
            } else if j.speed >= 1.0 {
                Some((remaining as f64 / j.speed).ceil() as u64)
            } else {
                None
            };
            json!({
                "event": "progress", "id": id, "bytes": bytes, "total": total,
                "speed_bps": j.speed.round() as u64, "eta_s": eta,
            })
        };
        self.emit(event);
    }

    /// A chunk (or a control request, `chunk` = None) is retried after `delay`.
    pub fn retry(
        &self,
        file: &Path,
        chunk: Option<u64>,
        attempt: u32,
        reason: &str,
        delay: Duration,
    ) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "retry", "file": file, "chunk": chunk, "attempt": attempt,
                "reason": reason, "delay_ms": delay_ms,
            }));
        } else {
            let what = chunk.map_or_else(|| "request".to_string(), |c| format!("chunk {c}"));
            self.say(&format!(
                "uploader: retrying {what} (attempt {attempt}) in {:.1}s: {reason}",
                delay.as_secs_f64()
            ));
        }
    }

    /// Ctrl-C: the upload is paused; `resume` continues it.
    pub fn paused(&self, id: &UploadId, file: &Path, acked: u64, size: u64, resume: &str) {
        self.clear_file_bar();
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "paused", "id": id, "file": file, "bytes": acked, "total": size,
                "resume": resume,
            }));
        } else if self.mode != Mode::Quiet {
            self.finish();
            eprintln!(
                "uploader: paused {}: {} of {} on the server (upload {id}).\nResume with:\n  {resume}",
                file.display(),
                format_size(acked),
                format_size(size),
            );
        }
    }

    fn clear_file_bar(&self) {
        self.with_bars(|b| {
            if let Some(bar) = b.file.take() {
                bar.finish_and_clear();
                b.multi.remove(&bar);
            }
        });
    }

    /// A file is uploaded and verified.
    pub fn completed(&self, file: &Path, c: &Completed) {
        self.clear_file_bar();
        self.done_bytes.fetch_add(c.size, Ordering::Relaxed);
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "completed", "id": c.id, "file": file, "size": c.size,
                "sha256": c.sha256, "url": c.url, "read_bytes": c.read_bytes,
                "resumed_bytes": c.resumed_bytes, "elapsed_ms": c.elapsed.as_millis() as u64,
            }));
            return;
        }
        let secs = c.elapsed.as_secs_f64().max(1e-3);
        let sent = c.size.saturating_sub(c.resumed_bytes);
        let mut text = format!(
            "uploaded {}: {} in {:.1}s ({}/s)",
            file.display(),
            format_size(c.size),
            secs,
            format_size((sent as f64 / secs) as u64)
        );
        if c.resumed_bytes > 0 {
            text.push_str(&format!(
                ", resumed with {} already there",
                format_size(c.resumed_bytes)
            ));
        }
        text.push_str(&format!(
            "\n  id      {}\n  size    {} bytes\n  sha256  {}\n  url     {}",
            c.id, c.size, c.sha256, c.url
        ));
        self.result(&text);
    }

    /// A file failed; `exit_code` is what it contributes to the process's exit code.
    pub fn failed(&self, file: &Path, error: &str, exit_code: u8) {
        self.clear_file_bar();
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "failed", "file": file, "error": error, "exit_code": exit_code,
            }));
        } else {
            self.with_bars(|b| b.multi.suspend(|| eprintln!("uploader: error: {error}")));
            if self.mode != Mode::Bars {
                eprintln!("uploader: error: {error}");
            }
        }
    }

    /// Removes the bars from the terminal at the end of the run.
    pub fn finish(&self) {
        self.with_bars(|b| {
            if let Some(bar) = b.file.take() {
                bar.finish_and_clear();
            }
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        });
    }
}

fn display_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_template_parses() {
        // with_template falls back silently in bar_style; make sure it does not need to.
        let t = "{msg:24!} [{bar:28}] {bytes:>10} / {total_bytes:<10} {percent:>3}%  {binary_bytes_per_sec:>12}  ETA {eta:>4}";
        assert!(ProgressStyle::with_template(t).is_ok());
    }
}
