//! weir's eBPF side: the veth-split tc programs (C, compiled by clang in
//! `build.rs` and embedded here), the map ABI shared by the CNI plugin and the
//! node agent ([`abi`]), the loader/attacher ([`split`]) and the node-wide
//! pinned maps ([`maps`]).
//!
//! # Pin layout under the bpf root (default `/sys/fs/bpf/weir`)
//!
//! ```text
//! <root>/maps/weir_flows          LRU hash   FlowKey -> FlowCounters   (node-wide)
//! <root>/maps/weir_pod_config     hash       pod_id  -> PodConfig      (node-wide)
//! <root>/maps/weir_stats          per-CPU array of u64, StatIndex slots (node-wide)
//! <root>/maps/weir_flow_events    ring buffer of FlowEvent             (node-wide)
//! <root>/split/<build>/jump      prog array, slot 0: the node's split program
//! <root>/split/<build>/prog      the split program (loaded once per node and build)
//! <root>/links/<attachment_id>/outer-prog  stub on wx-<if> ingress (tc mode, default)
//! <root>/links/<attachment_id>/inner-prog  stub on wi-<if> ingress (tc mode, default)
//! <root>/links/<attachment_id>/outer       TCX link of the wx-<if> stub (TCX mode)
//! <root>/links/<attachment_id>/inner       TCX link of the wi-<if> stub (TCX mode)
//! ```

use std::{
    io,
    path::{Path, PathBuf},
};

pub mod abi;
mod elf;
pub mod iface;
pub mod maps;
mod netlink;
pub mod netns;
pub mod node_program;
mod object;
mod pinned;
pub mod repair;
pub mod split;
mod stub;
mod sys;
pub mod unsplit;
pub mod vxlan;
pub mod vxlan_abi;

pub use split::{AttachMode, SplitParams};
pub use vxlan::VxlanParams;

/// Where `build.rs` leaves the compiled `c/split.bpf.c`.
macro_rules! split_object_path {
    () => {
        concat!(env!("OUT_DIR"), "/split.bpf.o")
    };
}

/// The compiled `c/split.bpf.c`: the node's split program and the node-wide maps.
pub static SPLIT_OBJECT: &[u8] = aya::include_bytes_aligned!(split_object_path!());

/// FNV-1a of [`SPLIT_OBJECT`], the source of [`node_program::build_id`].
/// Every ADD needs the build id to find the node program's pins; hashing the
/// object at run time cost each ADD ~0.07 ms, so the compiler does it.
pub(crate) const SPLIT_OBJECT_FNV1A: u64 =
    node_program::fnv1a(include_bytes!(split_object_path!()));

/// `statfs` magic of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The attachment id cannot be used as a directory name under `links/`.
    #[error("invalid attachment id {id:?}: {reason}")]
    InvalidAttachmentId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`SplitParams`] that cannot describe a split.
    #[error("invalid split parameters: {0}")]
    InvalidParams(String),
    /// The bpf root is not on bpffs, so nothing could be pinned there.
    #[error(
        "{} is not on a bpf filesystem ({} has statfs magic {magic:#x}, bpffs is {BPF_FS_MAGIC:#x}); \
         mount it with `mount -t bpf bpf /sys/fs/bpf`",
        root.display(),
        checked.display()
    )]
    NotBpffs {
        /// The bpf root.
        root: PathBuf,
        /// The existing directory at or above it that was checked.
        checked: PathBuf,
        /// Its filesystem magic.
        magic: i64,
    },
    /// A filesystem or OS operation on `path` failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// What it was done to.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An operation that has no path (a syscall on an fd, netlink) failed.
    #[error("{what}: {source}")]
    Os {
        /// The operation.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The object (or its maps) could not be loaded.
    #[error("loading the weir eBPF object: {}", chain(source.as_ref()))]
    Load {
        /// The cause (contains the verifier log when the verifier refused).
        source: Box<aya::EbpfError>,
    },
    /// Loading, attaching or pinning one program failed.
    #[error("eBPF program {program}: {}", chain(source.as_ref()))]
    Program {
        /// Program name.
        program: &'static str,
        /// The cause.
        source: Box<aya::programs::ProgramError>,
    },
    /// A map already pinned under the bpf root has another shape than this
    /// version's ABI (an upgrade changed it); reusing it would corrupt data.
    #[error(
        "map {map} pinned at {} does not match this build's ABI ({detail}); \
         remove the pin (every attached pod's programs keep their own reference) and retry",
        path.display()
    )]
    IncompatibleMap {
        /// Map name.
        map: &'static str,
        /// Its pin.
        path: PathBuf,
        /// Expected versus found.
        detail: String,
    },
    /// The node-wide maps have not been pinned yet.
    #[error(
        "map {map} is not pinned at {} ({source}): no pod has been attached on this node yet, \
         or the bpf root is not the one the CNI plugin uses",
        path.display()
    )]
    MapsNotPinned {
        /// Map name.
        map: &'static str,
        /// Expected pin path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The VXLAN monitor's maps have not been pinned yet.
    #[error(
        "map {map} is not pinned at {} ({source}): the VXLAN monitor has not been loaded on this \
         node yet, or the bpf root is not the one the agent uses",
        path.display()
    )]
    VxlanMonitorNotLoaded {
        /// Map name.
        map: &'static str,
        /// Expected pin path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A map operation failed.
    #[error("map {map}: {}", chain(source.as_ref()))]
    Map {
        /// Map name.
        map: &'static str,
        /// The cause.
        source: Box<aya::maps::MapError>,
    },
    /// `verify` found the attachment missing or not as expected.
    #[error("attachment {id}: {problem}")]
    Unhealthy {
        /// The attachment id.
        id: String,
        /// What is missing or wrong.
        problem: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line: aya's syscall errors keep the errno
/// only in their source, and a CNI error message is a single string.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Where weir pins its maps and links: a directory on bpffs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BpfRoot {
    path: PathBuf,
}

impl Default for BpfRoot {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

impl BpfRoot {
    /// The node's bpf root unless configured otherwise.
    pub const DEFAULT: &'static str = "/sys/fs/bpf/weir";

    /// A bpf root at `path` (not created until something is pinned).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<root>/maps`: the node-wide maps, pinned by name.
    pub fn maps_dir(&self) -> PathBuf {
        self.path.join("maps")
    }

    /// `<root>/maps/<name>`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// `<root>/links`: one directory per attachment.
    pub fn links_root(&self) -> PathBuf {
        self.path.join("links")
    }

    /// `<root>/links/<attachment_id>`; the id must already be sanitized
    /// (see [`attachment_id`]).
    pub fn links_dir(&self, attachment_id: &str) -> Result<PathBuf> {
        validate_attachment_id(attachment_id)?;
        Ok(self.links_root().join(attachment_id))
    }
}

/// Builds the attachment id of `(container_id, ifname)`: one path component
/// that bpffs accepts (it refuses names containing `.`), and injective, so two
/// attachments never share pins. Letters, digits and `-` stay as they are,
/// every other byte (`_` included) becomes `_xx` (hex), and `__` separates
/// the two parts (escaped text never contains `__`). An id that would be
/// longer than 200 bytes is `h-` and the SHA-256 of the pair instead: never
/// a truncation, under which ids sharing a long prefix would collide.
pub fn attachment_id(container_id: &str, ifname: &str) -> String {
    let mut id = String::with_capacity(container_id.len() + ifname.len() + 2);
    escape_into(&mut id, container_id);
    id.push_str("__");
    escape_into(&mut id, ifname);
    if id.len() <= MAX_ATTACHMENT_ID {
        return id;
    }
    let mut pair = Vec::with_capacity(container_id.len() + ifname.len() + 1);
    pair.extend_from_slice(container_id.as_bytes());
    pair.push(0);
    pair.extend_from_slice(ifname.as_bytes());
    format!("h-{}", hash_hex(&pair))
}

fn escape_into(out: &mut String, text: &str) {
    use std::fmt::Write;
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
}

/// The attachment id of builds before the injective one (`<cid>-<ifname>`,
/// other bytes as `_`, cut at 200 bytes); only for records that predate it.
pub fn legacy_attachment_id(container_id: &str, ifname: &str) -> String {
    let mut id: String = format!("{container_id}-{ifname}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    id.truncate(MAX_ATTACHMENT_ID);
    id
}

/// SHA-256 of `data` as 64 lowercase hex digits.
pub fn hash_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const MAX_ATTACHMENT_ID: usize = 200;

fn validate_attachment_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidAttachmentId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ATTACHMENT_ID {
        return bad("longer than 200 bytes");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return bad("only [A-Za-z0-9_-] allowed (bpffs refuses '.'; use weir_ebpf::attachment_id)");
    }
    Ok(())
}

/// CNI STATUS: bpffs is mounted at or above the root, the root is writable,
/// and the node's split program is loaded (loading it if nobody has yet, so
/// the runtime's first STATUS call also warms the node for the first ADD).
///
/// Loading creates and pins the node-wide maps if they are not pinned yet,
/// exactly as the first attach would.
pub fn probe(root: &BpfRoot) -> Result<()> {
    check_bpffs(root)?;
    std::fs::create_dir_all(root.maps_dir()).map_err(io_err("creating", root.maps_dir()))?;
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
        root.path().as_os_str(),
    ))
    .map_err(|_| Error::InvalidParams("bpf root path contains NUL".into()))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(io_err("cannot write to", root.path())(
            io::Error::last_os_error(),
        ));
    }
    node_program::ensure(root).map(drop)
}

/// Fails unless the root (or, while it does not exist yet, its nearest
/// existing ancestor) is on bpffs.
pub fn check_bpffs(root: &BpfRoot) -> Result<()> {
    let mut checked = root.path();
    while !checked.exists() {
        checked = checked.parent().unwrap_or(Path::new("/"));
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(checked.as_os_str()))
        .map_err(|_| Error::InvalidParams("bpf root path contains NUL".into()))?;
    // SAFETY: statfs is plain data filled by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err("statfs", checked)(io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as i64;
    if magic != BPF_FS_MAGIC {
        return Err(Error::NotBpffs {
            root: root.path().to_owned(),
            checked: checked.to_owned(),
            magic,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_ids_are_safe_path_components() {
        assert_eq!(attachment_id("abc123", "eth0"), "abc123__eth0");
        assert_eq!(attachment_id("a/b", "net 1"), "a_2fb__net_201");
        assert_eq!(attachment_id("..", "eth0.100"), "_2e_2e__eth0_2e100");
        assert!(validate_attachment_id(&attachment_id("..", "")).is_ok());
        assert_eq!(legacy_attachment_id("a.dup1", "eth0"), "a_dup1-eth0");
        assert!(validate_attachment_id("c-eth0.100").is_err());
        assert!(validate_attachment_id("..").is_err());
        assert!(validate_attachment_id("a/b").is_err());
        assert!(validate_attachment_id("").is_err());
        assert!(validate_attachment_id(&"x".repeat(201)).is_err());
        let long = attachment_id(&"x".repeat(300), "eth0");
        assert!(long.starts_with("h-") && long.len() == 66, "{long}");
        assert!(validate_attachment_id(&long).is_ok());
    }

    #[test]
    fn attachment_ids_are_injective() {
        let pairs = [
            ("a.dup1", "eth0"),
            ("a_dup1", "eth0"),
            ("a-dup1", "eth0"),
            ("a", "dup1-eth0"),
            ("a-dup1-eth0", ""),
            ("a_2edup1", "eth0"),
        ];
        let mut ids: Vec<String> = pairs.iter().map(|(c, i)| attachment_id(c, i)).collect();
        let long_a = format!("{}a", "7".repeat(250));
        let long_b = format!("{}b", "7".repeat(250));
        ids.push(attachment_id(&long_a, "eth0"));
        ids.push(attachment_id(&long_b, "eth0"));
        ids.push(attachment_id(&"7".repeat(199), "eth0"));
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{ids:?}");
        for id in &ids {
            validate_attachment_id(id).unwrap();
        }
    }

    #[test]
    fn compile_time_hash_is_of_the_embedded_object() {
        let at_run_time = SPLIT_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        assert_eq!(SPLIT_OBJECT_FNV1A, at_run_time);
    }

    #[test]
    fn layout_of_the_root() {
        let r = BpfRoot::default();
        assert_eq!(r.maps_dir(), Path::new("/sys/fs/bpf/weir/maps"));
        assert_eq!(
            r.links_dir("c-eth0").unwrap(),
            Path::new("/sys/fs/bpf/weir/links/c-eth0")
        );
        assert!(r.links_dir("../x").is_err());
    }
}
