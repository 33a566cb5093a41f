//! Undoing an attachment from node state and what the pod's namespace
//! holds: DEL, GC, a retried ADD, and the repair of ADDs that died half-way
//! (`kill -9` by a runtime whose timeout expired), which GC and the node
//! agent run.
//!
//! An ADD holds its attachment's lock while it works and writes its journal
//! (a record in phase `adding`, with the original interface) before its
//! first change. A record in phase `adding` whose lock is free is therefore
//! an ADD that died: [`repair_orphans`] puts that pod back as the plugins
//! before weir left it, exactly as DEL would, and removes the record. The
//! agent calls it when it starts; the CNI plugin's DEL, ADD and GC use
//! [`release`].

use std::path::{Path, PathBuf};

use tracing::{info, warn};
use weir_node_state::{AttachmentRecord, Phase, StateStore};

use crate::BpfRoot;
use crate::maps::NodeMaps;
use crate::netns::{self, NetnsError};
use crate::unsplit::{self as split, Names, Original};

/// The bpffs attachment id of a record: its own, or for a record of an
/// older build the id that build derived.
pub fn attachment_of(record: &AttachmentRecord) -> String {
    record
        .attachment_id
        .clone()
        .unwrap_or_else(|| crate::legacy_attachment_id(&record.container_id, &record.ifname))
}

/// Undoes the split of `names` in the namespace at `netns_path` (from
/// `original` when the journal has it) and removes the attachment's pins.
/// A namespace that is gone took weir's devices with it: success.
pub fn undo_in(
    netns_path: &Path,
    names: &Names,
    original: Option<Original>,
    root: &BpfRoot,
    attachment: &str,
) -> Result<(), String> {
    let (names, root2, attachment2) = (names.clone(), root.clone(), attachment.to_string());
    let undone = netns::run_in(netns_path, move |handle| async move {
        split::undo(&handle, &names, original.as_ref(), &root2, &attachment2).await
    });
    match undone {
        Ok(failures) if failures.is_empty() => Ok(()),
        Ok(failures) => Err(failures.join("; ")),
        Err(NetnsError::Missing { .. }) => crate::split::remove_pins(root, attachment)
            .map_err(|e| format!("removing pins of {attachment}: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes one attachment: undoes the split if its namespace still exists
/// (never the plugin's own namespace), unpins the programs, drops the pod's
/// data-path config and the record. On an undo that failed the record stays,
/// so the next DEL, GC or repair tries again.
pub fn release(
    store: &StateStore,
    root: &BpfRoot,
    container_id: &str,
    ifname: &str,
    record: Option<&AttachmentRecord>,
    netns_path: Option<&Path>,
) -> Result<(), String> {
    let attachment = match record {
        Some(r) => attachment_of(r),
        None => crate::attachment_id(container_id, ifname),
    };
    if let Some(names) = Names::for_ifname(ifname) {
        let original = record.and_then(|r| {
            r.original
                .as_ref()
                .and_then(|o| Original::from_record(o, &r.mac))
        });
        match netns_path.filter(|p| netns::exists(p) && !netns::is_own(p)) {
            Some(path) => undo_in(path, &names, original, root, &attachment)
                .map_err(|e| format!("undoing the split of {ifname}: {e}"))?,
            None => crate::split::remove_pins(root, &attachment)
                .map_err(|e| format!("removing pins of {attachment}: {e}"))?,
        }
    }
    if let Some(record) = record {
        // Without pinned maps there is no config to drop. The pod's flows
        // stay for the agent's last read.
        if let Ok(mut maps) = NodeMaps::open(root) {
            maps.clear_pod_mode(record.pod_id)
                .map_err(|e| e.to_string())?;
        }
    }
    store
        .remove(container_id, ifname)
        .map_err(|e| e.to_string())
}

/// What one repair pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// `<network>/<container>:<ifname>` of each half-split pod put back.
    pub attachments: Vec<String>,
    /// Temporary record files of killed writes that were removed.
    pub tmp_files: Vec<PathBuf>,
    pub failures: Vec<String>,
}

/// Puts back every pod whose ADD died half-way, in one network's store.
pub fn repair_store(store: &StateStore, root: &BpfRoot, out: &mut Repaired) {
    let (records, _unreadable) = store.list_lenient();
    for record in records.iter().filter(|r| r.phase == Phase::Adding) {
        let lock = match store.lock(&record.container_id, &record.ifname, false) {
            Ok(Some(lock)) => lock,
            // an ADD is still at work on it
            Ok(None) => continue,
            Err(e) => {
                out.failures.push(e.to_string());
                continue;
            }
        };
        // It may have finished (or been released) while we waited.
        match store.load(&record.container_id, &record.ifname) {
            Ok(Some(r)) if r.phase == Phase::Adding => {}
            _ => continue,
        }
        let name = format!("{}/{}", record.network, record.record_name());
        info!(attachment = %name, "repairing a pod whose ADD died half-way");
        match release(
            store,
            root,
            &record.container_id,
            &record.ifname,
            Some(record),
            Some(Path::new(&record.netns)),
        ) {
            Ok(()) => {
                lock.remove();
                out.attachments.push(name);
            }
            Err(e) => {
                warn!(attachment = %name, "repair failed: {e}");
                out.failures.push(format!("{name}: {e}"));
            }
        }
    }
    out.tmp_files.extend(store.remove_stale_tmp());
}

/// For the node agent (at start) and GC: repairs half-split pods of every
/// network under `state_dir` whose ADD died, and removes stale temporary
/// record files.
pub fn repair_orphans(state_dir: &Path, bpf_root: &Path) -> Repaired {
    let root = BpfRoot::new(bpf_root);
    let mut out = Repaired::default();
    match StateStore::all_networks(state_dir) {
        Ok(stores) => {
            for store in stores {
                repair_store(&store, &root, &mut out);
            }
        }
        Err(e) => out.failures.push(e.to_string()),
    }
    out
}
