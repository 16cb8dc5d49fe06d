//! Kubernetes' sig-network e2e suite on the real cluster
//! (`cargo xtask conformance` runs it):
//!
//!   switchyard-conformance run [--proxy P] [--focus REGEX] [--procs N] [--nodes N] [--slow] [--disruptive] [--image-root DIR]
//!   switchyard-conformance report
//!
//! `run` writes docs/conformance/<proxy>/{report.json,junit.xml,e2e.log};
//! `report` writes docs/conformance.md from every proxy's report.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use switchyard_tests::conformance;
use switchyard_tests::realcluster::proxy::Proxy;

fn main() {
    if let Err(e) = run() {
        eprintln!("switchyard-conformance: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = root.join("docs");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .context("usage: switchyard-conformance run|report")?;
    match command.as_str() {
        "run" => {
            let mut proxy = Proxy::Switchyard;
            let mut selection = conformance::Selection::new(conformance::FOCUS);
            let mut image_root = root.join("target/image-root");
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--proxy" => proxy = it.next().context("--proxy NAME")?.parse()?,
                    "--focus" => selection.focus = it.next().context("--focus REGEX")?.clone(),
                    "--slow" => selection.slow = true,
                    "--disruptive" => selection.disruptive = true,
                    "--image-root" => image_root = it.next().context("--image-root DIR")?.into(),
                    "--nodes" => {
                        selection.nodes = it
                            .next()
                            .context("--nodes N")?
                            .parse()
                            .context("--nodes N")?
                    }
                    "--procs" => {
                        selection.procs = it
                            .next()
                            .context("--procs N")?
                            .parse()
                            .context("--procs N")?
                    }
                    other => bail!("unknown argument {other:?}"),
                }
            }
            let dir = conformance::run(proxy, &selection, &image_root, &docs)?;
            let cases = conformance::read_report(&dir.join("report.json"))?;
            let passed = cases.values().filter(|o| o.state == "passed").count();
            let failed: Vec<&String> = cases
                .iter()
                .filter(|(_, o)| o.state == "failed")
                .map(|(n, _)| n)
                .collect();
            println!(
                "{proxy}: {passed} passed, {} failed, {} cases",
                failed.len(),
                cases.len()
            );
            for name in failed {
                println!("  FAILED {name}");
            }
            Ok(())
        }
        "report" => {
            let path = conformance::write_table(&docs)?;
            println!("wrote {}", path.display());
            Ok(())
        }
        other => bail!("unknown command {other:?}"),
    }
}
