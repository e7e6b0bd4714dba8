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
  1    failure (file unreadable or changed while sent, server refusing or unreachable
       beyond --give-up-after, retries exhausted)
  2    usage error (bad option or argument), or a server certificate that is not trusted
  3    verification mismatch: the server's SHA-256 differs from the file's
  130  interrupted (Ctrl-C); the upload is paused, run the same command to resume";

/// Resumable, parallel, verified uploads to an upload server (native API v1).
#[derive(Debug, Parser)]
#[command(name = "uploader", version, about, after_help = EXIT_CODES_HELP, propagate_version = true)]
pub struct Cli {
    /// Server base URL: https:// (HTTP/2 when the server offers it) or http://, e.g.
    /// http://127.0.0.1:8080.
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

    /// Where unfinished and completed uploads are remembered (default: the platform state
    /// directory, e.g. ~/.local/state/uploader).
    #[arg(long, global = true, env = "UPLOADER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long, global = true, env = "UPLOADER_JSON")]
    pub json: bool,

    /// Print nothing but errors, and each uploaded file's id (one a line) for scripts.
    #[arg(short, long, global = true, env = "UPLOADER_QUIET")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload files (a directory uploads the files under it, keeping their relative
    /// paths). Run it again to resume; files already uploaded from here are not sent again.
    #[command(after_help = EXIT_CODES_HELP)]
    Upload(UploadArgs),
    /// Show an upload's state on the server.
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        /// An upload id, or a file uploaded (or being uploaded) from this machine.
        target: String,
    },
    /// List the unfinished uploads this machine knows, with their progress; with
    /// `--remote`, your uploads on the server (from any machine), newest first.
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// Also list the files this machine uploaded completely.
        #[arg(short, long, env = "UPLOADER_LIST_ALL", conflicts_with = "remote")]
        all: bool,
        /// List the uploads on the server instead (yours, when the server authenticates).
        #[arg(short, long, env = "UPLOADER_LIST_REMOTE")]
        remote: bool,
        /// With --remote: only uploads in this state.
        #[arg(
            long,
            env = "UPLOADER_LIST_STATE",
            requires = "remote",
            value_parser = ["uploading", "completing", "completed", "failed"]
        )]
        state: Option<String>,
        /// With --remote: show at most this many (default: all).
        #[arg(
            long,
            env = "UPLOADER_LIST_LIMIT",
            requires = "remote",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        limit: Option<u64>,
    },
    /// Cancel an upload on the server and forget it locally.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// An upload id, or a file with an unfinished upload from this machine.
        target: String,
    },
    /// Download completed uploads (resumes a partial download left in FILE.part). With
    /// several ids or `--dir`, each goes under the directory at its relative path.
    #[command(after_help = EXIT_CODES_HELP)]
    Download(DownloadArgs),
    /// Print a shell completion script, e.g. `uploader completions bash >
    /// /etc/bash_completion.d/uploader`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `uploader man | man -l -`.
    Man {
        /// Write every page (uploader.1, uploader-upload.1, …) into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Options of `uploader upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Files or directories to upload; `-` reads standard input (with --name), as do
    /// /dev/stdin and /dev/fd/N when they are pipes (`<(cmd)`).
    #[arg(required = true, value_name = "FILE")]
    pub paths: Vec<PathBuf>,

    /// The name of the upload read from standard input (`-`) or a pipe. Such an upload is
    /// retried while the command runs, but cannot be resumed by running it again: what was
    /// read cannot be read again.
    #[arg(long, env = "UPLOADER_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Chunks in flight at once, over all the files being sent.
    #[arg(
        short = 'j',
        long,
        env = "UPLOADER_PARALLEL",
        default_value_t = DEFAULT_PARALLEL,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub parallel: u16,

    /// Files sent at once (they share the `-j` chunks in flight).
    #[arg(
        long,
        env = "UPLOADER_TRANSFERS",
        default_value_t = DEFAULT_TRANSFERS,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub transfers: u16,

    /// Chunk size for new uploads, e.g. 16MiB (default: the server's choice).
    #[arg(long, env = "UPLOADER_CHUNK_SIZE", value_parser = parse_chunk_size, value_name = "SIZE")]
    pub chunk_size: Option<u64>,

    /// Retries per chunk (and per request) before giving up; waiting for an unreachable
    /// server does not count (see --give-up-after).
    #[arg(long, env = "UPLOADER_RETRIES", default_value_t = DEFAULT_RETRIES)]
    pub retries: u32,

    /// Total upload rate limit, e.g. 20MiB/s.
    #[arg(long, env = "UPLOADER_LIMIT_RATE", value_parser = parse_rate, value_name = "RATE")]
    pub limit_rate: Option<u64>,

    /// Abort and retry a request that moves no byte for this long.
    #[arg(long, env = "UPLOADER_STALL_TIMEOUT", default_value = DEFAULT_STALL_TIMEOUT, value_parser = parse_duration, value_name = "DURATION")]
    pub stall_timeout: Duration,

    /// Longest wait between retries (backoff with full jitter grows up to it), and between
    /// tries to reach a server that is down.
    #[arg(long, env = "UPLOADER_RETRY_MAX_DELAY", default_value = DEFAULT_RETRY_MAX_DELAY, value_parser = parse_duration, value_name = "DURATION")]
    pub retry_max_delay: Duration,

    /// How long to wait for a server that became unreachable before giving up (the
    /// command to resume is printed then).
    #[arg(long, env = "UPLOADER_GIVE_UP_AFTER", default_value = DEFAULT_GIVE_UP_AFTER, value_parser = parse_duration, value_name = "DURATION")]
    pub give_up_after: Duration,

    /// Upload files again even if this machine already uploaded them (same path, size,
    /// modification and change time, inode).
    #[arg(long, env = "UPLOADER_FORCE")]
    pub force: bool,

    /// Resume this upload id (started elsewhere) with FILE; its size must match.
    #[arg(long, env = "UPLOADER_RESUME", value_name = "ID")]
    pub resume: Option<common::UploadId>,
}

/// Default of `-j`.
pub const DEFAULT_PARALLEL: u16 = 4;
/// Default of `--transfers`.
pub const DEFAULT_TRANSFERS: u16 = 4;
/// Default of `--retries`.
pub const DEFAULT_RETRIES: u32 = 10;
/// Default of `--stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: &str = "30s";
/// Default of `--retry-max-delay`.
pub const DEFAULT_RETRY_MAX_DELAY: &str = "10s";
/// Default of `--give-up-after`: a laptop that changes networks, a server restarted for
/// an upgrade, a router rebooting, all fit.
pub const DEFAULT_GIVE_UP_AFTER: &str = "10m";

/// `--chunk-size`: a size above zero (the server's bounds are checked once it is known).
fn parse_chunk_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("invalid size {s:?}: must be above zero")),
        n => Ok(n),
    }
}

/// Options of `uploader download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The upload ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<common::UploadId>,
    /// Output file, for one id (default: the upload's file name, or its id).
    #[arg(
        short,
        long,
        env = "UPLOADER_OUTPUT",
        value_name = "FILE",
        conflicts_with = "dir"
    )]
    pub output: Option<PathBuf>,
    /// Directory to download into: each upload goes to its relative path under it (or its
    /// file name), checked never to leave it.
    #[arg(short = 'C', long, env = "UPLOADER_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Retries of a broken transfer before giving up.
    #[arg(long, env = "UPLOADER_RETRIES", default_value_t = DEFAULT_RETRIES)]
    pub retries: u32,
    /// Download rate limit, e.g. 20MiB/s.
    #[arg(long, env = "UPLOADER_LIMIT_RATE", value_parser = parse_rate, value_name = "RATE")]
    pub limit_rate: Option<u64>,
}

/// Quotes `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A size as a flag value: `16MiB`, `64KiB` or bytes.
fn size_arg(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// A duration as a flag value: `90s`, `1500ms`.
fn duration_arg(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Cli {
    /// The command that resumes this upload run: the same paths (absolute, so it works
    /// from any directory) and every option that changes how it uploads, but never the
    /// token (nor output flags or `--force`, which would send the files completed by this
    /// run again).
    pub fn resume_command(&self, a: &UploadArgs) -> String {
        let mut s = String::from("uploader upload");
        for p in &a.paths {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            s.push(' ');
            s.push_str(&shell_quote(&abs.to_string_lossy()));
        }
        s.push_str(" --server ");
        s.push_str(&shell_quote(&self.server));
        let mut opt = |name: &str, value: String| {
            s.push(' ');
            s.push_str(name);
            s.push(' ');
            s.push_str(&shell_quote(&value));
        };
        if let Some(d) = &self.state_dir {
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            opt("--state-dir", abs.to_string_lossy().into_owned());
        }
        if let Some(ca) = &self.cacert {
            let abs = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
            opt("--cacert", abs.to_string_lossy().into_owned());
        }
        if a.parallel != DEFAULT_PARALLEL {
            opt("-j", a.parallel.to_string());
        }
        if a.transfers != DEFAULT_TRANSFERS {
            opt("--transfers", a.transfers.to_string());
        }
        if let Some(c) = a.chunk_size {
            opt("--chunk-size", size_arg(c));
        }
        if let Some(r) = a.limit_rate {
            opt("--limit-rate", format!("{}/s", size_arg(r)));
        }
        if a.retries != DEFAULT_RETRIES {
            opt("--retries", a.retries.to_string());
        }
        let durations = [
            ("--stall-timeout", a.stall_timeout, DEFAULT_STALL_TIMEOUT),
            (
                "--retry-max-delay",
                a.retry_max_delay,
                DEFAULT_RETRY_MAX_DELAY,
            ),
            ("--give-up-after", a.give_up_after, DEFAULT_GIVE_UP_AFTER),
        ];
        for (name, value, default) in durations {
            if parse_duration(default).ok() != Some(value) {
                opt(name, duration_arg(value));
            }
        }
        if let Some(id) = a.resume {
            opt("--resume", id.to_string());
        }
        s
    }
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
        assert!(Cli::try_parse_from(["uploader", "upload", "a", "--chunk-size", "0"]).is_err());
        assert!(Cli::try_parse_from(["uploader", "download", "x", "-o", "f", "-C", "d"]).is_err());
    }

    #[test]
    fn resume_command_keeps_the_options_but_not_the_token() {
        let cli = Cli::try_parse_from([
            "uploader",
            "upload",
            "/data/my file.bin",
            "/data/tree",
            "-j",
            "8",
            "--chunk-size",
            "16MiB",
            "--limit-rate",
            "20MiB/s",
            "--server",
            "http://h:9",
            "--token",
            "s3cret",
            "--give-up-after",
            "90s",
            "--transfers",
            "2",
            "--force",
            "-q",
        ])
        .unwrap();
        let Command::Upload(u) = &cli.command else {
            panic!("not upload")
        };
        let hint = cli.resume_command(u);
        assert_eq!(
            hint,
            "uploader upload '/data/my file.bin' /data/tree --server http://h:9 -j 8 \
             --transfers 2 --chunk-size 16MiB --limit-rate 20MiB/s --give-up-after 90s"
        );
        assert!(!hint.contains("s3cret"));
        // The hint parses back to the same options.
        let words: Vec<&str> = ["uploader", "upload", "/data/my file.bin", "/data/tree"]
            .into_iter()
            .chain(hint.split(' ').skip(5))
            .collect();
        let back = Cli::try_parse_from(words).unwrap();
        let Command::Upload(b) = &back.command else {
            panic!("not upload")
        };
        assert_eq!(
            (b.parallel, b.chunk_size, b.limit_rate),
            (8, Some(16 << 20), Some(20 << 20))
        );
        assert_eq!(b.give_up_after, Duration::from_secs(90));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.bin"), "/tmp/a.bin");
        assert_eq!(shell_quote("/tmp/my file"), "'/tmp/my file'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
