//! The one error type of the CLI, and the exit code each kind of failure maps to.

use std::path::PathBuf;
use std::time::Duration;

use common::Sha256Digest;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the upload or command failed (I/O, network, server refusal).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the command line is wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server's SHA-256 differs from the client's.
pub const EXIT_MISMATCH: u8 = 3;
/// Exit code: interrupted (Ctrl-C); the upload is paused and can be resumed.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Everything that can go wrong in `uploader`. Each message is one line, meant for people.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is inconsistent (beyond what clap checks).
    #[error("{0}")]
    Usage(String),

    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// A path is neither a regular file nor a directory.
    #[error("{}: not a regular file or directory", .0.display())]
    NotAFile(PathBuf),

    /// The server could not be reached at all (refused, unresolvable, timed out).
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable {
        /// Base URL tried.
        url: String,
        /// Why, e.g. "connection refused".
        reason: String,
    },

    /// Something answers at the URL, but not the upload API v1.
    #[error("not an upload-server at {url} (got {status})")]
    NotAnUploadServer {
        /// Base URL tried.
        url: String,
        /// What it answered: status and media type, e.g. `404 text/html`.
        status: String,
    },

    /// The server wants a token (401) that was missing or refused.
    #[error("{context}: {}", if *.given {
        format!("the server refused the token ({detail}); check --token or UPLOADER_TOKEN")
    } else {
        format!("the server requires a token ({detail}); pass --token or set UPLOADER_TOKEN")
    })]
    Unauthorized {
        /// What was being done.
        context: String,
        /// Whether a token was sent.
        given: bool,
        /// The problem detail.
        detail: String,
    },

    /// The server stayed unreachable longer than `--give-up-after`.
    #[error("the server at {url} was unreachable for {}; giving up ({reason})", crate::outage::format_duration(*.after))]
    OutageTooLong {
        /// Base URL.
        url: String,
        /// How long it was unreachable.
        after: Duration,
        /// The last reason, e.g. "connection refused".
        reason: String,
    },

    /// The local file changed while it was being uploaded: what was sent is not the file.
    #[error("{}: the file changed while it was being uploaded ({what}); run the command again to upload its new content", file.display())]
    ChangedWhileUploading {
        /// The file.
        file: PathBuf,
        /// What differs, e.g. "size and ctime".
        what: String,
    },

    /// A transport failure (connection reset, timeout, stalled transfer) after retries,
    /// or on a request that is not retried.
    #[error("{context}: {reason}")]
    Transport {
        /// What was being done, e.g. "PUT chunk 3".
        context: String,
        /// The transport error.
        reason: String,
        /// True if a retry may succeed (connection errors, timeouts, stalls).
        retryable: bool,
        /// True when no connection could be made (refused, unresolvable, connect timeout):
        /// the server is down or unreachable, not this request at fault.
        connect: bool,
    },

    /// The server answered with an error status; `detail` is its problem detail.
    #[error("{context}: server answered {status}: {detail}")]
    Api {
        /// What was being done.
        context: String,
        /// HTTP status.
        status: u16,
        /// The problem document's `detail`, or the body's start.
        detail: String,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The full problem document, when the body was one.
        problem: Option<Box<common::api::Problem>>,
    },

    /// The server's answer could not be understood.
    #[error("{context}: unexpected answer from the server: {reason}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A chunk kept failing.
    #[error("chunk {index} failed after {attempts} attempts: {last}")]
    GaveUp {
        /// Chunk index.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<Error>,
    },

    /// The whole-file SHA-256 the server computed differs from the client's.
    #[error("SHA-256 mismatch for {}: client computed {local}, server has {}", file.display(), server.map(|s| s.to_hex()).unwrap_or_else(|| "(none)".into()))]
    Mismatch {
        /// The file.
        file: PathBuf,
        /// What the client read.
        local: Sha256Digest,
        /// What the server reports, when it says.
        server: Option<Sha256Digest>,
    },

    /// The local state (journal) could not be read or written.
    #[error("local state {}: {reason}", path.display())]
    Journal {
        /// The journal file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The request makes no sense for this upload or file (e.g. `--resume` with another
    /// size, downloading an unfinished upload).
    #[error("{0}")]
    Invalid(String),

    /// Ctrl-C: the upload is paused; `resume` is the command that continues it.
    #[error("interrupted; resume with: {resume}")]
    Interrupted {
        /// The command line that resumes.
        resume: String,
    },
}

impl Error {
    /// The process exit code for this error (see `uploader --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Mismatch { .. } => EXIT_MISMATCH,
            Error::Interrupted { .. } => EXIT_INTERRUPTED,
            Error::GaveUp { last, .. } => last.exit_code(),
            _ => EXIT_FAILURE,
        }
    }

    /// Whether the server itself looks unreachable: no connection could be made, or a
    /// gateway in front of it answered 502 or 504. Such failures wait for the server to
    /// come back ([`crate::outage`]) instead of using up a request's retries.
    pub fn is_outage(&self) -> bool {
        match self {
            Error::Transport { connect, .. } => *connect,
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } => matches!(status, 502 | 504),
            _ => false,
        }
    }

    /// Whether repeating the same request may succeed: transport failures and the
    /// statuses 408, 429, 500, 502, 503, 504.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { retryable, .. } => *retryable,
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } => crate::retry::is_retryable_status(*status),
            _ => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short reason for a retry event, e.g. `503` or `connection reset`.
    pub fn short_reason(&self) -> String {
        match self {
            Error::Api { status, detail, .. } => format!("HTTP {status}: {detail}"),
            Error::Transport { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with the CLI's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
