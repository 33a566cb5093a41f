//! Node state: one record per split attachment, read later by the node agent
//! to learn which pod a pod id belongs to, and by DEL/CHECK/GC to find what
//! weir created.
//!
//! Layout: `<stateDir>/networks/<network>/<containerID>:<ifname>.json`, plus a
//! node-wide pod id counter `<stateDir>/pod-id` guarded by `flock`.
//!
//! A record is also ADD's journal: ADD writes it with `phase: adding` and the
//! original interface's exact configuration *before* it changes anything in
//! the pod, and rewrites it with `phase: split` once the split is complete.
//! While an ADD, DEL or repair works on an attachment it holds an exclusive
//! `flock` on `<record>.lock`, so an `adding` record whose lock is free is the
//! journal of an ADD that died (`kill -9`): DEL, a retried ADD, CHECK, GC and
//! the agent all read it the same way and put the pod back from it.
//!
//! The counter is not fsynced (that cost ~7 ms per ADD here). Pod ids key
//! bpffs maps that a reboot empties, so they only have to be unique among the
//! records of pods of this boot and those a crash left behind: the counter
//! file names the boot that last wrote it, and the first allocation of a new
//! boot jumps [`BOOT_GAP`] ahead, past any update a crash lost.

pub mod plugin {
    //! What the installer must know of the plugin to write a conflist entry
    //! the plugin accepts (the plugin's own config parser checks the same).

    /// The CNI `type` of weir's plugin.
    pub const TYPE: &str = "weir";
    /// The CNI spec versions the plugin speaks, oldest first.
    pub const CNI_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
    /// `failurePolicy` values.
    pub const FAILURE_POLICIES: [&str; 2] = ["Fail", "Ignore"];
    /// `logLevel` values.
    pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
}

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state record {path} is unreadable: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StateError>;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// Who the pod is, from CNI_ARGS; absent outside Kubernetes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
}

/// Where an attachment's ADD got to.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// ADD's intent: written before the first change in the pod. A record in
    /// this phase whose lock is free belongs to an ADD that died half-way.
    Adding,
    /// The split is complete (records of earlier builds read as this).
    #[default]
    Split,
}

/// The pod's original interface as ADD found it, so that DEL and crash
/// repair put back exactly that (address flags included). Addresses and
/// routes are the kernel's own netlink messages, hex-encoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OriginalLink {
    pub ifindex: u32,
    pub name: String,
    pub up: bool,
    /// `net.ipv6.conf.<if>.disable_ipv6` before the split silenced the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_ipv6: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
}

/// How a pod interface's programs are attached; recorded so DEL and GC
/// detach them the same way. Written as `"tc"` or `"tcx"` (the values of the
/// conflist's `attach` key); `"netlink"`, what records of earlier builds
/// say, reads as [`AttachMode::Netlink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), pinned.
    #[serde(rename = "tcx")]
    Tcx,
    /// clsact qdisc + direct-action `cls_bpf` filters, any kernel.
    #[default]
    #[serde(rename = "tc", alias = "netlink")]
    Netlink,
}

impl AttachMode {
    /// `"tcx"` or `"tc"`, for configuration and node state files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "tc",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attach mode that is neither `tc` nor `tcx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown attach mode {0:?} (known: \"tc\", \"tcx\")")]
pub struct UnknownAttachMode(pub String);

impl FromStr for AttachMode {
    type Err = UnknownAttachMode;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownAttachMode> {
        match s {
            "tcx" => Ok(Self::Tcx),
            // "netlink": what state files of earlier builds say
            "tc" | "netlink" => Ok(Self::Netlink),
            other => Err(UnknownAttachMode(other.to_owned())),
        }
    }
}

/// What one ADD split and attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    #[serde(default)]
    pub phase: Phase,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod: PodIdentity,
    pub pod_id: u32,
    pub mac: String,
    pub ips: Vec<String>,
    /// How the programs are held, which decides how DEL removes them.
    pub attach_mode: AttachMode,
    pub pod_ifindex: u32,
    pub outer_ifindex: u32,
    pub inner_ifindex: u32,
    pub created_unix: u64,
    /// The bpffs attachment id; absent in records of builds that derived it
    /// by a lossy scheme (see `weir_ebpf::legacy_attachment_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<OriginalLink>,
}

impl AttachmentRecord {
    /// The record's name in its network's directory.
    pub fn record_name(&self) -> String {
        record_name(&self.container_id, &self.ifname)
    }
}

/// A node-unique name for one (container, interface) pair. Container ids never
/// contain ':' and interface names cannot, so the pair is recoverable.
pub fn record_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

pub struct StateStore {
    root: PathBuf,
    network_dir: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path, network: &str) -> Self {
        Self {
            root: state_dir.to_path_buf(),
            network_dir: state_dir.join("networks").join(sanitize(network)),
        }
    }

    /// `<record name>` as a file stem; a name too long for one path
    /// component is replaced by its hash (never truncated: two ids sharing a
    /// long prefix must not share a file).
    fn stem(container_id: &str, ifname: &str) -> String {
        let name = record_name(container_id, ifname);
        if name.len() <= MAX_STEM {
            name
        } else {
            use sha2::Digest;
            let hash = sha2::Sha256::digest(name.as_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            format!("h-{hex}")
        }
    }

    fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir
            .join(format!("{}.json", Self::stem(container_id, ifname)))
    }

    fn tmp_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir
            .join(format!("{}.json.tmp", Self::stem(container_id, ifname)))
    }

    fn lock_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.network_dir
            .join(format!("{}.lock", Self::stem(container_id, ifname)))
    }

    /// The network's directory (for tests and tools).
    pub fn network_dir(&self) -> &Path {
        &self.network_dir
    }

    /// Writes atomically so a crash never leaves a half record for the agent.
    /// Not fsynced: what it protects (the pod's netns) does not survive a
    /// reboot either, and a killed process loses nothing it wrote.
    pub fn save(&self, record: &AttachmentRecord) -> Result<()> {
        fs::create_dir_all(&self.network_dir).map_err(io("create", &self.network_dir))?;
        let path = self.record_path(&record.container_id, &record.ifname);
        let tmp = self.tmp_path(&record.container_id, &record.ifname);
        let body = serde_json::to_vec_pretty(record).expect("records always serialize");
        fs::write(&tmp, body).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))
    }

    /// Takes the attachment's exclusive lock; `wait: false` returns `None`
    /// when someone else holds it (an ADD or DEL still running).
    pub fn lock(
        &self,
        container_id: &str,
        ifname: &str,
        wait: bool,
    ) -> Result<Option<AttachmentLock>> {
        fs::create_dir_all(&self.network_dir).map_err(io("create", &self.network_dir))?;
        lock_at(self.lock_path(container_id, ifname), wait)
    }

    /// Removes temporary files of record writes that were killed (their
    /// attachment's lock is free); returns them.
    pub fn remove_stale_tmp(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for tmp in self.stale_tmp_files() {
            let name = tmp.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(stem) = name.as_deref().and_then(|n| n.strip_suffix(".json.tmp")) else {
                continue;
            };
            if let Ok(Some(lock)) = lock_at(self.network_dir.join(format!("{stem}.lock")), false) {
                if fs::remove_file(&tmp).is_ok() {
                    removed.push(tmp);
                }
                if !self.network_dir.join(format!("{stem}.json")).exists() {
                    lock.remove();
                }
            }
        }
        removed
    }
}

fn lock_at(path: PathBuf, wait: bool) -> Result<Option<AttachmentLock>> {
    {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io("open", &path))?;
            if wait {
                file.lock().map_err(io("lock", &path))?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
                }
            }
            // The holder before us may have removed the file: lock the one
            // that is at the path now.
            use std::os::unix::fs::MetadataExt;
            let held = file.metadata().map_err(io("stat", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(AttachmentLock { file, path }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", &path)(e)),
            }
        }
    }
}

impl StateStore {
    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<AttachmentRecord>> {
        read_record(&self.record_path(container_id, ifname))
    }

    /// Removes the record and a temporary file a killed write left behind.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        for path in [
            self.tmp_path(container_id, ifname),
            self.record_path(container_id, ifname),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Whether the record file exists (readable or not).
    pub fn exists(&self, container_id: &str, ifname: &str) -> bool {
        self.record_path(container_id, ifname).exists()
    }

    /// Temporary files of record writes that were killed, whose attachment
    /// nobody holds: `(path)`. GC and the agent remove them.
    pub fn stale_tmp_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.network_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".json.tmp"))
            .collect()
    }

    /// Every network directory under `state_dir` as a store.
    pub fn all_networks(state_dir: &Path) -> Result<Vec<StateStore>> {
        let networks = state_dir.join("networks");
        let entries = match fs::read_dir(&networks) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &networks)(e)),
        };
        let mut stores = Vec::new();
        for entry in entries {
            let dir = entry.map_err(io("list", &networks))?.path();
            stores.push(StateStore {
                root: state_dir.to_path_buf(),
                network_dir: dir,
            });
        }
        Ok(stores)
    }

    pub fn list(&self) -> Result<Vec<AttachmentRecord>> {
        let entries = match fs::read_dir(&self.network_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.network_dir)(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(io("list", &self.network_dir))?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(record) = read_record(&path)?
            {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.record_name());
        Ok(records)
    }

    /// Like [`StateStore::list`], but unreadable records are skipped (and
    /// reported) instead of failing the whole listing.
    pub fn list_lenient(&self) -> (Vec<AttachmentRecord>, Vec<StateError>) {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = fs::read_dir(&self.network_dir) else {
            return (records, errors);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_record(&path) {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        records.sort_by_key(|r| r.record_name());
        (records, errors)
    }

    /// Every record of every network on this node, for the node agent.
    pub fn list_all(state_dir: &Path) -> Result<Vec<AttachmentRecord>> {
        let networks = state_dir.join("networks");
        let entries = match fs::read_dir(&networks) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &networks)(e)),
        };
        let mut all = Vec::new();
        for entry in entries {
            let dir = entry.map_err(io("list", &networks))?.path();
            let store = StateStore {
                root: state_dir.to_path_buf(),
                network_dir: dir,
            };
            all.extend(store.list()?);
        }
        Ok(all)
    }

    /// Hands out node-unique pod ids (never 0, never reused while the counter
    /// file lives) under an exclusive lock, so concurrent ADDs cannot collide.
    pub fn allocate_pod_id(&self) -> Result<u32> {
        self.allocate_pod_id_in_boot(&boot_id())
    }

    fn allocate_pod_id_in_boot(&self, boot: &str) -> Result<u32> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join("pod-id");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        // Released when `file` is closed, at the end of this function.
        file.lock().map_err(io("lock", &path))?;
        let mut text = String::new();
        (&file)
            .read_to_string(&mut text)
            .map_err(io("read", &path))?;
        let counter = PodIdCounter::parse(&text);
        let next = counter.next(boot);
        // one fixed-width write in place: no truncate, no size change
        let line = PodIdCounter {
            boot: boot.to_owned(),
            last: next,
        }
        .to_line();
        file.write_all_at(line.as_bytes(), 0)
            .map_err(io("write", &path))?;
        Ok(next)
    }
}

/// Steps a new boot's first pod id ahead of the last one written, so ids of
/// records a crash left behind (whose counter update never reached the disk)
/// are not handed out again.
const BOOT_GAP: u32 = 1 << 20;

/// The content of `<stateDir>/pod-id`: `<boot id> <last id>`, fixed width.
/// Older builds wrote the bare number; it reads as a counter of another boot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodIdCounter {
    boot: String,
    last: u32,
}

impl PodIdCounter {
    fn parse(text: &str) -> Self {
        let mut parts = text.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(boot), Some(last)) => Self {
                boot: boot.to_owned(),
                last: last.parse().unwrap_or(0),
            },
            (Some(last), None) => Self {
                boot: String::new(),
                last: last.parse().unwrap_or(0),
            },
            _ => Self {
                boot: String::new(),
                last: 0,
            },
        }
    }

    fn next(&self, boot: &str) -> u32 {
        let step = if self.boot == boot || self.last == 0 {
            1
        } else {
            BOOT_GAP
        };
        match self.last.checked_add(step) {
            Some(0) | None => 1,
            Some(n) => n,
        }
    }

    fn to_line(&self) -> String {
        // 36-byte boot ids and 10 digits keep every line the same length
        format!("{:<36} {:010}\n", self.boot, self.last)
    }
}

/// This boot's id; a fixed placeholder where the kernel does not offer one.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-boot".to_owned())
}

fn read_record(path: &Path) -> Result<Option<AttachmentRecord>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// Longest record file stem before it is hashed (leaves room for suffixes in
/// a 255-byte path component).
const MAX_STEM: usize = 200;

/// An attachment's lock, held until dropped.
pub struct AttachmentLock {
    file: File,
    path: PathBuf,
}

impl AttachmentLock {
    /// Removes the lock file while still holding it (the attachment is gone);
    /// a waiter then retries on a fresh file.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Network names are validated by the config parser (the spec's
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`); this keeps any other caller to one
/// path segment all the same.
fn sanitize(network: &str) -> String {
    let name: String = network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cid: &str, ifname: &str, pod_id: u32) -> AttachmentRecord {
        AttachmentRecord {
            network: "cbr0".into(),
            container_id: cid.into(),
            ifname: ifname.into(),
            netns: "/run/netns/x".into(),
            pod: PodIdentity {
                namespace: Some("shop".into()),
                name: Some("cart-0".into()),
                uid: Some("u-1".into()),
                infra_container_id: None,
            },
            pod_id,
            mac: "aa:bb:cc:dd:ee:ff".into(),
            ips: vec!["10.244.0.5/24".into()],
            attach_mode: AttachMode::Tcx,
            pod_ifindex: 4,
            outer_ifindex: 2,
            inner_ifindex: 3,
            created_unix: 1,
            phase: Phase::Split,
            attachment_id: None,
            original: None,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_load_list_remove_round_trip() {
        let dir = temp_dir("rt");
        let store = StateStore::new(&dir, "my net/1");
        store.save(&record("c1", "eth0", 1)).unwrap();
        store.save(&record("c2", "net1", 2)).unwrap();
        assert_eq!(
            store.load("c1", "eth0").unwrap(),
            Some(record("c1", "eth0", 1))
        );
        let ids: Vec<_> = store
            .list()
            .unwrap()
            .iter()
            .map(|r| r.record_name())
            .collect();
        assert_eq!(ids, ["c1:eth0", "c2:net1"]);
        assert!(dir.join("networks/my_net_1/c1:eth0.json").exists());
        store.remove("c1", "eth0").unwrap();
        store.remove("c1", "eth0").unwrap();
        assert_eq!(store.load("c1", "eth0").unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pod_ids_are_unique_across_threads() {
        let dir = temp_dir("ids");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let store = StateStore::new(&dir, "n");
                    (0..25)
                        .map(|_| store.allocate_pod_id().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        let expected: Vec<u32> = (1..=200).collect();
        assert_eq!(all, expected);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_boot_steps_past_ids_a_crash_may_have_lost() {
        let dir = temp_dir("boot");
        let store = StateStore::new(&dir, "n");
        let a = "0a0a0a0a-0000-0000-0000-000000000001";
        let b = "0b0b0b0b-0000-0000-0000-000000000002";
        assert_eq!(store.allocate_pod_id_in_boot(a).unwrap(), 1);
        assert_eq!(store.allocate_pod_id_in_boot(a).unwrap(), 2);
        assert_eq!(store.allocate_pod_id_in_boot(b).unwrap(), 2 + BOOT_GAP);
        assert_eq!(store.allocate_pod_id_in_boot(b).unwrap(), 3 + BOOT_GAP);
        // fixed width: one line, rewritten in place
        let text = fs::read_to_string(dir.join("pod-id")).unwrap();
        assert_eq!(text, format!("{b} {:010}\n", 3 + BOOT_GAP));
        // a counter an older build wrote (a bare number) counts as another boot
        fs::write(dir.join("pod-id"), "41").unwrap();
        assert_eq!(store.allocate_pod_id_in_boot(a).unwrap(), 41 + BOOT_GAP);
        // wrapping never yields 0
        let near_end = PodIdCounter {
            boot: a.into(),
            last: u32::MAX,
        };
        assert_eq!(near_end.next(a), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn long_ids_get_distinct_hashed_files_and_locks_exclude() {
        let dir = temp_dir("long");
        let store = StateStore::new(&dir, "..");
        assert!(store.network_dir().ends_with("networks/_.."));
        let a = format!("{}a", "x".repeat(250));
        let b = format!("{}b", "x".repeat(250));
        store.save(&record(&a, "eth0", 1)).unwrap();
        store.save(&record(&b, "eth0", 2)).unwrap();
        assert_eq!(store.load(&a, "eth0").unwrap().unwrap().pod_id, 1);
        assert_eq!(store.load(&b, "eth0").unwrap().unwrap().pod_id, 2);
        let held = store.lock(&a, "eth0", true).unwrap().unwrap();
        assert!(store.lock(&a, "eth0", false).unwrap().is_none());
        assert!(store.lock(&b, "eth0", false).unwrap().is_some());
        held.remove();
        assert!(store.lock(&a, "eth0", false).unwrap().is_some());
        fs::write(store.tmp_path(&a, "eth0"), b"{").unwrap();
        assert_eq!(store.stale_tmp_files().len(), 1);
        store.remove(&a, "eth0").unwrap();
        assert!(store.stale_tmp_files().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_of_earlier_builds_read_as_complete_splits() {
        let mut v = serde_json::to_value(record("c", "eth0", 3)).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("phase");
        let r: AttachmentRecord = serde_json::from_value(v).unwrap();
        assert_eq!(r.phase, Phase::Split);
        assert_eq!(r.original, None);
    }

    #[test]
    fn attach_modes_are_written_as_the_conflist_says_them() {
        for (mode, text) in [(AttachMode::Tcx, "tcx"), (AttachMode::Netlink, "tc")] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{text}\""));
            assert_eq!(text.parse::<AttachMode>().unwrap(), mode);
        }
        // records of earlier builds
        assert_eq!(
            serde_json::from_str::<AttachMode>("\"netlink\"").unwrap(),
            AttachMode::Netlink
        );
        assert!(serde_json::from_str::<AttachMode>("\"xdp\"").is_err());
        assert_eq!(
            "xdp".parse::<AttachMode>(),
            Err(UnknownAttachMode("xdp".into()))
        );
    }

    #[test]
    fn corrupt_record_is_reported_with_its_path() {
        let dir = temp_dir("bad");
        let store = StateStore::new(&dir, "n");
        fs::create_dir_all(dir.join("networks/n")).unwrap();
        fs::write(dir.join("networks/n/c:eth0.json"), b"{not json").unwrap();
        let err = store.load("c", "eth0").unwrap_err().to_string();
        assert!(err.contains("c:eth0.json"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
