//! The cluster's PKI: a CA, the API server's serving certificate, client
//! certificates for the admin, the controller manager, the scheduler, the
//! API server's kubelet client and each node's kubelet
//! (`system:node:<name>`), the service-account key pair, and a kubeconfig
//! for each client.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::layout::{APISERVER_PORT, control_plane_ip, node_name, state_dir};
use crate::apiserver::kubeconfig_text;
use crate::pki::{base64, issue, make_ca, make_service_account_keys};

const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The PKI of a cluster already made.
    pub fn existing() -> Self {
        Self {
            dir: state_dir().join("pki"),
        }
    }

    pub fn create(nodes: u8) -> Result<Self> {
        let pki = Self::existing();
        std::fs::create_dir_all(&pki.dir)?;
        pki.make_ca()?;
        pki.make_server_cert()?;
        for (name, subject) in [
            ("admin", "/O=system:masters/CN=kubernetes-admin"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
            (
                "apiserver-kubelet-client",
                "/O=system:masters/CN=kube-apiserver-kubelet-client",
            ),
            // Bound to system:node-proxier by the default RBAC policy.
            ("kube-proxy", "/CN=system:kube-proxy"),
        ] {
            pki.client(name, subject)?;
        }
        for n in 1..=nodes {
            let node = node_name(n);
            pki.client(&node, &format!("/O=system:nodes/CN=system:node:{node}"))?;
        }
        make_service_account_keys(&pki.dir)?;
        Ok(pki)
    }

    fn make_ca(&self) -> Result<()> {
        make_ca(&self.dir, "switchyard-cluster-ca", 30)
    }

    fn make_server_cert(&self) -> Result<()> {
        let sans = format!(
            "IP:{},IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
            control_plane_ip()
        );
        issue(
            &self.dir,
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
    }

    /// A client certificate and a kubeconfig `<name>.kubeconfig` with it.
    fn client(&self, name: &str, subject: &str) -> Result<()> {
        issue(&self.dir, name, subject, CLIENT_EXT)?;
        let read =
            |f: String| std::fs::read(self.dir.join(&f)).with_context(|| format!("reading {f}"));
        let credentials = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(&read(format!("{name}.crt"))?),
            base64(&read(format!("{name}.key"))?)
        );
        let server = format!("https://{}:{APISERVER_PORT}", control_plane_ip());
        std::fs::write(
            self.dir.join(format!("{name}.kubeconfig")),
            kubeconfig_text(&server, &read("ca.crt".into())?, name, &credentials),
        )?;
        Ok(())
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.crt")
    }

    pub fn kubeconfig(&self, client: &str) -> PathBuf {
        self.path(&format!("{client}.kubeconfig"))
    }

    pub fn node_kubeconfig(&self, n: u8) -> Result<PathBuf> {
        let path = self.kubeconfig(&node_name(n));
        anyhow::ensure!(
            path.exists(),
            "{} missing: the cluster was made with fewer nodes",
            path.display()
        );
        Ok(path)
    }
}
