//! Build script: names the git commit keygate is built from, for `keygate --version`, INFO and
//! the status page (bug reports need it). Built outside a git checkout (a source tarball), or
//! without git, the commit is simply absent.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Run again when the commit or the index moves, and when a source file changes (which may
    // make the tree dirty or clean again).
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        let git_dir = Path::new(&git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!(
                "cargo:rerun-if-changed={}",
                git_dir.join(head_ref).display()
            );
        }
        println!(
            "cargo:rerun-if-changed={}",
            git_dir.join("packed-refs").display()
        );
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    // Tracked files changed since that commit (untracked ones do not count, as in `git describe
    // --dirty`).
    let dirty = !commit.is_empty()
        && git(&[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .is_some_and(|s| !s.is_empty());
    let version = env!("CARGO_PKG_VERSION");
    let line = match (commit.is_empty(), dirty) {
        (true, _) => version.to_string(),
        (false, false) => format!("{version} (git {commit})"),
        (false, true) => format!("{version} (git {commit}, modified)"),
    };
    println!("cargo:rustc-env=KEYGATE_GIT_SHA1={commit}");
    println!("cargo:rustc-env=KEYGATE_GIT_DIRTY={}", u8::from(dirty));
    println!("cargo:rustc-env=KEYGATE_VERSION_LINE={line}");
}
