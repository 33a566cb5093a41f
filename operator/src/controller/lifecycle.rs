//! What happens to a profile's PodFlows: the summary of their observers,
//! expiry after `flowTTL`, eviction beyond `maxPodFlows`, and the sweep of
//! flows whose profile is gone. [`plan`] decides (pure, unit-tested); the
//! rest talks to the API server.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use tracing::{debug, info};

use super::{Result, is_conflict, is_not_found};
use weir_api::labels;
use weir_api::{CaptureProfile, PodFlow, PodFlowStatus};

/// The label selector of the PodFlows weir made for `profile` (both labels:
/// the controller never touches anything else).
pub fn profile_selector(profile: &str) -> String {
    format!(
        "{}={},{}={profile}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_WEIR,
        labels::PROFILE
    )
}

/// The label selector of every PodFlow weir made, of any profile.
pub fn managed_selector() -> String {
    format!(
        "{}={},{}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_WEIR,
        labels::PROFILE
    )
}

/// Whether the controller may delete `flow`: weir made it.
pub fn is_managed(flow: &PodFlow) -> bool {
    let l = flow.labels();
    l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_WEIR)
        && l.contains_key(labels::PROFILE)
}

/// A flow's summary as it should be, and when it was last active.
#[derive(Debug, Clone)]
pub struct FlowState {
    pub name: String,
    /// The summary from the observers (empty `observers`), with the alert
    /// conditions once judged.
    pub summary: PodFlowStatus,
    /// The summary the PodFlow carries now (empty `observers`).
    pub stored: PodFlowStatus,
    /// The newest `lastSeen` of the observers, else the creation time.
    pub last_active: Option<Timestamp>,
}

impl FlowState {
    pub fn of(flow: &PodFlow) -> FlowState {
        let observers = flow
            .status
            .as_ref()
            .map(|s| s.observers.as_slice())
            .unwrap_or_default();
        let summary = PodFlowStatus::summarize(&flow.spec, observers);
        let stored = flow
            .status
            .clone()
            .map(|s| PodFlowStatus {
                observers: Vec::new(),
                ..s
            })
            .unwrap_or_default();
        let last_active = summary
            .last_seen
            .as_ref()
            .map(|t| t.0)
            .or_else(|| flow.metadata.creation_timestamp.as_ref().map(|t| t.0));
        FlowState {
            name: flow.name_any(),
            summary,
            stored,
            last_active,
        }
    }

    /// Whether the stored summary differs from `summary`.
    pub fn summary_stale(&self) -> bool {
        self.stored != self.summary
    }
}

/// What to do with a profile's flows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Idle longer than `flowTTL`.
    pub expired: Vec<String>,
    /// Beyond `maxPodFlows`, least recently seen first.
    pub evicted: Vec<String>,
    /// The flows kept, newest first.
    pub kept: Vec<String>,
}

/// Decides which flows expire (`last_active` older than `ttl` before `now`)
/// and which of the rest are evicted to keep at most `max` (the least
/// recently active go first; ties by name, so the choice is stable).
pub fn plan(flows: &[FlowState], now: Timestamp, ttl: Duration, max: usize) -> Plan {
    let mut plan = Plan::default();
    let mut alive: Vec<&FlowState> = Vec::new();
    for f in flows {
        let idle = f
            .last_active
            .map(|t| now.duration_since(t))
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if idle > ttl.as_secs_f64() {
            plan.expired.push(f.name.clone())
        } else {
            alive.push(f)
        }
    }
    alive.sort_by(|a, b| {
        b.last_active
            .cmp(&a.last_active)
            .then_with(|| a.name.cmp(&b.name))
    });
    for (i, f) in alive.into_iter().enumerate() {
        if i < max {
            plan.kept.push(f.name.clone())
        } else {
            plan.evicted.push(f.name.clone())
        }
    }
    plan.evicted.reverse();
    plan.expired.sort();
    plan
}

/// Deletes `flow` (only if weir made it, and only that object: uid
/// precondition). With `unchanged`, only if it is still the version that
/// was judged (resourceVersion precondition). `Ok(true)` when it is gone,
/// `Ok(false)` when it changed in between (judged again next time).
pub async fn delete_flow(api: &Api<PodFlow>, flow: &PodFlow, unchanged: bool) -> Result<bool> {
    if !is_managed(flow) {
        return Ok(false);
    }
    let resource_version = if unchanged {
        flow.resource_version()
    } else {
        None
    };
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version,
            uid: flow.uid(),
        }),
        ..DeleteParams::background()
    };
    match api.delete(&flow.name_any(), &dp).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(true),
        Err(e) if is_conflict(&e) => {
            debug!(flow = %flow.name_any(), "changed before its deletion: judged again later");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the PodFlows weir made whose CaptureProfile no longer exists, in
/// every namespace. The flows are listed before the profiles, so a flow
/// whose profile existed throughout is never taken. Returns how many went.
pub async fn sweep_orphans(client: &kube::Client) -> Result<usize> {
    let flows: Api<PodFlow> = Api::all(client.clone());
    let listed = flows
        .list(&ListParams::default().labels(&managed_selector()))
        .await?;
    let profiles: Api<CaptureProfile> = Api::all(client.clone());
    let existing: HashSet<(String, String)> = profiles
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    let mut deleted = 0;
    for flow in listed {
        let ns = flow.namespace().unwrap_or_default();
        let profile = flow
            .labels()
            .get(labels::PROFILE)
            .cloned()
            .unwrap_or_default();
        if existing.contains(&(ns.clone(), profile.clone())) {
            continue;
        }
        if delete_flow(&Api::namespaced(client.clone(), &ns), &flow, false).await? {
            info!(namespace = %ns, flow = %flow.name_any(), %profile, "deleted a PodFlow whose CaptureProfile is gone");
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, secs_ago: i64, now: Timestamp) -> FlowState {
        FlowState {
            name: name.into(),
            summary: PodFlowStatus::default(),
            stored: PodFlowStatus::default(),
            last_active: Some(now - k8s_openapi::jiff::SignedDuration::from_secs(secs_ago)),
        }
    }

    #[test]
    fn expired_flows_go_and_the_cap_evicts_the_least_recently_seen() {
        let now = Timestamp::now();
        let flows = [
            state("a", 10, now),
            state("b", 400, now),
            state("c", 5, now),
            state("d", 20, now),
            state("e", 30, now),
        ];
        let p = plan(&flows, now, Duration::from_secs(300), 2);
        assert_eq!(p.expired, ["b"]);
        assert_eq!(p.kept, ["c", "a"]);
        assert_eq!(p.evicted, ["e", "d"], "least recently seen first");
        let p = plan(&flows, now, Duration::from_secs(300), 10);
        assert!(p.evicted.is_empty());
        assert_eq!(p.kept.len(), 4);
    }

    #[test]
    fn ties_are_broken_by_name() {
        let now = Timestamp::now();
        let flows = [
            state("y", 10, now),
            state("x", 10, now),
            state("z", 10, now),
        ];
        let p = plan(&flows, now, Duration::from_secs(300), 1);
        assert_eq!(p.kept, ["x"]);
        assert_eq!(p.evicted, ["z", "y"]);
    }

    #[test]
    fn selectors_name_both_labels() {
        assert_eq!(
            profile_selector("web"),
            "app.kubernetes.io/managed-by=weir,weir.dev/profile=web"
        );
        assert_eq!(
            managed_selector(),
            "app.kubernetes.io/managed-by=weir,weir.dev/profile"
        );
    }
}
