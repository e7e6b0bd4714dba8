//! Relative paths of uploads that came from a directory, kept as metadata
//! (`relative_path`, e.g. `photos/2024/a.jpg`) so that a download can recreate the tree.
//!
//! A relative path is data from a client, never trusted as a path: it is checked when an
//! upload is created (server) and again before a download writes it (CLI). The rules are
//! those of a path that can only name something *under* a directory: `/`-separated
//! segments, none empty, `.` or `..`, no leading `/`, no NUL or control characters, at most
//! [`MAX_RELATIVE_PATH_LEN`] bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Metadata key holding an upload's path relative to the directory it was uploaded from.
pub const RELATIVE_PATH_KEY: &str = "relative_path";

/// Longest relative path accepted, in bytes (as a metadata value).
pub const MAX_RELATIVE_PATH_LEN: usize = 4096;

/// Why a relative path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelativePathError {
    /// Nothing at all.
    #[error("relative_path must not be empty")]
    Empty,
    /// Longer than [`MAX_RELATIVE_PATH_LEN`].
    #[error("relative_path is longer than {MAX_RELATIVE_PATH_LEN} bytes")]
    TooLong,
    /// Starts with `/`.
    #[error("relative_path {0:?} must not be absolute")]
    Absolute(String),
    /// `a//b`, or a trailing `/`.
    #[error("relative_path {0:?} has an empty segment")]
    EmptySegment(String),
    /// A `.` or `..` segment.
    #[error("relative_path {0:?} must not contain `.` or `..` segments")]
    DotSegment(String),
    /// NUL or another control character.
    #[error("relative_path must not contain control characters")]
    Control,
}

/// Checks a relative path (see the module documentation for the rules).
pub fn validate(path: &str) -> Result<(), RelativePathError> {
    if path.is_empty() {
        return Err(RelativePathError::Empty);
    }
    if path.len() > MAX_RELATIVE_PATH_LEN {
        return Err(RelativePathError::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(RelativePathError::Control);
    }
    if path.starts_with('/') {
        return Err(RelativePathError::Absolute(path.into()));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(RelativePathError::EmptySegment(path.into())),
            "." | ".." => return Err(RelativePathError::DotSegment(path.into())),
            _ => {}
        }
    }
    Ok(())
}

/// Checks the `relative_path` of upload metadata, when it has one.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), RelativePathError> {
    metadata
        .get(RELATIVE_PATH_KEY)
        .map_or(Ok(()), |p| validate(p))
}

/// Where a relative path lands under `root`, after checking it: always strictly inside
/// `root` (the rules leave no way out). Symbolic links already on disk are the writer's
/// business.
pub fn join_under(root: &Path, path: &str) -> Result<PathBuf, RelativePathError> {
    validate(path)?;
    let mut out = root.to_path_buf();
    for segment in path.split('/') {
        out.push(segment);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in [
            "a",
            "a.bin",
            "tree/sub/b.bin",
            "..a/b..",
            ".hidden/x",
            "résumé — 履歴書/x.pdf",
            "with space/and\\backslash",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_ways_out_and_malformed_paths() {
        use RelativePathError::*;
        let cases = [
            ("", Empty),
            ("/etc/passwd", Absolute("/etc/passwd".into())),
            ("../x", DotSegment("../x".into())),
            ("a/../../x", DotSegment("a/../../x".into())),
            ("a/..", DotSegment("a/..".into())),
            ("./a", DotSegment("./a".into())),
            ("a//b", EmptySegment("a//b".into())),
            ("a/", EmptySegment("a/".into())),
            ("a\0b", Control),
            ("a\nb", Control),
        ];
        for (bad, want) in cases {
            assert_eq!(validate(bad), Err(want), "{bad:?}");
        }
        assert_eq!(validate(&"a".repeat(5000)), Err(TooLong));
    }

    #[test]
    fn metadata_and_join() {
        let mut m = BTreeMap::new();
        assert!(check_metadata(&m).is_ok());
        m.insert(RELATIVE_PATH_KEY.to_string(), "../up".to_string());
        assert!(check_metadata(&m).is_err());
        m.insert(RELATIVE_PATH_KEY.to_string(), "t/s/b.bin".to_string());
        assert!(check_metadata(&m).is_ok());
        let p = join_under(Path::new("/out"), "t/s/b.bin").unwrap();
        assert_eq!(p, PathBuf::from("/out/t/s/b.bin"));
        assert!(p.starts_with("/out"));
        assert!(join_under(Path::new("/out"), "/etc/x").is_err());
        assert!(join_under(Path::new("/out"), "a/../../x").is_err());
    }
}
