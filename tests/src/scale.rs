//! Filling a test API server with many Services and EndpointSlices quickly
//! (one long-lived client, requests in flight in parallel), for the
//! benchmarks at scale.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::apiserver::ApiServer;

/// Requests in flight while populating.
const IN_FLIGHT: usize = 32;

/// Filler Services `s<i>` in one namespace, each with one EndpointSlice
/// `s<i>-1` of `endpoints_per_service` ready endpoints in 10.100.0.0/14
/// (addresses nothing answers on: the fillers only make the cluster big).
#[derive(Clone, Copy, Debug)]
pub struct Fillers {
    pub namespace: &'static str,
    pub endpoints_per_service: usize,
}

impl Fillers {
    pub fn endpoint_ip(&self, service: usize, i: usize) -> Ipv4Addr {
        let k = (service * self.endpoints_per_service + i) as u32;
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + k)
    }

    pub fn service_json(&self, i: usize) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": self.namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        })
    }

    /// Service `i`'s slice, its endpoints shifted by `shift` addresses (so a
    /// write with another shift replaces some of them).
    pub fn slice_json(&self, i: usize, shift: usize) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = (0..self.endpoints_per_service)
            .map(|e| {
                serde_json::json!({
                    "addresses": [self.endpoint_ip(i, e + shift).to_string()],
                    "conditions": {"ready": true},
                    "nodeName": "node-1"
                })
            })
            .collect();
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("s{i}-1"), "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": format!("s{i}")}
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    }

    /// Creates services `range` and their slices; returns how long it took.
    pub fn create(&self, api: &ApiServer, range: Range<usize>) -> Result<Duration> {
        let kubeconfig = api.kubeconfig();
        let netns = api.netns().to_string();
        let fillers = *self;
        crate::client::in_netns(&netns, move || -> Result<Duration> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let file = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let config = kube::Config::from_custom_kubeconfig(
                    file,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?;
                let client = kube::Client::try_from(config)?;
                let services: kube::Api<Service> =
                    kube::Api::namespaced(client.clone(), fillers.namespace);
                let slices: kube::Api<EndpointSlice> =
                    kube::Api::namespaced(client, fillers.namespace);
                let started = Instant::now();
                let pp = kube::api::PostParams::default();
                let results: Vec<Result<()>> = futures::stream::iter(range)
                    .map(|i| {
                        let (services, slices, pp) = (services.clone(), slices.clone(), pp.clone());
                        async move {
                            let svc: Service = serde_json::from_value(fillers.service_json(i))?;
                            services
                                .create(&pp, &svc)
                                .await
                                .with_context(|| format!("creating Service s{i}"))?;
                            let slice: EndpointSlice =
                                serde_json::from_value(fillers.slice_json(i, 0))?;
                            slices
                                .create(&pp, &slice)
                                .await
                                .with_context(|| format!("creating EndpointSlice s{i}-1"))?;
                            anyhow::Ok(())
                        }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .collect()
                    .await;
                results.into_iter().collect::<Result<Vec<()>>>()?;
                Ok(started.elapsed())
            })
        })?
    }
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}
