//! The README's demo, run as a test: it must keep working and say what it
//! claims. Needs root.

use std::process::Command;

use anyhow::{Context, Result, bail};

#[test]
fn the_demo_balances_real_traffic_and_cleans_up() -> Result<()> {
    let exe = std::env::current_exe()?;
    let demo = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("switchyard-demo"))
        .find(|p| p.is_file())
        .context("switchyard-demo not built (cargo xtask build)")?;
    let out = Command::new(&demo).output().context("running the demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "demo failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for backend in ["echo-a", "echo-b", "echo-c"] {
        assert!(
            stdout.contains("tcp request") && stdout.contains(backend),
            "{backend} never answered:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("reply source 10.96.0.10:53").count(),
        9,
        "{stdout}"
    );
    assert!(stdout.contains("connection refused"), "{stdout}");
    for header in ["SERVICE  ", "PROTO  CLIENT", "REASON  "] {
        assert!(
            stdout.contains(header),
            "inspect table {header:?} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("pinned maps removed"), "{stdout}");
    let pin = stdout
        .lines()
        .find_map(|l| l.split("maps pinned under ").nth(1))
        .context("pin dir not printed")?;
    assert!(
        !std::path::Path::new(pin.trim()).exists(),
        "pins left at {pin}"
    );
    Ok(())
}
