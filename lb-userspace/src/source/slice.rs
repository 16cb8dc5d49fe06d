//! EndpointSlices as the sources keep them: the fields translation reads,
//! nothing else.
//!
//! k8s-openapi's `Endpoint` is 352 bytes inline (target reference, hints,
//! topology, zone…), and a list decodes each slice's endpoints into a vector
//! grown by doubling: at 100 000 endpoints that alone was ~55 MiB of the
//! agent's memory. This type has the same field names and JSON shape for
//! what it keeps, so the API server, manifests and tests all decode into it;
//! everything else in the object is skipped while parsing.

use std::borrow::Cow;

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize};

/// `discovery.k8s.io/v1` EndpointSlice, reduced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub address_type: String,
    #[serde(default, deserialize_with = "compact_vec")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a slice: its addresses, conditions, node and topology
/// hints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, deserialize_with = "compact_vec")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Boxed: 8 bytes for the many endpoints without hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<Box<EndpointHints>>,
}

/// `hints`: the zones and nodes whose clients should use this endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    #[serde(default, deserialize_with = "compact_vec")]
    pub for_zones: Vec<HintTarget>,
    #[serde(default, deserialize_with = "compact_vec")]
    pub for_nodes: Vec<HintTarget>,
}

/// `hints.forZones[]` / `hints.forNodes[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HintTarget {
    #[serde(default)]
    pub name: String,
}

/// `null` reads as the field's default, as k8s-openapi does.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A list, `null` as empty, without the spare capacity of decoding: these
/// vectors live as long as the object is cached.
fn compact_vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let mut items = Option::<Vec<T>>::deserialize(d)?.unwrap_or_default();
    items.shrink_to_fit();
    Ok(items)
}

impl kube::Resource for EndpointSlice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "EndpointSlice".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "discovery.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "endpointslices".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_translation_reads_and_skips_the_rest() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": ["10.0.0.1"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-1",
                "zone": "a",
                "hints": {"forZones": [{"name": "a"}]},
                "targetRef": {"kind": "Pod", "name": "web-abc", "namespace": "default"}
            }, {"addresses": null}]
        }))
        .expect("slice");
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints.len(), 2);
        assert_eq!(slice.endpoints.capacity(), 2);
        let e = &slice.endpoints[0];
        assert_eq!(e.addresses, ["10.0.0.1"]);
        assert_eq!(e.node_name.as_deref(), Some("node-1"));
        assert_eq!(e.conditions.as_ref().and_then(|c| c.ready), Some(true));
        assert!(slice.endpoints[1].addresses.is_empty());
        let null_endpoints: EndpointSlice =
            serde_json::from_value(serde_json::json!({"addressType": "IPv4", "endpoints": null}))
                .expect("null endpoints");
        assert!(null_endpoints.endpoints.is_empty());
        assert!(
            serde_json::from_value::<EndpointSlice>(serde_json::json!({"endpoints": 3})).is_err()
        );
    }
}
