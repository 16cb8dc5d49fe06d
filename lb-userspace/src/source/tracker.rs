//! The change tracker of the API-server source: it keeps the last Services,
//! EndpointSlices and node facts the watches reported, and turns what
//! changed since the last batch into a [`StateDelta`] holding only the
//! service ports that changed. It never talks to the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{debug, warn};

use super::kubernetes::TRIGGER_TIME_ANNOTATION;
use super::slice::EndpointSlice;
use super::translate::{SERVICE_NAME_LABEL, translate};
use super::{ClusterObjects, ObjectError, Sourced, StateDelta};
use crate::model::{Frontend, ServicePort};

/// `(namespace, name)`.
pub(super) type Key = (String, String);

pub(super) fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether two versions of an object differ (resourceVersion when both
/// have one: cheap and exact).
fn differs<K: kube::Resource + PartialEq>(a: Option<&K>, b: Option<&K>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match (&a.meta().resource_version, &b.meta().resource_version) {
            (Some(x), Some(y)) => x != y,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

/// What a complete list changes in `known`, in key order: the objects new
/// or different, and the ones gone (`None`). The rest is left alone, so a
/// relist sends only what really changed.
fn relist_changes<K: kube::Resource + PartialEq>(
    known: &HashMap<Key, K>,
    mut listed: HashMap<Key, K>,
) -> Vec<(Key, Option<K>)> {
    let keys: BTreeSet<Key> = known.keys().chain(listed.keys()).cloned().collect();
    keys.into_iter()
        .filter_map(|key| {
            let new = listed.remove(&key);
            differs(known.get(&key), new.as_ref()).then_some((key, new))
        })
        .collect()
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let parsed: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(parsed))
}

/// Everything the source knows, and what changed since the last batch.
#[derive(Default)]
pub(super) struct ChangeTracker {
    services: HashMap<Key, Service>,
    slices: HashMap<Key, EndpointSlice>,
    /// Slice → the service (same namespace) its label names.
    slice_owner: HashMap<Key, Key>,
    /// Service → the names of its slices.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Service → the service-port keys its last translation produced.
    ports_of: HashMap<Key, Vec<Frontend>>,
    /// Frontend → the Service that last claimed it: a Service gone or
    /// changed only removes frontends it still owns (a ClusterIP can pass
    /// from a deleted Service to a new one within a batch, in either order).
    owner_of: HashMap<Frontend, Key>,
    /// Service → the problems its last translation reported.
    invalid: HashMap<Key, Vec<ObjectError>>,
    /// Services whose problems changed to a non-empty set since the last
    /// batch: told to their owners (events.rs).
    to_report: BTreeSet<Key>,
    dirty: BTreeSet<Key>,
    triggered_at: Vec<SystemTime>,
    node_addresses: Option<Vec<Ipv4Addr>>,
    node_addresses_changed: bool,
    node_zone: Option<String>,
    node_zone_changed: bool,
}

impl ChangeTracker {
    pub(super) fn set_service(&mut self, key: Key, service: Option<Service>) {
        match service {
            Some(s) => self.services.insert(key.clone(), s),
            None => self.services.remove(&key),
        };
        self.dirty.insert(key);
    }

    pub(super) fn set_slice(&mut self, key: Key, slice: Option<EndpointSlice>) {
        if let Some(old_owner) = self.slice_owner.remove(&key) {
            if let Some(names) = self.slices_of.get_mut(&old_owner) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_of.remove(&old_owner);
                }
            }
            self.dirty.insert(old_owner);
        }
        match slice {
            Some(slice) => self.insert_slice(key, slice),
            None => {
                self.slices.remove(&key);
            }
        }
    }

    /// Stores a slice and files it under the service its label names.
    fn insert_slice(&mut self, key: Key, slice: EndpointSlice) {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|service| (key.0.clone(), service.clone()));
        if let Some(owner) = owner {
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.1.clone());
            self.slice_owner.insert(key.clone(), owner.clone());
            self.dirty.insert(owner);
        }
        if let Some(at) = trigger_time(&slice) {
            self.triggered_at.push(at);
        }
        self.slices.insert(key, slice);
    }

    /// Takes a complete list of Services in place of what was known.
    pub(super) fn replace_services(&mut self, listed: HashMap<Key, Service>) {
        for (key, service) in relist_changes(&self.services, listed) {
            self.set_service(key, service);
        }
    }

    /// Takes a complete list of EndpointSlices in place of what was known.
    pub(super) fn replace_slices(&mut self, listed: HashMap<Key, EndpointSlice>) {
        for (key, slice) in relist_changes(&self.slices, listed) {
            self.set_slice(key, slice);
        }
    }

    /// Records this node's zone label; says whether it changed.
    pub(super) fn set_node_zone(&mut self, zone: Option<String>) -> bool {
        if zone == self.node_zone {
            return false;
        }
        self.node_zone = zone;
        self.node_zone_changed = true;
        true
    }

    /// Records this node's addresses; says whether they changed.
    pub(super) fn set_node_addresses(&mut self, addresses: Vec<Ipv4Addr>) -> bool {
        if self.node_addresses.as_ref() == Some(&addresses) {
            return false;
        }
        self.node_addresses = Some(addresses);
        self.node_addresses_changed = true;
        true
    }

    /// Translates the dirty services and returns what changed.
    pub(super) fn take_delta(&mut self) -> StateDelta {
        let mut delta = StateDelta {
            triggered_at: std::mem::take(&mut self.triggered_at),
            ..StateDelta::default()
        };
        if std::mem::take(&mut self.node_addresses_changed) {
            delta.node_addresses = self.node_addresses.clone();
        }
        if std::mem::take(&mut self.node_zone_changed) {
            delta.node_zone = Some(self.node_zone.clone());
        }
        for key in std::mem::take(&mut self.dirty) {
            self.retranslate(key, &mut delta.ports);
        }
        delta
    }

    /// A Service with its slices, as [`translate`] takes them; nothing when
    /// the Service is gone.
    fn objects_of(&self, key: &Key) -> ClusterObjects {
        let mut objects = ClusterObjects::default();
        let Some(service) = self.services.get(key) else {
            return objects;
        };
        objects.services.push(Sourced {
            origin: "api".into(),
            object: service.clone(),
        });
        for name in self.slices_of.get(key).into_iter().flatten() {
            if let Some(slice) = self.slices.get(&(key.0.clone(), name.clone())) {
                objects.slices.push(Sourced {
                    origin: "api".into(),
                    object: slice.clone(),
                });
            }
        }
        objects
    }

    /// Translates one Service again into `ports`: what it produces now, and
    /// `None` for the frontends it no longer produces but still owns.
    fn retranslate(&mut self, key: Key, ports: &mut BTreeMap<Frontend, Option<ServicePort>>) {
        let translation = translate(&self.objects_of(&key));
        for e in &translation.errors {
            warn!("cannot program: {e}");
        }
        for s in &translation.skipped {
            debug!("not programmed: {s}");
        }
        self.note_problems(&key, translation.errors);
        let new_keys: Vec<Frontend> = translation.desired.services.keys().copied().collect();
        for old in self.ports_of.remove(&key).unwrap_or_default() {
            if !translation.desired.services.contains_key(&old)
                && self.owner_of.get(&old) == Some(&key)
            {
                self.owner_of.remove(&old);
                ports.insert(old, None);
            }
        }
        for (k, sp) in translation.desired.services {
            self.owner_of.insert(k, key.clone());
            ports.insert(k, Some(sp));
        }
        if !new_keys.is_empty() {
            self.ports_of.insert(key, new_keys);
        }
    }

    /// Keeps a Service's problems; new ones are to be told to its owners.
    fn note_problems(&mut self, key: &Key, errors: Vec<ObjectError>) {
        if errors.is_empty() {
            self.invalid.remove(key);
        } else if self.invalid.get(key) != Some(&errors) {
            self.invalid.insert(key.clone(), errors);
            self.to_report.insert(key.clone());
        }
    }

    /// The Services with new problems, and the problems, since last asked.
    pub(super) fn take_reports(&mut self) -> Vec<(&Service, &[ObjectError])> {
        std::mem::take(&mut self.to_report)
            .into_iter()
            .filter_map(|key| Some((self.services.get(&key)?, self.invalid.get(&key)?.as_slice())))
            .collect()
    }

    pub(super) fn invalid_count(&self) -> usize {
        self.invalid.values().map(Vec::len).sum()
    }

    pub(super) fn service_count(&self) -> usize {
        self.services.len()
    }

    pub(super) fn slice_count(&self) -> usize {
        self.slices.len()
    }

    pub(super) fn pending(&self) -> bool {
        !self.dirty.is_empty() || self.node_addresses_changed || self.node_zone_changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("service")
    }

    fn slice(name: &str, service: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default", "resourceVersion": rv,
                "labels": {"kubernetes.io/service-name": service},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-11-24T10:00:00.123456789Z"}
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip]})).collect::<Vec<_>>()
        }))
        .expect("slice")
    }

    fn backends(delta: &StateDelta) -> Vec<String> {
        delta
            .ports
            .values()
            .flatten()
            .flat_map(|sp| sp.endpoints.iter().map(|e| e.addr.to_string()))
            .collect()
    }

    #[test]
    fn only_changed_services_are_translated_and_sent() {
        let mut c = ChangeTracker::default();
        c.set_service(
            key_of(&service("a", "10.96.0.1", "1").metadata),
            Some(service("a", "10.96.0.1", "1")),
        );
        c.set_service(
            key_of(&service("b", "10.96.0.2", "1").metadata),
            Some(service("b", "10.96.0.2", "1")),
        );
        let s = slice("a-1", "a", &["10.244.0.1"], "2");
        c.set_slice(key_of(&s.metadata), Some(s));
        let first = c.take_delta();
        assert_eq!(first.ports.len(), 2);
        assert_eq!(backends(&first), vec!["10.244.0.1:8080"]);
        assert_eq!(first.triggered_at.len(), 1);

        // A second slice for a: only a's port is in the next batch.
        let s = slice("a-2", "a", &["10.244.0.2"], "3");
        c.set_slice(key_of(&s.metadata), Some(s));
        let next = c.take_delta();
        assert_eq!(next.ports.len(), 1);
        let mut got = backends(&next);
        got.sort();
        assert_eq!(got, vec!["10.244.0.1:8080", "10.244.0.2:8080"]);

        // Service b deleted: its port goes away.
        c.set_service(("default".into(), "b".into()), None);
        let gone = c.take_delta();
        assert_eq!(gone.ports.len(), 1);
        assert!(gone.ports.values().all(Option::is_none));
        assert!(!c.pending());
    }

    /// A kube-dns → coredns migration: `kube-system/kube-dns` deleted and
    /// `kube-system/coredns` created with the same pinned clusterIP, both
    /// within one batch window (or one relist) — or the deletion arriving
    /// in a later batch. The new owner's frontend must stay programmed.
    #[test]
    fn a_cluster_ip_reused_by_another_service_stays_programmed() {
        let dns = |name: &str| -> (Key, Service) {
            let mut svc = service(name, "10.96.0.10", "1");
            svc.metadata.namespace = Some("kube-system".into());
            (key_of(&svc.metadata), svc)
        };
        let (old_key, old) = dns("kube-dns");
        let (new_key, new) = dns("coredns");
        // Same batch: "coredns" sorts before "kube-dns".
        let mut c = ChangeTracker::default();
        c.set_service(old_key.clone(), Some(old.clone()));
        c.take_delta();
        c.set_service(old_key.clone(), None);
        c.set_service(new_key.clone(), Some(new.clone()));
        let delta = c.take_delta();
        assert_eq!(delta.ports.len(), 1, "{:?}", delta.ports.keys());
        let owner = delta
            .ports
            .values()
            .next()
            .and_then(Option::as_ref)
            .map(|sp| sp.name.to_string());
        assert_eq!(
            owner.as_deref(),
            Some("kube-system/coredns:http"),
            "the frontend was removed"
        );

        // The deletion in the next batch must not remove coredns's frontend.
        let mut c = ChangeTracker::default();
        c.set_service(old_key.clone(), Some(old));
        c.take_delta();
        c.set_service(new_key, Some(new));
        c.take_delta();
        c.set_service(old_key, None);
        let late = c.take_delta();
        assert!(
            late.ports.is_empty(),
            "kube-dns's deletion removes coredns's frontend: {:?}",
            late.ports
        );
    }

    #[test]
    fn relist_sends_only_what_differs() {
        let mut c = ChangeTracker::default();
        c.replace_services(HashMap::from([
            (
                ("default".into(), "a".into()),
                service("a", "10.96.0.1", "1"),
            ),
            (
                ("default".into(), "b".into()),
                service("b", "10.96.0.2", "1"),
            ),
        ]));
        c.take_delta();
        // After a watch gap: a unchanged, b deleted meanwhile, c new.
        c.replace_services(HashMap::from([
            (
                ("default".into(), "a".into()),
                service("a", "10.96.0.1", "1"),
            ),
            (
                ("default".into(), "c".into()),
                service("c", "10.96.0.3", "5"),
            ),
        ]));
        let delta = c.take_delta();
        let summary: Vec<(String, bool)> = delta
            .ports
            .iter()
            .map(|(k, v)| (k.ip.to_string(), v.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![("10.96.0.2".into(), false), ("10.96.0.3".into(), true)]
        );
    }

    #[test]
    fn a_slice_moving_between_services_updates_both() {
        let mut c = ChangeTracker::default();
        for (n, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2")] {
            c.set_service(("default".into(), n.into()), Some(service(n, ip, "1")));
        }
        let s = slice("x", "a", &["10.244.0.9"], "2");
        c.set_slice(key_of(&s.metadata), Some(s));
        c.take_delta();
        let s = slice("x", "b", &["10.244.0.9"], "3");
        c.set_slice(key_of(&s.metadata), Some(s));
        let delta = c.take_delta();
        let by_ip: BTreeMap<String, usize> = delta
            .ports
            .iter()
            .map(|(k, v)| {
                (
                    k.ip.to_string(),
                    v.as_ref().map_or(0, |sp| sp.endpoints.len()),
                )
            })
            .collect();
        assert_eq!(
            by_ip,
            BTreeMap::from([("10.96.0.1".into(), 0), ("10.96.0.2".into(), 1)])
        );
    }

    #[test]
    fn invalid_services_are_counted_and_others_still_sent() {
        let mut c = ChangeTracker::default();
        let mut bad = service("bad", "10.96.0.9", "1");
        if let Some(spec) = bad.spec.as_mut() {
            spec.ports.as_mut().expect("ports")[0].port = 70000;
        }
        c.set_service(("default".into(), "bad".into()), Some(bad));
        c.set_service(
            ("default".into(), "ok".into()),
            Some(service("ok", "10.96.0.8", "1")),
        );
        let delta = c.take_delta();
        assert_eq!(delta.ports.len(), 1);
        assert_eq!(c.invalid_count(), 1);
        let reported: Vec<String> = c
            .take_reports()
            .iter()
            .map(|(svc, problems)| format!("{:?}: {}", svc.metadata.name, problems[0].field))
            .collect();
        assert_eq!(
            reported,
            vec![r#"Some("bad"): spec.ports[0].port"#.to_string()]
        );

        // Retranslated with the same problem (a relist, a slice change): not
        // told again; a different problem is.
        c.dirty.insert(("default".into(), "bad".into()));
        c.take_delta();
        assert!(c.take_reports().is_empty());
        let mut worse = service("bad", "10.96.0.9", "2");
        if let Some(spec) = worse.spec.as_mut() {
            spec.ports.as_mut().expect("ports")[0].protocol = Some("SCTP".into());
        }
        c.set_service(("default".into(), "bad".into()), Some(worse));
        c.take_delta();
        let reported = c.take_reports();
        assert_eq!(reported.len(), 1);
        assert!(
            reported[0].1[0].message.contains("SCTP is not supported"),
            "{:?}",
            reported[0].1
        );
    }

    #[test]
    fn trigger_times_parse() {
        let s = slice("a-1", "a", &[], "1");
        let at = trigger_time(&s).expect("parsed");
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch");
        assert_eq!(since.subsec_nanos(), 123_456_789);
    }
}
