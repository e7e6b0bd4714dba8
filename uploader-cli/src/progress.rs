//! What the user sees: bars on a terminal, plain lines elsewhere, or one JSON event per
//! line on stdout with `--json`.
//!
//! Bars (indicatif) go to stderr and fit the terminal's width (re-fitted when it
//! changes): one total line for several files, plus a line per file being sent when it is
//! the only file or a large one ([`LARGE_FILE`]), with bytes, percent, smoothed speed and
//! ETA; a status line while the server is unreachable. Retries and notices are printed
//! above them so they never tear a bar. Results go to stdout; with `-q`, only each
//! upload's id. JSON events: `started`, `progress` (at most every 500 ms per file),
//! `retry`, `notice`, `unreachable`, `reachable`, `paused`, `completed`, `failed`; each is
//! an object with an `event` field.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use common::units::format_size;

use crate::outage::format_duration;
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
    /// This machine had uploaded the same file before: nothing was sent.
    pub existing: bool,
    /// The path under the directory it was uploaded from, if any.
    pub relative_path: Option<String>,
}

/// Files at least this large get their own bar when several files are sent.
pub const LARGE_FILE: u64 = 64 << 20;

/// The size of a stream (standard input) while it is being read: not known until its end.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// The line of a stream: how much went up and how fast, without a bar (nothing to fill).
const STREAM_TEMPLATE: &str =
    "{msg:24!} {spinner} {bytes:>10} sent  {binary_bytes_per_sec:>12}  {elapsed:>4}";

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    files: HashMap<UploadId, ProgressBar>,
    status: Option<ProgressBar>,
    width: u16,
}

#[derive(Default)]
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
    json: Mutex<HashMap<UploadId, JsonTicker>>,
    /// Bytes shown for each file being sent, for the total line.
    active: Mutex<HashMap<UploadId, u64>>,
    /// Bytes of the files finished so far, for the total line.
    done_bytes: AtomicU64,
    done_files: AtomicU64,
    total_bytes: u64,
    files: usize,
    /// When the last plain "still unreachable" line was printed.
    last_plain_outage: Mutex<Option<Instant>>,
}

/// The terminal's width in columns (stderr), 80 when it cannot be known.
pub fn term_width() -> u16 {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct passed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col
    } else {
        80
    }
}

/// The bar template for a terminal `width` columns wide: what fits is shown, the bar
/// takes the rest, and no line is ever wider than the terminal (a wider one would wrap and
/// leave a trail of half-bars behind).
pub fn bar_template(width: u16) -> String {
    match width {
        100.. => "{msg:24!} [{wide_bar}] {bytes:>10} / {total_bytes:<10} {percent:>3}%  {binary_bytes_per_sec:>12}  ETA {eta:>4}",
        72..=99 => "{msg:16!} [{wide_bar}] {percent:>3}% {binary_bytes_per_sec:>12} ETA {eta:>4}",
        40..=71 => "{msg:12!} [{wide_bar}] {percent:>3}%",
        _ => "{msg:10!} {percent:>3}%",
    }
    .to_string()
}

fn width_class(width: u16) -> u8 {
    match width {
        100.. => 3,
        72..=99 => 2,
        40..=71 => 1,
        _ => 0,
    }
}

fn bar_style(width: u16) -> ProgressStyle {
    ProgressStyle::with_template(&bar_template(width))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Reporter {
    /// A reporter for a run that will send `total_bytes` over its `files` files.
    pub fn new(mode: Mode, total_bytes: u64, files: usize) -> Self {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let width = term_width();
            let total = if files > 1 {
                let t = multi.add(ProgressBar::new(total_bytes));
                t.set_style(bar_style(width));
                t.set_message(format!("total 0/{files} files"));
                t
            } else {
                ProgressBar::hidden()
            };
            Bars {
                multi,
                total,
                files: HashMap::new(),
                status: None,
                width,
            }
        });
        Self {
            mode,
            bars: Mutex::new(bars),
            json: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            done_bytes: AtomicU64::new(0),
            done_files: AtomicU64::new(0),
            total_bytes,
            files,
            last_plain_outage: Mutex::new(None),
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

    /// A transfer starts (or resumes): an upload, or a download (`chunk_size` 0).
    pub fn started(
        &self,
        id: &UploadId,
        file: &Path,
        size: u64,
        chunk_size: u64,
        resumed_bytes: u64,
    ) {
        if let Ok(mut a) = self.active.lock() {
            a.insert(*id, resumed_bytes);
        }
        match self.mode {
            Mode::Json => {
                if let Ok(mut j) = self.json.lock() {
                    j.insert(
                        *id,
                        JsonTicker {
                            last_emit: Some(Instant::now()),
                            last_bytes: resumed_bytes,
                            ..JsonTicker::default()
                        },
                    );
                }
                self.emit(json!({
                    "event": "started", "id": id, "file": file, "size": known(size),
                    "chunk_size": chunk_size, "resumed_bytes": resumed_bytes,
                }))
            }
            Mode::Bars if size == UNKNOWN_SIZE => self.with_bars(|b| {
                let bar = b.multi.insert(0, ProgressBar::no_length());
                bar.set_style(
                    ProgressStyle::with_template(STREAM_TEMPLATE)
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(display_name(file));
                b.files.insert(*id, bar);
            }),
            Mode::Bars if self.files <= 1 || size >= LARGE_FILE => self.with_bars(|b| {
                let bar = b.multi.insert(0, ProgressBar::new(size));
                bar.set_style(bar_style(b.width));
                bar.set_message(display_name(file));
                bar.set_position(resumed_bytes);
                bar.reset_eta();
                b.files.insert(*id, bar);
            }),
            Mode::Bars | Mode::Plain | Mode::Quiet => {}
        }
    }

    /// Called about every 100 ms while a file is sent; renders at the mode's pace.
    pub fn tick(&self, id: &UploadId, size: u64, p: &FileProgress) {
        let acked = p.acked.load(Ordering::Relaxed);
        match self.mode {
            Mode::Json => self.json_progress(id, acked, size, false),
            Mode::Bars => {
                let shown = (acked + p.in_flight.load(Ordering::Relaxed)).min(size);
                let active_sum = match self.active.lock() {
                    Ok(mut a) => {
                        let e = a.entry(*id).or_default();
                        // Monotonic: a retried chunk's bytes are not taken back.
                        *e = (*e).max(shown);
                        a.values().sum::<u64>()
                    }
                    Err(_) => 0,
                };
                let done = self.done_bytes.load(Ordering::Relaxed);
                let width = term_width();
                self.with_bars(|b| {
                    if width_class(width) != width_class(b.width) {
                        b.width = width;
                        b.total.set_style(bar_style(width));
                        for bar in b.files.values().filter(|bar| bar.length().is_some()) {
                            bar.set_style(bar_style(width));
                        }
                    }
                    if let Some(bar) = b.files.get(id) {
                        if shown > bar.position() {
                            bar.set_position(shown);
                        }
                    }
                    let pos = (done + active_sum).min(self.total_bytes);
                    if pos > b.total.position() {
                        b.total.set_position(pos);
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
            let Ok(mut all) = self.json.lock() else {
                return;
            };
            let j = all.entry(*id).or_default();
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
            let eta = if total == UNKNOWN_SIZE {
                None
            } else if remaining == 0 {
                Some(0)
            } else if j.speed >= 1.0 {
                Some((remaining as f64 / j.speed).ceil() as u64)
            } else {
                None
            };
            json!({
                "event": "progress", "id": id, "bytes": bytes, "total": known(total),
                "speed_bps": j.speed.round() as u64, "eta_s": eta,
            })
        };
        self.emit(event);
    }

    /// A chunk (or a control request, `chunk` = None) is retried after `delay`. People
    /// are not told of a first retry after a dropped connection (it is routine, and when
    /// the server went away the outage line says so); JSON gets every retry.
    pub fn retry(
        &self,
        file: &Path,
        chunk: Option<u64>,
        attempt: u32,
        reason: &str,
        delay: Duration,
        transport: bool,
    ) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "retry", "file": file, "chunk": chunk, "attempt": attempt,
                "reason": reason, "delay_ms": delay_ms,
            }));
        } else if !(transport && attempt == 1) {
            let what = chunk.map_or_else(|| "request".to_string(), |c| format!("chunk {c}"));
            self.say(&format!(
                "uploader: retrying {what} (attempt {attempt}) in {:.1}s: {reason}",
                delay.as_secs_f64()
            ));
        }
    }

    /// A try to reach the server failed: it has been unreachable for `down_for`; the next
    /// try is in `retry_in`. On a terminal, one status line that updates; off one, a line
    /// at the start and then one a minute; in JSON, an event per try.
    pub fn unreachable(&self, reason: &str, down_for: Duration, retry_in: Duration) {
        match self.mode {
            Mode::Json => self.emit(json!({
                "event": "unreachable", "reason": reason,
                "for_ms": down_for.as_millis() as u64,
                "retry_in_ms": retry_in.as_millis() as u64,
            })),
            Mode::Plain => {
                let mut last = match self.last_plain_outage.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    eprintln!("uploader: {}", outage_text(reason, down_for, retry_in));
                }
            }
            Mode::Bars => self.unreachable_tick(reason, down_for, retry_in),
            Mode::Quiet => {}
        }
    }

    /// The countdown to the next try, once a second: updates the status line on a
    /// terminal, nothing elsewhere.
    pub fn unreachable_tick(&self, reason: &str, down_for: Duration, retry_in: Duration) {
        self.with_bars(|b| {
            let status = b.status.get_or_insert_with(|| {
                let s = b.multi.insert(0, ProgressBar::new_spinner());
                s.set_style(
                    ProgressStyle::with_template("{wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                s
            });
            status.set_message(format!(
                "uploader: {}",
                outage_text(reason, down_for, retry_in)
            ));
        });
    }

    fn clear_status(&self) {
        self.with_bars(|b| {
            if let Some(s) = b.status.take() {
                s.finish_and_clear();
                b.multi.remove(&s);
            }
        });
        if let Ok(mut last) = self.last_plain_outage.lock() {
            *last = None;
        }
    }

    /// The server answers again after `down_for`.
    pub fn reachable(&self, down_for: Duration) {
        self.clear_status();
        if self.mode == Mode::Json {
            self.emit(json!({"event": "reachable", "after_ms": down_for.as_millis() as u64}));
        } else {
            self.say(&format!(
                "uploader: the server is reachable again after {}",
                format_duration(down_for)
            ));
        }
    }

    /// The server stayed unreachable too long (the failure itself is reported per file).
    pub fn reachable_never(&self, _reason: &str, _down_for: Duration) {
        self.clear_status();
    }

    /// Ctrl-C or a give-up: this file's upload is paused; `resume` continues the run.
    pub fn paused(&self, id: &UploadId, file: &Path, acked: u64, size: u64, resume: &str) {
        self.end_file(id);
        if self.mode == Mode::Json {
            self.emit(json!({
                "event": "paused", "id": id, "file": file, "bytes": acked, "total": size,
                "resume": resume,
            }));
        } else if self.mode != Mode::Quiet {
            self.say(&format!(
                "uploader: paused {}: {} of {} on the server (upload {id})",
                file.display(),
                format_size(acked),
                format_size(size),
            ));
        }
    }

    /// The command that resumes the run, after anything that left uploads unfinished.
    pub fn resume_hint(&self, resume: &str, token_note: bool) {
        if matches!(self.mode, Mode::Json) {
            return;
        }
        self.finish();
        eprintln!("Resume with:\n  {resume}");
        if token_note {
            eprintln!("  (with the same token: --token or UPLOADER_TOKEN)");
        }
    }

    fn end_file(&self, id: &UploadId) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(id);
        }
        if let Ok(mut j) = self.json.lock() {
            j.remove(id);
        }
        self.with_bars(|b| {
            if let Some(bar) = b.files.remove(id) {
                bar.finish_and_clear();
                b.multi.remove(&bar);
            }
        });
    }

    /// A file is uploaded and verified (or was, by this machine, before).
    pub fn completed(&self, file: &Path, c: &Completed) {
        self.end_file(&c.id);
        self.done_bytes.fetch_add(c.size, Ordering::Relaxed);
        let done_files = self.done_files.fetch_add(1, Ordering::Relaxed) + 1;
        self.with_bars(|b| {
            b.total
                .set_message(format!("total {done_files}/{} files", self.files));
            let pos = self
                .done_bytes
                .load(Ordering::Relaxed)
                .min(self.total_bytes);
            if pos > b.total.position() {
                b.total.set_position(pos);
            }
        });
        match self.mode {
            Mode::Json => {
                self.emit(json!({
                    "event": "completed", "id": c.id, "file": file, "size": c.size,
                    "sha256": c.sha256, "url": c.url, "read_bytes": c.read_bytes,
                    "resumed_bytes": c.resumed_bytes, "elapsed_ms": c.elapsed.as_millis() as u64,
                    "existing": c.existing, "relative_path": c.relative_path,
                }));
                return;
            }
            Mode::Quiet => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", c.id);
                let _ = out.flush();
                return;
            }
            Mode::Bars | Mode::Plain => {}
        }
        let mut text = if c.existing {
            format!(
                "already uploaded {} (--force uploads it again)",
                file.display()
            )
        } else {
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
            text
        };
        text.push_str(&format!("\n  id      {}", c.id));
        if let Some(rel) = &c.relative_path {
            text.push_str(&format!("\n  path    {rel}"));
        }
        text.push_str(&format!(
            "\n  size    {} bytes\n  sha256  {}\n  url     {}",
            c.size, c.sha256, c.url
        ));
        self.result(&text);
    }

    /// A download is complete and verified.
    pub fn downloaded(
        &self,
        id: &UploadId,
        file: &Path,
        size: u64,
        sha256: &Sha256Digest,
        resumed_bytes: u64,
    ) {
        self.end_file(id);
        match self.mode {
            Mode::Json => self.emit(json!({
                "event": "downloaded", "id": id, "file": file, "size": size,
                "sha256": sha256, "resumed_bytes": resumed_bytes,
            })),
            Mode::Quiet => {}
            Mode::Bars | Mode::Plain => self.result(&format!(
                "downloaded {id} to {} ({size} bytes, sha256 {sha256})",
                file.display()
            )),
        }
    }

    /// A file failed; `exit_code` is what it contributes to the process's exit code.
    pub fn failed(&self, file: &Path, id: Option<&UploadId>, error: &str, exit_code: u8) {
        if let Some(id) = id {
            self.end_file(id);
        }
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
            for (_, bar) in b.files.drain() {
                bar.finish_and_clear();
            }
            if let Some(s) = b.status.take() {
                s.finish_and_clear();
            }
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        });
    }
}

/// "server unreachable, retrying in 8 s, for 1m12s (connection refused)".
fn outage_text(reason: &str, down_for: Duration, retry_in: Duration) -> String {
    format!(
        "server unreachable, retrying in {} s, for {} ({reason})",
        retry_in.as_secs_f64().round() as u64,
        format_duration(down_for)
    )
}

/// A size for JSON: `null` while it is not known.
fn known(size: u64) -> Option<u64> {
    (size != UNKNOWN_SIZE).then_some(size)
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
    fn templates_parse_and_leave_room_for_the_bar() {
        for width in [20u16, 39, 40, 71, 72, 99, 100, 250] {
            let t = bar_template(width);
            // with_template falls back silently in bar_style; make sure it does not need to.
            assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
            // Fixed columns: everything but the bar, with the widest values filled in.
            let fixed = t
                .replace("{wide_bar}", "")
                .replace("{msg:24!}", &"m".repeat(24))
                .replace("{msg:16!}", &"m".repeat(16))
                .replace("{msg:12!}", &"m".repeat(12))
                .replace("{msg:10!}", &"m".repeat(10))
                .replace("{bytes:>10}", &"b".repeat(10))
                .replace("{total_bytes:<10}", &"b".repeat(10))
                .replace("{percent:>3}", "100")
                .replace("{binary_bytes_per_sec:>12}", &"s".repeat(12))
                .replace("{eta:>4}", "9999");
            assert!(!fixed.contains('{'), "{fixed}");
            assert!(
                fixed.chars().count() + 5 <= usize::from(width.max(20)),
                "{width}: {fixed}"
            );
        }
    }
}
