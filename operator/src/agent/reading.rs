//! One read of everything the node's programs counted, taken together so the
//! join sees a consistent picture: pod flows and the node state that names
//! them, and — where flannel's VXLAN monitor is attached — the overlay flows.
//!
//! The agent streams the flow maps into a [`FlowSink`] (its flow table,
//! updated in place) instead of copying them: [`read_into`] walks the maps in
//! batches and hands each entry over, overlay flows first (the pod flows are
//! joined with them), then pod flows. [`read`] collects them into vectors,
//! for one-off readers (`agent dump`, tests).

use std::path::Path;
use std::time::{Duration, Instant};

use weir_ebpf::abi::{FlowCounters, FlowKey};
use weir_ebpf::maps::{NodeMaps, Stats};
use weir_ebpf::vxlan::{VxlanMaps, VxlanStats};
use weir_ebpf::vxlan_abi::{IfaceCounters, VniCounters, VxFlowCounters, VxFlowKey};
use weir_ebpf::{BpfRoot, Error as EbpfError};
use weir_node_state::{AttachmentRecord, StateStore};

use super::Result;

#[derive(Debug, Clone, Default)]
pub struct PodSide {
    /// The flows, when read with [`read`]; empty when streamed by [`read_into`].
    pub flows: Vec<(FlowKey, FlowCounters)>,
    pub stats: Stats,
    pub live_flows: u64,
}

#[derive(Debug, Clone, Default)]
pub struct OverlaySide {
    /// The flows, when read with [`read`]; empty when streamed by [`read_into`].
    pub flows: Vec<(VxFlowKey, VxFlowCounters)>,
    pub per_vni: Vec<(u32, VniCounters)>,
    pub per_interface: Vec<(u32, IfaceCounters)>,
    pub stats: VxlanStats,
    pub live_flows: u64,
}

#[derive(Debug, Clone, Default)]
pub struct NodeReading {
    pub records: Vec<AttachmentRecord>,
    /// `None` until the first pod on this node was split (no maps pinned yet).
    pub pods: Option<PodSide>,
    /// `None` where no VXLAN monitor runs on this node.
    pub overlay: Option<OverlaySide>,
    pub took: Duration,
}

/// Receives one reading's flows as the maps are walked: first the node
/// state, then every overlay flow, then every pod flow.
pub trait FlowSink {
    fn records(&mut self, records: &[AttachmentRecord]);
    fn overlay_flow(&mut self, key: &VxFlowKey, counters: &VxFlowCounters);
    fn pod_flow(&mut self, key: &FlowKey, counters: &FlowCounters);
    /// The node's VXLAN monitor is attached; called before its flows.
    fn overlay_monitored(&mut self) {}
}

/// Reads the node state and counters and streams the flows into `sink`.
/// The returned reading has no flow vectors; `took` covers the walk and what
/// `sink` did with each flow.
pub fn read_into(
    state_dir: &Path,
    bpf_root: &BpfRoot,
    sink: &mut dyn FlowSink,
) -> Result<NodeReading> {
    let started = Instant::now();
    let records = StateStore::list_all(state_dir)?;
    sink.records(&records);
    let overlay = match VxlanMaps::open(bpf_root) {
        Ok(maps) => {
            // The stats before the walk: flows created during the walk then
            // lower the derived LRU eviction count (created − live) for a
            // round instead of raising it (map pressure must not be invented).
            let stats = maps.stats()?;
            sink.overlay_monitored();
            Some(OverlaySide {
                stats,
                live_flows: maps.for_each_flow(|k, c| sink.overlay_flow(k, c))?,
                flows: Vec::new(),
                per_vni: maps.per_vni()?,
                per_interface: maps.per_interface()?,
            })
        }
        Err(EbpfError::MapsNotPinned { .. } | EbpfError::VxlanMonitorNotLoaded { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let pods = match NodeMaps::open(bpf_root) {
        Ok(maps) => Some(PodSide {
            // Before the walk, as above.
            stats: maps.stats()?,
            live_flows: maps.for_each_flow(|k, c| sink.pod_flow(k, c))?,
            flows: Vec::new(),
        }),
        Err(EbpfError::MapsNotPinned { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(NodeReading {
        records,
        pods,
        overlay,
        took: started.elapsed(),
    })
}

/// Collects the flows into the reading's vectors.
#[derive(Default)]
struct Collect {
    pods: Vec<(FlowKey, FlowCounters)>,
    overlay: Vec<(VxFlowKey, VxFlowCounters)>,
}

impl FlowSink for Collect {
    fn records(&mut self, _: &[AttachmentRecord]) {}
    fn overlay_flow(&mut self, key: &VxFlowKey, counters: &VxFlowCounters) {
        self.overlay.push((*key, *counters));
    }
    fn pod_flow(&mut self, key: &FlowKey, counters: &FlowCounters) {
        self.pods.push((*key, *counters));
    }
}

/// One reading with every flow copied out.
pub fn read(state_dir: &Path, bpf_root: &BpfRoot) -> Result<NodeReading> {
    let mut collect = Collect::default();
    let mut reading = read_into(state_dir, bpf_root, &mut collect)?;
    if let Some(pods) = &mut reading.pods {
        pods.flows = collect.pods;
    }
    if let Some(overlay) = &mut reading.overlay {
        overlay.flows = collect.overlay;
    }
    Ok(reading)
}
