//! `uploader download`: fetches completed uploads into `FILE.part`, resuming a partial
//! download with `Range`, checks the SHA-256 against the server's, then renames it to
//! `FILE`, with a progress bar on a terminal.
//!
//! Into a directory (`--dir`, or several ids), each upload goes to its `relative_path`
//! (an upload from a directory) or its file name under it. That path is data from the
//! server: it is checked by the same rules as at creation, and the directories on the way
//! are created one by one, refusing a symbolic link, so nothing is written outside the
//! directory. A file already there with the same SHA-256 counts as downloaded.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use common::api::UploadState;
use common::units::format_size;
use common::Sha256Digest;

use crate::args::{shell_quote, DownloadArgs};
use crate::client::{describe, Client};
use crate::error::{Error, Result, EXIT_OK};
use crate::progress::{FileProgress, Mode, Reporter};
use crate::retry::RetryPolicy;

/// What a finished download reports.
#[derive(Debug)]
pub struct Downloaded {
    /// Output file.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Verified SHA-256.
    pub sha256: Sha256Digest,
    /// Bytes that were already in the `.part` file.
    pub resumed_bytes: u64,
}

/// A safe local file name from the upload's name: its last component only.
fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    (!base.is_empty() && base != "." && base != "..").then(|| base.to_string())
}

fn part_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Hashes the bytes already in `part` (they were verified by nothing yet, but the whole
/// file is checked at the end).
fn hash_existing(part: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut f = match std::fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((h, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Where a download goes.
enum Target {
    /// `-o FILE`, or the file name in the current directory.
    File(Option<PathBuf>),
    /// Under this directory, at the upload's relative path.
    Dir(PathBuf),
}

/// Runs `uploader download`; returns the exit code. With one id its error is returned for
/// `main` to print; with several, each is reported and the others go on.
pub async fn download_all(
    args: &DownloadArgs,
    server: &str,
    token: Option<&str>,
    mode: Mode,
    cancel: &CancellationToken,
) -> Result<u8> {
    if args.output.is_some() && args.ids.len() > 1 {
        return Err(Error::Usage(
            "-o names one file; with several ids use --dir DIR".into(),
        ));
    }
    let client = Client::new(server, token)?;
    let target = |_: ()| match (&args.dir, args.ids.len()) {
        (Some(d), _) => Target::Dir(d.clone()),
        (None, 1) => Target::File(args.output.clone()),
        (None, _) => Target::Dir(PathBuf::from(".")),
    };
    // Downloads go one after the other, each with its own bar.
    let reporter = Reporter::new(mode, 0, 1);
    let limiter = args.limit_rate.map(crate::limit::RateLimiter::new);
    let mut worst = EXIT_OK;
    for id in &args.ids {
        let r = download(
            &client,
            *id,
            target(()),
            args.retries,
            limiter.as_ref(),
            &reporter,
            cancel,
        )
        .await;
        match r {
            Ok(d) => reporter.downloaded(id, &d.path, d.size, &d.sha256, d.resumed_bytes),
            Err(e) if args.ids.len() == 1 => {
                reporter.finish();
                return Err(e);
            }
            Err(e) => {
                let interrupted = matches!(e, Error::Interrupted { .. });
                reporter.failed(
                    Path::new(&id.to_string()),
                    Some(id),
                    &e.to_string(),
                    e.exit_code(),
                );
                worst = worst.max(e.exit_code());
                if interrupted {
                    break;
                }
            }
        }
    }
    reporter.finish();
    Ok(worst)
}

/// Creates the directories between `root` and `file` one by one, refusing any that is a
/// symbolic link (which could lead outside `root`).
fn make_parents(root: &Path, file: &Path) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let rel = file.strip_prefix(root).unwrap_or(file);
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{}: not a directory (a symbolic link or a file is in the way)",
                    at.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| Error::io(&at, e))?;
            }
            Err(e) => return Err(Error::io(&at, e)),
        }
    }
    Ok(())
}

/// SHA-256 of a whole local file.
fn sha256_of(path: &Path) -> std::io::Result<Sha256Digest> {
    let (h, _) = hash_existing(path)?;
    Ok(Sha256Digest(h.finalize().into()))
}

/// Downloads one upload.
async fn download(
    client: &Client,
    id: common::UploadId,
    target: Target,
    retries: u32,
    limiter: Option<&crate::limit::RateLimiter>,
    reporter: &Reporter,
    cancel: &CancellationToken,
) -> Result<Downloaded> {
    let st = client.status(&id).await?;
    if st.state != UploadState::Completed {
        return Err(Error::Invalid(format!(
            "upload {id} is not completed yet ({} of {} received)",
            format_size(st.received_bytes),
            format_size(st.size)
        )));
    }
    let expected = st.sha256.ok_or_else(|| Error::Protocol {
        context: format!("status of {id}"),
        reason: "a completed upload without sha256".into(),
    })?;
    let base_name = || {
        st.filename
            .as_deref()
            .and_then(safe_name)
            .unwrap_or_else(|| id.to_string())
    };
    let out = match target {
        Target::File(Some(o)) => o,
        Target::File(None) => {
            let p = PathBuf::from(base_name());
            if p.exists() {
                return Err(Error::Invalid(format!(
                    "{} already exists; choose another name with -o",
                    p.display()
                )));
            }
            p
        }
        Target::Dir(root) => {
            let rel = st
                .metadata
                .get(common::relpath::RELATIVE_PATH_KEY)
                .cloned()
                .unwrap_or_else(base_name);
            let out = common::relpath::join_under(&root, &rel)
                .map_err(|e| Error::Invalid(format!("upload {id}: {e}; not written")))?;
            make_parents(&root, &out)?;
            match std::fs::symlink_metadata(&out) {
                Ok(m) if m.is_file() => {
                    if sha256_of(&out).map_err(|e| Error::io(&out, e))? == expected {
                        return Ok(Downloaded {
                            path: out,
                            size: st.size,
                            sha256: expected,
                            resumed_bytes: st.size,
                        });
                    }
                    return Err(Error::Invalid(format!(
                        "{} already exists with other content; not overwritten",
                        out.display()
                    )));
                }
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "{}: something other than a file is in the way",
                        out.display()
                    )))
                }
                Err(_) => {}
            }
            out
        }
    };
    let part = part_path(&out);
    let (mut hasher, mut have) = {
        let part2 = part.clone();
        tokio::task::spawn_blocking(move || hash_existing(&part2))
            .await
            .map_err(|e| Error::io(&out, std::io::Error::other(e)))?
            .map_err(|e| Error::io(&part, e))?
    };
    if have > st.size {
        hasher = Sha256::new();
        have = 0;
    }
    let resumed_bytes = have;
    // Never through a symbolic link planted at the .part name.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|e| Error::io(&part, e))?;
    file.set_len(have).map_err(|e| Error::io(&part, e))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(have))
        .map_err(|e| Error::io(&part, e))?;

    let policy = RetryPolicy {
        retries,
        ..RetryPolicy::default()
    };
    let progress = FileProgress::default();
    progress.acked.store(have, Ordering::Relaxed);
    reporter.started(&id, &out, st.size, 0, have);
    let mut last_tick = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    let resume_hint = format!(
        "uploader download {id} -o {} --server {}",
        shell_quote(&out.to_string_lossy()),
        shell_quote(client.base())
    );
    while have < st.size {
        let attempt = async {
            let resp = client.content(&id, have).await?;
            if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT && have > 0 {
                // The server sent the whole file: start over.
                file.flush().map_err(|e| Error::io(&part, e))?;
                file.get_mut().set_len(0).map_err(|e| Error::io(&part, e))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| Error::io(&part, e))?;
                hasher = Sha256::new();
                have = 0;
                progress.acked.store(0, Ordering::Relaxed);
            }
            let mut body = resp.bytes_stream();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| Error::Transport {
                    context: format!("download {id}"),
                    reason: describe(&e),
                    retryable: true,
                    connect: false,
                })?;
                let room = st.size.saturating_sub(have) as usize;
                let piece = &piece[..piece.len().min(room)];
                file.write_all(piece).map_err(|e| Error::io(&part, e))?;
                hasher.update(piece);
                have += piece.len() as u64;
                progress.acked.store(have, Ordering::Relaxed);
                if let Some(l) = limiter {
                    l.acquire(piece.len() as u64).await;
                }
                if last_tick.elapsed() >= Duration::from_millis(100) {
                    last_tick = Instant::now();
                    reporter.tick(&id, st.size, &progress);
                }
            }
            Ok::<(), Error>(())
        };
        let r = tokio::select! {
            r = attempt => r,
            () = cancel.cancelled() => {
                let _ = file.flush();
                return Err(Error::Interrupted { resume: resume_hint });
            }
        };
        match r {
            Ok(()) if have < st.size => {
                failures += 1;
                if failures > policy.retries {
                    return Err(Error::Transport {
                        context: format!("download {id}"),
                        reason: "the transfer kept ending early".into(),
                        retryable: false,
                        connect: false,
                    });
                }
            }
            Ok(()) => {}
            Err(e) if e.is_retryable() && failures < policy.retries => {
                failures += 1;
                let _ = file.flush();
                tokio::time::sleep(policy.delay(failures, e.retry_after(), &mut rng)).await;
            }
            Err(e) => {
                let _ = file.flush();
                return Err(e);
            }
        }
        if failures > 0 && have < st.size {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let file = file
        .into_inner()
        .map_err(|e| Error::io(&part, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&part, e))?;
    drop(file);
    reporter.final_tick(&id, st.size, &progress);
    let got = Sha256Digest(hasher.finalize().into());
    if got != expected {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Mismatch {
            file: out,
            local: got,
            server: Some(expected),
        });
    }
    std::fs::rename(&part, &out).map_err(|e| Error::io(&out, e))?;
    Ok(Downloaded {
        path: out,
        size: st.size,
        sha256: got,
        resumed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_name("a.bin").as_deref(), Some("a.bin"));
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("dir\\x.txt").as_deref(), Some("x.txt"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name("a/"), None);
        assert_eq!(
            part_path(Path::new("/t/out.bin")),
            PathBuf::from("/t/out.bin.part")
        );
    }
}
