//! The flannel VXLAN monitor: loading, attaching (TCX, pinned), verifying
//! and removing the two tc programs of `c/vxlan_monitor.bpf.c` on an underlay
//! device, and reading its node-wide maps ([`VxlanMaps`]).
//!
//! The node agent finds the devices to attach to (flannel's VXLAN device
//! names its VNI, UDP port and underlay; that policy is the agent's).
//!
//! # Pin layout under the bpf root
//!
//! ```text
//! <root>/maps/weir_vx_flows | weir_vx_vni | weir_vx_iface | weir_vx_stats | weir_vx_events
//! <root>/vxlan/<ifname>/ingress   TCX link, weir_vx_ingress on tc ingress of <ifname>
//! <root>/vxlan/<ifname>/egress    TCX link, weir_vx_egress on tc egress of <ifname>
//! ```
//!
//! bpffs refuses names containing `.`, and interface names may contain one
//! (`eth0.100`), so `<ifname>` is escaped: every byte outside
//! `[A-Za-z0-9_-]` becomes `%XX` (`eth0.100` -> `eth0%2E100`); see
//! [`pin_dir_name`]. The escaping is injective and [`list_attachments`]
//! decodes it.
//!
//! # Lifetime, re-attach
//!
//! The links are pinned, so they outlive the process that attached them. A
//! TCX link stays attached while its pin (or any fd) exists; [`detach`]
//! issues `BPF_LINK_DETACH` and removes the pins.
//!
//! [`attach`] is idempotent and never leaves a gap: when a pinned link is
//! still attached to the same device and hook, its program is replaced
//! atomically (`BPF_LINK_UPDATE`), so every packet is counted exactly once
//! across an agent upgrade or restart. Otherwise (first attach, device
//! recreated, link defunct) a new link is attached, then the old pin (if
//! any) is detached and replaced by the new one.
//!
//! New links go first in the device's TCX chain
//! ([`LinkOrder::first`]): the monitor returns `TCX_NEXT`, so the programs
//! after it still run, and a program before it that ends the chain
//! (`TCX_PASS`, `TCX_DROP`, redirect) cannot hide packets from it. On egress
//! this means packets are counted when offered to the device, before any
//! later program might drop them.
//!
//! Devices are resolved in the netns of the *calling thread* (the node's
//! netns for the agent). The programs take the ifindex of the device from
//! the packet (`skb->ifindex`), so one loaded object fits any device; only
//! the VXLAN port is compiled in ([`VxlanParams`]).
//!
//! TCX needs Linux >= 6.6; there is no clsact fallback for the monitor.

use std::{
    collections::HashMap as StdHashMap,
    ffi::CString,
    fmt, fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapType, PerCpuArray, PerCpuHashMap},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions, TcError},
    },
};
use tracing::{debug, warn};

use crate::{
    BpfRoot, Error, Result, elf, io_err,
    object::{self, BPF_F_NO_PREALLOC, MapShape, pin_io_error, retire_link_pin},
    pinned::{self, map_err},
    sys,
    vxlan_abi::{self, IfaceCounters, VniCounters, VxFlowCounters, VxFlowKey, VxStatIndex},
};

/// The compiled `c/vxlan_monitor.bpf.c`: both monitor programs and their maps.
pub static VXLAN_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxlan_monitor.bpf.o"));

/// Program on tc ingress of the underlay (decap direction).
pub const INGRESS_PROGRAM: &str = "weir_vx_ingress";
/// Program on tc egress of the underlay (encap direction).
pub const EGRESS_PROGRAM: &str = "weir_vx_egress";

/// Pin of the ingress link inside an attachment's directory.
pub const INGRESS_PIN: &str = "ingress";
/// Pin of the egress link inside an attachment's directory.
pub const EGRESS_PIN: &str = "egress";

/// The global the loader writes: the VXLAN UDP port.
const PORT_GLOBAL: &str = "VXLAN_PORT";

/// `bpf_attach_type` value of TCX egress (ingress is [`sys::BPF_TCX_INGRESS`]).
const BPF_TCX_EGRESS: u32 = 47;
/// Longest interface name (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// The per-attachment value compiled into the programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanParams {
    /// UDP destination port of the VXLAN traffic (`IFLA_VXLAN_PORT` of the
    /// flannel device; flannel's default is 8472).
    pub port: u16,
}

impl Default for VxlanParams {
    fn default() -> Self {
        Self {
            port: vxlan_abi::DEFAULT_PORT,
        }
    }
}

impl VxlanParams {
    fn validate(&self) -> Result<()> {
        if self.port == 0 {
            return Err(Error::InvalidParams("VXLAN port 0".into()));
        }
        Ok(())
    }
}

/// An underlay device, by name or by ifindex (in the calling thread's netns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interface {
    /// Interface name, e.g. `eth0`.
    Name(String),
    /// Interface index.
    Index(u32),
}

impl From<&str> for Interface {
    fn from(s: &str) -> Self {
        Self::Name(s.to_owned())
    }
}

impl From<String> for Interface {
    fn from(s: String) -> Self {
        Self::Name(s)
    }
}

impl From<&String> for Interface {
    fn from(s: &String) -> Self {
        Self::Name(s.clone())
    }
}

impl From<u32> for Interface {
    fn from(i: u32) -> Self {
        Self::Index(i)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Index(i) => write!(f, "ifindex {i}"),
        }
    }
}

object::loaded_object! {
    /// The object loaded with one [`VxlanParams`]: maps bound to the
    /// node-wide pins, both programs loaded into the kernel, nothing attached.
    VxlanObject
}

impl VxlanObject {
    /// The program for tc ingress (decap direction).
    pub fn ingress(&self) -> &SchedClassifier {
        self.program(INGRESS_PROGRAM)
    }

    /// The program for tc egress (encap direction).
    pub fn egress(&self) -> &SchedClassifier {
        self.program(EGRESS_PROGRAM)
    }
}

/// Loads the monitor with `p` compiled in, creating or reusing the pinned
/// `weir_vx_*` maps under `<root>/maps`, and loads (verifies) both programs.
/// Attaches nothing; dropping the result unloads everything but the maps.
pub fn load(root: &BpfRoot, p: &VxlanParams) -> Result<VxlanObject> {
    p.validate()?;
    let ebpf = object::load(
        root,
        VXLAN_OBJECT,
        "the VXLAN monitor",
        |loader| {
            loader.override_global(PORT_GLOBAL, &p.port, true);
        },
        &map_shapes(),
        &[INGRESS_PROGRAM, EGRESS_PROGRAM],
    )?;
    Ok(VxlanObject { ebpf })
}

/// The shapes of the monitor's maps this build's ABI needs.
fn map_shapes() -> [MapShape; 5] {
    let shape = |name, ty, key, value, max_entries, no_prealloc| MapShape {
        name,
        ty,
        key,
        value,
        max_entries,
        no_prealloc: Some(no_prealloc),
    };
    [
        shape(
            vxlan_abi::FLOWS_MAP,
            MapType::LruHash,
            size_of::<VxFlowKey>() as u32,
            size_of::<VxFlowCounters>() as u32,
            vxlan_abi::FLOWS_MAX_ENTRIES,
            0,
        ),
        shape(
            vxlan_abi::VNI_MAP,
            MapType::PerCpuHash,
            4,
            size_of::<VniCounters>() as u32,
            vxlan_abi::VNI_MAX_ENTRIES,
            BPF_F_NO_PREALLOC,
        ),
        shape(
            vxlan_abi::IFACE_MAP,
            MapType::PerCpuHash,
            4,
            size_of::<IfaceCounters>() as u32,
            vxlan_abi::IFACE_MAX_ENTRIES,
            BPF_F_NO_PREALLOC,
        ),
        shape(
            vxlan_abi::STATS_MAP,
            MapType::PerCpuArray,
            4,
            8,
            vxlan_abi::STATS_SLOTS,
            0,
        ),
        shape(
            vxlan_abi::EVENTS_MAP,
            MapType::RingBuf,
            0,
            0,
            vxlan_abi::EVENTS_BYTES,
            0,
        ),
    ]
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanAttachment {
    /// The underlay device's name.
    pub ifname: String,
    /// Its ifindex in the calling thread's netns.
    pub ifindex: u32,
    /// The VXLAN port compiled into the programs.
    pub port: u16,
    /// `<root>/vxlan/<escaped ifname>`, holding the `ingress` and `egress` pins.
    pub pin_dir: PathBuf,
    /// Both halves were already attached to this device and had their
    /// program replaced atomically (no packet missed or counted twice).
    pub replaced_in_place: bool,
}

/// `<root>/vxlan`: one directory per monitored underlay device.
pub fn links_root(root: &BpfRoot) -> PathBuf {
    root.path().join("vxlan")
}

/// `<root>/vxlan/<escaped ifname>`.
pub fn links_dir(root: &BpfRoot, ifname: &str) -> Result<PathBuf> {
    validate_ifname(ifname)?;
    Ok(links_root(root).join(pin_dir_name(ifname)))
}

fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidParams(format!(
            "interface name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("not a device name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return bad("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// The directory name of `ifname` under `<root>/vxlan`: bytes outside
/// `[A-Za-z0-9_-]` (bpffs refuses `.`) become `%XX`, `%` included, so
/// distinct names never share a directory.
pub fn pin_dir_name(ifname: &str) -> String {
    let mut out = String::with_capacity(ifname.len());
    for b in ifname.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`pin_dir_name`]; `None` for names it never produces.
pub fn ifname_from_pin_dir(dir: &str) -> Option<String> {
    let bytes = dir.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn resolve(iface: &Interface) -> Result<(String, u32)> {
    match iface {
        Interface::Name(name) => {
            validate_ifname(name)?;
            let c = CString::new(name.as_str()).map_err(|_| {
                Error::InvalidParams(format!("interface name {name:?} contains NUL"))
            })?;
            // SAFETY: valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if index == 0 {
                return Err(Error::Os {
                    what: format!("interface {name} in this thread's netns"),
                    source: io::Error::last_os_error(),
                });
            }
            Ok((name.clone(), index))
        }
        Interface::Index(index) => {
            let name = sys::ifname(*index).map_err(|e| Error::Os {
                what: format!("ifindex {index} in this thread's netns"),
                source: e,
            })?;
            Ok((name, *index))
        }
    }
}

#[derive(Clone, Copy)]
struct Half {
    program: &'static str,
    pin: &'static str,
    attach: TcAttachType,
    tcx_attach_type: u32,
}

const HALVES: [Half; 2] = [
    Half {
        program: INGRESS_PROGRAM,
        pin: INGRESS_PIN,
        attach: TcAttachType::Ingress,
        tcx_attach_type: sys::BPF_TCX_INGRESS,
    },
    Half {
        program: EGRESS_PROGRAM,
        pin: EGRESS_PIN,
        attach: TcAttachType::Egress,
        tcx_attach_type: BPF_TCX_EGRESS,
    },
];

/// Attaches the monitor to tc ingress and egress of the underlay `iface`
/// (resolved in the calling thread's netns) with TCX and pins both links
/// under `<root>/vxlan/<ifname>/`. Idempotent; see the module docs for how a
/// re-attach replaces the programs without a gap.
pub fn attach(
    root: &BpfRoot,
    iface: impl Into<Interface>,
    params: &VxlanParams,
) -> Result<VxlanAttachment> {
    params.validate()?;
    let (ifname, ifindex) = resolve(&iface.into())?;
    let dir = links_dir(root, &ifname)?;
    let mut obj = load(root, params)?;
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;

    let mut replaced_in_place = true;
    for half in HALVES {
        replaced_in_place &= attach_half(&mut obj, &dir, &ifname, ifindex, half)?;
    }
    debug!(%ifname, ifindex, port = params.port, replaced_in_place, "VXLAN monitor attached");
    Ok(VxlanAttachment {
        ifname,
        ifindex,
        port: params.port,
        pin_dir: dir,
        replaced_in_place,
    })
}

/// One half; true when an existing link was updated in place.
fn attach_half(
    obj: &mut VxlanObject,
    dir: &Path,
    ifname: &str,
    ifindex: u32,
    half: Half,
) -> Result<bool> {
    let path = dir.join(half.pin);
    let prog_err = |e: ProgramError| Error::Program {
        program: half.program,
        source: Box::new(e),
    };

    if let Some(link) = live_link(&path, ifindex, half.tcx_attach_type) {
        let prog = obj.program_mut(half.program)?;
        // BPF_LINK_UPDATE: the hook switches programs atomically
        let id = prog.attach_to_link(link).map_err(prog_err)?;
        // closing our fd leaves the link to its pin
        drop(prog.take_link(id).map_err(prog_err)?);
        return Ok(true);
    }

    let prog = obj.program_mut(half.program)?;
    let id = prog
        .attach_with_options(
            ifname,
            half.attach,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(prog_err)?;
    let link = FdLink::try_from(prog.take_link(id).map_err(prog_err)?).map_err(|e| {
        prog_err(ProgramError::TcError(TcError::IoError(io::Error::other(
            e.to_string(),
        ))))
    })?;
    // the new link is live (our fd holds it): retire the old pin, then pin the new one
    retire_link_pin(&path)?;
    link.pin(&path).map(drop).map_err(|e| Error::Io {
        what: "pinning link at",
        path: path.clone(),
        source: pin_io_error(e),
    })?;
    Ok(false)
}

/// The link pinned at `path` if it is a TCX link still attached to
/// `ifindex` at `attach_type`.
fn live_link(path: &Path, ifindex: u32, attach_type: u32) -> Option<SchedClassifierLink> {
    let info = match sys::obj_get(path).and_then(|fd| sys::link_info(fd.as_fd())) {
        Ok(info) => info,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read pinned link; replacing it");
            return None;
        }
    };
    if info.link_type != sys::BPF_LINK_TYPE_TCX
        || info.tcx_ifindex != ifindex
        || info.tcx_attach_type != attach_type
    {
        debug!(path = %path.display(), ?info, "pinned link is stale; replacing it");
        return None;
    }
    let pinned = PinnedLink::from_pin(path)
        .inspect_err(|e| warn!(path = %path.display(), error = %e, "cannot open pinned link"))
        .ok()?;
    SchedClassifierLink::try_from(FdLink::from(pinned)).ok()
}

/// Removes the monitor from `ifname`: detaches both links at once
/// (`BPF_LINK_DETACH`, even while another process holds an fd) and removes
/// the pins. Needs no netns; a device that is already gone, missing pins or
/// a missing directory are success.
pub fn detach(root: &BpfRoot, ifname: &str) -> Result<()> {
    let dir = links_dir(root, ifname)?;
    debug!(ifname, "detaching VXLAN monitor");
    for half in HALVES {
        retire_link_pin(&dir.join(half.pin))?;
    }
    object::remove_dir(&dir)
}

/// The interface names with a directory under `<root>/vxlan`, sorted.
pub fn list_attachments(root: &BpfRoot) -> Result<Vec<String>> {
    object::list_dirs(&links_root(root), ifname_from_pin_dir)
}

/// Checks an attachment: both pins exist and hold TCX links attached to
/// `ifname` (resolved in the calling thread's netns) on the right hooks,
/// running this crate's programs built for `params.port`.
pub fn verify(root: &BpfRoot, ifname: &str, params: &VxlanParams) -> Result<()> {
    let dir = links_dir(root, ifname)?;
    let unhealthy = |problem: String| Error::Unhealthy {
        id: format!("vxlan/{ifname}"),
        problem,
    };
    let (_, ifindex) = resolve(&Interface::Name(ifname.to_owned()))?;
    for half in HALVES {
        let path = dir.join(half.pin);
        let fd = sys::obj_get(&path)
            .map_err(|e| unhealthy(format!("cannot open pinned link {}: {e}", path.display())))?;
        let info = sys::link_info(fd.as_fd())
            .map_err(|e| unhealthy(format!("cannot read link {}: {e}", path.display())))?;
        if info.link_type != sys::BPF_LINK_TYPE_TCX {
            return Err(unhealthy(format!(
                "{} is a link of type {}, not TCX",
                path.display(),
                info.link_type
            )));
        }
        if info.tcx_ifindex == 0 {
            return Err(unhealthy(format!(
                "TCX link {} is defunct: its device is gone",
                path.display()
            )));
        }
        if info.tcx_ifindex != ifindex {
            return Err(unhealthy(format!(
                "TCX link {} is attached to ifindex {}, expected {ifname} at ifindex {ifindex}",
                path.display(),
                info.tcx_ifindex
            )));
        }
        if info.tcx_attach_type != half.tcx_attach_type {
            return Err(unhealthy(format!(
                "TCX link {} has attach type {}, expected {}",
                path.display(),
                info.tcx_attach_type,
                half.tcx_attach_type
            )));
        }
        verify_program(info.prog_id, half.program, params).map_err(unhealthy)?;
    }
    Ok(())
}

fn verify_program(prog_id: u32, program: &str, p: &VxlanParams) -> Result<(), String> {
    let ([off], size) = elf::rodata_offsets(VXLAN_OBJECT, [PORT_GLOBAL])
        .ok_or("embedded object has no VXLAN_PORT global")?;
    let rodata = object::program_rodata(prog_id, program, size)?;
    let port = u16::from_ne_bytes(rodata[off..off + 2].try_into().expect("2 bytes"));
    if port != p.port {
        return Err(format!(
            "program {program} (id {prog_id}) was loaded with VXLAN_PORT={port}, expected {}",
            p.port
        ));
    }
    Ok(())
}

/// The monitor's own counters (`weir_vx_stats`), summed over CPUs. They
/// count program runs (a GSO super-packet once), while the flow, VNI and
/// interface counters count wire packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxlanStats {
    slots: [u64; VxStatIndex::ALL.len()],
}

impl VxlanStats {
    /// The counter of one slot.
    pub fn get(&self, idx: VxStatIndex) -> u64 {
        self.slots[idx as usize]
    }

    /// Flows created in `weir_vx_flows`.
    pub fn new_flows(&self) -> u64 {
        self.get(VxStatIndex::NewFlows)
    }

    /// Flow creations that failed (other than a lost race).
    pub fn flow_update_failed(&self) -> u64 {
        self.get(VxStatIndex::FlowUpdateFailed)
    }

    /// New-flow events dropped because the ring buffer was full.
    pub fn events_lost(&self) -> u64 {
        self.get(VxStatIndex::EventsLost)
    }

    /// Packets with a valid VXLAN header.
    pub fn vxlan_packets(&self) -> u64 {
        self.get(VxStatIndex::VxlanPackets)
    }

    /// Flows the LRU evicted (the kernel does not count them): created
    /// minus still live minus deleted by the agent.
    pub fn lru_evictions(&self, live_flows: u64, deleted_by_agent: u64) -> u64 {
        self.new_flows()
            .saturating_sub(live_flows)
            .saturating_sub(deleted_by_agent)
    }

    /// Every slot with its index, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (VxStatIndex, u64)> + '_ {
        VxStatIndex::ALL.iter().map(|&i| (i, self.get(i)))
    }
}

/// Handles on the monitor's pinned maps (opened, never created here).
pub struct VxlanMaps {
    flows: HashMap<MapData, VxFlowKey, VxFlowCounters>,
    vni: PerCpuHashMap<MapData, u32, VniCounters>,
    iface: PerCpuHashMap<MapData, u32, IfaceCounters>,
    stats: PerCpuArray<MapData, u64>,
}

impl fmt::Debug for VxlanMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VxlanMaps").finish_non_exhaustive()
    }
}

fn not_loaded(map: &'static str, path: PathBuf, source: io::Error) -> Error {
    Error::VxlanMonitorNotLoaded { map, path, source }
}

impl VxlanMaps {
    /// Opens the pinned maps under `root`; fails with
    /// [`Error::VxlanMonitorNotLoaded`] before the monitor was first loaded.
    pub fn open(root: &BpfRoot) -> Result<Self> {
        Ok(Self {
            flows: pinned::open(root, vxlan_abi::FLOWS_MAP, not_loaded)?,
            vni: pinned::open(root, vxlan_abi::VNI_MAP, not_loaded)?,
            iface: pinned::open(root, vxlan_abi::IFACE_MAP, not_loaded)?,
            stats: pinned::open(root, vxlan_abi::STATS_MAP, not_loaded)?,
        })
    }

    /// A snapshot of all flows. Entries created or evicted during the walk
    /// may or may not appear.
    pub fn flows(&self) -> Result<Vec<(VxFlowKey, VxFlowCounters)>> {
        self.flows
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(vxlan_abi::FLOWS_MAP))
    }

    /// Calls `f` for every flow without collecting them, in batches of
    /// entries per syscall, and returns how many it saw (the live flow count
    /// of this walk). Entries created or evicted during the walk may or may
    /// not appear.
    pub fn for_each_flow(&self, f: impl FnMut(&VxFlowKey, &VxFlowCounters)) -> Result<u64> {
        pinned::for_each_entry(&self.flows, vxlan_abi::FLOWS_MAP, f)
    }

    /// Number of entries in `weir_vx_flows` now.
    pub fn live_flow_count(&self) -> Result<u64> {
        pinned::count_keys(vxlan_abi::FLOWS_MAP, self.flows.keys())
    }

    /// Deletes one flow (after the agent exported it); false if it was already gone.
    pub fn remove_flow(&mut self, key: &VxFlowKey) -> Result<bool> {
        match self.flows.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if pinned::is_missing(&e) => Ok(false),
            Err(e) => Err(map_err(vxlan_abi::FLOWS_MAP)(e)),
        }
    }

    /// Counters per VNI, summed over CPUs, sorted by VNI.
    pub fn per_vni(&self) -> Result<Vec<(u32, VniCounters)>> {
        let mut out: Vec<(u32, VniCounters)> = Vec::new();
        for item in self.vni.iter() {
            let (vni, per_cpu) = item.map_err(map_err(vxlan_abi::VNI_MAP))?;
            let mut sum = VniCounters::default();
            per_cpu.iter().for_each(|c| sum.add(c));
            out.push((vni, sum));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Counters per underlay ifindex (node netns), summed over CPUs, sorted by ifindex.
    pub fn per_interface(&self) -> Result<Vec<(u32, IfaceCounters)>> {
        let mut sums: StdHashMap<u32, IfaceCounters> = StdHashMap::new();
        for item in self.iface.iter() {
            let (ifindex, per_cpu) = item.map_err(map_err(vxlan_abi::IFACE_MAP))?;
            let sum = sums.entry(ifindex).or_default();
            per_cpu.iter().for_each(|c| sum.add(c));
        }
        let mut out: Vec<_> = sums.into_iter().collect();
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// The monitor's counters, summed over CPUs.
    pub fn stats(&self) -> Result<VxlanStats> {
        let mut out = VxlanStats::default();
        for idx in VxStatIndex::ALL {
            let per_cpu = self
                .stats
                .get(&(idx as u32), 0)
                .map_err(map_err(vxlan_abi::STATS_MAP))?;
            out.slots[idx as usize] = pinned::sum_per_cpu(&per_cpu);
        }
        Ok(out)
    }
}

/// Pin of the new-flow ring buffer (records are
/// [`VxFlowEvent`](crate::vxlan_abi::VxFlowEvent)); open it with
/// `aya::maps::MapData::from_pin` and `aya::maps::RingBuf`.
pub fn events_pin(root: &BpfRoot) -> PathBuf {
    root.map_path(vxlan_abi::EVENTS_MAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dir_names_are_bpffs_safe_and_injective() {
        assert_eq!(pin_dir_name("eth0"), "eth0");
        assert_eq!(pin_dir_name("eth0.100"), "eth0%2E100");
        assert_eq!(pin_dir_name("eth0_100"), "eth0_100");
        assert_eq!(pin_dir_name("a%b"), "a%25b");
        for name in ["eth0", "eth0.100", "a%2E", "br-1.2_x", "ÿ"] {
            let dir = pin_dir_name(name);
            assert!(!dir.contains('.') && !dir.contains('/'), "{dir}");
            assert_eq!(ifname_from_pin_dir(&dir).as_deref(), Some(name));
        }
        assert_ne!(pin_dir_name("a.2E"), pin_dir_name("a%2E"));
        assert_eq!(ifname_from_pin_dir("bad%Z1"), None);
        assert_eq!(ifname_from_pin_dir("bad%2"), None);
    }

    #[test]
    fn interface_names_are_validated() {
        let root = BpfRoot::default();
        assert_eq!(
            links_dir(&root, "eth0.100").unwrap(),
            Path::new("/sys/fs/bpf/weir/vxlan/eth0%2E100")
        );
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(links_dir(&root, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn embedded_object_has_the_port_global() {
        let ([off], size) =
            elf::rodata_offsets(VXLAN_OBJECT, [PORT_GLOBAL]).expect("VXLAN_PORT in .rodata");
        assert_eq!((off, size), (0, 2));
        assert_eq!(VxlanParams::default().port, 8472);
        assert!(VxlanParams { port: 0 }.validate().is_err());
    }
}
