//! The container image's content, built by the same step the Dockerfile
//! runs (`cargo xtask image-root`, which `cargo xtask test` runs first).
//! No image can be built here (no Docker engine): this checks the tree the
//! runtime stage copies, and that the Dockerfile still uses that step.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn image_tree_has_a_working_binary_and_a_bpf_object() -> Result<()> {
    let tree = root().join("target/image-root");
    let bin = tree.join("usr/bin/switchyard");
    let object = tree.join("usr/lib/switchyard/switchyard.bpf.o");
    if !bin.exists() {
        bail!(
            "{} missing: run the tests through `cargo xtask test`, which builds the image tree",
            bin.display()
        );
    }
    let out = Command::new(&bin).arg("--version").output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
    // The agent looks for the object at /usr/lib/switchyard when it is not
    // next to the binary: where the image puts it.
    let bytes = std::fs::read(&object).with_context(|| format!("{}", object.display()))?;
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF object");
    assert_eq!(bytes[18], 247, "e_machine is not EM_BPF");
    let help = Command::new(&bin)
        .args(["mount-bpffs", "--help"])
        .output()?;
    assert!(
        help.status.success(),
        "the chart's init container command exists"
    );
    Ok(())
}

#[test]
fn dockerfile_builds_with_the_tested_step() -> Result<()> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    assert!(dockerfile.contains("./scripts/bootstrap.sh"));
    assert!(dockerfile.contains("cargo xtask image-root --release --out /image-root"));
    assert!(dockerfile.contains("COPY --from=build /image-root/ /"));
    Ok(())
}
