//! Build and test orchestration: `cargo xtask <command>`.
//!
//! The BPF object is built for `bpfel-unknown-none` with one of two
//! toolchain routes (see scripts/bootstrap.sh) and copied next to the
//! `switchyard` binary, where the agent looks for it.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Switchyard build and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the BPF object (target/<profile>/switchyard.bpf.o).
    BuildEbpf(EbpfArgs),
    /// Build the BPF object, the switchyard binary and the test helpers.
    Build(BuildArgs),
    /// Build everything and run every test: unit, BPF_PROG_TEST_RUN packet
    /// tests and namespace integration tests (needs root).
    Test(TestArgs),
    /// Run the standalone demo: agent + pods in network namespaces.
    Demo(BuildArgs),
    /// cargo fmt --check and clippy -D warnings on every crate, BPF included.
    Lint(EbpfArgs),
    /// Run a benchmark (release build) and print its Markdown tables:
    /// `compare` (Switchyard against the real kube-proxy, nftables and
    /// iptables: ClusterIP, NodePort, control plane at 1 to 10 000
    /// services), `datapath` (per-packet cost with BPF_PROG_TEST_RUN at 1 to
    /// 100 000 services), `nodeport` (XDP vs tc), `nodeport-soak` (10
    /// million NodePort connections through native XDP, failures counted),
    /// `controlplane` (10 000 services, 100 000 endpoints; `--services N
    /// --endpoints-per-service M`), `clusterip`
    /// (vs the pod IP), `sweep` (conntrack sweeps vs endpoint changes),
    /// `snat` (SNAT port allocation under load), `schedulers` (random,
    /// Maglev, round robin and least connection with one slow backend),
    /// `policy` (NetworkPolicy per packet and per change).
    Bench(BenchArgs),
    /// The churn soak with faults (tests/tests/soak.rs) for five minutes,
    /// or `--seconds N`.
    Soak(SoakArgs),
    /// Assemble the container image's file tree (what the Dockerfile's
    /// runtime stage copies): /usr/bin/switchyard,
    /// /usr/lib/switchyard/switchyard.bpf.o.
    ImageRoot(ImageRootArgs),
    /// A real Kubernetes cluster on this machine (kubelets, containerd, pods,
    /// CoreDNS, Switchyard installed with helm; no kube-proxy):
    /// `up [--nodes N] [--proxy switchyard|kube-proxy-nftables|kube-proxy-iptables|none]`,
    /// `down`, `status`, `kubeconfig`,
    /// `kubectl ARGS…`, `helm ARGS…`.
    Cluster(ClusterArgs),
    /// Kubernetes' own sig-network e2e tests on the real cluster:
    /// `run [--proxy switchyard|kube-proxy-nftables|kube-proxy-iptables]
    /// [--focus REGEX]` (reports in docs/conformance/), `report` (writes
    /// docs/conformance.md).
    Conformance(ClusterArgs),
}

#[derive(clap::Args, Clone)]
struct ClusterArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// up | down | status | kubeconfig | kubectl | helm, then its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    #[command(flatten)]
    ebpf: EbpfArgs,
    #[arg(value_parser = [
        "compare",
        "nodeport",
        "nodeport-soak",
        "datapath",
        "controlplane",
        "clusterip",
        "sweep",
        "snat",
        "schedulers",
        "policy",
    ])]
    which: String,
    /// Passed to the benchmark (e.g. `controlplane --services 100000
    /// --endpoints-per-service 10`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(clap::Args, Clone)]
struct SoakArgs {
    #[command(flatten)]
    build: BuildArgs,
    #[arg(long, default_value = "300")]
    seconds: u64,
}

#[derive(clap::Args, Clone)]
struct ImageRootArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Where to put the tree (default target/image-root).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Route {
    Auto,
    /// rustup nightly + rust-src, -Z build-std=core.
    Nightly,
    /// Debian rustc-web + libstd-rust-web-dev-bpf, RUSTC_BOOTSTRAP=1.
    RustcWeb,
}

#[derive(clap::Args, Clone)]
struct EbpfArgs {
    #[arg(long, value_enum, default_value = "auto", env = "SWITCHYARD_BPF_ROUTE")]
    route: Route,
}

#[derive(clap::Args, Clone)]
struct BuildArgs {
    #[command(flatten)]
    ebpf: EbpfArgs,
    #[arg(long)]
    release: bool,
}

#[derive(clap::Args, Clone)]
struct TestArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::BuildEbpf(a) => build_ebpf(a.route, "debug").map(|_| ()),
        Task::Build(a) => build(&a),
        Task::Test(a) => test(&a),
        Task::Demo(a) => demo(&a),
        Task::Lint(a) => lint(a.route),
        Task::ImageRoot(a) => image_root(&a),
        Task::Bench(a) => bench(&a),
        Task::Soak(a) => soak(&a),
        Task::Cluster(a) => cluster(&a),
        Task::Conformance(a) => conformance(&a),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Picks the toolchain route: the one bootstrap recorded, else whichever works.
fn resolve_route(route: Route) -> Result<Route> {
    if route != Route::Auto {
        return Ok(route);
    }
    let recorded = std::fs::read_to_string(workspace_root().join("target/bpf-toolchain.env"))
        .unwrap_or_default();
    if recorded.contains("SWITCHYARD_BPF_ROUTE=rustc-web") {
        return Ok(Route::RustcWeb);
    }
    let nightly_has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if nightly_has_src {
        return Ok(Route::Nightly);
    }
    if Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists() {
        return Ok(Route::RustcWeb);
    }
    bail!("no eBPF toolchain found: run scripts/bootstrap.sh first")
}

fn ebpf_command(route: Route) -> Result<Command> {
    let root = workspace_root();
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        // Emit BTF so the kernel (and bpftool) know the map field names.
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut cmd = match route {
        Route::Nightly => {
            let mut c = Command::new("cargo");
            c.args(["+nightly", "build", "-Z", "build-std=core"]);
            c
        }
        Route::RustcWeb => {
            if !succeeds(Command::new("/usr/bin/rustc").arg("--version")) {
                bail!("route rustc-web: /usr/bin/rustc missing (apt-get install rustc-web)");
            }
            let mut c = Command::new("/usr/bin/cargo");
            c.arg("build")
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1");
            c
        }
        Route::Auto => unreachable!("resolved before"),
    };
    cmd.current_dir(root.join("lb-ebpf"))
        .args([
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
        ])
        .arg(root.join("target/bpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN");
    Ok(cmd)
}

/// Builds the BPF object and copies it to target/<profile>/switchyard.bpf.o.
fn build_ebpf(route: Route, profile: &str) -> Result<PathBuf> {
    let route = resolve_route(route)?;
    eprintln!("xtask: building the BPF object with the {route:?} route");
    run(&mut ebpf_command(route)?)?;
    let root = workspace_root();
    let built = root.join("target/bpf/bpfel-unknown-none/release/switchyard");
    let dest_dir = root.join("target").join(profile);
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("switchyard.bpf.o");
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    eprintln!("xtask: BPF object at {}", dest.display());
    Ok(dest)
}

fn profile(release: bool) -> &'static str {
    if release { "release" } else { "debug" }
}

fn build(a: &BuildArgs) -> Result<()> {
    build_ebpf(a.ebpf.route, profile(a.release))?;
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root()).args([
        "build",
        "--bins",
        "-p",
        "lb-userspace",
        "-p",
        "switchyard-tests",
    ]);
    if a.release {
        c.arg("--release");
    }
    run(&mut c)
}

fn bench(a: &BenchArgs) -> Result<()> {
    build(&BuildArgs {
        ebpf: a.ebpf.clone(),
        release: true,
    })?;
    if a.which == "compare" {
        // The contender: the real kube-proxy, and the tools its modes use.
        run(Command::new("bash")
            .current_dir(workspace_root())
            .args(["scripts/k8s-binaries.sh", "--with-kube-proxy"]))?;
        if !Path::new("/usr/sbin/nft").exists() || !Path::new("/usr/sbin/iptables").exists() {
            run(Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "nftables", "iptables", "conntrack"]))?;
        }
    }
    if ["datapath", "sweep", "snat", "policy"].contains(&a.which.as_str()) {
        return run(Command::new("cargo").current_dir(workspace_root()).args([
            "bench",
            "-p",
            "lb-userspace",
            "--bench",
            &a.which,
        ]));
    }
    let bin = workspace_root()
        .join("target/release")
        .join(format!("{}-bench", a.which));
    run(Command::new(bin).args(&a.args))
}

fn soak(a: &SoakArgs) -> Result<()> {
    build(&a.build)?;
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root())
        .args(["test", "-p", "switchyard-tests", "--test", "soak"])
        .env("SWITCHYARD_SOAK_SECONDS", a.seconds.to_string());
    if a.build.release {
        c.arg("--release");
    }
    c.args(["--", "--nocapture"]);
    run(&mut c)
}

fn image_root(a: &ImageRootArgs) -> Result<()> {
    let root = workspace_root();
    let object = build_ebpf(a.build.ebpf.route, profile(a.build.release))?;
    let mut c = Command::new("cargo");
    c.current_dir(&root)
        .args(["build", "--bin", "switchyard", "-p", "lb-userspace"]);
    if a.build.release {
        c.arg("--release");
    }
    run(&mut c)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/image-root"));
    let bin = root
        .join("target")
        .join(profile(a.build.release))
        .join("switchyard");
    for (from, to) in [
        (bin, out.join("usr/bin/switchyard")),
        (object, out.join("usr/lib/switchyard/switchyard.bpf.o")),
    ] {
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    eprintln!("xtask: image tree at {}", out.display());
    Ok(())
}

fn cluster(a: &ClusterArgs) -> Result<()> {
    cluster_tool(a, "switchyard-cluster", "up", &[])
}

fn conformance(a: &ClusterArgs) -> Result<()> {
    cluster_tool(a, "switchyard-conformance", "run", &["--with-e2e"])
}

/// Runs one of the real-cluster tools (a binary of the tests crate) with
/// `a.args`; before `starting` (the command that brings a cluster up) the
/// Kubernetes binaries (`k8s_flags`) and the agent's image tree are made.
fn cluster_tool(a: &ClusterArgs, tool: &str, starting: &str, k8s_flags: &[&str]) -> Result<()> {
    let root = workspace_root();
    if a.args.first().map(String::as_str) == Some(starting) {
        run(Command::new("bash")
            .current_dir(&root)
            .arg("scripts/k8s-binaries.sh")
            .args(k8s_flags))?;
        image_root(&ImageRootArgs {
            build: a.build.clone(),
            out: None,
        })?;
    }
    let mut c = Command::new("cargo");
    c.current_dir(&root)
        .args(["build", "-p", "switchyard-tests", "--bin", tool]);
    if a.build.release {
        c.arg("--release");
    }
    run(&mut c)?;
    let bin = root
        .join("target")
        .join(profile(a.build.release))
        .join(tool);
    run(Command::new(bin).args(&a.args))
}

fn test(a: &TestArgs) -> Result<()> {
    build(&a.build)?;
    // The image's build steps run here too (tests/tests/image.rs checks the
    // tree), since no image can be built on machines without Docker.
    image_root(&ImageRootArgs {
        build: a.build.clone(),
        out: None,
    })?;
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root())
        .args(["test", "--workspace"]);
    if a.build.release {
        c.arg("--release");
    }
    c.args(&a.cargo_args);
    run(&mut c)
}

fn demo(a: &BuildArgs) -> Result<()> {
    build(a)?;
    let bin = workspace_root()
        .join("target")
        .join(profile(a.release))
        .join("switchyard-demo");
    run(&mut Command::new(bin))
}

fn lint(route: Route) -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo")
        .current_dir(root.join("lb-ebpf"))
        .args(["fmt", "--", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let route = resolve_route(route)?;
    if route == Route::Nightly {
        let mut c = ebpf_command(route)?;
        // Same build, through clippy.
        let args: Vec<_> = c.get_args().map(|s| s.to_owned()).collect();
        let mut clippy = Command::new("cargo");
        clippy.current_dir(root.join("lb-ebpf"));
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => clippy.env(k, v),
                None => clippy.env_remove(k),
            };
        }
        clippy.arg("+nightly").arg("clippy");
        clippy.args(args.iter().skip(2)); // drop "+nightly build"
        clippy.args(["--", "-D", "warnings"]);
        c = clippy;
        run(&mut c)?;
    }
    Ok(())
}
