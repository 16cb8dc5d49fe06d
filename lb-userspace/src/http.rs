//! The agent's HTTP endpoints: `/metrics` (Prometheus), `/livez` (the main
//! loop is alive), `/healthz` (kube-proxy's: alive and the node not
//! draining, with its JSON body), `/readyz` (the first complete state is in
//! the maps), `/proxyMode`. Served on each configured address, nowhere else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::metrics::Metrics;

/// The main loop ticks at least this often; longer silence means it is stuck.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(60);

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

pub fn route(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        // kube-proxy's /healthz: status for load balancers (503 while the
        // node is on its way out, so they drain it; 503 when the main loop
        // is stuck) and its JSON body, which tools and the upstream e2e
        // suite read. /livez (the kubelet's liveness probe) is about the
        // agent alone.
        "/healthz" => healthz(metrics),
        "/livez" => {
            let silent = metrics.since_heartbeat();
            if silent <= LIVENESS_LIMIT {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("main loop silent for {}s\n", silent.as_secs()),
                )
            }
        }
        // What kube-proxy answers on its metrics port; scripts ask it to
        // tell which proxy runs.
        "/proxyMode" => respond(StatusCode::OK, "text/plain", "switchyard".into()),
        "/readyz" => {
            if metrics.is_ready() {
                respond(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the first complete sync\n".into(),
                )
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// kube-proxy's `/healthz` answer: `lastUpdated` (the main loop's last
/// beat), `currentTime`, `nodeEligible` (false while the node drains).
fn healthz(metrics: &Metrics) -> Response<Full<Bytes>> {
    let silent = metrics.since_heartbeat();
    let now = k8s_openapi::jiff::Timestamp::now();
    let last = now
        .checked_sub(k8s_openapi::jiff::SignedDuration::try_from(silent).unwrap_or_default())
        .unwrap_or(now);
    let eligible = !metrics.is_node_draining();
    let body = serde_json::json!({
        "lastUpdated": last.to_string(),
        "currentTime": now.to_string(),
        "nodeEligible": eligible,
    })
    .to_string();
    let status = if silent > LIVENESS_LIMIT || !eligible {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    respond(status, "application/json", body)
}

/// Binds `addr` (so a taken port fails the start, loudly) and serves it in
/// the background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics/health address {addr}"))?;
    info!(%addr, "serving /metrics, /healthz, /livez, /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%addr, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = route(&metrics, req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, "http connection: {e}");
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn readiness_follows_the_first_sync() {
        let m = Metrics::new(PathBuf::from("/nonexistent/switchyard-test"));
        assert_eq!(
            route(&m, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_ready();
        assert_eq!(route(&m, &Method::GET, "/readyz").status(), StatusCode::OK);
        assert_eq!(route(&m, &Method::GET, "/healthz").status(), StatusCode::OK);
        assert_eq!(
            route(&m, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&m, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// A node being deleted (or tainted for removal by the autoscaler):
    /// load balancers see /healthz fail and drain it; the kubelet's
    /// liveness probe (/livez) does not restart the agent for it.
    #[test]
    fn healthz_fails_while_the_node_drains() {
        let m = Metrics::new(PathBuf::from("/nonexistent/switchyard-test"));
        m.set_ready();
        m.set_node_draining(true);
        assert_eq!(
            route(&m, &Method::GET, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(route(&m, &Method::GET, "/livez").status(), StatusCode::OK);
        m.set_node_draining(false);
        assert_eq!(route(&m, &Method::GET, "/healthz").status(), StatusCode::OK);
    }

    /// What the upstream e2e case "should check kube-proxy urls" reads:
    /// /healthz with kube-proxy's JSON (lastUpdated), /proxyMode answering.
    #[test]
    fn kube_proxy_urls() {
        use http_body_util::BodyExt;
        let m = Metrics::new(PathBuf::from("/nonexistent/switchyard-test"));
        let body = |r: Response<Full<Bytes>>| -> String {
            let bytes = futures::executor::block_on(r.into_body().collect())
                .expect("body")
                .to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let health: serde_json::Value =
            serde_json::from_str(&body(route(&m, &Method::GET, "/healthz"))).expect("json");
        assert!(
            health["lastUpdated"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{health}"
        );
        assert_eq!(health["nodeEligible"], true);
        let mode = route(&m, &Method::GET, "/proxyMode");
        assert_eq!(mode.status(), StatusCode::OK);
        assert_eq!(body(mode), "switchyard");
    }
}
