//! Attaching, checking and removing one pod interface's split.
//!
//! Every function that touches devices (`attach`, tc-mode `detach`,
//! `verify`) resolves ifindexes in the netns of the *calling thread*: call
//! them on a thread that has `setns`'d into the pod netns.
//!
//! An attachment is two entry stubs ([`crate::stub`]): one on `wx-<if>`
//! ingress, one on `wi-<if>` ingress, each tail-calling the node's split
//! program ([`crate::node_program`]), which is loaded once per node. So an
//! attach verifies two dozen instructions and never parses kernel BTF.
//!
//! # Lifetime of an attachment
//!
//! tc mode (the default): the stubs run as direct-action `cls_bpf` filters
//! on a clsact qdisc. Filters live as long as the device and need no pin; the
//! stubs are pinned at `<root>/links/<id>/{outer,inner}-prog` only so the
//! attachment can be listed, checked, and its filters told apart from those
//! of another interface of the same pod.
//!
//! TCX mode: the stubs are held by TCX links pinned at
//! `<root>/links/<id>/{outer,inner}`. A link stays attached while its pin or
//! any fd references it, so the split outlives the CNI process. Removing the
//! pin detaches it once no fd is left; [`detach`] also issues
//! `BPF_LINK_DETACH`. When the pod netns goes away the devices go with it and
//! the kernel detaches the links itself; the pins stay until garbage
//! collection calls [`remove_pins`].
//!
//! Why tc is the default although TCX is the newer interface: every TCX
//! attach waits for an RCU grace period under `rtnl_lock`
//! (`tcx_entry_sync()`), about 10 ms per link on a HZ=250 kernel, which
//! alone is twice a pod ADD's budget; adding a clsact filter does not wait.

use std::{
    fs, io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
};

use tracing::{debug, warn};

use crate::{
    BpfRoot, Error, Result,
    abi::Direction,
    io_err, netlink,
    node_program::{self, NodeProgram},
    object::{self, remove_dir, remove_pin, retire_link_pin},
    stub::{self, StubSpec},
    sys,
};

/// Program name of the stub on `wx-<if>` ingress (ToPod), redirecting to `wi-<if>`.
pub const OUTER_STUB: &str = "weir_wx";
/// Program name of the stub on `wi-<if>` ingress (FromPod), redirecting to `wx-<if>`.
pub const INNER_STUB: &str = "weir_wi";

const OUTER_PIN: &str = "outer";
const INNER_PIN: &str = "inner";
const OUTER_PROG_PIN: &str = "outer-prog";
const INNER_PROG_PIN: &str = "inner-prog";

/// The per-attachment values of one pod interface's split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SplitParams {
    /// The pod's id in the node-wide maps (key of `weir_pod_config`, part of every flow key).
    pub pod_id: u32,
    /// ifindex of `wx-<if>` (the original device, peer on the host) in the pod netns.
    pub wx_ifindex: u32,
    /// ifindex of `wi-<if>` (peer of the new `<if>`) in the pod netns.
    pub wi_ifindex: u32,
    /// `wx-<if>`'s veth peer is in another netns (the host's, as the CNI
    /// bridge leaves it): frames from the pod then go straight to that peer's
    /// ingress with `bpf_redirect_peer`, sparing a backlog pass. Must be
    /// false otherwise, or the kernel drops them.
    pub outbound_via_peer: bool,
}

impl SplitParams {
    fn validate(&self) -> Result<()> {
        if self.wx_ifindex == 0 || self.wi_ifindex == 0 {
            return Err(Error::InvalidParams(format!("ifindex 0 in {self:?}")));
        }
        if self.wx_ifindex == self.wi_ifindex {
            return Err(Error::InvalidParams(format!(
                "wx and wi are the same device in {self:?}"
            )));
        }
        Ok(())
    }

    fn outer(&self) -> StubSpec {
        StubSpec {
            pod_id: self.pod_id,
            target_ifindex: self.wi_ifindex,
            direction: Direction::ToPod,
            via_peer: false,
        }
    }

    fn inner(&self) -> StubSpec {
        StubSpec {
            pod_id: self.pod_id,
            target_ifindex: self.wx_ifindex,
            direction: Direction::FromPod,
            via_peer: self.outbound_via_peer,
        }
    }
}

/// How an attachment is made; record the mode used to pass to [`detach`].
/// Defined by the node-state contract, which records it.
pub use weir_node_state::AttachMode;

/// One pod interface's two stubs, loaded (verified) and bound to the node
/// program, not attached. Dropping it unloads them unless attached or pinned.
#[derive(Debug)]
pub struct SplitStubs {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl SplitStubs {
    /// The stub for `wx-<if>` ingress.
    pub fn outer(&self) -> BorrowedFd<'_> {
        self.outer.as_fd()
    }

    /// The stub for `wi-<if>` ingress.
    pub fn inner(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Loads the stubs for `p`, loading the node program first if this is the
/// first use of the node (which also creates or reuses the node-wide pinned
/// maps under `root`). Attaches nothing.
pub fn load(root: &BpfRoot, p: &SplitParams) -> Result<SplitStubs> {
    let node = node_program::ensure(root)?;
    load_stubs(&node, p)
}

fn load_stubs(node: &NodeProgram, p: &SplitParams) -> Result<SplitStubs> {
    let load = |spec: StubSpec, name: &'static str| {
        stub::load(&spec, node.jump(), name).map_err(|e| Error::Os {
            what: format!("loading the {name} stub"),
            source: e,
        })
    };
    Ok(SplitStubs {
        outer: load(p.outer(), OUTER_STUB)?,
        inner: load(p.inner(), INNER_STUB)?,
    })
}

/// Attaches the split for one pod interface in `mode` and pins it. A TCX
/// attach the kernel refuses (no TCX) falls back to tc. Returns the mode
/// used; keep it for [`detach`].
///
/// Must run on a thread inside the pod netns. Re-attaching an id that is
/// already attached replaces it without a moment where frames are not
/// forwarded: the new stubs are attached next to the old ones (either
/// redirects every frame), then the old ones are removed.
pub fn attach(
    root: &BpfRoot,
    attachment_id: &str,
    p: &SplitParams,
    mode: AttachMode,
) -> Result<AttachMode> {
    p.validate()?;
    let stubs = load(root, p)?;
    attach_loaded(root, attachment_id, &stubs, p, mode)
}

/// [`attach`] with stubs [`load`]ed beforehand for the same `p`, so that the
/// moment of attaching costs no program load (the CNI plugin loads them
/// before it swaps the pod's interface, and attaches inside the swap).
pub fn attach_loaded(
    root: &BpfRoot,
    attachment_id: &str,
    stubs: &SplitStubs,
    p: &SplitParams,
    mode: AttachMode,
) -> Result<AttachMode> {
    p.validate()?;
    let dir = root.links_dir(attachment_id)?;
    for ifindex in [p.wx_ifindex, p.wi_ifindex] {
        sys::ifname(ifindex).map_err(|e| Error::Os {
            what: format!("ifindex {ifindex} in this thread's netns"),
            source: e,
        })?;
    }
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;

    if mode == AttachMode::Tcx {
        match attach_tcx_pair(stubs, p) {
            Ok((outer, inner)) => {
                // both new links are live: retire the old attachment, then
                // pin the new one in its place
                retire(&dir)?;
                pin(outer.as_fd(), &dir.join(OUTER_PIN))?;
                pin(inner.as_fd(), &dir.join(INNER_PIN))?;
                return Ok(AttachMode::Tcx);
            }
            Err(e) if tcx_unsupported(&e) => {
                warn!(error = %e, "TCX attach refused by the kernel, falling back to tc (clsact)");
            }
            Err(e) => {
                return Err(Error::Os {
                    what: "attaching the split stubs as TCX links".into(),
                    source: e,
                });
            }
        }
    }
    attach_tc_pair(stubs, p)?;
    retire(&dir)?;
    pin(stubs.outer(), &dir.join(OUTER_PROG_PIN))?;
    pin(stubs.inner(), &dir.join(INNER_PROG_PIN))?;
    Ok(AttachMode::Netlink)
}

/// Errors with which a kernel that lacks TCX refuses a TCX link.
fn tcx_unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn attach_tcx_pair(stubs: &SplitStubs, p: &SplitParams) -> io::Result<(OwnedFd, OwnedFd)> {
    let outer = sys::tcx_link_create(stubs.outer(), p.wx_ifindex, sys::BPF_TCX_INGRESS)?;
    let inner = sys::tcx_link_create(stubs.inner(), p.wi_ifindex, sys::BPF_TCX_INGRESS)?;
    Ok((outer, inner))
}

fn attach_tc_pair(stubs: &SplitStubs, p: &SplitParams) -> Result<()> {
    for (prog, ifindex, name) in [
        (stubs.outer(), p.wx_ifindex, OUTER_STUB),
        (stubs.inner(), p.wi_ifindex, INNER_STUB),
    ] {
        netlink::add_clsact(ifindex).map_err(|e| Error::Os {
            what: format!("adding a clsact qdisc to ifindex {ifindex}"),
            source: e,
        })?;
        netlink::add_bpf_filter(ifindex, netlink::CLSACT_INGRESS_PARENT, prog, name).map_err(
            |e| Error::Os {
                what: format!("adding the {name} tc filter on ifindex {ifindex}"),
                source: e,
            },
        )?;
    }
    Ok(())
}

fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    sys::obj_pin(fd, path).map_err(io_err("pinning at", path))
}

/// Removes whatever an earlier attach left in `dir`: TCX links are detached
/// and unpinned, netlink filters of pinned programs are deleted (in the
/// calling thread's netns) and the programs unpinned.
fn retire(dir: &Path) -> Result<()> {
    for pin in [OUTER_PIN, INNER_PIN] {
        retire_link_pin(&dir.join(pin))?;
    }
    let mut prog_ids = Vec::new();
    for pin in [OUTER_PROG_PIN, INNER_PROG_PIN] {
        let path = dir.join(pin);
        match sys::obj_get(&path).and_then(|fd| sys::prog_info(fd.as_fd())) {
            Ok(info) => prog_ids.push(info.id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot read pinned program"),
        }
    }
    if !prog_ids.is_empty() {
        delete_filters_of(&prog_ids)?;
    }
    for pin in [OUTER_PROG_PIN, INNER_PROG_PIN] {
        remove_pin(&dir.join(pin))?;
    }
    Ok(())
}

/// Deletes the clsact-ingress `cls_bpf` filters running any of `prog_ids` on
/// any device of the calling thread's netns.
fn delete_filters_of(prog_ids: &[u32]) -> Result<()> {
    let ifindexes = sys::ifindexes().map_err(|e| Error::Os {
        what: "listing interfaces".into(),
        source: e,
    })?;
    for ifindex in ifindexes {
        let filters =
            netlink::bpf_filters(ifindex, netlink::CLSACT_INGRESS_PARENT).map_err(|e| {
                Error::Os {
                    what: format!("listing tc filters of ifindex {ifindex}"),
                    source: e,
                }
            })?;
        for f in filters.iter().filter(|f| prog_ids.contains(&f.prog_id)) {
            netlink::delete_filter(netlink::CLSACT_INGRESS_PARENT, f).map_err(|e| Error::Os {
                what: format!("deleting tc filter on ifindex {ifindex}"),
                source: e,
            })?;
        }
    }
    Ok(())
}

/// Removes an attachment. TCX: detaches the pinned links (no netns needed;
/// devices that are already gone are fine). Netlink: deletes the filters, so
/// it must run inside the pod netns, where the devices are. Missing pins,
/// links or devices are success. Both kinds of pins are handled whatever
/// `mode` says, so a record that went stale across a re-attach still cleans up.
pub fn detach(root: &BpfRoot, attachment_id: &str, mode: AttachMode) -> Result<()> {
    let dir = root.links_dir(attachment_id)?;
    debug!(id = attachment_id, %mode, "detaching split");
    if dir.exists() {
        retire(&dir)?;
    }
    remove_dir(&dir)
}

/// Deletes every clsact-ingress `cls_bpf` filter on `ifindex` (in the calling
/// thread's netns) whose program is one of weir's stubs, found by program
/// name: what undoes a split whose pins or record are gone (bpffs unmounted,
/// `bpfRoot` or `stateDir` wiped). Returns how many it removed. A device
/// with no clsact qdisc has none.
pub fn delete_stub_filters(ifindex: u32) -> Result<usize> {
    let filters = match netlink::bpf_filters(ifindex, netlink::CLSACT_INGRESS_PARENT) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            return Ok(0);
        }
        Err(e) => {
            return Err(Error::Os {
                what: format!("listing tc filters of ifindex {ifindex}"),
                source: e,
            });
        }
    };
    let mut removed = 0;
    for f in filters {
        let name = sys::prog_get_fd_by_id(f.prog_id)
            .and_then(|fd| sys::prog_info(fd.as_fd()))
            .map(|info| info.name)
            .unwrap_or_default();
        if name != OUTER_STUB && name != INNER_STUB {
            continue;
        }
        netlink::delete_filter(netlink::CLSACT_INGRESS_PARENT, &f).map_err(|e| Error::Os {
            what: format!("deleting weir's tc filter on ifindex {ifindex}"),
            source: e,
        })?;
        removed += 1;
    }
    Ok(removed)
}

/// Names of weir's stub programs attached as clsact-ingress filters on
/// `ifindex` (calling thread's netns), for checks.
pub fn stub_filters(ifindex: u32) -> Result<Vec<String>> {
    let filters = match netlink::bpf_filters(ifindex, netlink::CLSACT_INGRESS_PARENT) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => {
            return Err(Error::Os {
                what: format!("listing tc filters of ifindex {ifindex}"),
                source: e,
            });
        }
    };
    Ok(filters
        .iter()
        .filter_map(|f| {
            sys::prog_get_fd_by_id(f.prog_id)
                .and_then(|fd| sys::prog_info(fd.as_fd()))
                .ok()
                .map(|i| i.name)
        })
        .filter(|n| n == OUTER_STUB || n == INNER_STUB)
        .collect())
}

/// Removes an attachment's pins without entering any netns (garbage
/// collection of pods that are gone). A TCX link whose pin is removed detaches
/// as soon as no fd refers to it, so never call this for a live pod.
pub fn remove_pins(root: &BpfRoot, attachment_id: &str) -> Result<()> {
    remove_dir(&root.links_dir(attachment_id)?)
}

/// The attachment ids that have a directory under `<root>/links`.
pub fn list_attachments(root: &BpfRoot) -> Result<Vec<String>> {
    object::list_dirs(&root.links_root(), |name| Some(name.to_owned()))
}

/// CNI CHECK: the attachment's pins exist, its stubs are attached to
/// ingress of exactly the expected devices, they carry this pod's id and
/// redirect targets, and the node program is in the jump table they call.
/// Must run inside the pod netns (ifindexes and tc filters are per netns).
pub fn verify(root: &BpfRoot, attachment_id: &str, p: &SplitParams) -> Result<()> {
    let dir = root.links_dir(attachment_id)?;
    let unhealthy = |problem: String| Error::Unhealthy {
        id: attachment_id.to_owned(),
        problem,
    };
    if !dir.is_dir() {
        return Err(unhealthy(format!("no pins at {}", dir.display())));
    }
    let halves = [
        (
            OUTER_PIN,
            OUTER_PROG_PIN,
            OUTER_STUB,
            p.wx_ifindex,
            "wx",
            p.outer(),
        ),
        (
            INNER_PIN,
            INNER_PROG_PIN,
            INNER_STUB,
            p.wi_ifindex,
            "wi",
            p.inner(),
        ),
    ];
    let mut jump_ids = Vec::with_capacity(2);
    for (link_pin, prog_pin, name, ifindex, dev, spec) in halves {
        let link_path = dir.join(link_pin);
        let prog_path = dir.join(prog_pin);
        let prog_id = if link_path.exists() {
            verify_tcx_link(&link_path, ifindex, dev).map_err(unhealthy)?
        } else if prog_path.exists() {
            verify_netlink_filter(&prog_path, ifindex, dev).map_err(unhealthy)?
        } else {
            return Err(unhealthy(format!(
                "neither {} nor {} exists",
                link_path.display(),
                prog_path.display()
            )));
        };
        jump_ids.push(verify_stub(prog_id, name, &spec).map_err(unhealthy)?);
    }
    verify_node_program(&jump_ids).map_err(unhealthy)
}

fn verify_tcx_link(path: &Path, ifindex: u32, dev: &str) -> Result<u32, String> {
    let fd = sys::obj_get(path)
        .map_err(|e| format!("cannot open pinned link {}: {e}", path.display()))?;
    let info = sys::link_info(fd.as_fd())
        .map_err(|e| format!("cannot read link {}: {e}", path.display()))?;
    if info.link_type != sys::BPF_LINK_TYPE_TCX {
        return Err(format!(
            "{} is a link of type {}, not TCX",
            path.display(),
            info.link_type
        ));
    }
    if info.tcx_ifindex == 0 {
        return Err(format!(
            "TCX link {} is defunct: its device ({dev}-) is gone",
            path.display()
        ));
    }
    if info.tcx_ifindex != ifindex {
        return Err(format!(
            "TCX link {} is attached to ifindex {}, expected {dev}- at ifindex {ifindex}",
            path.display(),
            info.tcx_ifindex
        ));
    }
    if info.tcx_attach_type != sys::BPF_TCX_INGRESS {
        return Err(format!(
            "TCX link {} is not on ingress (attach type {})",
            path.display(),
            info.tcx_attach_type
        ));
    }
    Ok(info.prog_id)
}

fn verify_netlink_filter(path: &Path, ifindex: u32, dev: &str) -> Result<u32, String> {
    let fd = sys::obj_get(path)
        .map_err(|e| format!("cannot open pinned program {}: {e}", path.display()))?;
    let info = sys::prog_info(fd.as_fd())
        .map_err(|e| format!("cannot read program {}: {e}", path.display()))?;
    let filters = netlink::bpf_filters(ifindex, netlink::CLSACT_INGRESS_PARENT)
        .map_err(|e| format!("cannot list tc filters of {dev}- (ifindex {ifindex}): {e}"))?;
    if !filters.iter().any(|f| f.prog_id == info.id) {
        return Err(format!(
            "program {} (id {}) is not attached as a clsact ingress filter on {dev}- (ifindex {ifindex})",
            path.display(),
            info.id
        ));
    }
    Ok(info.id)
}

/// The program is a stub of ours carrying `spec`; returns the id of the jump
/// table it calls through.
fn verify_stub(prog_id: u32, name: &str, spec: &StubSpec) -> Result<u32, String> {
    let fd = sys::prog_get_fd_by_id(prog_id)
        .map_err(|e| format!("cannot open program id {prog_id}: {e}"))?;
    let info =
        sys::prog_info(fd.as_fd()).map_err(|e| format!("cannot read program id {prog_id}: {e}"))?;
    if info.name != name {
        return Err(format!(
            "program id {prog_id} is {:?}, not weir's {name} stub",
            info.name
        ));
    }
    let [jump_id] = info.map_ids[..] else {
        return Err(format!(
            "stub {name} (id {prog_id}) uses maps {:?}, expected one jump table",
            info.map_ids
        ));
    };
    let xlated = sys::prog_xlated_insns(fd.as_fd())
        .map_err(|e| format!("cannot read the instructions of stub {name} (id {prog_id}): {e}"))?;
    if xlated.is_empty() {
        // kernels that withhold instructions (kptr_restrict) leave the
        // name, the maps and the device as the evidence
        debug!(prog_id, "instructions withheld; stub values not compared");
        return Ok(jump_id);
    }
    match stub::decode(&xlated) {
        Some(found) if found == *spec => Ok(jump_id),
        Some(found) => Err(format!(
            "stub {name} (id {prog_id}) carries pod id {}, target ifindex {}, peer redirect {}; expected pod id {}, target ifindex {}, peer redirect {}",
            found.pod_id,
            found.target_ifindex,
            found.via_peer,
            spec.pod_id,
            spec.target_ifindex,
            spec.via_peer
        )),
        None => Err(format!(
            "stub {name} (id {prog_id}) does not have a stub's instructions"
        )),
    }
}

/// Both stubs call through one jump table whose slot holds a program.
fn verify_node_program(jump_ids: &[u32]) -> Result<(), String> {
    let Some(&jump_id) = jump_ids.first() else {
        return Ok(());
    };
    if jump_ids.iter().any(|&id| id != jump_id) {
        return Err(format!(
            "the two stubs use different jump tables {jump_ids:?}"
        ));
    }
    let jump = sys::map_get_fd_by_id(jump_id)
        .map_err(|e| format!("cannot open jump table id {jump_id}: {e}"))?;
    let mut value = [0u8; 4];
    match sys::map_lookup(jump.as_fd(), &0u32.to_ne_bytes(), &mut value) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(format!(
            "the split program is missing from jump table id {jump_id}: the pod forwards but nothing is counted"
        )),
        Err(e) => Err(format!("cannot read jump table id {jump_id}: {e}")),
    }
}
