//! `uploader`: the command-line client of the native upload API v1. It reads each file
//! once, hashing every chunk and the whole file as it goes, sends the chunks in parallel
//! with retries, shows progress, pauses on Ctrl-C and resumes where it stopped.
//!
//! # Layout
//! - [`args`]: the command line (clap; every option also from `UPLOADER_*`), and the
//!   command that resumes a run.
//! - [`client`]: typed requests of the API, errors carrying the problem `detail`.
//! - [`batch`]: a run: paths expanded into files with relative paths, `--transfers` files
//!   at once, one resume hint.
//! - [`choose`]: which upload a file continues (or none: already uploaded).
//! - [`upload`]: one file: read+hash, parallel sends through the shared pool, complete.
//! - [`stream`]: standard input (or a pipe): its size declared at completion.
//! - [`waits`]: the waits of their send loops (read, slot, send) as `select!` branches.
//! - [`retry`]: backoff with full jitter, `Retry-After`.
//! - [`outage`]: waiting out an unreachable server, up to `--give-up-after`.
//! - [`limit`]: the shared `--limit-rate` budget (governor).
//! - [`journal`]: local state per unfinished upload, with the SHA-256 midstate.
//! - [`progress`]: bars, plain lines or JSON events.
//! - [`download`], [`manage`]: the other subcommands (completions and the man page are
//!   generated from the clap definitions).
//! - [`error`]: the error type and the exit codes.

pub mod args;
pub mod batch;
pub mod choose;
pub mod client;
pub mod download;
pub mod error;
pub mod journal;
pub mod limit;
pub mod manage;
pub mod outage;
pub mod progress;
pub mod retry;
pub mod stream;
pub mod upload;
pub mod waits;
mod whole;

use tokio_util::sync::CancellationToken;

use clap::CommandFactory;

use crate::args::{Cli, Command};
use crate::error::{Error, EXIT_INTERRUPTED, EXIT_OK};
use crate::journal::Store;
use crate::progress::Mode;

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
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "uploader", &mut std::io::stdout());
            return Ok(EXIT_OK);
        }
        Command::Man { out_dir: None } => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::io("stdout", e))?;
            return Ok(EXIT_OK);
        }
        Command::Man { out_dir: Some(dir) } => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            clap_mangen::generate_to(Cli::command(), dir).map_err(|e| Error::io(dir, e))?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    if let Some(ca) = &cli.cacert {
        client::trust_ca_file(ca)?;
    }
    let store = Store::open(cli.state_dir.as_deref())?;
    match &cli.command {
        Command::Upload(a) => Ok(batch::run(&cli, a, &store, &cancel).await),
        Command::Status { target } => {
            manage::status(target, &cli.server, cli.token.as_deref(), &store, cli.json).await?;
            Ok(EXIT_OK)
        }
        Command::List {
            remote: true,
            state,
            limit,
            ..
        } => {
            let state = state.as_deref().map(manage::parse_state).transpose()?;
            manage::list_remote(&cli, state, *limit).await?;
            Ok(EXIT_OK)
        }
        Command::List { all, .. } => {
            manage::list(&store, cli.json, *all)?;
            Ok(EXIT_OK)
        }
        Command::Cancel { target } => {
            manage::cancel(target, &cli.server, cli.token.as_deref(), &store, cli.quiet).await?;
            Ok(EXIT_OK)
        }
        Command::Download(a) => {
            let mode = Mode::choose(cli.json, cli.quiet);
            download::download_all(a, &cli.server, cli.token.as_deref(), mode, &cancel).await
        }
        Command::Completions { .. } | Command::Man { .. } => Ok(EXIT_OK),
    }
}
