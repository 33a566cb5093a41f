//! The node-wide maps as the agent sees them: opened from their pins, never
//! created here (the first attach creates them).
//!
//! # LRU evictions
//!
//! The kernel does not report LRU evictions from `weir_flows`. They are
//! derived: every flow the programs create is counted in
//! [`Stats::new_flows`], so
//!
//! ```text
//! evictions = new_flows - live_flow_count() - flows deleted by the agent
//! ```
//!
//! where the agent keeps its own total of the flows it deleted (for example
//! through [`NodeMaps::remove_pod`], which returns that number). See
//! [`Stats::lru_evictions`].
//!
//! # New-flow events
//!
//! `weir_flow_events` (a ring buffer of [`FlowEvent`](crate::abi::FlowEvent))
//! is pinned next to the other maps; a consumer opens it with
//! `aya::maps::MapData::from_pin` and `aya::maps::RingBuf`. Events dropped
//! while it was full are in [`Stats::events_lost`].

use std::{io, path::PathBuf};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};

use crate::{
    BpfRoot, Error, Result,
    abi::{self, FlowCounters, FlowKey, PodConfig, PodMode, StatIndex},
    pinned::{self, is_missing, map_err},
};

/// Handles on the pinned node-wide maps.
pub struct NodeMaps {
    flows: HashMap<MapData, FlowKey, FlowCounters>,
    pod_config: HashMap<MapData, u32, PodConfig>,
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for NodeMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMaps").finish_non_exhaustive()
    }
}

/// The data path's own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Flows created in `weir_flows` since the map was pinned.
    pub new_flows: u64,
    /// Flow creations that failed (other than a lost race between CPUs).
    pub flow_update_failed: u64,
    /// New-flow events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Non-IP frames of counted pods.
    pub non_ip_packets: u64,
    /// Frames of counted pods the parser could not classify.
    pub parse_errors: u64,
    /// Frames redirected across the split, all pods.
    pub redirects: u64,
    /// Frames of pods in pass-through mode.
    pub passthrough_packets: u64,
}

impl Stats {
    /// Flows the LRU evicted (the kernel does not count them): created minus
    /// still live minus deleted by the agent.
    pub fn lru_evictions(&self, live_flows: u64, deleted_by_agent: u64) -> u64 {
        self.new_flows
            .saturating_sub(live_flows)
            .saturating_sub(deleted_by_agent)
    }

    /// The counter of one slot.
    pub fn get(&self, idx: StatIndex) -> u64 {
        match idx {
            StatIndex::NewFlows => self.new_flows,
            StatIndex::FlowUpdateFailed => self.flow_update_failed,
            StatIndex::EventsLost => self.events_lost,
            StatIndex::NonIpPackets => self.non_ip_packets,
            StatIndex::ParseErrors => self.parse_errors,
            StatIndex::Redirects => self.redirects,
            StatIndex::PassthroughPackets => self.passthrough_packets,
        }
    }

    fn set(&mut self, idx: StatIndex, v: u64) {
        let slot = match idx {
            StatIndex::NewFlows => &mut self.new_flows,
            StatIndex::FlowUpdateFailed => &mut self.flow_update_failed,
            StatIndex::EventsLost => &mut self.events_lost,
            StatIndex::NonIpPackets => &mut self.non_ip_packets,
            StatIndex::ParseErrors => &mut self.parse_errors,
            StatIndex::Redirects => &mut self.redirects,
            StatIndex::PassthroughPackets => &mut self.passthrough_packets,
        };
        *slot = v;
    }
}

fn not_pinned(map: &'static str, path: PathBuf, source: io::Error) -> Error {
    Error::MapsNotPinned { map, path, source }
}

impl NodeMaps {
    /// Opens the pinned maps under `root`; fails with
    /// [`Error::MapsNotPinned`] before the first attach on this node.
    pub fn open(root: &BpfRoot) -> Result<Self> {
        Ok(Self {
            flows: pinned::open(root, abi::FLOWS_MAP, not_pinned)?,
            pod_config: pinned::open(root, abi::POD_CONFIG_MAP, not_pinned)?,
            stats: pinned::open(root, abi::STATS_MAP, not_pinned)?,
        })
    }

    /// Sets what the data path does for `pod_id`. Takes effect on the next frame.
    pub fn set_pod_mode(&mut self, pod_id: u32, mode: PodMode) -> Result<()> {
        let cfg = PodConfig {
            mode: mode as u32,
            reserved: 0,
        };
        self.pod_config
            .insert(pod_id, cfg, 0)
            .map_err(map_err(abi::POD_CONFIG_MAP))
    }

    /// The configured mode of `pod_id` (pass-through when it has no entry).
    pub fn pod_mode(&self, pod_id: u32) -> Result<PodMode> {
        match self.pod_config.get(&pod_id, 0) {
            Ok(cfg) => Ok(PodMode::from_raw(cfg.mode).unwrap_or(PodMode::PassThrough)),
            Err(MapError::KeyNotFound) => Ok(PodMode::PassThrough),
            Err(e) => Err(map_err(abi::POD_CONFIG_MAP)(e)),
        }
    }

    /// Drops `pod_id`'s config entry (back to the pass-through default) and
    /// leaves its flows for the agent's last read; the LRU ages them out.
    pub fn clear_pod_mode(&mut self, pod_id: u32) -> Result<()> {
        match self.pod_config.remove(&pod_id) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(map_err(abi::POD_CONFIG_MAP)(e)),
        }
    }

    /// Forgets a pod: its config entry (back to pass-through) and all its
    /// flows. Returns how many flows were deleted, for the eviction arithmetic.
    pub fn remove_pod(&mut self, pod_id: u32) -> Result<u64> {
        match self.pod_config.remove(&pod_id) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(map_err(abi::POD_CONFIG_MAP)(e)),
        }
        // collect first: deleting while walking get_next_key restarts the walk
        let keys: Vec<FlowKey> = self
            .flows
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.pod_id == pod_id)
            .collect();
        let mut deleted = 0;
        for k in keys {
            match self.flows.remove(&k) {
                Ok(()) => deleted += 1,
                // evicted meanwhile
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(map_err(abi::FLOWS_MAP)(e)),
            }
        }
        Ok(deleted)
    }

    /// Deletes one flow (after the agent has read and exported it); false if it was already gone.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool> {
        match self.flows.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(map_err(abi::FLOWS_MAP)(e)),
        }
    }

    /// A snapshot of all flows. Entries created or evicted during the walk
    /// may or may not appear.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowCounters)>> {
        self.flows
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(abi::FLOWS_MAP))
    }

    /// Calls `f` for every flow without collecting them, in batches of
    /// entries per syscall, and returns how many it saw (the live flow count
    /// of this walk). Entries created or evicted during the walk may or may
    /// not appear.
    pub fn for_each_flow(&self, f: impl FnMut(&FlowKey, &FlowCounters)) -> Result<u64> {
        pinned::for_each_entry(&self.flows, abi::FLOWS_MAP, f)
    }

    /// Number of entries in `weir_flows` now.
    pub fn live_flow_count(&self) -> Result<u64> {
        pinned::count_keys(abi::FLOWS_MAP, self.flows.keys())
    }

    /// The data path counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let mut out = Stats::default();
        for idx in StatIndex::ALL {
            let per_cpu = self
                .stats
                .get(&(idx as u32), 0)
                .map_err(map_err(abi::STATS_MAP))?;
            out.set(idx, pinned::sum_per_cpu(&per_cpu));
        }
        Ok(out)
    }
}
