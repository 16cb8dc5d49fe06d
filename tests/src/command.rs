//! Running setup commands with errors that say what failed and why.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `argv`, failing with its stderr when it exits non-zero.
pub fn run(argv: &[&str]) -> Result<String> {
    let (program, args) = argv.split_first().context("empty command")?;
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` inside network namespace `ns`.
pub fn run_in(ns: &str, argv: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Sets a sysctl inside `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run_in(ns, &["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}
