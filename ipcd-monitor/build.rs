//! Puts the git commit the monitor is built from in `IPCD_COMMIT`, for
//! `ipcd bench`'s chart and results ("unknown" outside a git checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=IPCD_COMMIT={commit}{}", if dirty { "+changes" } else { "" });
    // Again when HEAD moves (a commit, a checkout); in a worktree the git
    // dir is .git/worktrees/NAME.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
