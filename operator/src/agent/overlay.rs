//! Keeps flannel's VXLAN traffic watched: finds the flannel VXLAN devices the
//! kernel has (flannel may start after the agent, so this runs every round),
//! attaches the monitor to each one's underlay device unless an intact
//! attachment is already pinned, and turns the monitor's counters into
//! metrics rows.

use std::collections::HashMap;

use super::vxlan_discovery;
use tracing::{info, warn};
use weir_ebpf::BpfRoot;
use weir_ebpf::vxlan::{self, Interface};

use super::metrics::MetricsSnapshot;
use super::reading::OverlaySide;
use super::totals::Count;

/// Underlay ifindex → name, for labelling per-interface counters.
pub type UnderlayNames = HashMap<u32, String>;

/// Makes sure every flannel VXLAN device's underlay is monitored. Returns
/// the underlays found; problems are logged, never fatal: counting pods goes
/// on without the overlay view.
pub fn ensure_attached(root: &BpfRoot) -> UnderlayNames {
    let mut names = UnderlayNames::new();
    let devices = match vxlan_discovery::discover() {
        Ok(devices) => devices,
        Err(e) => {
            warn!("cannot list flannel VXLAN devices: {e}");
            return names;
        }
    };
    for device in devices {
        let Some(underlay) = &device.underlay else {
            warn!(device = %device.name, "no underlay device found for flannel VXLAN device; not monitored");
            continue;
        };
        names.insert(underlay.ifindex, underlay.name.clone());
        let params = device.params();
        if vxlan::verify(root, &underlay.name, &params).is_ok() {
            continue;
        }
        match vxlan::attach(root, Interface::Index(underlay.ifindex), &params) {
            Ok(att) => info!(
                device = %device.name, vni = device.vni, port = device.port, underlay = %att.ifname,
                "VXLAN monitor attached"
            ),
            Err(e) => {
                warn!(device = %device.name, underlay = %underlay.name, "cannot attach VXLAN monitor: {e}")
            }
        }
    }
    names
}

pub fn fill_metrics(snapshot: &mut MetricsSnapshot, overlay: &OverlaySide, names: &UnderlayNames) {
    snapshot.active_overlay_flows = overlay.live_flows;
    snapshot.vxlan_by_vni.clear();
    for (vni, c) in &overlay.per_vni {
        snapshot.vxlan_by_vni.push((
            *vni,
            "encap",
            Count {
                packets: c.encap_packets,
                bytes: c.encap_bytes,
            },
        ));
        snapshot.vxlan_by_vni.push((
            *vni,
            "decap",
            Count {
                packets: c.decap_packets,
                bytes: c.decap_bytes,
            },
        ));
    }
    snapshot.vxlan_by_interface.clear();
    for (ifindex, c) in &overlay.per_interface {
        let name = names
            .get(ifindex)
            .cloned()
            .unwrap_or_else(|| format!("ifindex-{ifindex}"));
        snapshot.vxlan_by_interface.push((
            name.clone(),
            "encap",
            Count {
                packets: c.encap_packets,
                bytes: c.encap_bytes,
            },
        ));
        snapshot.vxlan_by_interface.push((
            name,
            "decap",
            Count {
                packets: c.decap_packets,
                bytes: c.decap_bytes,
            },
        ));
    }
    snapshot.map_pressure.push((
        "vxlan_flows",
        "update_failed",
        overlay.stats.flow_update_failed(),
    ));
    snapshot.map_pressure.push((
        "vxlan_flows",
        "lru_evicted",
        overlay.stats.lru_evictions(overlay.live_flows, 0),
    ));
    snapshot
        .events_lost
        .push(("overlay", overlay.stats.events_lost()));
}
