//! Container images built on this machine, never pulled: the pause
//! container, agnhost (the upstream e2e test server), the e2e busybox and
//! conntrack boom server, CoreDNS and the
//! Switchyard agent (the Dockerfile's runtime stage: a Debian bookworm root
//! from debootstrap with bpftool and iproute2, plus `cargo xtask
//! image-root`). Each is written as a docker-archive tarball and imported
//! into every node's containerd.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::layout::state_dir;
use super::node::{PAUSE_IMAGE, ctr};
use crate::apiserver::k8s_bin;
use crate::command::run;

/// The tag the v1.34 e2e framework expects (test/utils/image/manifest.go).
pub const AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";
/// What kubeadm v1.34 deploys.
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.1";
/// The chart's values point here (image.repository / image.tag).
pub const SWITCHYARD_REPOSITORY: &str = "switchyard.local/switchyard";
pub const SWITCHYARD_TAG: &str = "dev";

/// The boom server of the upstream conntrack case (out-of-window segments).
pub const BOOM_SERVER_IMAGE: &str = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.2";
/// The busybox the v1.34 e2e framework expects.
pub const BUSYBOX_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1";

/// Debian packages of the agent image, as in the Dockerfile.
const AGENT_PACKAGES: &str = "bpftool,iproute2,ca-certificates";
/// What the upstream tests run inside agnhost pods besides agnhost (its
/// image is Alpine with these): curl, wget, nc with -u/-w/-p, ip, ping,
/// nslookup/dig, ps, ss.
const AGNHOST_PACKAGES: &str =
    "curl,wget,netcat-openbsd,iproute2,iputils-ping,dnsutils,procps,ca-certificates";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

struct ImageSpec {
    tag: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    root: PathBuf,
}

/// Builds every image into `<state>/images/*.tar`; `image_root` is the tree
/// `cargo xtask image-root` made.
pub fn build_all(image_root: &Path) -> Result<Vec<PathBuf>> {
    let work = state_dir().join("images");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let specs = [
        pause(&work)?,
        agnhost(&work)?,
        busybox(&work)?,
        boom_server(&work)?,
        coredns(&work)?,
        switchyard(&work, image_root)?,
    ];
    let mut tars = Vec::new();
    for spec in &specs {
        tars.push(write_archive(&work, spec).with_context(|| format!("building {}", spec.tag))?);
        std::fs::remove_dir_all(&spec.root)?;
    }
    Ok(tars)
}

pub fn import(node: u8, tars: &[PathBuf]) -> Result<()> {
    for tar in tars {
        ctr(
            node,
            &["images", "import", tar.to_str().context("tar path")?],
        )
        .with_context(|| format!("importing {} on node {node}", tar.display()))?;
    }
    Ok(())
}

fn pause(work: &Path) -> Result<ImageSpec> {
    let root = work.join("pause-root");
    std::fs::create_dir_all(&root)?;
    let src = work.join("pause.c");
    std::fs::write(&src, PAUSE_C)?;
    run(&[
        "gcc",
        "-static",
        "-Os",
        "-s",
        "-o",
        path(&root.join("pause"))?,
        path(&src)?,
    ])
    .context("compiling the pause container (apt-get install build-essential)")?;
    Ok(ImageSpec {
        tag: PAUSE_IMAGE.into(),
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
        root,
    })
}

/// Sleeps until told to stop, and reaps orphans: a pod's infra container.
const PAUSE_C: &str = r#"#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"#;

/// A busybox userland (sh, nc, …): agnhost's tests exec shell commands.
fn busybox_root(root: &Path) -> Result<()> {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for dir in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    let applets = run(&["/bin/busybox", "--list"])?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

fn agnhost(work: &Path) -> Result<ImageSpec> {
    let root = work.join("agnhost-root");
    std::fs::create_dir_all(&root)?;
    let base = debian_base(AGNHOST_PACKAGES)?;
    run(&["tar", "-xpf", path(&base)?, "-C", path(&root)?])?;
    std::fs::copy(k8s_bin("agnhost")?, root.join("agnhost"))?;
    Ok(ImageSpec {
        tag: AGNHOST_IMAGE.into(),
        entrypoint: vec!["/agnhost".into()],
        cmd: vec!["pause".into()],
        root,
    })
}

fn busybox(work: &Path) -> Result<ImageSpec> {
    let root = work.join("busybox-root");
    busybox_root(&root)?;
    Ok(ImageSpec {
        tag: BUSYBOX_IMAGE.into(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        root,
    })
}

fn boom_server(work: &Path) -> Result<ImageSpec> {
    let root = work.join("boom-root");
    busybox_root(&root)?;
    std::fs::copy(
        k8s_bin("regression-issue-74839")?,
        root.join("regression-issue-74839"),
    )?;
    Ok(ImageSpec {
        tag: BOOM_SERVER_IMAGE.into(),
        entrypoint: vec!["/regression-issue-74839".into()],
        cmd: vec![],
        root,
    })
}

fn coredns(work: &Path) -> Result<ImageSpec> {
    let root = work.join("coredns-root");
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(k8s_bin("coredns")?, root.join("coredns"))?;
    Ok(ImageSpec {
        tag: COREDNS_IMAGE.into(),
        entrypoint: vec!["/coredns".into()],
        cmd: vec![],
        root,
    })
}

fn switchyard(work: &Path, image_root: &Path) -> Result<ImageSpec> {
    let root = work.join("switchyard-root");
    std::fs::create_dir_all(&root)?;
    let base = debian_base(AGENT_PACKAGES)?;
    run(&["tar", "-xpf", path(&base)?, "-C", path(&root)?])?;
    run(&[
        "cp",
        "-a",
        &format!("{}/.", path(image_root)?),
        path(&root)?,
    ])?;
    Ok(ImageSpec {
        tag: format!("{SWITCHYARD_REPOSITORY}:{SWITCHYARD_TAG}"),
        entrypoint: vec!["/usr/bin/switchyard".into()],
        cmd: vec!["agent".into()],
        root,
    })
}

/// A Debian bookworm root with `packages` (the agent's: the Dockerfile's
/// runtime base), made once with debootstrap and cached as a tarball.
fn debian_base(packages: &str) -> Result<PathBuf> {
    let cache = dirs_cache().join("images");
    std::fs::create_dir_all(&cache)?;
    let tar = cache.join(format!(
        "bookworm-minbase-{}.tar",
        packages.replace(',', "-")
    ));
    if tar.exists() {
        return Ok(tar);
    }
    let root = cache.join("bookworm-root.tmp");
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("cluster: debootstrap of a Debian root with {packages} (a few minutes, once)");
    run(&[
        "debootstrap",
        "--variant=minbase",
        &format!("--include={packages}"),
        "bookworm",
        path(&root)?,
        DEBIAN_MIRROR,
    ])
    .context("debootstrap (apt-get install debootstrap)")?;
    // What the Dockerfile's `rm -rf /var/lib/apt/lists/*` drops, and caches.
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let _ = std::fs::remove_dir_all(root.join(dir));
    }
    let partial = tar.with_extension("partial");
    run(&[
        "tar",
        "--numeric-owner",
        "-cpf",
        path(&partial)?,
        "-C",
        path(&root)?,
        ".",
    ])?;
    std::fs::rename(&partial, &tar)?;
    std::fs::remove_dir_all(&root)?;
    Ok(tar)
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("SWITCHYARD_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("switchyard")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/switchyard")
        })
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

fn sha256_of(file: &Path) -> Result<String> {
    let out = run(&["sha256sum", path(file)?])?;
    out.split_whitespace()
        .next()
        .map(String::from)
        .context("sha256sum printed nothing")
}

/// One-layer docker-archive (what `docker save` writes), which
/// `ctr images import` takes.
fn write_archive(work: &Path, spec: &ImageSpec) -> Result<PathBuf> {
    let name = spec.tag.replace(['/', ':'], "_");
    let dir = work.join(format!("{name}.d"));
    std::fs::create_dir_all(&dir)?;
    let layer = dir.join("layer.tar");
    run(&[
        "tar",
        "--numeric-owner",
        "-cf",
        path(&layer)?,
        "-C",
        path(&spec.root)?,
        ".",
    ])?;
    let diff_id = sha256_of(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created_by": "switchyard realcluster::images"}],
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [spec.tag],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let tar = work.join(format!("{name}.tar"));
    let status = Command::new("tar")
        .args([
            "-cf",
            path(&tar)?,
            "-C",
            path(&dir)?,
            "manifest.json",
            "config.json",
            "layer.tar",
        ])
        .status()?;
    if !status.success() {
        bail!("tar of {} failed", spec.tag);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(tar)
}
