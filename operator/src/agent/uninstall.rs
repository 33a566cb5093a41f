//! `helm uninstall` seen from a node: what the agent takes away when it is
//! stopped and its DaemonSet is gone (the same decision as install-cni's).
//!
//! Split pods that still run keep their stubs: undoing a split under a
//! running pod would cut its connections, and a stub whose node program is
//! gone still forwards. The VXLAN monitor, which would go on counting on the
//! node's own NIC, is detached; the records and pins of pods that no longer
//! run are removed; with no split pod left, nothing of weir stays.

use std::collections::HashSet;
use std::path::Path;

use tracing::{info, warn};
use weir_ebpf::BpfRoot;
use weir_node_state::StateStore;

/// What [`clean_node`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Underlay devices the VXLAN monitor was detached from.
    pub vxlan_detached: Vec<String>,
    /// Records (and their pins) of pods that no longer run.
    pub stale_pods: usize,
    /// Records kept for pods that still run.
    pub running_pods: usize,
    /// Whether the bpffs root and the node state went entirely.
    pub all_removed: bool,
}

/// Cleans the node after an uninstall. `running` holds the `(namespace,
/// name)` of the pods that run on this node now; a record without a pod
/// identity (not from Kubernetes) counts as running.
pub fn clean_node(
    bpf_root: &Path,
    state_dir: &Path,
    running: &HashSet<(String, String)>,
) -> Cleaned {
    let root = BpfRoot::new(bpf_root);
    let mut out = Cleaned::default();
    match weir_ebpf::vxlan::list_attachments(&root) {
        Ok(devices) => {
            for dev in devices {
                match weir_ebpf::vxlan::detach(&root, &dev) {
                    Ok(()) => out.vxlan_detached.push(dev),
                    Err(e) => {
                        warn!(device = %dev, error = %e, "could not detach the VXLAN monitor")
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "could not list the VXLAN monitor's attachments"),
    }
    let stores = StateStore::all_networks(state_dir).unwrap_or_default();
    for store in &stores {
        let Ok(records) = store.list() else { continue };
        for record in records {
            let runs = match (&record.pod.namespace, &record.pod.name) {
                (Some(ns), Some(name)) => running.contains(&(ns.clone(), name.clone())),
                _ => true,
            };
            if runs {
                out.running_pods += 1;
                continue;
            }
            let id = weir_ebpf::repair::attachment_of(&record);
            if let Err(e) = weir_ebpf::split::remove_pins(&root, &id) {
                warn!(attachment = %id, error = %e, "could not remove a gone pod's pins");
            }
            match store.remove(&record.container_id, &record.ifname) {
                Ok(()) => out.stale_pods += 1,
                Err(e) => {
                    warn!(attachment = %id, error = %e, "could not remove a gone pod's record")
                }
            }
        }
    }
    if out.running_pods == 0 {
        // Nothing calls the node program any more: every pin and record goes
        // (the agent's own lock file stays until it exits).
        let _ = std::fs::remove_dir_all(bpf_root);
        if let Ok(entries) = std::fs::read_dir(state_dir) {
            for entry in entries.flatten() {
                if entry.file_name() == "agent.lock" {
                    continue;
                }
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        out.all_removed = !bpf_root.exists();
    }
    info!(
        vxlan_detached = ?out.vxlan_detached,
        stale_pods = out.stale_pods,
        running_pods = out.running_pods,
        all_removed = out.all_removed,
        "uninstall: weir's node state cleaned"
    );
    out
}
