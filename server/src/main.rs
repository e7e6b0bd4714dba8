//! The `upload-server` binary: parse flags, set up logging, serve.

use std::io::IsTerminal;

use clap::Parser;
use server::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    server::run(config, listener, server::shutdown::signal()).await?;
    Ok(())
}
