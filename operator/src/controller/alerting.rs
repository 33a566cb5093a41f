//! A profile's alerts against the API server: names the workloads
//! [`alerts::evaluate`] needs, puts its conditions into the PodFlows'
//! summaries, and tells what it raised as Events (through the
//! [`EventGate`]) and metrics.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt as _};
use tracing::{debug, warn};

use super::Result;
use super::alert_gate::Verdict;
use super::alerts::{self, AlertMemory, Clocks, FlowInput, Workloads};
use super::lifecycle::FlowState;
use super::profile::Context;
use weir_api::alerts::AlertsSpec;
use weir_api::{CaptureProfile, PodFlow};

/// The most workloads named per reconcile (one list call each); the rest
/// are judged on a later reconcile.
const MAX_LOOKUPS: usize = 200;

/// Judges the kept flows of `profile` (`states` are updated with their
/// conditions) and tells what was raised.
pub async fn judge(
    profile: &CaptureProfile,
    spec: &AlertsSpec,
    learning_since: Option<Timestamp>,
    listed: &[PodFlow],
    states: &mut [FlowState],
    kept: &HashSet<&str>,
    ctx: &Context,
) -> Result<()> {
    let ns = profile.namespace().unwrap_or_default();
    let name = profile.name_any();
    let uid = profile.uid().unwrap_or_default();
    let by_name: HashMap<&str, &PodFlow> = listed
        .iter()
        .map(|f| (f.metadata.name.as_deref().unwrap_or_default(), f))
        .collect();
    let judged: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| kept.contains(s.name.as_str()))
        .map(|(i, _)| i)
        .collect();
    let evaluation = {
        let inputs: Vec<FlowInput<'_>> = judged
            .iter()
            .map(|&i| {
                let s = &states[i];
                let flow = by_name[s.name.as_str()];
                FlowInput {
                    name: &s.name,
                    spec: &flow.spec,
                    summary: &s.summary,
                    stored: flow
                        .status
                        .as_ref()
                        .map(|st| st.conditions.as_slice())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let wanted = {
            let mut memories = ctx.alerts.lock().unwrap_or_else(|e| e.into_inner());
            alerts::pods_to_name(spec, &inputs, memories.entry(uid.clone()).or_default())
        };
        let (named, unnamed) = workloads(&ctx.client, &wanted).await;
        // Flows with an end not named yet wait for a later reconcile.
        let inputs: Vec<FlowInput<'_>> = inputs
            .into_iter()
            .filter(|f| !alerts::ends(f.spec).iter().any(|e| unnamed.contains(e)))
            .collect();
        let clocks = Clocks {
            now: Instant::now(),
            wall: Timestamp::now(),
            learning_since,
            flush_interval: profile
                .spec
                .flush_interval()
                .unwrap_or(Duration::from_secs(10)),
        };
        let mut memories = ctx.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let memory: &mut AlertMemory = memories.entry(uid).or_default();
        memory.workloads.extend(named);
        alerts::evaluate(spec, &ns, &clocks, memory, &inputs)
    };
    for &i in &judged {
        let s = &mut states[i];
        if let Some(conditions) = evaluation.conditions.get(&s.name) {
            s.summary.conditions = conditions.clone();
        } else {
            // Not judged this time: the stored conditions stay.
            s.summary.conditions = s.stored.conditions.clone();
        }
    }
    let enabled = enabled(spec);
    for alert in weir_api::alerts::conditions::ALL {
        if enabled.contains(&alert) {
            let firing = evaluation.firing.get(alert).copied().unwrap_or(0);
            ctx.metrics.set_firing(&ns, &name, alert, firing);
        } else {
            ctx.metrics.forget_firing(&ns, &name, alert);
        }
    }
    let interval = spec.event_interval().unwrap_or(Duration::from_secs(300));
    for raised in &evaluation.raised {
        if raised.transition {
            ctx.metrics.alert_raised(&ns, &name, raised.alert);
        }
        let verdict = ctx
            .event_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(
                &ns,
                &raised.flow,
                raised.alert,
                raised.transition,
                interval,
                Instant::now(),
            );
        if verdict != Verdict::Send {
            debug!(flow = %raised.flow, alert = raised.alert, outcome = verdict.as_str(), "alert Event held back");
            ctx.metrics.alert_event(&ns, verdict.as_str());
            continue;
        }
        let flow_ref = ObjectReference {
            api_version: Some(PodFlow::api_version(&()).into_owned()),
            kind: Some(PodFlow::kind(&()).into_owned()),
            name: Some(raised.flow.clone()),
            namespace: Some(ns.clone()),
            uid: by_name
                .get(raised.flow.as_str())
                .and_then(|f| f.metadata.uid.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: raised.alert.into(),
            note: Some(truncate(
                format!(
                    "{} ({}), PodFlow {}: {}",
                    raised.alert, raised.reason, raised.flow, raised.message
                ),
                1000,
            )),
            action: "Alert".into(),
            secondary: Some(flow_ref),
        };
        let mut targets: Vec<ObjectReference> = raised
            .pods
            .iter()
            .take(1)
            .map(|(pod_ns, pod)| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: Some(pod_ns.clone()),
                ..Default::default()
            })
            .collect();
        targets.push(profile.object_ref(&()));
        let mut sent = true;
        for target in &targets {
            if let Err(e) = ctx.recorder.publish(&event, target).await {
                warn!(error = %e, flow = %raised.flow, alert = raised.alert, "publishing an alert Event failed");
                sent = false;
            }
        }
        ctx.metrics.alert_event(
            &ns,
            if sent {
                Verdict::Send.as_str()
            } else {
                "failed"
            },
        );
    }
    Ok(())
}

fn enabled(spec: &AlertsSpec) -> Vec<&'static str> {
    use weir_api::alerts::conditions::*;
    [
        (spec.new_peer.is_some(), NEW_PEER),
        (spec.rate_spike.is_some(), RATE_SPIKE),
        (spec.tcp_resets.is_some(), TCP_RESETS),
        (spec.overlay_loss.is_some(), OVERLAY_LOSS),
    ]
    .into_iter()
    .filter_map(|(on, alert)| on.then_some(alert))
    .collect()
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The workloads of `pods` (`Deployment/web`; a pod without a controller,
/// or gone, is `Pod/<name>`), and the pods left unnamed: past the lookup
/// budget, or when the API server did not answer (judged later; the
/// summaries are written meanwhile).
async fn workloads(
    client: &kube::Client,
    pods: &[(String, String)],
) -> (Workloads, Vec<(String, String)>) {
    let mut named = Workloads::new();
    let mut unnamed = Vec::new();
    for (i, (ns, pod)) in pods.iter().enumerate() {
        if i >= MAX_LOOKUPS {
            unnamed.extend_from_slice(&pods[i..]);
            break;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        // `list` by name needs no more than the list the controller has.
        match api
            .list(&ListParams::default().fields(&format!("metadata.name={pod}")))
            .await
        {
            Ok(found) => {
                let workload = found
                    .items
                    .first()
                    .map(workload_of)
                    .unwrap_or_else(|| format!("Pod/{pod}"));
                named.insert((ns.clone(), pod.clone()), workload);
            }
            Err(e) => {
                warn!(error = %e, namespace = %ns, pod = %pod, "naming a pod's workload for newPeer failed; judged later");
                unnamed.extend_from_slice(&pods[i..]);
                break;
            }
        }
    }
    (named, unnamed)
}

/// `Kind/name` of the pod's controlling owner, with a ReplicaSet named as
/// its Deployment (its name less the `pod-template-hash`).
pub fn workload_of(pod: &Pod) -> String {
    let name = pod.name_any();
    let Some(owner) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return format!("Pod/{name}");
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return format!("Deployment/{deployment}");
    }
    // A CronJob names each run's Job `<cronjob>-<scheduled minute>`.
    if owner.kind == "Job"
        && let Some((cronjob, minute)) = owner.name.rsplit_once('-')
        && minute.len() >= 8
        && minute.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("CronJob/{cronjob}");
    }
    format!("{}/{}", owner.kind, owner.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn pod(owner: Option<(&str, &str)>, hash: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-7d9f-abcde".into()),
                labels: hash.map(|h| [("pod-template-hash".to_owned(), h.to_owned())].into()),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn workloads_are_named_by_their_controller() {
        assert_eq!(
            workload_of(&pod(Some(("ReplicaSet", "web-7d9f")), Some("7d9f"))),
            "Deployment/web"
        );
        assert_eq!(
            workload_of(&pod(Some(("ReplicaSet", "web-7d9f")), None)),
            "ReplicaSet/web-7d9f"
        );
        assert_eq!(
            workload_of(&pod(Some(("StatefulSet", "db")), None)),
            "StatefulSet/db"
        );
        assert_eq!(workload_of(&pod(None, None)), "Pod/web-7d9f-abcde");
        assert_eq!(
            workload_of(&pod(Some(("Job", "backup-29401230")), None)),
            "CronJob/backup"
        );
        assert_eq!(
            workload_of(&pod(Some(("Job", "migrate")), None)),
            "Job/migrate"
        );
    }
}
