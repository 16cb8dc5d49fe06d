//! The real cluster's command line (`cargo xtask cluster …` runs it):
//!
//!   switchyard-cluster up [--nodes N] [--image-root DIR] [--proxy switchyard|kube-proxy-nftables|kube-proxy-iptables|none]
//!   switchyard-cluster down | status | kubeconfig
//!   switchyard-cluster kubectl ARGS… | helm ARGS…
//!   switchyard-cluster lb-provider   (the cluster's load-balancer daemon; `up` starts it)

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use switchyard_tests::realcluster::proxy::Proxy;
use switchyard_tests::realcluster::{self, UpOptions, layout};

fn main() {
    if let Err(e) = run() {
        eprintln!("switchyard-cluster: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .context("usage: switchyard-cluster up|down|status|kubeconfig|kubectl|helm")?;
    match command.as_str() {
        "up" => up(rest),
        "down" => realcluster::down(),
        "status" => {
            println!("{}", realcluster::status::report()?);
            Ok(())
        }
        "kubeconfig" => {
            println!("{}", layout::admin_kubeconfig().display());
            eprintln!(
                "the API server is at https://{}:{} inside the cluster's network; from this machine: ip netns exec {} kubectl --kubeconfig {} …",
                layout::control_plane_ip(),
                layout::APISERVER_PORT,
                layout::OUTSIDE_NS,
                layout::admin_kubeconfig().display()
            );
            Ok(())
        }
        "kubectl" => {
            print!(
                "{}",
                realcluster::kubectl(&rest.iter().map(String::as_str).collect::<Vec<_>>())?
            );
            Ok(())
        }
        "helm" => {
            print!(
                "{}",
                realcluster::helm(&rest.iter().map(String::as_str).collect::<Vec<_>>())?
            );
            Ok(())
        }
        "lb-provider" => realcluster::loadbalancer::serve(),
        other => bail!("unknown command {other:?}"),
    }
}

fn up(args: &[String]) -> Result<()> {
    let mut nodes = 2u8;
    let mut image_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image-root");
    let mut proxy = Proxy::Switchyard;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => {
                nodes = it
                    .next()
                    .context("--nodes N")?
                    .parse()
                    .context("--nodes N")?
            }
            "--image-root" => image_root = it.next().context("--image-root DIR")?.into(),
            "--proxy" => proxy = it.next().context("--proxy NAME")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    anyhow::ensure!(
        image_root.join("usr/bin/switchyard").is_file(),
        "{} has no usr/bin/switchyard: run `cargo xtask image-root` (or `cargo xtask cluster up`)",
        image_root.display()
    );
    realcluster::up(&UpOptions {
        nodes,
        image_root: &image_root,
        proxy,
    })?;
    println!("{}", realcluster::status::report()?);
    Ok(())
}
