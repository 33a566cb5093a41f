//! The split program loaded once per node, and the one-slot tail-call table
//! (`weir_split_jump`) through which every attachment's stub reaches it.
//!
//! Both are pinned per build under `<root>/split/<build>/{jump,prog}`, where
//! `<build>` is a hash of the embedded object: pods attached by an older weir
//! keep running the program their stubs were bound to, and a new build never
//! runs against a table filled with another build's program. The node-wide
//! maps (`<root>/maps/weir_*`) are shared by all builds and shape-checked.
//!
//! The first user on a node (CNI STATUS, the first ADD, or the agent) pays
//! for loading: aya parses the kernel's BTF and the verifier checks the
//! program, tens of milliseconds. Everyone after that only opens two pins.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::maps::MapType;
use tracing::{debug, info};

use crate::{
    BpfRoot, Error, Result, SPLIT_OBJECT, SPLIT_OBJECT_FNV1A, abi, io_err,
    object::{self, MapShape, pin_io_error, remove_pin},
    sys,
};

/// The program in `c/split.bpf.c`.
pub const SPLIT_PROGRAM: &str = "weir_split";
/// Map name of the tail-call table (kernel names are 15 bytes at most).
const JUMP_MAP_NAME: &str = "weir_split_jump";
const JUMP_PIN: &str = "jump";
const PROG_PIN: &str = "prog";

/// This build's node program, loaded and reachable through its jump table.
#[derive(Debug)]
pub struct NodeProgram {
    jump: OwnedFd,
    jump_id: u32,
    prog_id: u32,
}

impl NodeProgram {
    /// The tail-call table stubs are bound to.
    pub(crate) fn jump(&self) -> BorrowedFd<'_> {
        self.jump.as_fd()
    }

    /// Kernel id of the jump table (a stub lists it among its maps).
    pub fn jump_map_id(&self) -> u32 {
        self.jump_id
    }

    /// Kernel id of the program in the jump slot.
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }
}

/// A short, stable name of the embedded object: FNV-1a over its bytes.
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{SPLIT_OBJECT_FNV1A:016x}"))
}

/// 64-bit FNV-1a, usable in constants.
pub(crate) const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// `<root>/split/<build>`.
pub fn dir(root: &BpfRoot) -> PathBuf {
    root.path().join("split").join(build_id())
}

/// The node program if it is loaded, without loading it (CNI CHECK, the
/// agent's health view).
pub fn open(root: &BpfRoot) -> Result<Option<NodeProgram>> {
    let path = dir(root).join(JUMP_PIN);
    let jump = match sys::obj_get(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening the pinned jump table", path)(e)),
    };
    let mut value = [0u8; 4];
    match sys::map_lookup(jump.as_fd(), &0u32.to_ne_bytes(), &mut value) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err("reading slot 0 of", path)(e)),
    }
    let jump_id = sys::map_info(jump.as_fd())
        .map_err(io_err("reading map info of", &path))?
        .id;
    Ok(Some(NodeProgram {
        jump,
        jump_id,
        prog_id: u32::from_ne_bytes(value),
    }))
}

/// The node program, loading it first if nobody has on this node. Safe to
/// call from concurrent ADDs: loaders take turns on a lock on the build's
/// directory and the second finds the work done.
pub fn ensure(root: &BpfRoot) -> Result<NodeProgram> {
    if let Some(p) = open(root)? {
        return Ok(p);
    }
    let dir = dir(root);
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let _lock = DirLock::exclusive(&dir)?;
    if let Some(p) = open(root)? {
        return Ok(p);
    }
    load_into(root, &dir)?;
    open(root)?.ok_or_else(|| Error::Unhealthy {
        id: build_id().to_owned(),
        problem: format!(
            "the node program was loaded but {} has an empty slot",
            dir.join(JUMP_PIN).display()
        ),
    })
}

/// Unpins the node programs of other builds that no loaded program calls
/// any more, and returns their build ids.
///
/// A build's jump table may only go once no stub refers to it: the kernel
/// empties a prog array when its last pin and fd are gone, and the pods of
/// that build would then forward uncounted. So the test is on the live
/// programs' map ids, not on weir's state files. Only the two pins weir
/// makes are removed; a build directory holding anything else stays.
pub fn remove_unused_builds(root: &BpfRoot) -> Result<Vec<String>> {
    let base = root.path().join("split");
    let others = object::list_dirs(&base, |name| {
        (is_build_id(name) && name != build_id()).then(|| name.to_owned())
    })?;
    if others.is_empty() {
        return Ok(others);
    }
    let in_use = maps_used_by_programs()?;
    let mut removed = Vec::new();
    for build in others {
        let dir = base.join(&build);
        let _lock = DirLock::exclusive(&dir)?;
        let jump_path = dir.join(JUMP_PIN);
        match sys::obj_get(&jump_path) {
            Ok(jump) => {
                let id = sys::map_info(jump.as_fd())
                    .map_err(io_err("reading map info of", &jump_path))?
                    .id;
                if in_use.contains(&id) {
                    debug!(
                        build,
                        jump_id = id,
                        "older node program still called by pods"
                    );
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("opening", jump_path)(e)),
        }
        remove_pin(&jump_path)?;
        remove_pin(&dir.join(PROG_PIN))?;
        match fs::remove_dir(&dir) {
            Ok(()) => {
                info!(build, "unpinned an older build's node program no pod calls");
                removed.push(build);
            }
            Err(e) => {
                // something else lives there: not ours to delete
                debug!(build, error = %e, "left an older build's directory in place");
            }
        }
    }
    Ok(removed)
}

fn is_build_id(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The ids of every map some loaded program uses. Programs unloaded while
/// we look are skipped.
fn maps_used_by_programs() -> Result<std::collections::HashSet<u32>> {
    let os = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Os { what, source }
    };
    let mut used = std::collections::HashSet::new();
    for id in sys::prog_ids().map_err(os("listing loaded programs"))? {
        let fd = match sys::prog_get_fd_by_id(id) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(os(&format!("opening program id {id}"))(e)),
        };
        let info = sys::prog_info(fd.as_fd()).map_err(os(&format!("reading program id {id}")))?;
        used.extend(info.map_ids);
    }
    Ok(used)
}

fn load_into(root: &BpfRoot, dir: &Path) -> Result<()> {
    let mut ebpf = object::load(
        root,
        SPLIT_OBJECT,
        "split",
        |_| {},
        &map_shapes(),
        &[SPLIT_PROGRAM],
    )?;
    let jump_path = dir.join(JUMP_PIN);
    let jump = match sys::obj_get(&jump_path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let fd = sys::map_create(sys::BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, JUMP_MAP_NAME)
                .map_err(|e| Error::Os {
                    what: "creating the split jump table".into(),
                    source: e,
                })?;
            sys::obj_pin(fd.as_fd(), &jump_path).map_err(io_err("pinning", &jump_path))?;
            fd
        }
        Err(e) => return Err(io_err("opening", jump_path)(e)),
    };
    let prog = object::classifier_mut(&mut ebpf, SPLIT_PROGRAM)?;
    let prog_fd = prog.fd().map_err(|e| Error::Program {
        program: SPLIT_PROGRAM,
        source: Box::new(e),
    })?;
    let raw_fd = prog_fd.as_fd().as_raw_fd() as u32;
    sys::map_update(jump.as_fd(), &0u32.to_ne_bytes(), &raw_fd.to_ne_bytes())
        .map_err(io_err("filling slot 0 of", &jump_path))?;
    // the pin only makes the program visible (bpftool, CHECK); the jump
    // table's reference is what keeps it alive
    let prog_path = dir.join(PROG_PIN);
    remove_pin(&prog_path)?;
    prog.pin(&prog_path).map_err(|e| Error::Io {
        what: "pinning program at",
        path: prog_path,
        source: pin_io_error(e),
    })?;
    info!(build = build_id(), "split program loaded for this node");
    Ok(())
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

/// An exclusive `flock` on a directory (bpffs has no regular files to lock),
/// released on drop.
struct DirLock {
    _held: std::fs::File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> Result<Self> {
        let fd = std::fs::File::open(dir).map_err(io_err("opening", dir))?;
        loop {
            match fd.lock() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("locking", dir)(e)),
            }
        }
        debug!(dir = %dir.display(), "holding the node program lock");
        Ok(Self { _held: fd })
    }
}
