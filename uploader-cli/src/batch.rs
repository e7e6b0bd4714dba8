//! A run of `uploader upload`: the command line's paths expanded into files (a directory
//! into the files under it, each with its path relative to the directory's parent), sent
//! `--transfers` at a time through one shared pool of `-j` chunk slots, with one total
//! progress line, and the command to resume printed once if anything was left unfinished.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, UploadArgs};
use crate::client::Client;
use crate::error::{Error, EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE};
use crate::journal::Store;
use crate::limit::RateLimiter;
use crate::outage::Outage;
use crate::progress::{Mode, Reporter};
use crate::retry::RetryPolicy;
use crate::upload::{Job, Options, Uploader};

/// The worse of two exit codes: interrupted, then a mismatch, then a usage error, then
/// any failure.
fn worse(a: u8, b: u8) -> u8 {
    let rank = |c: u8| match c {
        EXIT_INTERRUPTED => 4,
        EXIT_MISMATCH => 3,
        EXIT_USAGE => 2,
        EXIT_OK => 0,
        _ => 1,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Runs `uploader upload` and returns the exit code (each file's outcome is reported as it
/// ends).
pub async fn run(cli: &Cli, a: &UploadArgs, store: &Store, cancel: &CancellationToken) -> u8 {
    let mode = Mode::choose(cli.json, cli.quiet);
    let stream = match stream_source(a) {
        Ok(s) => s,
        Err(e) => {
            Reporter::new(mode, 0, 1).failed(&a.paths[0], None, &e.to_string(), e.exit_code());
            return e.exit_code();
        }
    };
    let jobs = if stream.is_some() {
        Vec::new()
    } else {
        expand_paths(&a.paths)
    };
    let total: u64 = jobs
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .filter_map(|j| std::fs::metadata(&j.path).ok())
        .map(|m| m.len())
        .sum();
    let reporter = Reporter::new(mode, total, jobs.len().max(1));
    let fail_all = |e: &Error| {
        for f in &a.paths {
            reporter.failed(f, None, &e.to_string(), e.exit_code());
        }
        e.exit_code()
    };
    if a.resume.is_some() && jobs.len() != 1 {
        return fail_all(&Error::Usage("--resume takes exactly one FILE".into()));
    }
    let client = match Client::new(&cli.server, cli.token.as_deref()) {
        Ok(c) => c.with_timeout(a.stall_timeout),
        Err(e) => return fail_all(&e),
    };
    // One request up front: a server that is down or a wrong URL fails fast and clearly,
    // before any file is touched. (Once the upload runs, an outage is waited out.)
    let capabilities = match client.capabilities().await {
        Ok(c) => c,
        Err(e) => return fail_all(&e),
    };
    if let Some(c) = a.chunk_size {
        let b = capabilities.chunk_size;
        if c < b.min || c > b.max {
            use common::units::format_size;
            return fail_all(&Error::Usage(format!(
                "--chunk-size {}: the server accepts chunk sizes from {} to {}",
                format_size(c),
                format_size(b.min),
                format_size(b.max)
            )));
        }
    }
    let opts = Options {
        chunk_size: a.chunk_size,
        retry: RetryPolicy {
            retries: a.retries,
            cap: a.retry_max_delay,
            ..RetryPolicy::default()
        },
        limiter: a.limit_rate.map(|r| Arc::new(RateLimiter::new(r))),
        stall_timeout: a.stall_timeout,
        resume: a.resume,
        force: a.force,
        resume_hint: cli.resume_command(a),
    };
    let outage = Outage::new(a.give_up_after, a.retry_max_delay);
    let up = Uploader {
        client: &client,
        capabilities: &capabilities,
        store,
        reporter: &reporter,
        cancel,
        opts: &opts,
        pool: Arc::new(Semaphore::new(usize::from(a.parallel))),
        outage: &outage,
    };
    if let Some((path, name)) = stream {
        let code = run_stream(&up, &reporter, &path, &name).await;
        reporter.finish();
        return code;
    }
    // After an interruption or a give-up, no new file is started.
    let halt = AtomicBool::new(false);
    let mut worst = EXIT_OK;
    let mut unfinished = false;
    let mut results = stream::iter(jobs)
        .map(|job| {
            let up = &up;
            let halt = &halt;
            async move {
                let job = job?;
                if halt.load(Ordering::Relaxed) || cancel.is_cancelled() {
                    return Ok((job, None));
                }
                let r = up.upload_file(&job).await;
                if matches!(
                    r,
                    Err(Error::Interrupted { .. } | Error::OutageTooLong { .. })
                ) {
                    halt.store(true, Ordering::Relaxed);
                }
                Ok((job, Some(r)))
            }
        })
        .buffer_unordered(usize::from(a.transfers));
    while let Some(r) = results.next().await {
        match r {
            Err(e) => {
                let path = match &e {
                    Error::Io { path, .. } => path.clone(),
                    _ => a.paths[0].clone(),
                };
                reporter.failed(&path, None, &e.to_string(), e.exit_code());
                worst = worse(worst, e.exit_code());
            }
            Ok((_, None)) => unfinished = true,
            Ok((job, Some(Ok(done)))) => reporter.completed(&job.path, &done),
            Ok((_, Some(Err(Error::Interrupted { .. })))) => {
                unfinished = true;
                worst = worse(worst, EXIT_INTERRUPTED);
            }
            Ok((job, Some(Err(e)))) => {
                if matches!(e, Error::OutageTooLong { .. } | Error::GaveUp { .. }) {
                    unfinished = true;
                }
                reporter.failed(&job.path, None, &e.to_string(), e.exit_code());
                worst = worse(worst, e.exit_code());
            }
        }
    }
    drop(results);
    if cancel.is_cancelled() {
        worst = worse(worst, EXIT_INTERRUPTED);
        unfinished = true;
    }
    if unfinished {
        let token_note = cli.token.is_some() && std::env::var_os("UPLOADER_TOKEN").is_none();
        reporter.resume_hint(&opts.resume_hint, token_note);
    }
    reporter.finish();
    worst
}

/// The stream to upload and its name, when the command line names one (`-`, or a pipe
/// such as `/dev/stdin`): alone, and with `--name` (a stream has no file name).
fn stream_source(a: &UploadArgs) -> Result<Option<(PathBuf, String)>, Error> {
    let Some(path) = a.paths.iter().find(|p| crate::stream::is_stream(p)) else {
        return match a.name {
            Some(_) => Err(Error::Usage(
                "--name names an upload read from standard input (-) or a pipe; files keep \
                 their own names"
                    .into(),
            )),
            None => Ok(None),
        };
    };
    let what = if path.as_os_str() == "-" {
        "- (standard input)".to_string()
    } else {
        format!("{} (a pipe)", path.display())
    };
    if a.paths.len() > 1 {
        return Err(Error::Usage(format!(
            "{what} is uploaded on its own: give it as the only FILE"
        )));
    }
    if a.resume.is_some() {
        return Err(Error::Usage(format!(
            "{what} cannot be resumed with --resume: what was read cannot be read again"
        )));
    }
    match a.name.as_deref().map(str::trim) {
        None => Err(Error::Usage(format!(
            "{what} has no file name: name the upload with --name NAME"
        ))),
        Some("") => Err(Error::Usage("--name must not be empty".into())),
        Some(name) => Ok(Some((path.clone(), name.to_string()))),
    }
}

/// Uploads the stream at `path` as `name` and reports the outcome; returns the exit code.
async fn run_stream(up: &Uploader<'_>, reporter: &Reporter, path: &Path, name: &str) -> u8 {
    let done = match crate::stream::open(path) {
        Ok(input) => up.upload_stream(path, name, input).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(done) => {
            reporter.completed(path, &done);
            EXIT_OK
        }
        Err(e) => {
            let text = match &e {
                Error::Usage(_) => e.to_string(),
                Error::Interrupted { .. } => {
                    format!("interrupted; {}", crate::stream::NOT_RESUMABLE)
                }
                _ => format!("{e}; {}", crate::stream::NOT_RESUMABLE),
            };
            reporter.failed(path, None, &text, e.exit_code());
            e.exit_code()
        }
    }
}

/// The path of `file` under the directory `root` given on the command line, as
/// `root-name/sub/file`, checked by the rules the server applies.
fn relative_path(root: &Path, file: &Path) -> Result<String, Error> {
    let name = root
        .file_name()
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::canonicalize(root)
                .ok()
                .and_then(|c| c.file_name().map(PathBuf::from))
        })
        .unwrap_or_default();
    let rel = file.strip_prefix(root).unwrap_or(file);
    let joined: Vec<String> = name
        .components()
        .chain(rel.components())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let s = joined.join("/");
    common::relpath::validate(&s)
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    Ok(s)
}

/// Expands the command line's paths: files as given, directories into the regular files
/// under them (recursively, sorted; symbolic links to directories are not followed), each
/// with its relative path.
pub fn expand_paths(paths: &[PathBuf]) -> Vec<Result<Job, Error>> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk(p, &mut files);
                out.extend(files.into_iter().map(|f| {
                    let path = f?;
                    Ok(Job {
                        relative_path: Some(relative_path(p, &path)?),
                        path,
                    })
                }));
            }
            Ok(_) => out.push(Ok(Job {
                path: p.clone(),
                relative_path: None,
            })),
            Err(e) => out.push(Err(Error::io(p, e))),
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Result<PathBuf, Error>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.push(Err(Error::io(dir, e)));
            return;
        }
    };
    let mut paths: Vec<(PathBuf, bool)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.path(), is_dir)
        })
        .collect();
    paths.sort();
    for (p, is_dir) in paths {
        if is_dir {
            walk(&p, out);
        } else if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            out.push(Ok(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_directories_sorted_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/z"), b"1").unwrap();
        std::fs::write(dir.path().join("b/a"), b"1").unwrap();
        std::fs::write(dir.path().join("top"), b"1").unwrap();
        let got: Vec<(PathBuf, Option<String>)> =
            expand_paths(&[dir.path().join("b"), dir.path().join("top")])
                .into_iter()
                .map(|r| r.unwrap())
                .map(|j| (j.path, j.relative_path))
                .collect();
        assert_eq!(
            got,
            vec![
                (dir.path().join("b/a"), Some("b/a".into())),
                (dir.path().join("b/c/z"), Some("b/c/z".into())),
                (dir.path().join("top"), None),
            ]
        );
        let missing = expand_paths(&[dir.path().join("nope")]);
        assert!(matches!(missing[0], Err(Error::Io { .. })));
        // "." is named after the directory it is.
        let here = relative_path(&dir.path().join("b/."), &dir.path().join("b/./a")).unwrap();
        assert_eq!(here, "b/a");
    }

    #[test]
    fn exit_codes_rank() {
        assert_eq!(worse(EXIT_OK, 1), 1);
        assert_eq!(worse(1, EXIT_MISMATCH), EXIT_MISMATCH);
        assert_eq!(worse(EXIT_INTERRUPTED, EXIT_MISMATCH), EXIT_INTERRUPTED);
        assert_eq!(worse(EXIT_USAGE, 1), EXIT_USAGE);
    }
}
