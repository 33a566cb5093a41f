//! One read of everything the node's programs counted, taken together so the
//! join sees a consistent picture: pod flows and the node state that names
//! them, and — where flannel's VXLAN monitor is attached — the overlay flows.

use std::path::Path;
use std::time::{Duration, Instant};

use weir_cni::state::{AttachmentRecord, StateStore};
use weir_ebpf::abi::{FlowCounters, FlowKey};
use weir_ebpf::maps::{NodeMaps, Stats};
use weir_ebpf::vxlan::{VxlanMaps, VxlanStats};
use weir_ebpf::vxlan_abi::{IfaceCounters, VniCounters, VxFlowCounters, VxFlowKey};
use weir_ebpf::{BpfRoot, Error as EbpfError};

use super::Result;

#[derive(Debug, Clone, Default)]
pub struct PodSide {
    pub flows: Vec<(FlowKey, FlowCounters)>,
    pub stats: Stats,
    pub live_flows: u64,
}

#[derive(Debug, Clone, Default)]
pub struct OverlaySide {
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

pub fn read(state_dir: &Path, bpf_root: &BpfRoot) -> Result<NodeReading> {
    let started = Instant::now();
    let records = StateStore::list_all(state_dir)?;
    let pods = match NodeMaps::open(bpf_root) {
        Ok(maps) => Some(PodSide {
            flows: maps.flows()?,
            stats: maps.stats()?,
            live_flows: maps.live_flow_count()?,
        }),
        Err(EbpfError::MapsNotPinned { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let overlay = match VxlanMaps::open(bpf_root) {
        Ok(maps) => Some(OverlaySide {
            flows: maps.flows()?,
            per_vni: maps.per_vni()?,
            per_interface: maps.per_interface()?,
            stats: maps.stats()?,
            live_flows: maps.live_flow_count()?,
        }),
        Err(EbpfError::MapsNotPinned { .. } | EbpfError::VxlanMonitorNotLoaded { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(NodeReading {
        records,
        pods,
        overlay,
        took: started.elapsed(),
    })
}
