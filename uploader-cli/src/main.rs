//! `uploader`: parses the command line, runs it, and turns the outcome into an exit code
//! (0 success, 1 failure, 2 usage, 3 verification mismatch, 130 interrupted).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use uploader_cli::args::Cli;
use uploader_cli::error::{Error, EXIT_FAILURE};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime");
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uploader: error: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async {
        let cancel = CancellationToken::new();
        uploader_cli::install_interrupt_handler(cancel.clone());
        uploader_cli::run(cli, cancel).await
    });
    // A read of standard input blocks a thread and cannot be cancelled: an interrupted
    // stream must not keep the process waiting for input that will never be used.
    runtime.shutdown_background();
    match code {
        Ok(c) => ExitCode::from(c),
        Err(Error::Interrupted { resume }) => {
            eprintln!("uploader: interrupted; resume with:\n  {resume}");
            ExitCode::from(Error::Interrupted { resume }.exit_code())
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "failed", "error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            eprintln!("uploader: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
