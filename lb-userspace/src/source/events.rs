//! Problems with a Service, told where its owner looks: a Warning event
//! `NotProgrammed` on the Service (`kubectl describe service` shows it),
//! besides the agent's log and the `switchyard_objects_invalid` gauge. An
//! event goes out when a Service's problems change, not on every resync.

use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::debug;

use super::ObjectError;

/// kube-proxy's Events say `kube-proxy`; ours say `switchyard`, with the
/// node that found the problem as the instance.
const CONTROLLER: &str = "switchyard";
/// The API server refuses longer notes.
const MAX_NOTE: usize = 1024;

pub struct ProblemReporter {
    recorder: Recorder,
}

impl ProblemReporter {
    pub fn new(client: Client, node_name: Option<&str>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: node_name.map(String::from),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes in the background: the API server's latency must not
    /// hold up the datapath's updates.
    pub fn report(&self, service: &Service, problems: &[ObjectError]) {
        let reference = service.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: "NotProgrammed".into(),
            note: Some(note(problems)),
            action: "Program".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                debug!("publishing an event about {:?}: {e}", reference.name);
            }
        });
    }
}

/// "spec.ports[1].protocol: SCTP is not supported; …", within the limit.
fn note(problems: &[ObjectError]) -> String {
    let mut note = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ");
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_names_each_field_and_fits_the_api() {
        let p = |field: &str, message: &str| ObjectError {
            origin: "api".into(),
            object: "Service test/web".into(),
            field: field.into(),
            message: message.into(),
        };
        assert_eq!(
            note(&[
                p("spec.ports[1].protocol", "SCTP is not supported"),
                p("spec.ports[2].port", "70000 is out of range"),
            ]),
            "spec.ports[1].protocol: SCTP is not supported; spec.ports[2].port: 70000 is out of range"
        );
        let long = vec![p("spec.externalIPs[0]", &"x".repeat(2000))];
        assert_eq!(note(&long).len(), MAX_NOTE);
    }
}
