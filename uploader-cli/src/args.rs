//! The command line (clap derive). Every option can also come from an `UPLOADER_*`
//! environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use common::units::{parse_duration, parse_rate, parse_size};

/// Exit codes, as shown at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    failure (file unreadable, server unreachable or refusing, retries exhausted)
  2    usage error (bad option or argument), or a server certificate that is not trusted
  3    verification mismatch: the server's SHA-256 differs from the file's
  130  interrupted (Ctrl-C); the upload is paused, run the same command to resume";

/// Resumable, parallel, verified uploads to an upload server (native API v1).
#[derive(Debug, Parser)]
#[command(name = "uploader", version, about, after_help = EXIT_CODES_HELP, propagate_version = true)]
pub struct Cli {
    /// Server base URL: https:// (HTTP/2 when the server offers it) or http://.
    #[arg(
        long,
        global = true,
        env = "UPLOADER_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_parser = crate::client::parse_server_url
    )]
    pub server: String,

    /// Bearer token for servers that require authentication (a token from the server's
    /// tokens file, or a signed JWT minted by your application).
    #[arg(long, global = true, env = "UPLOADER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Also trust the certificate authorities in this PEM file (a private CA). The
    /// system's trust roots are used too; `SSL_CERT_FILE` replaces those.
    #[arg(long, global = true, env = "UPLOADER_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Where unfinished uploads are remembered (default: the platform state directory,
    /// e.g. ~/.local/state/uploader).
    #[arg(long, global = true, env = "UPLOADER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long, global = true, env = "UPLOADER_JSON")]
    pub json: bool,

    /// Print nothing but errors.
    #[arg(short, long, global = true, env = "UPLOADER_QUIET")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload files (a directory uploads the files under it). Run it again to resume.
    #[command(after_help = EXIT_CODES_HELP)]
    Upload(UploadArgs),
    /// Show an upload's state on the server.
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        /// An upload id, or a file with an unfinished upload from this machine.
        target: String,
    },
    /// List the unfinished uploads this machine knows, with their progress.
    #[command(after_help = EXIT_CODES_HELP)]
    List,
    /// Cancel an upload on the server and forget it locally.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// An upload id, or a file with an unfinished upload from this machine.
        target: String,
    },
    /// Download a completed upload (resumes a partial download left in FILE.part).
    #[command(after_help = EXIT_CODES_HELP)]
    Download(DownloadArgs),
}

/// Options of `uploader upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Files or directories to upload.
    #[arg(required = true, value_name = "FILE")]
    pub paths: Vec<PathBuf>,

    /// Chunks in flight at once.
    #[arg(
        short = 'j',
        long,
        env = "UPLOADER_PARALLEL",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub parallel: u16,

    /// Chunk size for new uploads, e.g. 16MiB (default: the server's choice).
    #[arg(long, env = "UPLOADER_CHUNK_SIZE", value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: Option<u64>,

    /// Retries per chunk (and per request) before giving up.
    #[arg(long, env = "UPLOADER_RETRIES", default_value_t = 10)]
    pub retries: u32,

    /// Total upload rate limit, e.g. 20MiB/s.
    #[arg(long, env = "UPLOADER_LIMIT_RATE", value_parser = parse_rate, value_name = "RATE")]
    pub limit_rate: Option<u64>,

    /// Abort and retry a request that moves no byte for this long.
    #[arg(long, env = "UPLOADER_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub stall_timeout: Duration,

    /// Longest wait between retries (backoff with full jitter grows up to it).
    #[arg(long, env = "UPLOADER_RETRY_MAX_DELAY", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_max_delay: Duration,

    /// Resume this upload id (started elsewhere) with FILE; its size must match.
    #[arg(long, env = "UPLOADER_RESUME", value_name = "ID")]
    pub resume: Option<common::UploadId>,
}

/// Options of `uploader download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The upload id.
    pub id: common::UploadId,
    /// Output file (default: the upload's file name, or its id).
    #[arg(short, long, env = "UPLOADER_OUTPUT", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Retries of a broken transfer before giving up.
    #[arg(long, env = "UPLOADER_RETRIES", default_value_t = 10)]
    pub retries: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_upload_options() {
        let cli = Cli::try_parse_from([
            "uploader",
            "upload",
            "a",
            "b",
            "-j",
            "8",
            "--chunk-size",
            "16MiB",
            "--limit-rate",
            "20MiB/s",
            "--server",
            "http://h:9/",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://h:9");
        let Command::Upload(u) = cli.command else {
            panic!("not upload")
        };
        assert_eq!(u.parallel, 8);
        assert_eq!(u.chunk_size, Some(16 << 20));
        assert_eq!(u.limit_rate, Some(20 << 20));
        assert_eq!(u.paths.len(), 2);
        assert_eq!(u.retries, 10);
        assert!(Cli::try_parse_from(["uploader", "upload"]).is_err());
        assert!(Cli::try_parse_from(["uploader", "upload", "a", "-j", "0"]).is_err());
        assert!(Cli::try_parse_from(["uploader", "--server", "nope", "list"]).is_err());
        assert!(Cli::try_parse_from(["uploader", "--server", "ftp://h", "list"]).is_err());
        let tls = Cli::try_parse_from([
            "uploader",
            "list",
            "--server",
            "https://h:9/",
            "--cacert",
            "ca.pem",
        ])
        .unwrap();
        assert_eq!(tls.server, "https://h:9");
        assert_eq!(tls.cacert.as_deref(), Some(std::path::Path::new("ca.pem")));
    }
}
