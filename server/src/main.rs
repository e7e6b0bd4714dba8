//! The `upload-server` binary: parse flags, set up logging, serve.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use server::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    raise_fd_limit(config.max_connections);
    match start(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that names the flag or file at fault.
            eprintln!("upload-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: Config) -> anyhow::Result<()> {
    let authenticated = config.tokens_file.is_some() || config.token_secret.is_some();
    if !authenticated && !config.listen.ip().is_loopback() {
        if !config.allow_anonymous {
            anyhow::bail!(
                "refusing to listen on {} without authentication: configure --tokens-file or \
                 --token-secret, or pass --allow-anonymous to accept anyone",
                config.listen
            );
        }
        tracing::warn!(
            "listening on {} without authentication: anyone who can reach it can upload, \
             read and cancel uploads",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    server::run(config, listener, server::shutdown::signal()).await
}

/// Raises the soft limit of open files towards the hard one: every connection (and every
/// one waiting for a slot) is a descriptor, and the common default of 1,024 is below what
/// the default `--max-connections` needs. Says so when even the hard limit is short.
fn raise_fd_limit(max_connections: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if !got {
        return;
    }
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max.min(want.max(1 << 16)),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            "the open-files limit ({}) is below what --max-connections {max_connections} \
             needs ({want}); raise it (ulimit -n, LimitNOFILE=) or lower --max-connections",
            lim.rlim_cur
        );
    }
}
