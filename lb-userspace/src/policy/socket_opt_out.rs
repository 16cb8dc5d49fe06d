//! Pods whose sockets the socket hooks leave alone (`--socket-lb pods`):
//! those annotated `switchyard.io/socket-lb: "off"`, or in a Namespace so
//! annotated (the pod's own annotation wins). A service mesh whose sidecar
//! routes by the original destination (the cluster IP) needs its pods'
//! connections to keep that destination; their service traffic is then
//! translated per packet by the tc programs, as without socket LB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::compile::pod_ipv4s;
use crate::source::{ClusterObjects, ObjectError};

/// The annotation, on a Pod or a Namespace.
pub const ANNOTATION: &str = "switchyard.io/socket-lb";

/// The annotation's value: `Some(false)` for "off", `Some(true)` for "on",
/// `None` when absent; another value is reported and counts as absent.
fn wanted(
    meta: &ObjectMeta,
    origin: &str,
    object: &str,
    errors: &mut Vec<ObjectError>,
) -> Option<bool> {
    let value = meta.annotations.as_ref()?.get(ANNOTATION)?;
    match value.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        other => {
            errors.push(ObjectError::new(
                origin,
                object,
                format!("metadata.annotations[{ANNOTATION}]"),
                format!("{other:?} is neither \"on\" nor \"off\""),
            ));
            None
        }
    }
}

/// Addresses of the pods that opted out.
pub fn excluded(objects: &ClusterObjects, errors: &mut Vec<ObjectError>) -> BTreeSet<Ipv4Addr> {
    let namespaces: BTreeMap<String, bool> = objects
        .namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.object.metadata.name.clone()?;
            let object = format!("Namespace {name}");
            Some((
                name,
                wanted(&ns.object.metadata, &ns.origin, &object, errors)?,
            ))
        })
        .collect();
    let mut out = BTreeSet::new();
    for sourced in &objects.pods {
        let meta = &sourced.object.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let object = format!("Pod {namespace}/{}", meta.name.as_deref().unwrap_or("?"));
        let own = wanted(meta, &sourced.origin, &object, errors);
        if own.or_else(|| namespaces.get(&namespace).copied()) == Some(false) {
            out.extend(
                sourced
                    .object
                    .status
                    .as_ref()
                    .map(pod_ipv4s)
                    .unwrap_or_default(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Sourced;

    fn sourced<T: serde::de::DeserializeOwned>(yaml: &str) -> Sourced<T> {
        Sourced {
            origin: "test".into(),
            object: serde_yaml::from_str(yaml).expect("test object"),
        }
    }

    fn pod(
        name: &str,
        ip: &str,
        annotation: Option<&str>,
    ) -> Sourced<k8s_openapi::api::core::v1::Pod> {
        let annotations = annotation
            .map(|v| format!("  annotations: {{\"{ANNOTATION}\": \"{v}\"}}\n"))
            .unwrap_or_default();
        sourced(&format!(
            "metadata:\n  name: {name}\n  namespace: mesh\n{annotations}status:\n  podIP: {ip}\n"
        ))
    }

    #[test]
    fn a_pod_opts_out_by_its_own_annotation_or_its_namespaces() {
        let namespace = |v: &str| {
            sourced(&format!(
                "metadata:\n  name: mesh\n  annotations: {{\"{ANNOTATION}\": \"{v}\"}}\n"
            ))
        };
        let cases = [
            // (namespace, pod's own, excluded)
            (None, None, false),
            (None, Some("off"), true),
            (Some("off"), None, true),
            (Some("off"), Some("on"), false),
            (Some("on"), Some("off"), true),
        ];
        for (ns, own, expected) in cases {
            let objects = ClusterObjects {
                pods: vec![pod("app", "10.1.0.5", own)],
                namespaces: ns.map(namespace).into_iter().collect(),
                ..ClusterObjects::default()
            };
            let mut errors = Vec::new();
            let got = excluded(&objects, &mut errors);
            assert_eq!(
                got.contains(&"10.1.0.5".parse().unwrap()),
                expected,
                "{ns:?} {own:?}"
            );
            assert!(errors.is_empty(), "{errors:?}");
        }
    }

    #[test]
    fn an_unknown_value_is_reported_with_the_object_and_field() {
        let objects = ClusterObjects {
            pods: vec![
                pod("app", "10.1.0.5", Some("no")),
                pod("other", "10.1.0.6", Some("off")),
            ],
            ..ClusterObjects::default()
        };
        let mut errors = Vec::new();
        let got = excluded(&objects, &mut errors);
        assert_eq!(got, BTreeSet::from(["10.1.0.6".parse().unwrap()]));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "Pod mesh/app");
        assert_eq!(
            errors[0].field,
            format!("metadata.annotations[{ANNOTATION}]")
        );
    }
}
