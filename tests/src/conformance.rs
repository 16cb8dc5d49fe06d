//! Kubernetes' own sig-network e2e tests (`e2e.test`, built from the
//! `k8s.io/kubernetes` module at the cluster's version) against the real
//! cluster, with Switchyard or the real kube-proxy as its service proxy;
//! one ginkgo JSON and JUnit report per proxy under `docs/conformance/`,
//! and `docs/conformance.md`: one row per case, one column per proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::apiserver::k8s_bin;
use crate::realcluster::layout::{OUTSIDE_NS, admin_kubeconfig};
use crate::realcluster::proxy::Proxy;
use crate::realcluster::{self, UpOptions};

/// What the issue asks to run: every sig-network case about services.
pub const FOCUS: &str = r"\[sig-network\].*(Services|Conntrack|Networking|EndpointSlice|Service endpoints latency|Traffic Distribution|Topology Hints|LoadBalancers)";

/// The `[Conformance]` cases of that focus (about 30, a minute or two in
/// parallel): the real-cluster suite runs them, so CI does.
pub const CONFORMANCE_FOCUS: &str = r"\[sig-network\].*(Services|Networking|EndpointSlice|Service endpoints latency).*\[Conformance\]";

/// Cases that cannot run on this cluster, each with the reason (shown in
/// docs/conformance.md).
pub const SKIPS: [(&str, &str); 7] = [
    (
        r"\[Disruptive\]",
        "restarts nodes or components over SSH, which this cluster has no provider for",
    ),
    (
        r"\[Slow\]",
        "minutes each (affinity timeouts, load-balancer lag timeouts, large scales); left out of the default run for time, run with --focus",
    ),
    (r"\[Flaky\]", "marked flaky upstream"),
    (
        r"IPv6|DualStack",
        "the cluster is IPv4-only (Switchyard is IPv4-only)",
    ),
    (
        r"\[Feature:Networking-(IPv4|DNS)\]",
        "needs Internet access from pods (8.8.8.8, a public DNS name); this machine has none",
    ),
    (
        r"\[Feature:Networking-Performance\]",
        "iperf2 throughput between pods: a benchmark of the pod network, not of the proxy (docs/benchmarks.md measures the proxy)",
    ),
    (
        r"\[Feature:SCTPConnectivity\]",
        "SCTP traffic: this machine's kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT), for any proxy",
    ),
];

/// Which cases run, and how.
#[derive(Clone, Debug)]
pub struct Selection {
    /// ginkgo focus regex.
    pub focus: String,
    /// Parallel ginkgo processes ([Serial] cases run alone at the end).
    pub procs: u32,
    /// Cluster nodes, each its own zone (Traffic Distribution needs three).
    pub nodes: u8,
    /// Run `[Slow]` cases too (skipped by default).
    pub slow: bool,
    /// Run `[Disruptive]` cases too (skipped by default).
    pub disruptive: bool,
}

impl Selection {
    pub fn new(focus: &str) -> Self {
        Self {
            focus: focus.into(),
            procs: 3,
            nodes: 2,
            slow: false,
            disruptive: false,
        }
    }

    pub fn skip_regex(&self) -> String {
        SKIPS
            .iter()
            .map(|(re, _)| *re)
            .filter(|re| !(self.slow && *re == r"\[Slow\]"))
            .filter(|re| !(self.disruptive && *re == r"\[Disruptive\]"))
            .collect::<Vec<_>>()
            .join("|")
    }

    fn is_full_run(&self) -> bool {
        self.focus == FOCUS && !self.slow && !self.disruptive
    }
}

/// Where a proxy's reports go.
pub fn report_dir(docs: &Path, proxy: Proxy) -> PathBuf {
    docs.join("conformance").join(proxy.to_string())
}

/// Brings the cluster up with `proxy` and `nodes` nodes (each its own
/// zone: the Traffic Distribution cases need three), runs e2e.test on it (`procs`
/// parallel ginkgo processes, as upstream CI; [Serial] cases alone at the
/// end), keeps the reports, brings it down.
pub fn run(proxy: Proxy, selection: &Selection, image_root: &Path, docs: &Path) -> Result<PathBuf> {
    let e2e = k8s_bin("e2e.test")?;
    realcluster::up(&UpOptions {
        nodes: selection.nodes,
        image_root,
        proxy,
    })?;
    let result = run_e2e(&e2e, proxy, selection, docs);
    let down = realcluster::down();
    let dir = result?;
    down?;
    Ok(dir)
}

fn run_e2e(e2e: &Path, proxy: Proxy, selection: &Selection, docs: &Path) -> Result<PathBuf> {
    let dir = report_dir(docs, proxy);
    std::fs::create_dir_all(&dir)?;
    let work = realcluster::layout::state_dir().join("e2e");
    let log_path = dir.join(if selection.is_full_run() {
        "e2e.log".to_string()
    } else {
        // Focused runs are kept side by side, by date and time.
        format!(
            "e2e-focused-{}.log",
            crate::command::run(&["date", "-u", "+%Y%m%dT%H%M"])?.trim()
        )
    });
    eprintln!(
        "conformance: running e2e.test for {proxy} (log {})",
        log_path.display()
    );
    let report = ginkgo(e2e, selection, &work, &log_path)?;
    keep_cases_that_ran(&report, &dir, !selection.is_full_run())?;
    // The log is kept, compressed (megabytes of framework output).
    crate::command::run(&["gzip", "-9", "-f", log_path.to_str().context("log path")?])?;
    Ok(dir)
}

/// Runs the cases matching `focus` (less [`SKIPS`]) on the cluster that is
/// up, from the outside client; returns each case that ran with its outcome.
/// `work` holds the raw report, `log` gets the framework's output.
pub fn run_on_cluster(
    selection: &Selection,
    work: &Path,
    log: &Path,
) -> Result<BTreeMap<String, Outcome>> {
    let report = ginkgo(&k8s_bin("e2e.test")?, selection, work, log)?;
    Ok(read_report(&report)?
        .into_iter()
        .filter(|(_, o)| o.state != "skipped" && o.state != "pending")
        .collect())
}

/// ginkgo running `e2e` in `procs` processes against the cluster, as
/// upstream CI does; returns the path of its JSON report.
fn ginkgo(e2e: &Path, selection: &Selection, work: &Path, log: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let report = work.join("report.json");
    let _ = std::fs::remove_file(&report);
    let out = std::fs::File::create(log)?;
    let started = Instant::now();
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{OUTSIDE_NS}"))
        .arg(k8s_bin("ginkgo")?)
        .arg(format!("--procs={}", selection.procs))
        .args(["--no-color", "-v", "--timeout=8h"])
        .arg(format!("--focus={}", selection.focus))
        .arg(format!("--skip={}", selection.skip_regex()))
        .arg(format!("--json-report={}", report.display()))
        .arg(e2e)
        .arg("--")
        .arg(format!("--kubeconfig={}", admin_kubeconfig().display()))
        .arg(format!("--kubectl-path={}", k8s_bin("kubectl")?.display()))
        .arg(format!("--num-nodes={}", selection.nodes))
        .args([
            "--provider=local",
            "--allowed-not-ready-nodes=0",
            "--minStartupPods=0",
            "--disable-log-dump",
            "--dump-logs-on-failure=false",
        ])
        .env("HOME", work)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("starting e2e.test")?;
    eprintln!(
        "conformance: e2e.test finished in {:.0} s ({status})",
        started.elapsed().as_secs_f64()
    );
    if !report.exists() {
        bail!("e2e.test wrote no report; see {}", log.display());
    }
    Ok(report)
}

/// ginkgo's report lists all ~7 000 specs of the binary; keep the ones that
/// ran (report.json) and write them as JUnit too (junit.xml).
/// A focused run (`merge`) replaces only its cases in the proxy's report.
fn keep_cases_that_ran(full: &Path, dir: &Path, merge: bool) -> Result<()> {
    let text = std::fs::read_to_string(full)?;
    let mut suites: serde_json::Value = serde_json::from_str(&text)?;
    for suite in suites.as_array_mut().into_iter().flatten() {
        if let Some(specs) = suite["SpecReports"].as_array_mut() {
            specs.retain(|s| s["LeafNodeType"] == "It" && s["State"] != "skipped");
            // What the table and a reader need; the full output is in the log.
            for spec in specs.iter_mut() {
                let mut slim = serde_json::Map::new();
                for key in [
                    "ContainerHierarchyTexts",
                    "LeafNodeType",
                    "LeafNodeText",
                    "LeafNodeLocation",
                    "LeafNodeLabels",
                    "State",
                    "StartTime",
                    "EndTime",
                    "RunTime",
                    "NumAttempts",
                    "ParallelProcess",
                ] {
                    slim.insert(key.into(), spec[key].clone());
                }
                slim.insert(
                    "Failure".into(),
                    serde_json::json!({
                        "Message": spec["Failure"]["Message"],
                        "Location": spec["Failure"]["Location"],
                    }),
                );
                *spec = serde_json::Value::Object(slim);
            }
        }
    }
    let previous = dir.join("report.json");
    if merge && previous.exists() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&previous)?)?;
        let id = |s: &serde_json::Value| {
            format!("{}{}", s["ContainerHierarchyTexts"], s["LeafNodeText"])
        };
        if let Some(specs) = suites
            .get_mut(0)
            .and_then(|s| s["SpecReports"].as_array_mut())
        {
            let rerun: std::collections::BTreeSet<String> = specs.iter().map(id).collect();
            let kept: Vec<serde_json::Value> = old
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|suite| suite["SpecReports"].as_array().cloned().unwrap_or_default())
                .filter(|s| !rerun.contains(&id(s)))
                .collect();
            specs.extend(kept);
        }
    }
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&suites)?)?;
    let cases = read_report(&dir.join("report.json"))?;
    std::fs::write(dir.join("junit.xml"), junit(&cases))?;
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn junit(cases: &BTreeMap<String, Outcome>) -> String {
    let failures = cases.values().filter(|o| o.state != "passed").count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"Kubernetes e2e suite\" tests=\"{}\" failures=\"{failures}\">\n",
        cases.len()
    );
    for (name, o) in cases {
        out.push_str(&format!(
            "    <testcase name=\"{}\" time=\"{:.1}\">",
            xml_escape(name),
            o.seconds
        ));
        if o.state != "passed" {
            out.push_str(&format!(
                "<failure type=\"{}\" message=\"{}\"/>",
                xml_escape(&o.state),
                xml_escape(&o.failure)
            ));
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// One case's outcome for one proxy.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub state: String,
    pub seconds: f64,
    pub failure: String,
}

/// `case name → outcome` from a ginkgo JSON report.
pub fn read_report(path: &Path) -> Result<BTreeMap<String, Outcome>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let suites: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut cases = BTreeMap::new();
    for suite in suites.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut name: Vec<String> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            name.push(
                spec["LeafNodeText"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            let failure = spec["Failure"]["Message"].as_str().unwrap_or_default();
            cases.insert(
                name.join(" ").trim().to_string(),
                Outcome {
                    state: spec["State"].as_str().unwrap_or("unknown").to_string(),
                    seconds: spec["RunTime"].as_f64().unwrap_or(0.0) / 1e9,
                    failure: failure
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .chars()
                        .take(160)
                        .collect(),
                },
            );
        }
    }
    Ok(cases)
}

const PROXIES: [&str; 3] = ["switchyard", "kube-proxy-nftables", "kube-proxy-iptables"];
const BEGIN: &str = "<!-- conformance table: written by `cargo xtask conformance report` -->";
const END: &str = "<!-- end of conformance table -->";

fn cell(outcome: Option<&Outcome>) -> String {
    match outcome {
        None => "—".into(),
        Some(o) if o.state == "passed" => format!("pass ({:.0} s)", o.seconds),
        Some(o) if o.state == "failed" || o.state == "timedout" || o.state == "panicked" => {
            format!(
                "**{}**: {}",
                o.state.to_uppercase(),
                o.failure.replace('|', "\\|")
            )
        }
        Some(o) => o.state.clone(),
    }
}

/// Writes the table between the markers of docs/conformance.md (text around
/// them is kept): one row per case that ran for any proxy.
pub fn write_table(docs: &Path) -> Result<PathBuf> {
    let mut reports = Vec::new();
    for proxy in PROXIES {
        let path = docs.join("conformance").join(proxy).join("report.json");
        reports.push(if path.exists() {
            Some(read_report(&path)?)
        } else {
            None
        });
    }
    let mut names: Vec<&String> = reports.iter().flatten().flat_map(|r| r.keys()).collect();
    names.sort();
    names.dedup();
    let mut table = format!(
        "{BEGIN}\n\n| case | {} |\n| --- |{}\n",
        PROXIES.join(" | "),
        " --- |".repeat(PROXIES.len())
    );
    let mut totals = vec![(0usize, 0usize); PROXIES.len()];
    for name in names {
        let ran = reports.iter().flatten().any(|r| {
            r.get(name)
                .is_some_and(|o| o.state != "skipped" && o.state != "pending")
        });
        if !ran {
            continue;
        }
        let cells: Vec<String> = reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let o = r.as_ref().and_then(|r| r.get(name));
                if let Some(o) = o {
                    totals[i].1 += 1;
                    if o.state == "passed" {
                        totals[i].0 += 1;
                    }
                }
                cell(o)
            })
            .collect();
        table.push_str(&format!(
            "| {} | {} |\n",
            name.replace('|', "\\|"),
            cells.join(" | ")
        ));
    }
    let totals: Vec<String> = totals
        .iter()
        .map(|(p, n)| format!("{p} of {n} passed"))
        .collect();
    table.push_str(&format!("| **total** | {} |\n\n{END}", totals.join(" | ")));
    let path = docs.join("conformance.md");
    let old = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| format!("# Conformance\n\n{BEGIN}\n{END}\n"));
    let (before, rest) = old
        .split_once(BEGIN)
        .context("no table marker in docs/conformance.md")?;
    let (_, after) = rest
        .split_once(END)
        .context("no end marker in docs/conformance.md")?;
    std::fs::write(&path, format!("{before}{table}{after}"))?;
    Ok(path)
}
