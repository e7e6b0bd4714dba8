//! A file system rebuilt from an `strace` log, to simulate power cuts.
//!
//! A kill -9 keeps the page cache; a power cut keeps only what was made durable. Given a
//! trace of the server (`strace -f -y -x -s <large>`: the file behind every descriptor
//! and the bytes of every write), [`Replay`] rebuilds what a disk could hold after a
//! power cut at any line of the trace:
//!
//! - file data: a write completed before an `fsync`/`fdatasync` of its file started is
//!   durable; any later one may be lost, kept, or torn at a 512-byte sector boundary,
//!   each independently (disks and the page cache reorder writes);
//! - names (created files, directories, renames, unlinks): a journaling file system
//!   commits them in order, so a power cut keeps a prefix of them, at least up to the
//!   last one an `fsync` of its directory covered.
//!
//! The choices are drawn from a seed, so a failing seed can be replayed. The model is
//! the one SQLite's crash tests and ALICE use, kept pessimistic for data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

/// One syscall from the trace.
#[derive(Clone, Debug)]
pub struct Call {
    /// Syscall name.
    pub name: String,
    /// Line where it started.
    pub started: usize,
    /// Line where it completed.
    pub done: usize,
    /// Its arguments as printed when it started.
    pub args: String,
    /// What it returned (the text after `= `).
    pub ret: String,
}

impl Call {
    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        !self.ret.starts_with("-1")
    }
}

/// The trace's syscalls in the order they started, joining `<unfinished ...>` with
/// `<... resumed>` lines of the same thread.
pub fn calls(trace: &str) -> Vec<Call> {
    let mut pending: HashMap<String, (String, usize, String)> = HashMap::new();
    let mut out = Vec::new();
    let ret_of = |s: &str| {
        // strace pads the space before `= ` to align return values.
        s.rfind(" = ")
            .map(|i| s[i + 3..].trim().to_string())
            .unwrap_or_default()
    };
    for (n, line) in trace.lines().enumerate() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("").to_string();
            if let Some((pname, started, args)) = pending.remove(tid) {
                if pname == name {
                    out.push(Call {
                        name,
                        started,
                        done: n,
                        args,
                        ret: ret_of(r),
                    });
                }
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let name = rest[..paren].to_string();
        let args = rest[paren + 1..].to_string();
        if let Some(args) = args.strip_suffix("<unfinished ...>") {
            pending.insert(tid.to_string(), (name, n, args.trim_end().to_string()));
        } else {
            out.push(Call {
                name,
                started: n,
                done: n,
                args,
                ret: ret_of(rest),
            });
        }
    }
    out
}

/// The path in a `-y` annotated descriptor: `9</tmp/x/data>` → `/tmp/x/data`.
pub fn fd_path(arg: &str) -> Option<&str> {
    let start = arg.find('<')? + 1;
    let end = arg[start..].find('>')? + start;
    Some(&arg[start..end])
}

/// The descriptor number of `9</tmp/x/data>`.
fn fd_number(arg: &str) -> Option<i64> {
    arg.trim().split('<').next()?.trim().parse().ok()
}

/// The quoted strings among a call's arguments, decoded, each with whether strace cut
/// it short (`"..."...`).
pub fn strings(args: &str) -> Vec<(Vec<u8>, bool)> {
    let b = args.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut s = Vec::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
                match b[i] {
                    b'x' => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                        s.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                        i += 2;
                    }
                    b'n' => s.push(b'\n'),
                    b't' => s.push(b'\t'),
                    b'r' => s.push(b'\r'),
                    b'v' => s.push(0x0b),
                    b'f' => s.push(0x0c),
                    b'0'..=b'7' => {
                        let mut v = 0u32;
                        let mut k = 0;
                        while k < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                            v = v * 8 + (b[i] - b'0') as u32;
                            i += 1;
                            k += 1;
                        }
                        s.push(v as u8);
                        continue;
                    }
                    c => s.push(c),
                }
            } else {
                s.push(b[i]);
            }
            i += 1;
        }
        i += 1;
        let cut = b.get(i..i + 3) == Some(b"...");
        out.push((s, cut));
    }
    out
}

/// The arguments of a call split at top-level commas.
fn split_args(args: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in args.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' | '<' => depth += 1,
            ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            ')' if depth == 0 => {
                out.push(args[start..i].trim());
                return out;
            }
            _ => {}
        }
    }
    out.push(args[start..].trim());
    out
}

/// A change of file bytes.
#[derive(Clone, Debug)]
enum DataOp {
    Write { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// A change of names.
#[derive(Clone, Debug)]
enum MetaOp {
    Link { path: String, inode: usize },
    Mkdir(String),
    Rename { from: String, to: String },
    Unlink(String),
    Rmdir(String),
}

impl MetaOp {
    /// The directory whose entries it changes (the target's, for a rename).
    fn dir(&self) -> String {
        let p = match self {
            MetaOp::Link { path, .. } | MetaOp::Mkdir(path) => path,
            MetaOp::Rename { to, .. } => to,
            MetaOp::Unlink(p) | MetaOp::Rmdir(p) => p,
        };
        parent(p)
    }
}

fn parent(p: &str) -> String {
    Path::new(p)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An answer the server started to send: what a client may have been told.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Line where the write of the answer started.
    pub line: usize,
    /// The answer's bytes as traced (status line, headers, body).
    pub text: String,
}

/// The changes under one directory tree, in the order they completed.
#[derive(Debug, Default)]
pub struct Replay {
    /// Per inode: (completion line, change).
    data: Vec<Vec<(usize, DataOp)>>,
    /// Per inode: (start line, completion line) of each fsync.
    syncs: Vec<Vec<(usize, usize)>>,
    /// (completion line, change).
    meta: Vec<(usize, MetaOp)>,
    /// Per directory: (start line, completion line) of each fsync.
    dir_syncs: HashMap<String, Vec<(usize, usize)>>,
    /// 2xx answers written to sockets.
    answers: Vec<Answer>,
    /// Lines where something under the root changed: the crash points worth trying.
    points: Vec<usize>,
    /// Root of the traced tree.
    root: String,
    /// Writes whose bytes strace cut short (the trace is then unusable).
    cut: usize,
}

impl Replay {
    /// Reads a trace of a server whose data directory is `root` (absolute, as in the trace).
    pub fn new(trace: &str, root: &str) -> Self {
        let mut calls = calls(trace);
        calls.sort_by_key(|c| c.done);
        let mut r = Replay {
            root: root.to_string(),
            ..Default::default()
        };
        let under = |p: &str| p == root || p.starts_with(&format!("{root}/"));
        // The volatile name space while the trace runs: path → inode.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut sizes: Vec<u64> = Vec::new();
        // Descriptor → (position, appending).
        let mut fds: HashMap<i64, (u64, bool)> = HashMap::new();
        for c in calls.iter().filter(|c| c.ok()) {
            let args = split_args(&c.args);
            let first = args.first().copied().unwrap_or("");
            let path_of = |i: usize| -> Option<String> {
                let (s, _) = strings(&c.args).into_iter().nth(i)?;
                let s = String::from_utf8_lossy(&s).into_owned();
                if s.starts_with('/') {
                    Some(s)
                } else {
                    Some(format!("{}/{s}", fd_path(first)?))
                }
            };
            match c.name.as_str() {
                "write" | "writev" | "sendto" | "sendmsg"
                    if first.contains("socket:") || first.contains("TCP") =>
                {
                    let text: Vec<u8> = strings(&c.args).into_iter().flat_map(|(s, _)| s).collect();
                    let text = String::from_utf8_lossy(&text).into_owned();
                    if text.starts_with("HTTP/1.1 2") {
                        r.answers.push(Answer {
                            line: c.started,
                            text,
                        });
                    }
                }
                "openat" => {
                    let Some(p) = path_of(0).filter(|p| under(p)) else {
                        continue;
                    };
                    let flags = args.get(2).copied().unwrap_or("");
                    let fd = fd_number(&c.ret);
                    if flags.contains("O_CREAT") && !names.contains_key(&p) {
                        let inode = r.data.len();
                        r.data.push(Vec::new());
                        r.syncs.push(Vec::new());
                        sizes.push(0);
                        names.insert(p.clone(), inode);
                        r.meta.push((c.done, MetaOp::Link { path: p, inode }));
                        r.points.push(c.done);
                    } else if flags.contains("O_TRUNC") {
                        if let Some(&inode) = names.get(&p) {
                            r.data[inode].push((c.done, DataOp::SetLen(0)));
                            sizes[inode] = 0;
                            r.points.push(c.done);
                        }
                    }
                    if let Some(fd) = fd {
                        fds.insert(fd, (0, flags.contains("O_APPEND")));
                    }
                }
                "mkdir" | "mkdirat" => {
                    let Some(p) = path_of(0).filter(|p| under(p)) else {
                        continue;
                    };
                    r.meta.push((c.done, MetaOp::Mkdir(p)));
                    r.points.push(c.done);
                }
                "rename" | "renameat" | "renameat2" => {
                    let (Some(from), Some(to)) = (path_of(0), path_of(1)) else {
                        continue;
                    };
                    if !under(&to) {
                        continue;
                    }
                    if let Some(inode) = names.remove(&from) {
                        names.insert(to.clone(), inode);
                    }
                    r.meta.push((c.done, MetaOp::Rename { from, to }));
                    r.points.push(c.done);
                }
                "unlink" | "unlinkat" | "rmdir" => {
                    let path = if c.name == "unlinkat" {
                        let name = strings(&c.args)
                            .into_iter()
                            .next()
                            .map(|(s, _)| String::from_utf8_lossy(&s).into_owned());
                        match (fd_path(first), name) {
                            (_, Some(n)) if n.starts_with('/') => Some(n),
                            (Some(d), Some(n)) => Some(format!("{d}/{n}")),
                            _ => None,
                        }
                    } else {
                        path_of(0)
                    };
                    let Some(p) = path.filter(|p| under(p)) else {
                        continue;
                    };
                    let dir = c.name == "rmdir" || c.args.contains("AT_REMOVEDIR");
                    names.remove(&p);
                    r.meta.push((
                        c.done,
                        if dir {
                            MetaOp::Rmdir(p)
                        } else {
                            MetaOp::Unlink(p)
                        },
                    ));
                    r.points.push(c.done);
                }
                "write" | "pwrite64" | "ftruncate" => {
                    let Some(p) = fd_path(first).filter(|p| under(p)) else {
                        continue;
                    };
                    let Some(&inode) = names.get(p) else { continue };
                    let fd = fd_number(first).unwrap_or(-1);
                    let op = if c.name == "ftruncate" {
                        let len: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
                        sizes[inode] = len;
                        DataOp::SetLen(len)
                    } else {
                        let Some((bytes, cut)) = strings(&c.args).into_iter().next() else {
                            continue;
                        };
                        if cut {
                            r.cut += 1;
                        }
                        let at = if c.name == "pwrite64" {
                            args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0)
                        } else {
                            let (pos, append) = fds.get(&fd).copied().unwrap_or((0, false));
                            let at = if append { sizes[inode] } else { pos };
                            fds.insert(fd, (at + bytes.len() as u64, append));
                            at
                        };
                        sizes[inode] = sizes[inode].max(at + bytes.len() as u64);
                        DataOp::Write { at, bytes }
                    };
                    r.data[inode].push((c.done, op));
                    r.points.push(c.done);
                }
                "fsync" | "fdatasync" => {
                    let Some(p) = fd_path(first).filter(|p| under(p) || root.starts_with(*p))
                    else {
                        continue;
                    };
                    r.dir_syncs
                        .entry(p.to_string())
                        .or_default()
                        .push((c.started, c.done));
                    if let Some(&inode) = names.get(p) {
                        r.syncs[inode].push((c.started, c.done));
                    }
                    r.points.push(c.done);
                }
                _ => {}
            }
        }
        r.points.sort_unstable();
        r.points.dedup();
        r
    }

    /// 2xx answers the server started to send, in order.
    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    /// Lines where something under the root changed.
    pub fn points(&self) -> &[usize] {
        &self.points
    }

    /// Writes whose bytes strace cut short (raise `-s`).
    pub fn cut_writes(&self) -> usize {
        self.cut
    }

    /// Changes traced: (data changes, name changes).
    pub fn changes(&self) -> (usize, usize) {
        (self.data.iter().map(Vec::len).sum(), self.meta.len())
    }

    /// Writes into `dest` what the disk holds after a power cut just before line `line`,
    /// the unsettled changes decided by `seed`. Returns how many changes were lost.
    pub fn crash(&self, line: usize, seed: u64, dest: &Path) -> std::io::Result<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut lost = 0;
        // Names: the prefix the journal committed.
        let done: Vec<&(usize, MetaOp)> = self.meta.iter().filter(|(l, _)| *l < line).collect();
        let mut must = 0;
        for (i, (at, op)) in done.iter().enumerate() {
            let synced = self
                .dir_syncs
                .get(&op.dir())
                .is_some_and(|s| s.iter().any(|(start, end)| *end < line && *start > *at));
            if synced {
                must = i + 1;
            }
        }
        let kept = rng.random_range(must..=done.len());
        lost += done.len() - kept;
        let mut files: BTreeMap<String, usize> = BTreeMap::new();
        let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
        dirs.insert(self.root.clone(), ());
        for (_, op) in &done[..kept] {
            match op {
                MetaOp::Link { path, inode } => {
                    files.insert(path.clone(), *inode);
                }
                MetaOp::Mkdir(p) => {
                    dirs.insert(p.clone(), ());
                }
                MetaOp::Rename { from, to } => {
                    if let Some(inode) = files.remove(from) {
                        files.insert(to.clone(), inode);
                    }
                }
                MetaOp::Unlink(p) => {
                    files.remove(p);
                }
                MetaOp::Rmdir(p) => {
                    dirs.remove(p);
                }
            }
        }
        // Bytes: what an fsync covered, then each later change kept, lost or torn.
        let contents: Vec<Vec<u8>> = self
            .data
            .iter()
            .zip(&self.syncs)
            .map(|(ops, syncs)| {
                let settled = syncs
                    .iter()
                    .filter(|(_, end)| *end < line)
                    .map(|(start, _)| *start)
                    .max()
                    .unwrap_or(0);
                let mut content = Vec::new();
                for (at, op) in ops.iter().filter(|(l, _)| *l < line) {
                    let keep = if *at < settled {
                        Some(usize::MAX)
                    } else {
                        match rng.random_range(0..3) {
                            0 => None,
                            1 => Some(usize::MAX),
                            _ => Some(512 * rng.random_range(0..8usize)),
                        }
                    };
                    let Some(keep) = keep else {
                        lost += 1;
                        continue;
                    };
                    match op {
                        DataOp::SetLen(n) => content.resize(*n as usize, 0),
                        DataOp::Write { at, bytes } => {
                            let bytes = &bytes[..keep.min(bytes.len())];
                            if bytes.is_empty() {
                                continue;
                            }
                            let end = *at as usize + bytes.len();
                            if content.len() < end {
                                content.resize(end, 0);
                            }
                            content[*at as usize..end].copy_from_slice(bytes);
                        }
                    }
                }
                content
            })
            .collect();
        let target =
            |p: &str| -> PathBuf { dest.join(p[self.root.len()..].trim_start_matches('/')) };
        for d in dirs.keys() {
            std::fs::create_dir_all(target(d))?;
        }
        for (p, inode) in &files {
            // A name whose directory the journal lost is lost with it.
            if !dirs.contains_key(&parent(p)) {
                continue;
            }
            std::fs::write(target(p), &contents[*inode])?;
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
1 mkdir(\"/d/u\", 0777) = 0
1 openat(AT_FDCWD</x>, \"/d/u/f\", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 9</d/u/f>
1 pwrite64(9</d/u/f>, \"ab\\x00c\", 4, 2) = 4
1 fdatasync(9</d/u/f>) = 0
1 pwrite64(9</d/u/f>, \"zz\", 2, 0) = 2
1 openat(AT_FDCWD</x>, \"/d/u\", O_RDONLY) = 10</d/u>
1 fsync(10</d/u>) = 0
1 openat(AT_FDCWD</x>, \"/d/u/j\", O_RDWR|O_CREAT|O_APPEND, 0666) = 11</d/u/j>
1 write(11</d/u/j>, \"one\", 3) = 3
1 write(11</d/u/j>, \"two\", 3) = 3
1 fsync(11</d/u/j>) = 0
2 writev(12<socket:[1]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\", iov_len=22}], 1) = 22
";

    #[test]
    fn a_synced_write_survives_and_an_unsynced_one_may_not() {
        let r = Replay::new(TRACE, "/d");
        assert_eq!(r.answers().len(), 1);
        assert_eq!(r.changes(), (4, 3));
        let mut zz_lost = false;
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            r.crash(usize::MAX, seed, dir.path()).unwrap();
            let f = std::fs::read(dir.path().join("u/f")).unwrap();
            assert_eq!(&f[2..6], b"ab\0c", "seed {seed}: the synced write");
            zz_lost |= &f[..2] != b"zz";
            // The journal's name was never synced: it may be gone, but never empty when
            // present (its bytes were synced).
            if let Ok(j) = std::fs::read(dir.path().join("u/j")) {
                assert_eq!(j, b"onetwo");
            }
        }
        assert!(zz_lost, "some seed loses the unsynced write");
        // Before any fsync, nothing is promised: some seed loses even the directory.
        let gone = (0..64).any(|seed| {
            let dir = tempfile::tempdir().unwrap();
            r.crash(3, seed, dir.path()).unwrap();
            !dir.path().join("u").exists()
        });
        assert!(gone);
    }

    #[test]
    fn strings_decode_escapes_and_see_cuts() {
        let s = strings(r#"9</a>, "a\x00\"\\\n\177", 6) = 6"#);
        assert_eq!(s, vec![(b"a\0\"\\\n\x7f".to_vec(), false)]);
        assert!(strings(r#"9</a>, "abc"..., 100"#)[0].1);
    }
}
