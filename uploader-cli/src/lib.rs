//! `uploader`: the command-line client of the native upload API v1. It reads each file
//! once, hashing every chunk and the whole file as it goes, sends the chunks in parallel
//! with retries, shows progress, pauses on Ctrl-C and resumes where it stopped.
//!
//! # Layout
//! - [`args`]: the command line (clap; every option also from `UPLOADER_*`).
//! - [`client`]: typed requests of the API, errors carrying the problem `detail`.
//! - [`upload`]: one file: choose/resume the upload, read+hash, parallel sends, complete.
//! - [`retry`]: backoff with full jitter, `Retry-After`.
//! - [`limit`]: the shared `--limit-rate` budget.
//! - [`journal`]: local state per unfinished upload, with the SHA-256 midstate.
//! - [`progress`]: bars, plain lines or JSON events.
//! - [`download`], [`manage`]: the other subcommands.
//! - [`error`]: the error type and the exit codes.

pub mod args;
pub mod client;
pub mod download;
pub mod error;
pub mod journal;
pub mod limit;
pub mod manage;
pub mod progress;
pub mod retry;
pub mod upload;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command, UploadArgs};
use crate::error::{Error, EXIT_INTERRUPTED, EXIT_MISMATCH, EXIT_OK};
use crate::journal::Store;
use crate::progress::{Mode, Reporter};

/// Cancels `token` on the first Ctrl-C (SIGINT); exits with 130 at once on the second.
pub fn install_interrupt_handler(token: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        token.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nuploader: interrupted");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
}

/// Runs the parsed command line and returns the exit code. Errors of commands other than
/// `upload` are returned for `main` to print; `upload` reports per file itself.
pub async fn run(cli: Cli, cancel: CancellationToken) -> Result<u8, Error> {
    if let Some(ca) = &cli.cacert {
        client::trust_ca_file(ca)?;
    }
    let store = Store::open(cli.state_dir.as_deref())?;
    match &cli.command {
        Command::Upload(a) => Ok(run_upload(&cli, a, &store, &cancel).await),
        Command::Status { target } => {
            manage::status(target, &cli.server, cli.token.as_deref(), &store, cli.json).await?;
            Ok(EXIT_OK)
        }
        Command::List => {
            manage::list(&store, cli.json)?;
            Ok(EXIT_OK)
        }
        Command::Cancel { target } => {
            manage::cancel(target, &cli.server, cli.token.as_deref(), &store, cli.quiet).await?;
            Ok(EXIT_OK)
        }
        Command::Download(a) => {
            let d = download::download(a, &cli.server, cli.token.as_deref(), &cancel).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "downloaded", "id": a.id, "file": d.path, "size": d.size,
                        "sha256": d.sha256, "resumed_bytes": d.resumed_bytes,
                    })
                );
            } else if !cli.quiet {
                println!(
                    "downloaded {} to {} ({} bytes, sha256 {})",
                    a.id,
                    d.path.display(),
                    d.size,
                    d.sha256
                );
            }
            Ok(EXIT_OK)
        }
    }
}

async fn run_upload(cli: &Cli, a: &UploadArgs, store: &Store, cancel: &CancellationToken) -> u8 {
    let files = upload::expand_paths(&a.paths);
    let total: u64 = files
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let reporter = Reporter::new(Mode::choose(cli.json, cli.quiet), total, files.len());
    let mut worst = EXIT_OK;
    let mut note = |code: u8| {
        // Interrupted wins, then a mismatch, then any failure.
        let rank = |c: u8| match c {
            EXIT_INTERRUPTED => 3,
            EXIT_MISMATCH => 2,
            EXIT_OK => 0,
            _ => 1,
        };
        if rank(code) > rank(worst) {
            worst = code;
        }
    };
    if a.resume.is_some() && files.len() != 1 {
        let e = Error::Usage("--resume takes exactly one FILE".into());
        reporter.failed(&a.paths[0], &e.to_string(), e.exit_code());
        return e.exit_code();
    }

    let client = match client::Client::new(&cli.server, cli.token.as_deref()) {
        Ok(c) => c.with_timeout(a.stall_timeout),
        Err(e) => {
            reporter.failed(&a.paths[0], &e.to_string(), e.exit_code());
            return e.exit_code();
        }
    };
    // One request up front: a server that is down or a wrong URL fails fast and clearly,
    // before any file is touched.
    if let Err(e) = client.capabilities().await {
        for f in &a.paths {
            reporter.failed(f, &e.to_string(), e.exit_code());
        }
        return e.exit_code();
    }
    let mut hint = String::new();
    if let Some(d) = &cli.state_dir {
        hint = format!("--state-dir {}", upload::shell_quote(&d.to_string_lossy()));
    }
    let opts = upload::Options {
        parallel: usize::from(a.parallel),
        chunk_size: a.chunk_size,
        retry: retry::RetryPolicy {
            retries: a.retries,
            cap: a.retry_max_delay,
            ..retry::RetryPolicy::default()
        },
        limiter: a.limit_rate.map(|r| Arc::new(limit::RateLimiter::new(r))),
        stall_timeout: a.stall_timeout,
        resume: a.resume,
        resume_hint_args: hint,
    };
    let up = upload::Uploader {
        client: &client,
        store,
        reporter: &reporter,
        cancel,
        opts: &opts,
    };
    for f in files {
        let path = match f {
            Ok(p) => p,
            Err(e) => {
                let path = match &e {
                    Error::Io { path, .. } => path.clone(),
                    _ => a.paths[0].clone(),
                };
                reporter.failed(&path, &e.to_string(), e.exit_code());
                note(e.exit_code());
                continue;
            }
        };
        match up.upload_file(&path).await {
            Ok(done) => reporter.completed(&path, &done),
            Err(Error::Interrupted { .. }) => {
                note(EXIT_INTERRUPTED);
                break;
            }
            Err(e) => {
                reporter.failed(&path, &e.to_string(), e.exit_code());
                note(e.exit_code());
            }
        }
        if cancel.is_cancelled() {
            note(EXIT_INTERRUPTED);
            break;
        }
    }
    reporter.finish();
    if worst == EXIT_OK && cancel.is_cancelled() {
        return EXIT_INTERRUPTED;
    }
    worst
}
