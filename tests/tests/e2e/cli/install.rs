//! Packaging: `make install` puts both binaries, the man pages and the completions under
//! `$(DESTDIR)$(PREFIX)`, here a temporary root, and what it installed runs.

use std::process::Command;

/// `make install-files` (the install step of `make install`, from the binaries this test
/// run uses) into a temporary root: both binaries answer `--version`, and the man pages and
/// completion scripts are there.
#[test]
fn make_install_into_a_temporary_root() {
    let root = tempfile::tempdir().unwrap();
    let bin_dir = tests::bin_path("uploader").parent().unwrap().to_path_buf();
    let out = Command::new("make")
        .arg("-C")
        .arg(tests::webclients::repo_root())
        .arg("--no-print-directory")
        .arg("install-files")
        .arg(format!("BIN_DIR={}", bin_dir.display()))
        .arg(format!("DESTDIR={}", root.path().display()))
        .arg("PREFIX=/usr")
        .output()
        .expect("make (is it installed?)");
    assert!(
        out.status.success(),
        "make install-files failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let usr = root.path().join("usr");
    for (bin, name) in [("uploader", "uploader"), ("upload-server", "upload-server")] {
        let out = Command::new(usr.join("bin").join(bin))
            .arg("--version")
            .output()
            .expect("run the installed binary");
        assert!(out.status.success(), "{bin} --version: {out:?}");
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(
            v.starts_with(&format!("{name} "))
                && v.trim().split(' ').nth(1).is_some_and(|v| v.contains('.')),
            "{bin} --version printed {v:?}"
        );
    }
    for f in [
        "share/man/man1/uploader.1",
        "share/man/man1/uploader-upload.1",
        "share/man/man1/uploader-download.1",
        "share/bash-completion/completions/uploader",
        "share/zsh/site-functions/_uploader",
        "share/fish/vendor_completions.d/uploader.fish",
    ] {
        let len = std::fs::metadata(usr.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f} is missing or empty");
    }
    let page = std::fs::read_to_string(usr.join("share/man/man1/uploader-upload.1")).unwrap();
    assert!(
        page.contains("transfers") && page.contains("give"),
        "{page}"
    );
}
