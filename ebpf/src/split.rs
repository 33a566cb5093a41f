//! Loading, attaching, checking and removing one pod interface's split.
//!
//! Every function that touches devices (`attach`, `attach_as`, Netlink-mode
//! `detach`, `verify`) resolves ifindexes in the netns of the *calling
//! thread*: call them on a thread that has `setns`'d into the pod netns.
//!
//! # Lifetime of an attachment
//!
//! TCX links are pinned at `<root>/links/<id>/{outer,inner}`. A TCX link stays
//! attached while anything references it: the pin, or an open fd. Dropping the
//! loader ([`aya::Ebpf`]) after pinning closes only its fds, so the split
//! outlives the CNI process. Removing the pin detaches the link once no fd is
//! left; [`detach`] additionally issues `BPF_LINK_DETACH`, which detaches at
//! once even if some other process (bpftool, an agent) holds an fd. When the
//! pod netns goes away the devices go with it and the kernel detaches the
//! links itself, but the pins stay (pointing at defunct links) until
//! [`remove_pins`] is called by garbage collection.
//!
//! On kernels without TCX (< 6.6) the programs are attached as `cls_bpf`
//! filters on a clsact qdisc. Such filters live as long as the device, need no
//! pin, and are removed by [`detach`] from inside the netns; the programs are
//! pinned at `<id>/{outer,inner}-prog` only so the attachment can be listed,
//! verified and its filters told apart from those of another interface.

use std::{fmt, fs, io, os::fd::AsFd, path::Path, str::FromStr};

use aya::{
    maps::MapType,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, TcAttachOptions, TcError},
    },
};
use tracing::{debug, warn};

use crate::{
    BpfRoot, Error, Result, SPLIT_OBJECT, abi, elf, io_err, netlink,
    object::{self, MapShape, pin_io_error, remove_dir, remove_pin, retire_link_pin},
    sys,
};

/// Program on `wx-<if>` ingress (ToPod), redirecting to `wi-<if>`.
pub const OUTER_PROGRAM: &str = "weir_split_outer";
/// Program on `wi-<if>` ingress (FromPod), redirecting to `wx-<if>`.
pub const INNER_PROGRAM: &str = "weir_split_inner";

const OUTER_PIN: &str = "outer";
const INNER_PIN: &str = "inner";
const OUTER_PROG_PIN: &str = "outer-prog";
const INNER_PROG_PIN: &str = "inner-prog";

/// The globals the loader writes, in [`SplitParams`] order.
const GLOBALS: [&str; 3] = ["POD_ID", "WX_IFINDEX", "WI_IFINDEX"];

/// The per-instance values compiled into one pod interface's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SplitParams {
    /// The pod's id in the node-wide maps (key of `weir_pod_config`, part of every flow key).
    pub pod_id: u32,
    /// ifindex of `wx-<if>` (the original device, peer on the host) in the pod netns.
    pub wx_ifindex: u32,
    /// ifindex of `wi-<if>` (peer of the new `<if>`) in the pod netns.
    pub wi_ifindex: u32,
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
}

/// How an attachment was made; record it to pass to [`detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), pinned.
    Tcx,
    /// clsact qdisc + `cls_bpf` filters (older kernels).
    Netlink,
}

impl AttachMode {
    /// `"tcx"` or `"netlink"`, for node state files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttachMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcx" => Ok(Self::Tcx),
            "netlink" => Ok(Self::Netlink),
            other => Err(Error::InvalidParams(format!(
                "unknown attach mode {other:?}"
            ))),
        }
    }
}

object::loaded_object! {
    /// The object loaded for one pod interface: maps bound to the node-wide
    /// pins, both programs loaded into the kernel, nothing attached.
    SplitObject
}

impl SplitObject {
    /// The program for `wx-<if>` ingress.
    pub fn outer(&self) -> &SchedClassifier {
        self.program(OUTER_PROGRAM)
    }

    /// The program for `wi-<if>` ingress.
    pub fn inner(&self) -> &SchedClassifier {
        self.program(INNER_PROGRAM)
    }
}

/// Loads the object with `p` compiled in, creating or reusing the node-wide
/// pinned maps under `root`, and loads (verifies) both programs. Attaches
/// nothing; dropping the result unloads everything but the pinned maps.
pub fn load(root: &BpfRoot, p: &SplitParams) -> Result<SplitObject> {
    let values = [p.pod_id, p.wx_ifindex, p.wi_ifindex];
    let ebpf = object::load(
        root,
        SPLIT_OBJECT,
        "split",
        |loader| {
            for (name, value) in GLOBALS.iter().zip(&values) {
                loader.override_global(name, value, true);
            }
        },
        &map_shapes(),
        &[OUTER_PROGRAM, INNER_PROGRAM],
    )?;
    Ok(SplitObject { ebpf })
}

/// The shapes of the node-wide maps this build's ABI needs.
fn map_shapes() -> [MapShape; 4] {
    let shape = |name, ty, key, value, max_entries| MapShape {
        name,
        ty,
        key,
        value,
        max_entries,
        no_prealloc: None,
    };
    [
        shape(
            abi::FLOWS_MAP,
            MapType::LruHash,
            size_of::<abi::FlowKey>() as u32,
            size_of::<abi::FlowCounters>() as u32,
            abi::FLOWS_MAX_ENTRIES,
        ),
        shape(
            abi::POD_CONFIG_MAP,
            MapType::Hash,
            4,
            size_of::<abi::PodConfig>() as u32,
            abi::POD_CONFIG_MAX_ENTRIES,
        ),
        shape(abi::STATS_MAP, MapType::PerCpuArray, 4, 8, abi::STATS_SLOTS),
        shape(
            abi::FLOW_EVENTS_MAP,
            MapType::RingBuf,
            0,
            0,
            abi::FLOW_EVENTS_BYTES,
        ),
    ]
}

/// Attaches the split for one pod interface and pins it, choosing TCX when
/// the kernel has it and falling back to netlink (clsact + `cls_bpf`)
/// otherwise. Returns the mode used; keep it for [`detach`].
///
/// Must run on a thread inside the pod netns. Re-attaching an id that is
/// already attached replaces it without a moment where frames are not
/// forwarded: the new programs are attached behind the old ones (the old
/// ones redirect, so the new ones do not run yet), then the old ones are
/// removed.
pub fn attach(root: &BpfRoot, attachment_id: &str, p: &SplitParams) -> Result<AttachMode> {
    attach_impl(root, attachment_id, p, None)
}

/// [`attach`] in a given mode, without detection. For tests of the fallback
/// and for nodes where TCX must be avoided.
pub fn attach_as(
    root: &BpfRoot,
    attachment_id: &str,
    p: &SplitParams,
    mode: AttachMode,
) -> Result<()> {
    attach_impl(root, attachment_id, p, Some(mode)).map(drop)
}

fn attach_impl(
    root: &BpfRoot,
    id: &str,
    p: &SplitParams,
    forced: Option<AttachMode>,
) -> Result<AttachMode> {
    p.validate()?;
    let dir = root.links_dir(id)?;
    let wx = sys::ifname(p.wx_ifindex).map_err(|e| Error::Os {
        what: format!("wx ifindex {} in this thread's netns", p.wx_ifindex),
        source: e,
    })?;
    let wi = sys::ifname(p.wi_ifindex).map_err(|e| Error::Os {
        what: format!("wi ifindex {} in this thread's netns", p.wi_ifindex),
        source: e,
    })?;

    let mut obj = load(root, p)?;
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;

    let mode = match forced {
        Some(m) => m,
        None if tcx_possible() => AttachMode::Tcx,
        None => AttachMode::Netlink,
    };
    match mode {
        AttachMode::Tcx => {
            let outer = match attach_tcx(&mut obj, OUTER_PROGRAM, &wx) {
                Ok(l) => l,
                Err(e) if forced.is_none() && tcx_unsupported(&e) => {
                    warn!(error = %e, "TCX attach refused by the kernel, falling back to netlink (clsact)");
                    attach_netlink_pair(&mut obj, &dir, &wx, &wi)?;
                    return Ok(AttachMode::Netlink);
                }
                Err(e) => {
                    return Err(Error::Program {
                        program: OUTER_PROGRAM,
                        source: Box::new(e),
                    });
                }
            };
            let inner = attach_tcx(&mut obj, INNER_PROGRAM, &wi).map_err(|e| Error::Program {
                program: INNER_PROGRAM,
                source: Box::new(e),
            })?;
            // both new links are live (behind any old ones): retire the old
            // attachment, then pin the new one in its place
            retire(&dir)?;
            pin_link(outer, &dir.join(OUTER_PIN))?;
            pin_link(inner, &dir.join(INNER_PIN))?;
            Ok(AttachMode::Tcx)
        }
        AttachMode::Netlink => {
            attach_netlink_pair(&mut obj, &dir, &wx, &wi)?;
            Ok(AttachMode::Netlink)
        }
    }
}

fn tcx_possible() -> bool {
    sys::kernel_version().is_none_or(|v| v >= (6, 6))
}

/// Errors with which a kernel that lacks TCX refuses a TCX link.
fn tcx_unsupported(e: &ProgramError) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(e, ProgramError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)))
}

fn attach_tcx(
    obj: &mut SplitObject,
    name: &'static str,
    ifname: &str,
) -> Result<FdLink, ProgramError> {
    let prog = obj
        .program_mut(name)
        .map_err(|_| ProgramError::UnexpectedProgramType)?;
    let id = prog.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    let link = prog.take_link(id)?;
    FdLink::try_from(link)
        .map_err(|e| ProgramError::TcError(TcError::IoError(io::Error::other(e.to_string()))))
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    // dropping the returned PinnedLink closes our fd; the pin keeps the link
    link.pin(path).map(drop).map_err(|e| Error::Io {
        what: "pinning link at",
        path: path.to_owned(),
        source: pin_io_error(e),
    })
}

fn attach_netlink_pair(obj: &mut SplitObject, dir: &Path, wx: &str, wi: &str) -> Result<()> {
    let mut ids = Vec::with_capacity(2);
    for (name, ifname) in [(OUTER_PROGRAM, wx), (INNER_PROGRAM, wi)] {
        add_clsact(ifname).map_err(|e| Error::Os {
            what: format!("adding clsact qdisc to {ifname}"),
            source: e,
        })?;
        let prog = obj.program_mut(name)?;
        let id = prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(|e| Error::Program {
                program: name,
                source: Box::new(e),
            })?;
        ids.push((name, id));
    }
    retire(dir)?;
    for (name, pin) in [
        (OUTER_PROGRAM, OUTER_PROG_PIN),
        (INNER_PROGRAM, INNER_PROG_PIN),
    ] {
        let path = dir.join(pin);
        obj.program_mut(name)?.pin(&path).map_err(|e| Error::Io {
            what: "pinning program at",
            path,
            source: pin_io_error(e),
        })?;
    }
    // aya removes a netlink filter when its link is dropped; a filter must
    // outlive this process, so the link handle is forgotten on purpose
    for (name, id) in ids {
        let link = obj
            .program_mut(name)?
            .take_link(id)
            .map_err(|e| Error::Program {
                program: name,
                source: Box::new(e),
            })?;
        std::mem::forget(link);
    }
    Ok(())
}

fn add_clsact(ifname: &str) -> io::Result<()> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(TcError::AlreadyAttached) => Ok(()),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
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

/// CNI CHECK: the attachment's pins exist, its programs are attached to
/// ingress of exactly the expected devices, and the programs were built for
/// this pod and these ifindexes. Must run inside the pod netns (ifindexes and
/// netlink filters are per netns).
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
        (OUTER_PIN, OUTER_PROG_PIN, OUTER_PROGRAM, p.wx_ifindex, "wx"),
        (INNER_PIN, INNER_PROG_PIN, INNER_PROGRAM, p.wi_ifindex, "wi"),
    ];
    for (link_pin, prog_pin, program, ifindex, dev) in halves {
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
        verify_program(prog_id, program, p).map_err(unhealthy)?;
    }
    Ok(())
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

/// The program is ours and its `.rodata` holds the expected pod id and ifindexes.
fn verify_program(prog_id: u32, program: &str, p: &SplitParams) -> Result<(), String> {
    let (offsets, size) = elf::rodata_offsets(SPLIT_OBJECT, GLOBALS)
        .ok_or("embedded object has no per-instance globals")?;
    let rodata = object::program_rodata(prog_id, program, size)?;
    let expected = [p.pod_id, p.wx_ifindex, p.wi_ifindex];
    for ((name, off), want) in GLOBALS.iter().zip(offsets).zip(expected) {
        let got = u32::from_ne_bytes(rodata[off..off + 4].try_into().expect("4 bytes"));
        if got != want {
            return Err(format!(
                "program {program} (id {prog_id}) was loaded with {name}={got}, expected {want}"
            ));
        }
    }
    Ok(())
}
