//! The writer's schedule, pure: which PodFlows have changes to publish,
//! which one goes next, and when the next one falls due. No I/O, no clock
//! of its own (`now` is given), so it is tested directly.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use super::conversations::DesiredFlow;
use weir_api::Observer;

/// A PodFlow: (namespace, name).
pub(super) type Key = (String, String);

/// What the writer knows of one PodFlow.
pub(super) struct Entry {
    pub(super) desired: DesiredFlow,
    pub(super) written: Option<Observer>,
    pub(super) spec_applied: bool,
    pub(super) last_write: Option<Instant>,
    pub(super) dirty_since: Option<Instant>,
    pub(super) blocked_until: Option<Instant>,
}

/// Takes this round's conversations in: new ones are added, changed ones
/// marked dirty (since `now`, unless already), and those gone from the maps
/// dropped once nothing of theirs is left to write.
pub(super) fn merge(entries: &mut HashMap<Key, Entry>, flows: &[DesiredFlow], now: Instant) {
    let mut present = HashSet::with_capacity(flows.len());
    for flow in flows {
        let key = (flow.namespace.clone(), flow.name.clone());
        present.insert(key.clone());
        let entry = entries.entry(key).or_insert_with(|| Entry {
            desired: flow.clone(),
            written: None,
            spec_applied: false,
            last_write: None,
            dirty_since: None,
            blocked_until: None,
        });
        entry.desired = flow.clone();
        if entry.written.as_ref() != Some(&flow.observer) {
            entry.dirty_since.get_or_insert(now);
        }
    }
    // Gone from the maps: keep what still has to be written, drop the rest.
    entries.retain(|k, e| present.contains(k) || e.dirty_since.is_some());
}

/// How many PodFlows have changes not yet published.
pub(super) fn dirty(entries: &HashMap<Key, Entry>) -> u64 {
    entries.values().filter(|e| e.dirty_since.is_some()).count() as u64
}

/// The backlog as [`next`] found it (see the module docs of the writer).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Backlog {
    /// Due, never created, and their profile's maxPodFlows reached.
    pub held_by_cap: u64,
    /// Pending and due now.
    pub due: u64,
    /// Dirty, not paused after a refusal, not held by the cap.
    pub pending: u64,
    /// When the oldest pending change came in.
    pub oldest_dirty: Option<Instant>,
}

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Next {
    /// The PodFlow to write now: new ones first, then the longest unwritten.
    pub key: Option<Key>,
    /// When the next one that is not due yet will be.
    pub wake: Option<Instant>,
    pub backlog: Backlog,
}

/// Whether a PodFlow that was never created must wait because its
/// profile's maxPodFlows is reached (counting the PodFlows the profile
/// reports and the ones this node created, whichever is more).
fn held_by_cap(e: &Entry, created: &HashMap<&str, i32>) -> bool {
    !e.spec_applied && e.written.is_none() && {
        let active = e.desired.profile_active_flows.unwrap_or(0).max(
            created
                .get(e.desired.spec.profile.as_str())
                .copied()
                .unwrap_or(0),
        );
        active >= e.desired.max_pod_flows
    }
}

/// The next PodFlow to write at `now`, when the next one falls due, and
/// the backlog.
pub(super) fn next(entries: &HashMap<Key, Entry>, now: Instant) -> Next {
    type Rank = (bool, Instant);
    let mut best: Option<(Rank, &Key)> = None;
    let mut wake: Option<Instant> = None;
    let mut backlog = Backlog::default();
    let mut created: HashMap<&str, i32> = HashMap::new();
    for e in entries.values().filter(|e| e.spec_applied) {
        *created.entry(e.desired.spec.profile.as_str()).or_default() += 1;
    }
    for (key, e) in entries {
        let Some(dirty_since) = e.dirty_since else {
            continue;
        };
        let paused = e.blocked_until.is_some_and(|b| b > now);
        let due = match (e.blocked_until, e.last_write) {
            (Some(b), _) if b > now => b,
            (_, Some(last)) => last + e.desired.flush_interval,
            _ => now,
        };
        let held = held_by_cap(e, &created);
        if !paused && !held {
            backlog.pending += 1;
            backlog.oldest_dirty = Some(
                backlog
                    .oldest_dirty
                    .map_or(dirty_since, |o| o.min(dirty_since)),
            );
            if due <= now {
                backlog.due += 1;
            }
        }
        if due > now {
            wake = Some(wake.map_or(due, |w| w.min(due)));
            continue;
        }
        if held {
            backlog.held_by_cap += 1;
            continue;
        }
        let rank = (e.written.is_some(), e.last_write.unwrap_or(dirty_since));
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, key));
        }
    }
    Next {
        key: best.map(|(_, k)| k.clone()),
        wake,
        backlog,
    }
}
