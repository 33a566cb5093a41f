//! Reconciling a CaptureProfile: validate it, keep its PodFlows (summary,
//! TTL, cap), report its status, and on deletion remove its PodFlows
//! (finalizer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

use super::lifecycle::{self, FlowState};
use super::{Error, FINALIZER, Result};
use crate::crd::capture_profile::{conditions, reasons};
use crate::crd::pod_flow::SUMMARY_FIELD_MANAGER;
use crate::crd::{CaptureProfile, CaptureProfileStatus, PodFlow};

/// Requeue delay of a profile whose spec cannot be applied (a spec change
/// triggers a reconcile anyway).
const INVALID_REQUEUE: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    /// `flowsDroppedByCap` last written per profile uid: the watch cache may
    /// lag behind our own status write, the count must not.
    dropped: Mutex<HashMap<String, i64>>,
    /// Requeue delay after a failed reconcile.
    pub error_requeue: Duration,
}

impl Context {
    pub fn new(client: kube::Client, recorder: Recorder, error_requeue: Duration) -> Self {
        Self {
            client,
            recorder,
            dropped: Mutex::new(HashMap::new()),
            error_requeue,
        }
    }
}

/// The controller's reconcile function: the finalizer, then
/// [`CaptureProfile::reconcile`] or [`CaptureProfile::cleanup`].
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
    finalizer(&api, FINALIZER, profile, |event| async {
        match event {
            Finalizer::Apply(p) => p.reconcile(ctx.clone()).await,
            Finalizer::Cleanup(p) => p.cleanup(ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
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
    problem: Option<&crate::crd::SpecProblem>,
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
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: conditions::READY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

impl CaptureProfile {
    /// Apply: validate, keep the PodFlows, write the status.
    pub async fn reconcile(&self, ctx: Arc<Context>) -> Result<Action> {
        let ns = self
            .namespace()
            .ok_or_else(|| Error::MissingField(self.name_any(), "namespace"))?;
        let name = self.name_any();
        let uid = self.uid().unwrap_or_default();
        let problem = self.spec.check().err();
        let status = self.status.clone().unwrap_or_default();
        let previous_ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::READY);

        let matched = self.matched_pods(&ctx.client, &ns).await?;

        let flows: Api<PodFlow> = Api::namespaced(ctx.client.clone(), &ns);
        let listed = flows
            .list(&ListParams::default().labels(&lifecycle::profile_selector(&name)))
            .await?
            .items;
        let mut active = listed.len();
        let mut newly_dropped = 0i64;
        if problem.is_none() {
            let ttl = self.spec.flow_ttl().unwrap_or(Duration::MAX);
            let max = usize::try_from(self.spec.max_pod_flows).unwrap_or(usize::MAX);
            let states: Vec<FlowState> = listed.iter().map(FlowState::of).collect();
            let plan = lifecycle::plan(&states, Timestamp::now(), ttl, max);
            let by_name: HashMap<&str, &PodFlow> = listed
                .iter()
                .map(|f| (f.metadata.name.as_deref().unwrap_or_default(), f))
                .collect();
            for name in &plan.expired {
                if lifecycle::delete_flow(&flows, by_name[name.as_str()], true).await? {
                    active -= 1;
                    info!(flow = %name, ttl = %self.spec.flow_ttl, "deleted an expired PodFlow");
                }
            }
            for name in &plan.evicted {
                if lifecycle::delete_flow(&flows, by_name[name.as_str()], true).await? {
                    active -= 1;
                    newly_dropped += 1;
                    info!(flow = %name, max = self.spec.max_pod_flows, "evicted a PodFlow beyond maxPodFlows");
                }
            }
            let apply = PatchParams::apply(SUMMARY_FIELD_MANAGER).force();
            for state in states
                .iter()
                .filter(|s| s.summary_stale && plan.kept.contains(&s.name))
            {
                let patch = PodFlow::summary_patch(&state.name, &state.summary);
                match flows
                    .patch_status(&state.name, &apply, &Patch::Apply(&patch))
                    .await
                {
                    Ok(_) => debug!(flow = %state.name, "summary updated"),
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
            memory.insert(uid, total);
            total
        };
        let ready = ready_condition(previous_ready, problem.as_ref(), self.metadata.generation);
        let new_status = CaptureProfileStatus {
            conditions: vec![ready.clone()],
            observed_generation: self.metadata.generation,
            matched_pods: Some(i32::try_from(matched).unwrap_or(i32::MAX)),
            active_flows: Some(i32::try_from(active).unwrap_or(i32::MAX)),
            flows_dropped_by_cap: Some(dropped),
            // The agents do not report map pressure per flow yet.
            lost_samples: Some(status.lost_samples.unwrap_or(0)),
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

        self.publish_transition(&ctx, previous_ready, &ready, problem.is_some())
            .await;

        Ok(match problem {
            None => Action::requeue(
                self.spec
                    .flush_interval()
                    .unwrap_or(Duration::from_secs(10)),
            ),
            Some(_) => Action::requeue(INVALID_REQUEUE),
        })
    }

    /// Pods of the namespace the selector selects (not host-network, not
    /// finished). An unusable selector selects nothing.
    async fn matched_pods(&self, client: &kube::Client, ns: &str) -> Result<usize> {
        let Ok(selector) = Selector::try_from(self.spec.pod_selector.clone()) else {
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
        &self,
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
        if let Err(e) = ctx.recorder.publish(&event, &self.object_ref(&())).await {
            warn!(error = %e, "publishing an Event failed");
        }
    }

    /// Cleanup (the profile is being deleted): delete its PodFlows.
    pub async fn cleanup(&self, ctx: Arc<Context>) -> Result<Action> {
        let ns = self
            .namespace()
            .ok_or_else(|| Error::MissingField(self.name_any(), "namespace"))?;
        let name = self.name_any();
        let flows: Api<PodFlow> = Api::namespaced(ctx.client.clone(), &ns);
        let listed = flows
            .list(&ListParams::default().labels(&lifecycle::profile_selector(&name)))
            .await?;
        let mut deleted = 0;
        for flow in &listed.items {
            if lifecycle::delete_flow(&flows, flow, false).await? {
                deleted += 1;
            }
        }
        if let Some(uid) = self.uid() {
            ctx.dropped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
        info!(deleted, "profile deleted: removed its PodFlows");
        let event = Event {
            type_: EventType::Normal,
            reason: "Deleted".into(),
            note: Some(format!("deleted {deleted} PodFlows of the profile")),
            action: "Cleanup".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &self.object_ref(&())).await {
            warn!(error = %e, "publishing an Event failed");
        }
        Ok(Action::await_change())
    }
}
