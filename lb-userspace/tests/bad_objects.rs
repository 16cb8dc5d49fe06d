//! Bad Services and EndpointSlices: each is reported naming the object and
//! the field, and the rest of the cluster is programmed exactly as without
//! it. A fixed corpus of the shapes users and controllers get wrong, then
//! thousands of random mutations of valid objects.

mod support;
use std::collections::BTreeMap;
use std::path::Path;
use support::Rng;

use lb_userspace::model::{DesiredState, Frontend};
use lb_userspace::source::standalone::load_dir;
use lb_userspace::source::translate::{Translation, translate};

/// Three healthy services in namespace `good`, with their slices.
const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: good}
spec:
  clusterIP: 10.96.1.10
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: good, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: n1}
- {addresses: [10.244.1.12], conditions: {ready: true}, nodeName: n2}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: good}
spec:
  type: NodePort
  clusterIP: 10.96.1.11
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: good, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.21]}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: good}
spec:
  clusterIP: 10.96.1.12
  sessionAffinity: ClientIP
  ports: [{port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: good, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{port: 8443}]
endpoints: [{addresses: [10.244.1.31]}, {addresses: [10.244.1.32], conditions: {ready: false}}]
"#;

/// (file name, manifest, what the report must say: object and field).
/// Every case is in namespace `bad`, so it cannot legitimately change a
/// service in `good`.
const CORPUS: &[(&str, &str, &[&str])] = &[
    (
        "ip-out-of-range.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ip300, namespace: bad}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
        &["Service bad/ip300", "spec.clusterIP", "not an IP address"],
    ),
    (
        "ip-garbage.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ipjunk, namespace: bad}\nspec: {clusterIPs: [\"10.96.0.1.5\"], ports: [{port: 80}]}\n",
        &["Service bad/ipjunk", "spec.clusterIPs[0]"],
    ),
    (
        "port-zero.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: port0, namespace: bad}\nspec: {clusterIP: 10.96.2.1, ports: [{port: 0}]}\n",
        &[
            "Service bad/port0",
            "spec.ports[0].port",
            "0 is not in 1..=65535",
        ],
    ),
    (
        "port-too-big.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: port70k, namespace: bad}\nspec: {clusterIP: 10.96.2.2, ports: [{port: 70000}]}\n",
        &["Service bad/port70k", "spec.ports[0].port", "70000"],
    ),
    (
        "port-negative.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: portneg, namespace: bad}\nspec: {clusterIP: 10.96.2.3, ports: [{port: -1}]}\n",
        &["Service bad/portneg", "spec.ports[0].port", "-1"],
    ),
    (
        "port-not-a-number.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: portstr, namespace: bad}\nspec: {clusterIP: 10.96.2.4, ports: [{port: eighty}]}\n",
        &["port-not-a-number.yaml (document 1)", "Service bad/portstr"],
    ),
    (
        "node-port-too-big.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: np99k, namespace: bad}\nspec: {type: NodePort, clusterIP: 10.96.2.5, ports: [{port: 80, nodePort: 99999}]}\n",
        &["Service bad/np99k", "spec.ports[0].nodePort", "99999"],
    ),
    (
        "unspecified-ip.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: zero, namespace: bad}\nspec: {clusterIP: 0.0.0.0, externalIPs: [224.0.0.1], ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: lo-1, namespace: bad, labels: {kubernetes.io/service-name: lo}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [127.0.0.1]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: lo, namespace: bad}\nspec: {clusterIP: 10.96.2.20, externalIPs: [224.0.0.1], ports: [{port: 80}]}\n",
        &[
            "Service bad/zero",
            "spec.clusterIP: 0.0.0.0 is the unspecified address",
            "spec.externalIPs[0]: 224.0.0.1 is a multicast address",
            "EndpointSlice bad/lo-1: endpoints[0].addresses[0]: 127.0.0.1 is a loopback address",
        ],
    ),
    (
        "unknown-protocol.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: icmp, namespace: bad}\nspec: {clusterIP: 10.96.2.6, ports: [{port: 80, protocol: ICMP}]}\n",
        &[
            "Service bad/icmp",
            "spec.ports[0].protocol",
            "unknown protocol",
        ],
    ),
    (
        "sctp.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: sctp, namespace: bad}\nspec: {clusterIP: 10.96.2.7, ports: [{port: 80, protocol: SCTP}]}\n",
        &["Service bad/sctp", "spec.ports[0].protocol", "SCTP"],
    ),
    (
        "duplicate-ports.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: dup, namespace: bad}\nspec: {clusterIP: 10.96.2.8, ports: [{name: a, port: 80}, {name: b, port: 80}]}\n",
        &["Service bad/dup", "spec.ports[1]", "duplicate port 80/TCP"],
    ),
    (
        "unknown-type.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: weird, namespace: bad}\nspec: {type: Magic, clusterIP: 10.96.2.9, ports: [{port: 80}]}\n",
        &["Service bad/weird", "spec.type", "Magic"],
    ),
    (
        "ipv6-only.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: v6, namespace: bad}\nspec: {ipFamilies: [IPv6], clusterIP: \"fd00::10\", ports: [{port: 80}]}\n",
        &["Service bad/v6", "spec.clusterIP", "IPv6"],
    ),
    (
        "missing-name.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: bad}\nspec: {clusterIP: 10.96.2.10, ports: [{port: 80}]}\n",
        &["Service bad/?", "metadata.name", "missing"],
    ),
    (
        "missing-spec.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: nospec, namespace: bad}\n",
        &["Service bad/nospec", "spec", "missing"],
    ),
    (
        "bad-affinity.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: aff, namespace: bad}\nspec: {clusterIP: 10.96.2.11, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}\n",
        &[
            "Service bad/aff",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ],
    ),
    (
        "bad-lb-ingress.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: bad}\nspec: {type: LoadBalancer, clusterIP: 10.96.2.12, ports: [{port: 80, nodePort: 30111}], loadBalancerSourceRanges: [\"10.0.0.0/40\"]}\nstatus: {loadBalancer: {ingress: [{ip: \"300.1.1.1\"}]}}\n",
        &[
            "Service bad/lb",
            "status.loadBalancer.ingress[0].ip",
            "spec.loadBalancerSourceRanges[0]",
        ],
    ),
    (
        "bad-external-ip.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: bad}\nspec: {clusterIP: 10.96.2.13, externalIPs: [\"not-an-ip\"], ports: [{port: 80}]}\n",
        &["Service bad/ext", "spec.externalIPs[0]"],
    ),
    (
        "bad-policy.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: pol, namespace: bad}\nspec: {clusterIP: 10.96.2.14, internalTrafficPolicy: Sometimes, ports: [{port: 80}]}\n",
        &["Service bad/pol", "spec.internalTrafficPolicy", "Sometimes"],
    ),
    (
        "steals-a-frontend.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: thief, namespace: zz}\nspec: {clusterIP: 10.96.1.10, ports: [{port: 80}]}\n",
        &["Service zz/thief", "10.96.1.10:80/TCP"],
    ),
    (
        "slice-bad-address.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: eps, namespace: bad}\nspec: {clusterIP: 10.96.2.15, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: eps-1, namespace: bad, labels: {kubernetes.io/service-name: eps}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [\"10.244.9.300\"]}, {addresses: []}, {addresses: [10.244.9.1]}]\n",
        &[
            "EndpointSlice bad/eps-1",
            "endpoints[0].addresses[0]",
            "endpoints[1].addresses",
        ],
    ),
    (
        "slice-bad-port.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: sp, namespace: bad}\nspec: {clusterIP: 10.96.2.16, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sp-1, namespace: bad, labels: {kubernetes.io/service-name: sp}}\naddressType: IPv4\nports: [{port: 0}]\nendpoints: [{addresses: [10.244.9.2]}]\n",
        &[
            "EndpointSlice bad/sp-1",
            "ports[0].port",
            "0 is not in 1..=65535",
        ],
    ),
    (
        "slice-ipv6.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: v6-1, namespace: bad, labels: {kubernetes.io/service-name: v6}}\naddressType: IPv6\nports: [{port: 8080}]\nendpoints: [{addresses: [\"fd00::1\"]}]\n",
        &["EndpointSlice bad/v6-1", "addressType IPv6"],
    ),
    (
        "slice-fqdn.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: f-1, namespace: bad, labels: {kubernetes.io/service-name: f}}\naddressType: FQDN\nports: [{port: 8080}]\nendpoints: [{addresses: [example.org]}]\n",
        &["EndpointSlice bad/f-1", "addressType FQDN"],
    ),
    (
        "not-yaml.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: bad\nspec: [\n",
        &["not-yaml.yaml (document 1)", "(syntax)"],
    ),
    (
        "no-kind.yaml",
        "apiVersion: v1\nmetadata: {name: nokind, namespace: bad}\n",
        &["no-kind.yaml (document 1)", "apiVersion/kind"],
    ),
];

/// A manifest directory, removed on drop.
struct ManifestDir(std::path::PathBuf);

impl ManifestDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_dir(files: &[(&str, String)]) -> ManifestDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = ManifestDir(std::env::temp_dir().join(format!(
        "switchyard-bad-objects-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let _ = std::fs::remove_dir_all(dir.path());
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write manifest");
    }
    dir
}

/// Loads and translates a directory; all reported problems as text.
fn load(dir: &Path) -> (Translation, Vec<String>) {
    let loaded = load_dir(dir).expect("readable directory");
    let t = translate(&loaded.objects);
    let mut report: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
    report.extend(t.errors.iter().map(|e| e.to_string()));
    report.extend(t.skipped.iter().cloned());
    (t, report)
}

/// The programmed state of namespace `good` only.
fn good_part(desired: &DesiredState) -> BTreeMap<Frontend, String> {
    desired
        .services
        .iter()
        .filter(|(_, sp)| sp.name.namespace == "good")
        .map(|(f, sp)| (*f, format!("{sp:?}")))
        .collect()
}

#[test]
fn every_bad_object_is_reported_by_object_and_field_and_spares_the_rest() {
    let good_dir = write_dir(&[("good.yaml", GOOD.to_string())]);
    let (baseline, report) = load(good_dir.path());
    assert!(report.is_empty(), "the good set is clean: {report:#?}");
    let expected = good_part(&baseline.desired);
    assert_eq!(
        expected.len(),
        4,
        "web:80, web:53, np:80 (cluster IP + node port counted once), sticky:443: {expected:#?}"
    );

    // Each case alone next to the good set, then all of them at once.
    for (file, manifest, needles) in CORPUS {
        let dir = write_dir(&[
            ("good.yaml", GOOD.to_string()),
            (file, manifest.to_string()),
        ]);
        let (t, report) = load(dir.path());
        let line = report
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .or_else(|| {
                // Several fields may be reported on separate lines.
                needles
                    .iter()
                    .all(|n| report.iter().any(|l| l.contains(n)))
                    .then(|| &report[0])
            });
        assert!(
            line.is_some(),
            "{file}: no report naming {needles:?}: {report:#?}"
        );
        assert_eq!(
            good_part(&t.desired),
            expected,
            "{file} changed the good services"
        );
    }
    let mut all: Vec<(&str, String)> = vec![("good.yaml", GOOD.to_string())];
    all.extend(CORPUS.iter().map(|(f, m, _)| (*f, m.to_string())));
    let dir = write_dir(&all);
    let (t, report) = load(dir.path());
    assert_eq!(good_part(&t.desired), expected, "all bad objects together");
    assert!(report.len() >= CORPUS.len(), "{report:#?}");
}

#[test]
fn thousands_of_endpoints_in_one_slice_are_all_programmed() {
    let mut slice = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: good}\nspec: {clusterIP: 10.96.1.50, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: good, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n",
    );
    for i in 0..5_000u32 {
        slice.push_str(&format!(
            "- {{addresses: [10.{}.{}.{}]}}\n",
            100 + i / 65_536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let dir = write_dir(&[("big.yaml", slice)]);
    let (t, report) = load(dir.path());
    assert!(report.is_empty(), "{report:#?}");
    let sp = t
        .desired
        .services
        .values()
        .next()
        .expect("big is programmed");
    assert_eq!(sp.active_backends().len(), 5_000);
}

/// A value of the wrong shape or out of range, for any field.
fn junk(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    [
        json!(null),
        json!(-1),
        json!(0),
        json!(65_536),
        json!(4_294_967_296u64),
        json!(""),
        json!("None"),
        json!("10.96.0.256"),
        json!("fd00::1"),
        json!("0.0.0.0"),
        json!("255.255.255.255"),
        json!("UDP"),
        json!("SCTP"),
        json!("Local"),
        json!([]),
        json!([null]),
        json!({}),
        json!(true),
        json!("x".repeat(300)),
    ][rng.index(19)]
    .clone()
}

/// Replaces, removes or duplicates one value somewhere inside `value`.
fn mutate(value: &mut serde_json::Value, rng: &mut Rng, depth: usize) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.index(keys.len())];
            if depth > 0 && rng.index(3) != 0 {
                if let Some(inner) = map.get_mut(key) {
                    mutate(inner, rng, depth - 1);
                }
            } else if rng.index(4) == 0 {
                map.remove(key);
            } else {
                map.insert(key.clone(), junk(rng));
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            let i = rng.index(items.len());
            if depth > 0 && rng.index(3) != 0 {
                mutate(&mut items[i], rng, depth - 1);
            } else if rng.index(2) == 0 {
                let copy = items[i].clone();
                items.push(copy);
            } else {
                items[i] = junk(rng);
            }
        }
        other => *other = junk(rng),
    }
}

#[test]
fn random_mutations_of_valid_objects_never_disturb_other_services() {
    let good_dir = write_dir(&[("good.yaml", GOOD.to_string())]);
    let (baseline, _) = load(good_dir.path());
    let expected = good_part(&baseline.desired);
    // Templates: valid objects in namespace `bad`, mutated one field at a
    // time (namespaces are never mutated into `good`: junk has no "good").
    let templates: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(GOOD)
        .map(|doc| {
            let v: serde_json::Value = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml"),
            )
            .expect("json");
            let text = v
                .to_string()
                .replace("\"good\"", "\"bad\"")
                .replace("10.96.1.", "10.96.3.");
            serde_json::from_str(&text).expect("json")
        })
        .collect();
    let mut rng = Rng(0x0bad_0b1e_c75e_ed01);
    let mut reported = 0;
    for case in 0..2_000 {
        let mut docs = Vec::new();
        for _ in 0..1 + rng.index(3) {
            let mut doc = templates[rng.index(templates.len())].clone();
            for _ in 0..1 + rng.index(3) {
                mutate(&mut doc, &mut rng, 4);
            }
            docs.push(serde_json::to_string(&doc).expect("json"));
        }
        let dir = write_dir(&[
            ("good.yaml", GOOD.to_string()),
            ("mutated.yaml", docs.join("\n---\n")),
        ]);
        let (t, report) = load(dir.path());
        assert_eq!(
            good_part(&t.desired),
            expected,
            "case {case} changed the good services; mutated objects:\n{}",
            docs.join("\n---\n")
        );
        for e in t.errors.iter() {
            assert!(
                e.origin.starts_with("mutated.yaml") && !e.object.is_empty() && !e.field.is_empty(),
                "case {case}: an error that names no document, object or field: {e}"
            );
        }
        for line in &t.skipped {
            assert!(
                line.starts_with("Service ") || line.starts_with("EndpointSlice "),
                "case {case}: a skip that names no object: {line}"
            );
        }
        if !report.is_empty() {
            reported += 1;
        }
    }
    assert!(
        reported > 500,
        "only {reported} of 2000 mutations were reported"
    );
}
