//! A real etcd and kube-apiserver for the controller and chart tests, with a
//! CA, serving and client certificates, service-account keys and an admin
//! kubeconfig generated per run. Binaries come from
//! `scripts/k8s-binaries.sh` (built from the published Go modules); a
//! missing binary is an error that says how to get it, never a skip.
//!
//! The servers run inside a network namespace: one of a test cluster (the
//! control-plane host on the underlay, reached by the agents over their
//! nodes' external interfaces), or one of their own with only loopback.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::command::run;
use crate::pki::{base64, issue, make_ca, make_service_account_keys};

pub const SECURE_PORT: u16 = 6443;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// The service CIDR of every test (cluster IPs 10.96.x.y).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Where scripts/k8s-binaries.sh put the binaries.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SWITCHYARD_K8S_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let env_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/k8s-bin.env");
    let text = std::fs::read_to_string(&env_file).with_context(|| {
        format!(
            "{} missing: run scripts/k8s-binaries.sh (scripts/bootstrap.sh does) to build kube-apiserver and etcd and fetch kubectl and helm",
            env_file.display()
        )
    })?;
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("SWITCHYARD_K8S_BIN_DIR="))
        .context("no SWITCHYARD_K8S_BIN_DIR in target/k8s-bin.env")?;
    Ok(PathBuf::from(dir.trim()))
}

/// A binary from [`k8s_bin_dir`], checked to exist.
pub fn k8s_bin(name: &str) -> Result<PathBuf> {
    let path = k8s_bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} missing: run scripts/k8s-binaries.sh to provision it",
            path.display()
        );
    }
    Ok(path)
}

/// A kubeconfig with everything embedded.
pub fn kubeconfig_text(server: &str, ca: &[u8], user: &str, credentials: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n{credentials}contexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n",
        base64(ca)
    )
}

/// A running etcd + kube-apiserver. Dropping it stops both (and removes its
/// own namespace, if it made one) and deletes the run's directory.
pub struct ApiServer {
    netns: String,
    owns_netns: bool,
    bind: Ipv4Addr,
    dir: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

/// The Services' range: [`SERVICE_CIDR`], unless a benchmark at a scale
/// beyond its 65 534 addresses sets `SWITCHYARD_TEST_SERVICE_CIDR`.
fn service_cidr() -> String {
    std::env::var("SWITCHYARD_TEST_SERVICE_CIDR").unwrap_or_else(|_| SERVICE_CIDR.into())
}

impl ApiServer {
    /// (name, pid) of etcd and kube-apiserver while they run.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [("etcd", &self.etcd), ("kube-apiserver", &self.apiserver)]
            .into_iter()
            .filter_map(|(name, child)| Some((name, child.as_ref()?.id())))
            .collect()
    }

    /// Starts both servers in `netns`, the API server on `bind`:6443.
    pub fn start_in(netns: &str, bind: Ipv4Addr) -> Result<Self> {
        Self::start(netns.to_string(), false, bind)
    }

    /// Starts both servers in a namespace of their own with only loopback.
    pub fn start_isolated() -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = format!(
            "sy{:x}g{:x}api",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &ns])?;
        if let Err(e) = run(&["ip", "-n", &ns, "link", "set", "lo", "up"]) {
            let _ = run(&["ip", "netns", "del", &ns]);
            return Err(e);
        }
        Self::start(ns, true, Ipv4Addr::LOCALHOST)
    }

    fn start(netns: String, owns_netns: bool, bind: Ipv4Addr) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("switchyard-apiserver-{netns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etcd"))?;
        // From here on Drop cleans up.
        let mut server = Self {
            netns,
            owns_netns,
            bind,
            dir,
            etcd: None,
            apiserver: None,
        };
        server.make_credentials()?;
        server.start_etcd()?;
        server.start_apiserver()?;
        Ok(server)
    }

    fn make_credentials(&self) -> Result<()> {
        let d = &self.dir;
        make_ca(d, "switchyard-test-ca", 3)?;
        let sans = format!(
            "IP:{},IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
            self.bind
        );
        issue(
            d,
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        issue(
            d,
            "admin",
            "/O=system:masters/CN=switchyard-test-admin",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )?;
        make_service_account_keys(d)?;
        let read = |f: &str| std::fs::read(d.join(f)).with_context(|| format!("reading {f}"));
        let credentials = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(&read("admin.crt")?),
            base64(&read("admin.key")?)
        );
        std::fs::write(
            self.kubeconfig(),
            kubeconfig_text(&self.url(), &read("ca.crt")?, "admin", &credentials),
        )?;
        Ok(())
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        let bin = k8s_bin(name)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: killed as a whole, never orphaned
            // into the next test.
            .process_group(0);
        // And killed with the test process if that dies without running
        // destructors (a signal, an abort): nsenter execs the server, which
        // keeps the death signal. (Tied to the spawning thread.)
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    fn start_etcd(&mut self) -> Result<()> {
        let client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let args: Vec<String> = [
            "--name=test".to_string(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=test={peer}"),
            "--log-level=warn".to_string(),
            // Test data: durability is not the point, speed is.
            "--unsafe-no-fsync".to_string(),
        ]
        .into();
        self.etcd = Some(self.spawn("etcd", &args)?);
        self.wait_for("etcd", Duration::from_secs(30), |s| {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", s.netns))
                .args(["curl", "-sf", &format!("{client}/health")])
                .output()?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("true"))
        })
    }

    /// Starts kube-apiserver (again, after [`ApiServer::stop_apiserver`]),
    /// with the same etcd data, and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("--bind-address={}", self.bind),
            format!("--advertise-address={}", self.bind),
            format!("--secure-port={SECURE_PORT}"),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-cluster-ip-range={}", service_cidr()),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        self.apiserver = Some(self.spawn("kube-apiserver", &args)?);
        self.wait_for("kube-apiserver", Duration::from_secs(90), |s| {
            Ok(s.kubectl(&["get", "--raw", "/readyz"])
                .map(|o| o.trim() == "ok")
                .unwrap_or(false))
        })
    }

    /// Stops kube-apiserver (SIGKILL: a crash, not a graceful shutdown);
    /// etcd and its data stay.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        if let Some(mut child) = self.apiserver.take() {
            kill_group(&mut child);
        }
        Ok(())
    }

    fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut exited = None;
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(c) = child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    exited = Some((name, status));
                }
            }
            if let Some((name, status)) = exited {
                bail!("{name} exited with {status}:\n{}", self.log_tail(name));
            }
            if ready(self)? {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "{what} not ready after {limit:?}:\n{}",
                    self.log_tail(if what == "etcd" {
                        "etcd"
                    } else {
                        "kube-apiserver"
                    })
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `https://<bind>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:{SECURE_PORT}", self.bind)
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The admin kubeconfig (system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Runs kubectl as admin in the servers' namespace; stdout, or an error
    /// with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_as(&self.kubeconfig(), args, None)
    }

    /// Runs kubectl with `kubeconfig`, feeding `stdin`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        use std::io::Write as _;
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(k8s_bin("kubectl")?)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_as(&self.kubeconfig(), &["apply", "-f", "-"], Some(yaml))
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API (what a pod of the ServiceAccount gets).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.kubectl(&["-n", namespace, "create", "token", name, "--duration=1h"])?;
        let ca = std::fs::read(self.dir.join("ca.crt"))?;
        let mut credentials = String::new();
        let _ = writeln!(credentials, "    token: {}", token.trim());
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig_text(
                &self.url(),
                &ca,
                &format!("{namespace}-{name}"),
                &credentials,
            ),
        )?;
        Ok(path)
    }
}

/// `2026-11-24T15:04:05.123456789Z`, the format of
/// `endpoints.kubernetes.io/last-change-trigger-time`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

fn kill_group(child: &mut Child) {
    // SAFETY: signalling a process group we created.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [self.apiserver.as_mut(), self.etcd.as_mut()]
            .into_iter()
            .flatten()
        {
            kill_group(child);
        }
        if self.owns_netns {
            let _ = run(&["ip", "netns", "del", &self.netns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes EndpointSlices through a long-lived API client (no process start
/// per write), stamping each with `endpoints.kubernetes.io/last-change-trigger-time`
/// the moment before the request: the agent's propagation delay then
/// measures API write → maps, nothing else.
pub struct SliceWriter {
    requests: std::sync::mpsc::Sender<(String, std::sync::mpsc::Sender<Result<()>>)>,
}

/// Placeholder in a slice's YAML for the trigger time.
pub const TRIGGER_TIME_PLACEHOLDER: &str = "__TRIGGER_TIME__";

impl ApiServer {
    /// A Node object for every node of `cluster`, with its underlay address
    /// as InternalIP (what agents and kube-proxy read their node ports from).
    pub fn register_nodes(&self, cluster: &crate::cluster::MultiNode) -> Result<()> {
        for node in &cluster.nodes {
            self.apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nstatus:\n  addresses: [{{type: InternalIP, address: \"{}\"}}]\n",
                node.name(),
                node.ip()
            ))?;
        }
        Ok(())
    }

    /// A [`SliceWriter`] running in the servers' namespace.
    pub fn slice_writer(&self) -> Result<SliceWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<(String, std::sync::mpsc::Sender<Result<()>>)>();
        let kubeconfig = self.kubeconfig();
        let netns = self.netns.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        std::thread::spawn(move || {
            // Sockets belong to the namespace of the thread that makes them.
            if let Err(e) = crate::client::enter_netns(&netns) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let client = async {
                    let file = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                    let config = kube::Config::from_custom_kubeconfig(
                        file,
                        &kube::config::KubeConfigOptions::default(),
                    )
                    .await?;
                    anyhow::Ok(kube::Client::try_from(config)?)
                }
                .await;
                let client = match client {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok((yaml, reply)) = rx.recv() {
                    let result = async {
                        let stamped = yaml
                            .replace(TRIGGER_TIME_PLACEHOLDER, &rfc3339_nanos(SystemTime::now()));
                        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                            serde_yaml::from_str(&stamped).context("parsing the slice")?;
                        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
                        let name = slice.metadata.name.clone().unwrap_or_default();
                        let api: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                            kube::Api::namespaced(client.clone(), &namespace);
                        api.patch(
                            &name,
                            &kube::api::PatchParams::apply("switchyard-tests").force(),
                            &kube::api::Patch::Apply(&slice),
                        )
                        .await
                        .with_context(|| format!("applying EndpointSlice {namespace}/{name}"))?;
                        anyhow::Ok(())
                    }
                    .await;
                    let _ = reply.send(result);
                }
            });
        });
        ready_rx.recv().context("the API writer thread died")??;
        Ok(SliceWriter { requests: tx })
    }
}

impl SliceWriter {
    /// Server-side applies the EndpointSlice in `yaml` (with
    /// [`TRIGGER_TIME_PLACEHOLDER`] replaced by the current time) and
    /// returns when the API server has accepted it.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        self.requests
            .send((yaml.to_string(), reply_tx))
            .context("the API writer thread is gone")?;
        reply_rx.recv().context("the API writer thread is gone")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_532_645, 7);
        assert_eq!(rfc3339_nanos(t), "2026-11-24T15:04:05.000000007Z");
        assert_eq!(
            rfc3339_nanos(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
