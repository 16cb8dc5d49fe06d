//! The kind suite's checker (tests/kind/run.sh): runs the shared scenarios
//! (switchyard_tests::scenarios) against a real cluster. In-cluster requests
//! go through the client pod's agnhost `/dial` endpoint via the API server's
//! pod proxy; node-port requests go straight from this machine.
//!
//! kind-check --namespace NS --client POD --vip IP --nodes IP,... --backends POD,...

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use switchyard_tests::agnhost::{ClientPod, http_hostname, udp_hostname};
use switchyard_tests::scenarios::{Requester, check_affinity, check_spread};

fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl").args(args).output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Requests from this machine (outside the cluster).
struct Outside;

impl Requester for Outside {
    fn tcp(&self, to: SocketAddrV4) -> Result<String> {
        http_hostname(to, Duration::from_secs(3))
    }
    fn udp(&self, to: SocketAddrV4) -> Result<String> {
        udp_hostname(to, Duration::from_secs(3))
    }
}

fn arg(args: &[String], name: &str) -> Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .with_context(|| format!("missing {name}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let namespace = arg(&args, "--namespace")?;
    let client = ClientPod {
        namespace: namespace.clone(),
        pod: arg(&args, "--client")?,
        kubectl,
    };
    let vip: Ipv4Addr = arg(&args, "--vip")?.parse()?;
    let nodes: Vec<Ipv4Addr> = arg(&args, "--nodes")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let backends: BTreeSet<String> = arg(&args, "--backends")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();

    check_spread(
        &client,
        SocketAddrV4::new(vip, 80),
        SocketAddrV4::new(vip, 53),
        &backends,
    )?;
    println!("ClusterIP: every backend answers over TCP and UDP");
    for node in &nodes {
        check_spread(
            &Outside,
            SocketAddrV4::new(*node, 30080),
            SocketAddrV4::new(*node, 30053),
            &backends,
        )?;
        println!("NodePort through {node}: every backend answers");
    }
    kubectl(&[
        "-n",
        &namespace,
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ])?;
    let mut last = None;
    for _ in 0..30 {
        match check_affinity(&client, SocketAddrV4::new(vip, 80), &backends) {
            Ok(pinned) => {
                println!("ClientIP affinity: the client stays on {pinned}");
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("affinity never held")))
}
