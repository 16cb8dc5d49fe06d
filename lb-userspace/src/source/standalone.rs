//! `--standalone DIR`: Services, EndpointSlices and classic Endpoints (and
//! the Pods, Namespaces and NetworkPolicies NetworkPolicy needs) from
//! manifest files, followed while the agent runs.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in DIR (not recursive; hidden
//! files skipped, so editors' swap files and atomic-write temporaries are
//! ignored) may hold several documents and `kind: List`s. A broken document
//! is reported with its file and position; the others still load.
//!
//! A `v1` Endpoints object becomes the EndpointSlices the control plane's
//! mirroring controller would make of it ([`super::endpoints`]): there is
//! no control plane here to do it. (From the API server the agent reads
//! only slices, mirrored ones included.)

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Endpoints;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::endpoints::mirror;
use super::translate::translate;
use super::{ClusterObjects, ObjectError, Sourced, StateDelta};
use crate::model::DesiredState;
use crate::policy::{PolicyState, compile};

#[derive(Debug, Default)]
pub struct LoadedDir {
    pub objects: ClusterObjects,
    pub errors: Vec<ObjectError>,
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_manifest = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if !name.starts_with('.') && is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `kind namespace/name` of a document, as far as it can be read.
fn describe(value: &serde_json::Value) -> String {
    let kind = value["kind"].as_str().unwrap_or("object");
    let ns = value["metadata"]["namespace"].as_str().unwrap_or("default");
    match value["metadata"]["name"].as_str() {
        Some(name) => format!("{kind} {ns}/{name}"),
        None => kind.to_string(),
    }
}

/// The field a serde message complains about, when it can be found: serde
/// names the field for missing/unknown fields; type errors only give a
/// position, so fall back to the document.
fn field_of(message: &str) -> String {
    for marker in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(rest) = message.split(marker).nth(1)
            && let Some(field) = rest.split('`').next()
        {
            return field.to_string();
        }
    }
    "(document)".to_string()
}

fn add_object(value: serde_json::Value, origin: String, loaded: &mut LoadedDir) {
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let object = describe(&value);
    let error = |field: String, message: String| ObjectError::new(&origin, &object, field, message);
    let errors = &mut loaded.errors;
    let objects = &mut loaded.objects;
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value["items"].as_array().cloned().unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                add_object(item, format!("{origin} items[{i}]"), loaded);
            }
        }
        ("v1", "Service") => objects
            .services
            .extend(parsed(value, &origin, errors, error)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            objects.slices.extend(parsed(value, &origin, errors, error));
        }
        ("v1", "Pod") => objects.pods.extend(parsed(value, &origin, errors, error)),
        ("v1", "Namespace") => objects
            .namespaces
            .extend(parsed(value, &origin, errors, error)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let policies = &mut objects.network_policies;
            policies.extend(parsed(value, &origin, errors, error));
        }
        ("v1", "Endpoints") => {
            if let Some(endpoints) = parsed::<Endpoints>(value, &origin, errors, error) {
                add_endpoints(&endpoints.object, &origin, loaded);
            }
        }
        ("", _) | (_, "") => errors.push(error(
            "apiVersion/kind".into(),
            "missing apiVersion or kind".into(),
        )),
        _ => debug!(%origin, %api_version, %kind, "kind not used, ignored"),
    }
}

/// The document as a `K`, or an error naming the field serde complains of.
fn parsed<K: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    origin: &str,
    errors: &mut Vec<ObjectError>,
    error: impl Fn(String, String) -> ObjectError,
) -> Option<Sourced<K>> {
    match serde_json::from_value(value) {
        Ok(object) => Some(Sourced {
            origin: origin.to_string(),
            object,
        }),
        Err(e) => {
            errors.push(error(field_of(&e.to_string()), e.to_string()));
            None
        }
    }
}

/// A classic Endpoints object, as the slices it mirrors to (same origin),
/// and what could not be mirrored. The directory may also hold
/// EndpointSlices for the same service: both are kept, as in a cluster
/// where a custom Endpoints is mirrored next to other slices; translation
/// merges a service's slices, and an endpoint in several counts once.
fn add_endpoints(endpoints: &Endpoints, origin: &str, loaded: &mut LoadedDir) {
    let mirrored = mirror(origin, endpoints);
    loaded.errors.extend(mirrored.errors);
    for object in mirrored.slices {
        let origin = origin.to_string();
        loaded.objects.slices.push(Sourced { origin, object });
    }
}

fn load_file(path: &Path, loaded: &mut LoadedDir) {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            loaded.errors.push(ObjectError {
                origin: file,
                object: "file".into(),
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
            });
            return;
        }
    };
    // JSON is YAML, so one parser serves both.
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let origin = format!("{file} (document {})", i + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                loaded.errors.push(ObjectError {
                    origin,
                    object: "document".into(),
                    field: "(syntax)".into(),
                    message: e.to_string(),
                });
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        match serde_json::to_value(value) {
            Ok(json) if json.is_object() => add_object(json, origin, loaded),
            Ok(_) => loaded.errors.push(ObjectError {
                origin,
                object: "document".into(),
                field: "(document)".into(),
                message: "not a mapping".into(),
            }),
            Err(e) => loaded.errors.push(ObjectError {
                origin,
                object: "document".into(),
                field: "(document)".into(),
                message: e.to_string(),
            }),
        }
    }
}

pub fn load_dir(dir: &Path) -> std::io::Result<LoadedDir> {
    let mut loaded = LoadedDir::default();
    for path in manifest_files(dir)? {
        load_file(&path, &mut loaded);
    }
    Ok(loaded)
}

/// Path, size, mtime (s, ns) and inode of one manifest file.
type FileStamp = (PathBuf, u64, i64, i64, u64);

/// Cheap change detection: names, sizes, mtimes and inodes of the files.
fn fingerprint(dir: &Path) -> std::io::Result<Vec<FileStamp>> {
    manifest_files(dir)?
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        })
        .collect()
}

/// Polls `dir` every `interval` and sends what changed whenever the files
/// change. The first batch (complete) is sent at once, even if it is empty.
/// Without `network_policy` the NetworkPolicies there are not enforced.
pub async fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    network_policy: bool,
    tx: mpsc::Sender<StateDelta>,
) {
    let mut last = DesiredState::default();
    let mut last_policy = None;
    let mut last_fingerprint = None;
    let mut unreadable = false;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut first = true;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let current = match fingerprint(&dir) {
            Ok(f) => {
                unreadable = false;
                Some(f)
            }
            Err(e) => {
                // Unreadable (e.g. being replaced): keep serving the last
                // state rather than withdrawing every service.
                if !unreadable {
                    warn!(dir = %dir.display(), "cannot read manifest directory: {e}; keeping the last state");
                }
                unreadable = true;
                None
            }
        };
        if !first && (current.is_none() || current == last_fingerprint) {
            continue;
        }
        let (objects, mut errors) = match load_dir(&dir) {
            Ok(l) => (l.objects, l.errors),
            Err(_) => (ClusterObjects::default(), Vec::new()),
        };
        let translation = translate(&objects);
        errors.extend(translation.errors);
        // Not compiled (nor its errors reported) when policy is off.
        let policy = if network_policy {
            let (policy, policy_errors) = compile(&objects);
            errors.extend(policy_errors);
            policy
        } else {
            PolicyState::default()
        };
        let now: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        for e in now.difference(&reported) {
            warn!("skipping invalid object: {e}");
        }
        reported = now;
        for s in &translation.skipped {
            debug!("not programmed: {s}");
        }
        info!(
            dir = %dir.display(),
            services = objects.services.len(),
            slices = objects.slices.len(),
            frontends = translation.desired.services.len(),
            network_policies = objects.network_policies.len(),
            isolated_pods = policy.pods.len(),
            errors = reported.len(),
            "manifests loaded"
        );
        let desired = translation.desired;
        let mut delta = StateDelta::between(&last, &desired);
        delta.complete = first;
        if last_policy.as_ref() != Some(&policy) {
            delta.policy = Some(policy.clone());
            last_policy = Some(policy);
        }
        let changed = !delta.ports.is_empty() || delta.policy.is_some();
        if (first || changed) && tx.send(delta).await.is_err() {
            return;
        }
        last = desired;
        first = false;
        last_fingerprint = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "switchyard-standalone-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).expect("write");
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";

    #[test]
    fn multi_document_files_lists_and_unknown_kinds() {
        let d = TempDir::new();
        d.write(
            "a.yaml",
            &format!("{SVC}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n"),
        );
        d.write(
            "b.json",
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","endpoints":[]}]}"#,
        );
        d.write(".hidden.yaml", SVC);
        d.write("notes.txt", SVC);
        let l = load_dir(&d.0).expect("load");
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.services.len(), 1);
        assert_eq!(l.objects.slices.len(), 1);
        assert_eq!(l.objects.slices[0].origin, "b.json (document 1) items[0]");
    }

    #[test]
    fn a_broken_document_is_reported_and_the_rest_loads() {
        let d = TempDir::new();
        d.write(
            "mixed.yaml",
            &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: broken}}\nspec: {{ports: [{{port: eighty}}]}}\n---\n{}", SVC.replace("web", "ok")),
        );
        d.write(
            "syntax.yaml",
            "apiVersion: v1\nkind: Service\n  bad: [indent\n",
        );
        d.write("z.yaml", SVC);
        let l = load_dir(&d.0).expect("load");
        let lines: Vec<String> = l.errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with("mixed.yaml (document 1): Service default/broken:"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("syntax.yaml (document 1)"),
            "{lines:#?}"
        );
        let names: Vec<_> = l
            .objects
            .services
            .iter()
            .filter_map(|s| s.object.metadata.name.clone())
            .collect();
        assert_eq!(names, vec!["ok", "web"]);
    }

    #[test]
    fn classic_endpoints_load_with_their_service() {
        let d = TempDir::new();
        d.write(
            "web.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80, targetPort: 8080}]}\n\
             ---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {name: web, namespace: shop}\n\
             subsets:\n\
             - addresses: [{ip: 10.244.0.1, nodeName: n1}, {ip: 10.244.0.2}]\n  \
               notReadyAddresses: [{ip: 10.244.0.3}]\n  \
               ports: [{name: http, port: 8080, protocol: TCP}]\n",
        );
        let l = load_dir(&d.0).expect("load");
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let t = translate(&l.objects);
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        let sp = t.desired.services.values().next().expect("web:http");
        assert_eq!(sp.name.to_string(), "shop/web:http");
        let active: Vec<String> = sp.active_backends().iter().map(|b| b.to_string()).collect();
        assert_eq!(active, ["10.244.0.1:8080", "10.244.0.2:8080"]);
        let not_ready = sp
            .endpoints
            .iter()
            .find(|e| e.addr.to_string() == "10.244.0.3:8080");
        assert!(not_ready.is_some_and(|e| !e.ready && !e.serving), "{sp:?}");
        let n1 = sp
            .endpoints
            .iter()
            .find(|e| e.node.as_deref() == Some("n1"));
        assert_eq!(
            n1.map(|e| e.addr.to_string()).as_deref(),
            Some("10.244.0.1:8080")
        );
        assert!(
            l.objects
                .slices
                .iter()
                .all(|s| s.origin == "web.yaml (document 2)")
        );
    }

    #[test]
    fn field_names_are_extracted_from_serde_messages() {
        assert_eq!(
            field_of("missing field `addressType` at line 1"),
            "addressType"
        );
        assert_eq!(field_of("invalid type: string"), "(document)");
    }

    #[tokio::test]
    async fn watcher_follows_changes() {
        let d = TempDir::new();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch_dir(d.0.clone(), Duration::from_millis(20), true, tx));
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("in time")
                .expect("open")
        };
        let first = next().await;
        assert!(first.complete && first.ports.is_empty());
        d.write("web.yaml", SVC);
        let added = next().await;
        assert!(!added.complete);
        assert_eq!(added.ports.len(), 1);
        assert!(added.ports.values().all(Option::is_some));
        std::fs::remove_file(d.0.join("web.yaml")).expect("rm");
        let removed = next().await;
        assert_eq!(removed.ports.len(), 1);
        assert!(removed.ports.values().all(Option::is_none));
        task.abort();
    }
}
