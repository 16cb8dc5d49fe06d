//! `healthCheckNodePort` for `externalTrafficPolicy: Local` load balancers,
//! answered like kube-proxy does: 200 with the number of local endpoints
//! when this node has some, 503 otherwise, so the cloud load balancer sends
//! traffic only to nodes that can serve it without an extra hop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::model::DesiredState;

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Health-check ports wanted by `desired` on `node`, with their answers.
pub fn wanted(desired: &DesiredState, node: Option<&str>) -> BTreeMap<u16, ServiceHealth> {
    let mut out: BTreeMap<u16, (ServiceHealth, BTreeSet<std::net::Ipv4Addr>)> = BTreeMap::new();
    for sp in desired.services.values() {
        let Some(port) = sp.external.health_check_node_port else {
            continue;
        };
        let entry = out.entry(port).or_insert_with(|| {
            (
                ServiceHealth {
                    namespace: sp.name.namespace.clone(),
                    name: sp.name.name.clone(),
                    local_endpoints: 0,
                },
                BTreeSet::new(),
            )
        });
        // Endpoints are pods: count each local ready address once across ports.
        entry.1.extend(
            sp.endpoints
                .iter()
                .filter(|e| e.ready && node.is_some() && e.node.as_deref() == node)
                .map(|e| e.addr.ip),
        );
    }
    out.into_iter()
        .map(|(port, (mut health, ips))| {
            health.local_endpoints = ips.len();
            (port, health)
        })
        .collect()
}

fn response(health: &ServiceHealth) -> String {
    let body = serde_json::json!({
        "service": { "namespace": health.namespace, "name": health.name },
        "localEndpoints": health.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if health.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The listeners, one per health-check port, following the desired state.
#[derive(Default)]
pub struct HealthServers {
    answers: Arc<Mutex<BTreeMap<u16, ServiceHealth>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
    pub fn update(&mut self, wanted: BTreeMap<u16, ServiceHealth>) {
        let ports: BTreeSet<u16> = wanted.keys().copied().collect();
        match self.answers.lock() {
            Ok(mut answers) => *answers = wanted,
            Err(poisoned) => *poisoned.into_inner() = wanted,
        }
        self.listeners.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
                info!(port, "health check stopped");
            }
            keep
        });
        for port in ports {
            if self.listeners.contains_key(&port) {
                continue;
            }
            let answers = Arc::clone(&self.answers);
            self.listeners
                .insert(port, tokio::spawn(serve(port, answers)));
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// Binds the port, retrying with backoff while it is taken (an old agent
/// still holding it, another process): a health check must not stay dark
/// because its first bind failed.
async fn bind_with_retry(port: u16) -> TcpListener {
    let mut wait = std::time::Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        match TcpListener::bind(("0.0.0.0", port)).await {
            Ok(l) => {
                if failures > 0 {
                    info!(port, failures, "health check bound after retrying");
                }
                return l;
            }
            Err(e) => {
                if failures == 0 {
                    warn!(port, "cannot bind health check port yet ({e}); retrying");
                }
                failures += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

async fn serve(port: u16, answers: Arc<Mutex<BTreeMap<u16, ServiceHealth>>>) {
    let listener = bind_with_retry(port).await;
    info!(port, "health check listening");
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(port, "accept on the health check port: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let answers = Arc::clone(&answers);
        tokio::spawn(async move {
            // Any request gets the answer; read it so the client sees a clean close.
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buf))
                .await;
            let health = answers.lock().ok().and_then(|a| a.get(&port).cloned());
            if let Some(health) = health {
                let _ = stream.write_all(response(&health).as_bytes()).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The port is still held (an old agent during an upgrade, another
    /// process) when the health check starts: it answers once it is free.
    #[tokio::test]
    async fn a_taken_port_is_retried_until_free() {
        let blocker = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = blocker.local_addr().expect("addr").port();
        let mut servers = HealthServers::default();
        servers.update(BTreeMap::from([(
            port,
            ServiceHealth {
                namespace: "ns".into(),
                name: "web".into(),
                local_endpoints: 1,
            },
        )]));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(blocker);
        let mut answer = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                let _ = s.read_to_string(&mut answer).await;
                if !answer.is_empty() {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            answer.starts_with("HTTP/1.1 200 OK"),
            "no answer after the port freed: {answer:?}"
        );
    }

    #[test]
    fn answers_like_kube_proxy() {
        let mut h = ServiceHealth {
            namespace: "ns".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let ok = response(&h);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.ends_with(r#"{"localEndpoints":2,"service":{"name":"web","namespace":"ns"},"serviceProxyHealthy":true}"#));
        h.local_endpoints = 0;
        assert!(response(&h).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    }
}
