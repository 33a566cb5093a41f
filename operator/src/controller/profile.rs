//! Reconciling a CaptureProfile: validate it, keep its PodFlows (summary,
//! TTL, cap), report its status (with the nodes' map pressure summed into
//! `lostSamples` and the `MapPressure` condition), and on deletion remove
//! its PodFlows (finalizer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{Span, debug, field, info, instrument, warn};

use super::alert_gate::EventGate;
use super::alerting;
use super::alerts::AlertMemory;
use super::lifecycle::{self, FlowState};
use super::metrics::{ControllerMetrics, Deletion, KIND_PROFILE};
use super::{Error, FINALIZER, Result};
use weir_api::capture_profile::{conditions, pressure_reasons, reasons};
use weir_api::pod_flow::SUMMARY_FIELD_MANAGER;
use weir_api::{CaptureProfile, CaptureProfileStatus, PodFlow};

/// Requeue delay of a profile whose spec cannot be applied (a spec change
/// triggers a reconcile anyway).
const INVALID_REQUEUE: Duration = Duration::from_secs(300);

/// Least time between two `MapPressure` Events of one profile while its
/// condition stays True.
const PRESSURE_EVENT_INTERVAL: Duration = Duration::from_secs(300);

/// What the controller remembers of a profile's map pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PressureMemory {
    /// `lostSamples` last written.
    lost: i64,
    /// When it last grew.
    grew_at: Option<Instant>,
    /// When the last `MapPressure` Event went out.
    evented_at: Option<Instant>,
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    /// `flowsDroppedByCap` last written per profile uid: the watch cache may
    /// lag behind our own status write, the count must not.
    dropped: Mutex<HashMap<String, i64>>,
    /// Map pressure per profile uid (same reason).
    pressure: Mutex<HashMap<String, PressureMemory>>,
    /// Requeue delay after a failed reconcile.
    pub error_requeue: Duration,
    /// How long `MapPressure` stays True after `lostSamples` last grew.
    pub map_pressure_window: Duration,
    pub metrics: Arc<ControllerMetrics>,
    /// What each profile's alerts remember, by profile uid.
    pub(super) alerts: Mutex<HashMap<String, AlertMemory>>,
    /// Which alert Events go out (per conversation and per namespace).
    pub(super) event_gate: Mutex<EventGate>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        error_requeue: Duration,
        map_pressure_window: Duration,
        alert_events_per_minute: u32,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        Self {
            client,
            recorder,
            dropped: Mutex::new(HashMap::new()),
            pressure: Mutex::new(HashMap::new()),
            error_requeue,
            map_pressure_window,
            metrics,
            alerts: Mutex::new(HashMap::new()),
            event_gate: Mutex::new(EventGate::new(alert_events_per_minute)),
        }
    }
}

/// One reconcile's map-pressure decision (see [`pressure_step`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PressureStep {
    /// How much `lostSamples` grew since the last reconcile.
    grew_by: i64,
    /// The `MapPressure` condition's status.
    pressure_true: bool,
    /// Whether to emit a `MapPressure` Warning Event.
    send_event: bool,
    /// What to remember for the next reconcile.
    remembered: PressureMemory,
}

/// The map-pressure state machine, pure: from what was remembered (`known`;
/// none after a restart or a new leader), the `lostSamples` the status
/// carries, the nodes' sum `lost` now, and whether the condition was True.
/// True while the sum grew within `window`; an Event when it grows, at most
/// one per [`PRESSURE_EVENT_INTERVAL`] while the condition stays True.
fn pressure_step(
    known: Option<PressureMemory>,
    status_lost: Option<i64>,
    lost: i64,
    was_true: bool,
    now: Instant,
    window: Duration,
) -> PressureStep {
    let mut m = known.unwrap_or_default();
    let before = match known {
        Some(k) => k.lost,
        None => status_lost.unwrap_or(0),
    };
    let grew_by = lost.saturating_sub(before).max(0);
    if grew_by > 0 {
        m.grew_at = Some(now);
    } else if known.is_none() && was_true {
        // A new leader: it does not know when it last grew; True for
        // one more window.
        m.grew_at = Some(now);
    }
    let pressure_true = m.grew_at.is_some_and(|t| now.duration_since(t) < window);
    let send_event = grew_by > 0
        && (!was_true
            || m.evented_at
                .is_none_or(|t| now.duration_since(t) >= PRESSURE_EVENT_INTERVAL));
    if send_event {
        m.evented_at = Some(now);
    }
    m.lost = lost;
    PressureStep {
        grew_by,
        pressure_true,
        send_event,
        remembered: m,
    }
}

/// The controller's reconcile function: the finalizer, then
/// [`apply`] or [`cleanup`].
#[instrument(skip(profile, ctx), fields(namespace, profile, generation = field::Empty))]
pub async fn reconcile(profile: Arc<CaptureProfile>, ctx: Arc<Context>) -> Result<Action> {
    let ns = profile
        .namespace()
        .ok_or_else(|| Error::MissingField(profile.name_any(), "namespace"))?;
    let span = Span::current();
    span.record("namespace", ns.as_str());
    span.record("profile", profile.name_any().as_str());
    span.record(
        "generation",
        profile.metadata.generation.unwrap_or_default(),
    );
    let api: Api<CaptureProfile> = Api::namespaced(ctx.client.clone(), &ns);
    let started = Instant::now();
    let result = finalizer(&api, FINALIZER, profile, |event| async {
        match event {
            Finalizer::Apply(p) => apply(&p, ctx.clone()).await,
            Finalizer::Cleanup(p) => cleanup(&p, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(KIND_PROFILE, started.elapsed(), result.is_ok());
    result
}

/// After a failed reconcile: log, retry later.
pub fn error_policy(profile: Arc<CaptureProfile>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = ?profile.namespace(), profile = %profile.name_any(), %error, "reconcile failed");
    Action::requeue(ctx.error_requeue)
}

/// The `Ready` condition as it should be, keeping the transition time when
/// the status does not change.
fn ready_condition(
    previous: Option<&Condition>,
    problem: Option<&weir_api::SpecProblem>,
    generation: Option<i64>,
) -> Condition {
    let (status, reason, message) = match problem {
        None => (
            "True",
            reasons::ACTIVE,
            "the profile is valid; its PodFlows are kept by the controller".to_owned(),
        ),
        Some(p) => ("False", p.reason, p.message.clone()),
    };
    condition(
        conditions::READY,
        previous,
        status,
        reason,
        message,
        generation,
    )
}

/// A condition, keeping the transition time of `previous` when the status
/// does not change.
fn condition(
    type_: &str,
    previous: Option<&Condition>,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The nodes with losses, most first (at most 5 named).
fn losing_nodes(status: &CaptureProfileStatus) -> String {
    let mut nodes: Vec<(&str, i64)> = status
        .nodes
        .iter()
        .filter(|n| n.lost_samples > 0)
        .map(|n| (n.node.as_str(), n.lost_samples))
        .collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut text: Vec<String> = nodes
        .iter()
        .take(5)
        .map(|(n, l)| format!("{n}: {l}"))
        .collect();
    if nodes.len() > 5 {
        text.push(format!("{} more nodes", nodes.len() - 5));
    }
    text.join(", ")
}

/// Apply: validate, keep the PodFlows, write the status.
pub async fn apply(profile: &CaptureProfile, ctx: Arc<Context>) -> Result<Action> {
    let ns = profile
        .namespace()
        .ok_or_else(|| Error::MissingField(profile.name_any(), "namespace"))?;
    let name = profile.name_any();
    let uid = profile.uid().unwrap_or_default();
    let problem = profile.spec.check().err();
    let status = profile.status.clone().unwrap_or_default();
    let previous_ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY);
    let previous_pressure = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::MAP_PRESSURE);

    let matched = matched_pods(profile, &ctx.client, &ns).await?;
    // The new-peer learning window starts when it is first asked for.
    let learning_since = profile
        .spec
        .alerts
        .as_ref()
        .and_then(|a| a.new_peer.as_ref())
        .map(|_| {
            status
                .learning_since
                .clone()
                .unwrap_or_else(|| Time(Timestamp::now()))
        });

    let flows: Api<PodFlow> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = flows
        .list(&ListParams::default().labels(&lifecycle::profile_selector(&name)))
        .await?
        .items;
    let mut active = listed.len();
    let mut newly_dropped = 0i64;
    if problem.is_none() {
        let ttl = profile.spec.flow_ttl().unwrap_or(Duration::MAX);
        let max = usize::try_from(profile.spec.max_pod_flows).unwrap_or(usize::MAX);
        let mut states: Vec<FlowState> = listed.iter().map(FlowState::of).collect();
        let plan = lifecycle::plan(&states, Timestamp::now(), ttl, max);
        // Looked up once per flow below: a set, not the plan's list.
        let kept: std::collections::HashSet<&str> = plan.kept.iter().map(String::as_str).collect();
        let by_name: HashMap<&str, &PodFlow> = listed
            .iter()
            .map(|f| (f.metadata.name.as_deref().unwrap_or_default(), f))
            .collect();
        for name in &plan.expired {
            if lifecycle::delete_flow(&flows, by_name[name.as_str()], true).await? {
                active -= 1;
                ctx.metrics.deleted(Deletion::Ttl, 1);
                info!(flow = %name, ttl = %profile.spec.flow_ttl, "deleted an expired PodFlow");
            }
        }
        for name in &plan.evicted {
            if lifecycle::delete_flow(&flows, by_name[name.as_str()], true).await? {
                active -= 1;
                newly_dropped += 1;
                ctx.metrics.deleted(Deletion::Cap, 1);
                info!(flow = %name, max = profile.spec.max_pod_flows, "evicted a PodFlow beyond maxPodFlows");
            }
        }
        match &profile.spec.alerts {
            Some(alerts) => {
                alerting::judge(
                    profile,
                    alerts,
                    learning_since.as_ref().map(|t| t.0),
                    &listed,
                    &mut states,
                    &kept,
                    &ctx,
                )
                .await?
            }
            None => ctx.metrics.forget_profile(&ns, &name),
        }
        let apply = PatchParams::apply(SUMMARY_FIELD_MANAGER).force();
        for state in states
            .iter()
            .filter(|s| s.summary_stale() && kept.contains(s.name.as_str()))
        {
            let patch = PodFlow::summary_patch(&state.name, &state.summary);
            match flows
                .patch_status(&state.name, &apply, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    ctx.metrics.summary_written();
                    debug!(flow = %state.name, "summary updated")
                }
                Err(e) if super::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    let dropped = {
        let mut memory = ctx.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let seen = status
            .flows_dropped_by_cap
            .unwrap_or(0)
            .max(memory.get(&uid).copied().unwrap_or(0));
        let total = seen.saturating_add(newly_dropped);
        memory.insert(uid.clone(), total);
        total
    };
    let ready = ready_condition(
        previous_ready,
        problem.as_ref(),
        profile.metadata.generation,
    );

    // Map pressure: the sum of the nodes' entries.
    let lost = status.lost_by_nodes();
    let known = ctx
        .pressure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .copied();
    let PressureStep {
        grew_by,
        pressure_true,
        send_event,
        remembered,
    } = pressure_step(
        known,
        status.lost_samples,
        lost,
        previous_pressure.is_some_and(|c| c.status == "True"),
        Instant::now(),
        ctx.map_pressure_window,
    );
    let pressure = if pressure_true {
        condition(
            conditions::MAP_PRESSURE,
            previous_pressure,
            "True",
            pressure_reasons::SAMPLES_LOST,
            format!(
                "{lost} updates lost on the nodes counting the selected pods ({}): counts are a lower bound",
                losing_nodes(&status)
            ),
            profile.metadata.generation,
        )
    } else {
        condition(
            conditions::MAP_PRESSURE,
            previous_pressure,
            "False",
            pressure_reasons::NO_LOSS,
            if lost > 0 {
                format!(
                    "no updates lost for {:?}; {lost} lost before",
                    ctx.map_pressure_window
                )
            } else {
                "no updates lost".to_owned()
            },
            profile.metadata.generation,
        )
    };

    let new_status = CaptureProfileStatus {
        conditions: vec![ready.clone(), pressure],
        observed_generation: profile.metadata.generation,
        matched_pods: Some(i32::try_from(matched).unwrap_or(i32::MAX)),
        active_flows: Some(i32::try_from(active).unwrap_or(i32::MAX)),
        flows_dropped_by_cap: Some(dropped),
        lost_samples: Some(lost),
        learning_since,
        // The nodes' entries are theirs: never in the controller's apply.
        nodes: Vec::new(),
    };
    let body = json!({
        "apiVersion": CaptureProfile::api_version(&()),
        "kind": CaptureProfile::kind(&()),
        "metadata": { "name": name },
        "status": new_status,
    });
    let profiles: Api<CaptureProfile> = Api::namespaced(ctx.client.clone(), &ns);
    profiles
        .patch_status(
            &name,
            &PatchParams::apply(SUMMARY_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;

    // Remembered once written: a failed write is judged again.
    ctx.pressure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid.clone(), remembered);

    publish_transition(profile, &ctx, previous_ready, &ready, problem.is_some()).await;
    if send_event {
        let event = Event {
            type_: EventType::Warning,
            reason: conditions::MAP_PRESSURE.into(),
            note: Some(format!(
                "lostSamples grew by {grew_by} to {lost} ({}): the nodes' flow maps are full; counts of this profile's PodFlows are a lower bound",
                losing_nodes(&status)
            )),
            action: "Summarize".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &profile.object_ref(&())).await {
            warn!(error = %e, "publishing an Event failed");
        }
    }

    let flush = profile
        .spec
        .flush_interval()
        .unwrap_or(Duration::from_secs(10));
    Ok(match problem {
        // While MapPressure is True, soon enough to turn it False in time.
        None if pressure_true => Action::requeue(flush.min(ctx.map_pressure_window)),
        None => Action::requeue(flush),
        Some(_) if pressure_true => Action::requeue(INVALID_REQUEUE.min(ctx.map_pressure_window)),
        Some(_) => Action::requeue(INVALID_REQUEUE),
    })
}

/// Pods of the namespace the selector selects (not host-network, not
/// finished). An unusable selector selects nothing.
async fn matched_pods(profile: &CaptureProfile, client: &kube::Client, ns: &str) -> Result<usize> {
    let Ok(selector) = Selector::try_from(profile.spec.pod_selector.clone()) else {
        return Ok(0);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels_from(&selector))
        .await?;
    Ok(listed
        .items
        .iter()
        .filter(|p| {
            let host_network = p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !host_network && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count())
}

/// An Event when `Ready` changes, or when an invalid spec changes.
async fn publish_transition(
    profile: &CaptureProfile,
    ctx: &Context,
    previous: Option<&Condition>,
    ready: &Condition,
    invalid: bool,
) {
    let changed = previous.is_none_or(|p| {
        p.status != ready.status || p.reason != ready.reason || p.message != ready.message
    });
    if !changed {
        return;
    }
    let event = Event {
        type_: if invalid {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: if invalid {
            ready.reason.clone()
        } else {
            "Ready".into()
        },
        note: Some(ready.message.clone()),
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &profile.object_ref(&())).await {
        warn!(error = %e, "publishing an Event failed");
    }
}

/// Cleanup (the profile is being deleted): delete its PodFlows.
pub async fn cleanup(profile: &CaptureProfile, ctx: Arc<Context>) -> Result<Action> {
    let ns = profile
        .namespace()
        .ok_or_else(|| Error::MissingField(profile.name_any(), "namespace"))?;
    let name = profile.name_any();
    let flows: Api<PodFlow> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = flows
        .list(&ListParams::default().labels(&lifecycle::profile_selector(&name)))
        .await?;
    let mut deleted = 0;
    for flow in &listed.items {
        if lifecycle::delete_flow(&flows, flow, false).await? {
            deleted += 1;
            ctx.metrics.deleted(Deletion::ProfileDeleted, 1);
        }
    }
    if let Some(uid) = profile.uid() {
        ctx.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        ctx.pressure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        ctx.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
    }
    ctx.metrics.forget_profile(&ns, &name);
    info!(deleted, "profile deleted: removed its PodFlows");
    let event = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(format!("deleted {deleted} PodFlows of the profile")),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &profile.object_ref(&())).await {
        warn!(error = %e, "publishing an Event failed");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn map_pressure_is_true_while_losses_grew_within_the_window() {
        let t0 = Instant::now();
        // First sight, nothing lost: False, no Event.
        let a = pressure_step(None, None, 0, false, t0, WINDOW);
        assert_eq!(
            (a.grew_by, a.pressure_true, a.send_event),
            (0, false, false)
        );
        // Losses grow: True and an Event.
        let t1 = t0 + Duration::from_secs(1);
        let b = pressure_step(Some(a.remembered), Some(0), 7, false, t1, WINDOW);
        assert_eq!((b.grew_by, b.pressure_true, b.send_event), (7, true, true));
        assert_eq!(b.remembered.lost, 7);
        // No growth, within the window: still True, no Event.
        let t2 = t1 + Duration::from_secs(30);
        let c = pressure_step(Some(b.remembered), Some(7), 7, true, t2, WINDOW);
        assert_eq!((c.grew_by, c.pressure_true, c.send_event), (0, true, false));
        // Growth again soon after: True, but the Event waits its interval.
        let d = pressure_step(Some(c.remembered), Some(7), 9, true, t2, WINDOW);
        assert_eq!((d.grew_by, d.pressure_true, d.send_event), (2, true, false));
        // Growth after the Event interval: another Event.
        let t3 = t1 + PRESSURE_EVENT_INTERVAL;
        let e = pressure_step(Some(d.remembered), Some(9), 10, true, t3, WINDOW);
        assert_eq!((e.grew_by, e.pressure_true, e.send_event), (1, true, true));
        // No growth for a whole window: False.
        let t4 = t3 + WINDOW;
        let f = pressure_step(Some(e.remembered), Some(10), 10, true, t4, WINDOW);
        assert_eq!(
            (f.grew_by, f.pressure_true, f.send_event),
            (0, false, false)
        );
    }

    #[test]
    fn a_new_leader_keeps_a_true_condition_for_one_window_and_counts_from_the_status() {
        let t0 = Instant::now();
        // It remembers nothing; the status says 5 lost and True.
        let a = pressure_step(None, Some(5), 5, true, t0, WINDOW);
        assert_eq!((a.grew_by, a.pressure_true, a.send_event), (0, true, false));
        let b = pressure_step(Some(a.remembered), Some(5), 5, true, t0 + WINDOW, WINDOW);
        assert!(!b.pressure_true);
        // Growth is measured from the status's lostSamples, not from zero.
        let c = pressure_step(None, Some(5), 8, false, t0, WINDOW);
        assert_eq!((c.grew_by, c.pressure_true, c.send_event), (3, true, true));
    }
}
