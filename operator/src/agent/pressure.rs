//! Map pressure per CaptureProfile: what this node's data path could not
//! record while it counted a profile's pods, as the node's own entry of the
//! profile's `status.nodes` ([`NodeLoss`]).
//!
//! The node's maps are shared by every pod it counts, so their pressure is
//! node-wide: failed flow creations (`weir_stats`, both the pods' and the
//! VXLAN monitor's maps) and flows evicted from a full LRU map (derived:
//! created − live, see `weir_ebpf::maps`). Each profile that selects pods
//! on the node is charged what the node lost while it did:
//!
//! - the first time the agent sees a profile select pods here, the node's
//!   counters are the baseline (nothing is charged for what came before);
//! - every round adds the growth of the node's counters past the highest
//!   values charged so far; the entry carries those values
//!   (`nodeFailedUpdates`, `nodeLruEvictions`), so an agent restart goes on
//!   from the published entry (pressure while the agent was down is
//!   charged: the pods were counted meanwhile);
//! - the eviction count is derived from a walk of a changing map and may
//!   wobble by a few: a dip is not a new baseline, only growth past the
//!   highest value is charged, so wobbles are never charged twice;
//! - the node's maps pinned anew (counters from zero: fewer flows created
//!   than the last round saw, or, for an agent just started, counters below
//!   its published entry) make the node's counters the new baseline;
//! - a profile that stops selecting pods here keeps its entry; when it
//!   selects pods again, counting starts from the node's counters then.
//!
//! Only entries with losses are published (a node without pressure writes
//! nothing), at most once per profile per [`MIN_REPORT_INTERVAL`] or
//! `flushInterval`, whichever is longer, by the PodFlow writer within its
//! request budget ([`super::writer`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kube::ResourceExt as _;

use super::reading::NodeReading;
use weir_api::{CaptureProfile, NodeLoss};

/// Least time between two reports of one profile's entry by one node.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// The node's pressure counters now (since its maps were pinned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodePressure {
    pub failed_updates: u64,
    pub lru_evictions: u64,
    /// Flows created in the maps (never goes down until they are pinned anew).
    pub flows_created: u64,
}

impl NodePressure {
    /// Pods' and VXLAN monitor's flow maps together.
    pub fn of(reading: &NodeReading) -> Self {
        let mut p = Self::default();
        if let Some(pods) = &reading.pods {
            p.failed_updates += pods.stats.flow_update_failed;
            p.lru_evictions += pods.stats.lru_evictions(pods.live_flows, 0);
            p.flows_created += pods.stats.new_flows;
        }
        if let Some(overlay) = &reading.overlay {
            p.failed_updates += overlay.stats.flow_update_failed();
            p.lru_evictions += overlay.stats.lru_evictions(overlay.live_flows, 0);
            p.flows_created += overlay.stats.new_flows();
        }
        p
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fresh entry: nothing lost yet, the node's counters as the baseline.
pub fn baseline(node: &str, now: NodePressure) -> NodeLoss {
    rebase(
        &NodeLoss {
            node: node.to_owned(),
            ..Default::default()
        },
        now,
    )
}

/// `entry` with the node's counters now as its baseline, charging nothing.
pub fn rebase(entry: &NodeLoss, now: NodePressure) -> NodeLoss {
    NodeLoss {
        node_failed_updates: as_i64(now.failed_updates),
        node_lru_evictions: as_i64(now.lru_evictions),
        ..entry.clone()
    }
}

/// `previous` charged with the node's growth past its baseline (see the
/// module doc).
pub fn account(previous: &NodeLoss, now: NodePressure) -> NodeLoss {
    let grow = |before: i64, now: u64| -> (i64, i64) {
        let now = as_i64(now);
        if now > before {
            (now - before, now)
        } else {
            (0, before)
        }
    };
    let (failed, node_failed_updates) = grow(previous.node_failed_updates, now.failed_updates);
    let (evicted, node_lru_evictions) = grow(previous.node_lru_evictions, now.lru_evictions);
    let failed_updates = previous.failed_updates.saturating_add(failed);
    let lru_evictions = previous.lru_evictions.saturating_add(evicted);
    NodeLoss {
        node: previous.node.clone(),
        lost_samples: failed_updates.saturating_add(lru_evictions),
        failed_updates,
        lru_evictions,
        node_failed_updates,
        node_lru_evictions,
    }
}

/// One profile's entry as this node wants it published.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileLoss {
    pub namespace: String,
    pub profile: String,
    pub entry: NodeLoss,
    /// Least time between two reports of this entry.
    pub interval: Duration,
}

/// The entries of the profiles counting on this node, across rounds.
#[derive(Debug, Default)]
pub struct Ledger {
    /// By profile uid: the entry as of the last round.
    entries: HashMap<String, NodeLoss>,
    /// Profile uids that selected pods here in the last round.
    selected: HashSet<String>,
    /// `flows_created` of the last round.
    last_created: Option<u64>,
}

impl Ledger {
    /// One round: `selecting` are the profiles that select pods on this node
    /// now (with their flush interval). Returns the entries with losses.
    pub fn round<'a>(
        &mut self,
        node: &str,
        selecting: impl IntoIterator<Item = (&'a CaptureProfile, Duration)>,
        now: NodePressure,
    ) -> Vec<ProfileLoss> {
        let repinned = self.last_created.is_some_and(|c| now.flows_created < c);
        self.last_created = Some(now.flows_created);
        let mut out = Vec::new();
        let mut selected = HashSet::new();
        for (profile, flush_interval) in selecting {
            let (Some(uid), Some(namespace)) = (profile.uid(), profile.namespace()) else {
                continue;
            };
            let entry = match self.entries.get(&uid) {
                // Selecting pods again after a pause: the pause is not charged.
                Some(known) if repinned || !self.selected.contains(&uid) => rebase(known, now),
                Some(known) => account(known, now),
                // New to this process: go on from the published entry, if any.
                None => match profile
                    .status
                    .as_ref()
                    .and_then(|s| s.nodes.iter().find(|n| n.node == node))
                {
                    Some(published)
                        if as_i64(now.failed_updates) < published.node_failed_updates
                            || as_i64(now.lru_evictions) < published.node_lru_evictions =>
                    {
                        rebase(published, now)
                    }
                    Some(published) => account(published, now),
                    None => baseline(node, now),
                },
            };
            if entry.lost_samples > 0 {
                out.push(ProfileLoss {
                    namespace,
                    profile: profile.name_any(),
                    entry: entry.clone(),
                    interval: flush_interval.max(MIN_REPORT_INTERVAL),
                });
            }
            self.entries.insert(uid.clone(), entry);
            selected.insert(uid);
        }
        self.selected = selected;
        out
    }

    /// Forgets the profiles that no longer exist.
    pub fn retain(&mut self, existing: &HashSet<String>) {
        self.entries.retain(|uid, _| existing.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    use super::*;
    use weir_api::{CaptureProfileSpec, CaptureProfileStatus};

    fn profile(uid: &str, published: Option<NodeLoss>) -> CaptureProfile {
        CaptureProfile {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: CaptureProfileSpec::selecting(LabelSelector::default()),
            status: published.map(|n| CaptureProfileStatus {
                nodes: vec![n],
                ..Default::default()
            }),
        }
    }

    fn p(failed: u64, lru: u64) -> NodePressure {
        NodePressure {
            failed_updates: failed,
            lru_evictions: lru,
            flows_created: 1000,
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_profile_is_charged_the_growth_since_it_selected_pods_here() {
        let mut ledger = Ledger::default();
        let a = profile("a", None);
        // Pressure before the profile selected anything is not its.
        assert!(ledger.round("n1", [(&a, SEC)], p(5, 7)).is_empty());
        assert!(ledger.round("n1", [(&a, SEC)], p(5, 7)).is_empty());
        let out = ledger.round("n1", [(&a, SEC)], p(6, 9));
        assert_eq!(out.len(), 1);
        let e = &out[0].entry;
        assert_eq!(
            (
                e.node.as_str(),
                e.lost_samples,
                e.failed_updates,
                e.lru_evictions
            ),
            ("n1", 3, 1, 2)
        );
        assert_eq!((e.node_failed_updates, e.node_lru_evictions), (6, 9));
        assert_eq!(out[0].interval, MIN_REPORT_INTERVAL);
        assert_eq!(
            (out[0].namespace.as_str(), out[0].profile.as_str()),
            ("shop", "p-a")
        );
        // A wobble of the derived count is charged once, never twice.
        let out = ledger.round("n1", [(&a, SEC)], p(6, 8));
        assert_eq!(out[0].entry.lost_samples, 3);
        let out = ledger.round("n1", [(&a, SEC)], p(6, 9));
        assert_eq!(out[0].entry.lost_samples, 3);
        let out = ledger.round("n1", [(&a, SEC)], p(6, 11));
        assert_eq!(out[0].entry.lost_samples, 5);
        // Maps pinned anew: counters from zero are the new baseline.
        let fresh = NodePressure {
            failed_updates: 0,
            lru_evictions: 1,
            flows_created: 3,
        };
        let out = ledger.round("n1", [(&a, SEC)], fresh);
        assert_eq!(out[0].entry.lost_samples, 5);
        assert_eq!(out[0].entry.node_lru_evictions, 1);
        let out = ledger.round(
            "n1",
            [(&a, SEC)],
            NodePressure {
                lru_evictions: 2,
                ..fresh
            },
        );
        assert_eq!(out[0].entry.lost_samples, 6);
    }

    #[test]
    fn a_restarted_agent_goes_on_from_its_published_entry_and_pauses_are_free() {
        let published = NodeLoss {
            node: "n1".into(),
            lost_samples: 10,
            failed_updates: 4,
            lru_evictions: 6,
            node_failed_updates: 4,
            node_lru_evictions: 20,
        };
        let a = profile("a", Some(published.clone()));
        let mut ledger = Ledger::default();
        // Pressure while the agent was down is charged.
        let out = ledger.round("n1", [(&a, SEC)], p(4, 25));
        assert_eq!(out[0].entry.lost_samples, 15);
        // Not selecting pods for a while, then again: the pause is not charged.
        assert!(ledger.round("n1", [], p(4, 100)).is_empty());
        let out = ledger.round("n1", [(&a, SEC)], p(4, 100));
        assert_eq!(out[0].entry.lost_samples, 15);
        let out = ledger.round("n1", [(&a, SEC)], p(5, 100));
        assert_eq!(out[0].entry.lost_samples, 16);
        // Another node's entry is not ours.
        let b = profile("b", Some(published.clone()));
        assert!(ledger.round("n2", [(&b, SEC)], p(50, 50)).is_empty());
        ledger.retain(&HashSet::from(["b".to_owned()]));
        assert_eq!(ledger.entries.len(), 1);
        // A new agent on a node whose maps were pinned anew: a new baseline.
        let mut ledger = Ledger::default();
        let out = ledger.round("n1", [(&a, SEC)], p(0, 3));
        assert_eq!(out[0].entry.lost_samples, 10);
        let out = ledger.round("n1", [(&a, SEC)], p(0, 4));
        assert_eq!(out[0].entry.lost_samples, 11);
    }
}
