//! Is this agent being uninstalled, or only replaced? The chart keeps the
//! datapath attached when an agent stops (`--keep-datapath-on-exit`) so a
//! rolling upgrade has no gap; after `helm uninstall` nothing takes over,
//! so the last agent must detach and unpin everything itself. The signal
//! is the agent's own DaemonSet: deleted (or being deleted) means
//! uninstall, present means upgrade or restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

/// The DaemonSet that runs this agent, watched for its deletion.
#[derive(Clone)]
pub struct OwnerWatch {
    api: Api<DaemonSet>,
    name: String,
    deleted: Arc<AtomicBool>,
}

impl OwnerWatch {
    /// `owner` is `NAMESPACE/NAME`.
    pub fn start(client: Client, owner: &str) -> anyhow::Result<Self> {
        let (namespace, name) = owner
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("--owner-daemonset {owner:?}: expected NAMESPACE/NAME")
            })?;
        let watch = Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            deleted: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(watch.clone().follow());
        Ok(watch)
    }

    async fn follow(self) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher(self.api.clone(), config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Delete(_)) => self.mark("deleted"),
                Ok(watcher::Event::Apply(ds) | watcher::Event::InitApply(ds))
                    if ds.metadata.deletion_timestamp.is_some() =>
                {
                    self.mark("being deleted")
                }
                Ok(_) => {}
                Err(e) => warn!(daemonset = %self.name, "watching the agent's DaemonSet: {e}"),
            }
        }
    }

    fn mark(&self, how: &str) {
        if !self.deleted.swap(true, Ordering::SeqCst) {
            info!(daemonset = %self.name, "the agent's DaemonSet was {how}: uninstalling");
        }
    }

    /// Asked at shutdown: seen deleted, or not found now. Any doubt (the
    /// API unreachable) keeps the datapath: a stale datapath is recoverable
    /// with `--cleanup`, a gap in a rolling upgrade drops connections.
    pub async fn uninstalled(&self) -> bool {
        if self.deleted.load(Ordering::SeqCst) {
            return true;
        }
        match tokio::time::timeout(Duration::from_secs(3), self.api.get_opt(&self.name)).await {
            Ok(Ok(None)) => {
                self.mark("deleted");
                true
            }
            Ok(Ok(Some(ds))) => ds.metadata.deletion_timestamp.is_some(),
            Ok(Err(e)) => {
                warn!(daemonset = %self.name, "cannot tell whether the agent is uninstalled ({e}); keeping the datapath");
                false
            }
            Err(_) => {
                warn!(daemonset = %self.name, "no answer on the agent's DaemonSet in 3 s; keeping the datapath");
                false
            }
        }
    }
}
