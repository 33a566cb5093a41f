//! Per-interface sysctls (`net/ipv{4,6}/conf/<dev>/` and
//! `net/ipv{4,6}/neigh/<dev>/`) carried from the renamed original device to
//! the pod's new one.
//!
//! A device's sysctl directory follows the device when it is renamed, so what
//! the plugins before weir set on `eth0` (e.g. `tuning`) would stay on
//! `wx-eth0` while the pod talks through a new `eth0` that has only the
//! namespace's defaults. The original device's values are only read here,
//! never written, so undoing a split needs nothing from this module.
//!
//! Net sysctls resolve against the calling thread's network namespace, so
//! these functions must run on the thread that entered the pod's namespace
//! (or on threads it spawns, which inherit it), with blocking std I/O: an
//! async file API would do the I/O on a pool thread that is still in the
//! host's namespace.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Where the kernel exposes the calling thread's net sysctls.
pub const PROC_SYS_NET: &str = "/proc/sys/net";

/// The per-device directories: (family, table). Aliases inside a table
/// (`retrans_time` and `retrans_time_ms`, `unres_qlen` and
/// `unres_qlen_bytes`) are written in name order, so the exact one lands last.
pub const TABLES: [(&str, &str); 4] = [
    ("ipv4", "conf"),
    ("ipv6", "conf"),
    ("ipv4", "neigh"),
    ("ipv6", "neigh"),
];

/// One entry of a device's conf directory, as far as copying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A readable setting with its current value (no trailing newline).
    /// Whether it can be written is only asked of the few that differ.
    Value(String),
    /// Unreadable in its current state (`stable_secret` answers EIO while
    /// unset): nothing to carry over.
    Skipped,
}

/// A device's conf directory of one family, by entry name; ordered so the
/// writes happen in the same order on every run.
pub type Conf = BTreeMap<String, Entry>;

/// One setting given to the target device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub family: &'static str,
    /// `conf` or `neigh`.
    pub table: &'static str,
    pub name: String,
    /// What the target held before, when it could be read.
    pub was: Option<String>,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot list {}: {source}", path.display())]
    List { path: PathBuf, source: io::Error },
    #[error("cannot set {} to {value:?}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
}

/// The settings `target` must be given to match `source`: every value of
/// `source` that `target` does not already hold. An entry the target lacks or
/// cannot read is copied too, so a write the kernel refuses surfaces as an
/// error instead of a silently lost setting.
pub fn plan(source: &Conf, target: &Conf) -> Vec<(String, String)> {
    source
        .iter()
        .filter_map(|(name, entry)| match entry {
            Entry::Value(value) => match target.get(name) {
                Some(Entry::Value(held)) if held == value => None,
                _ => Some((name.clone(), value.clone())),
            },
            Entry::Skipped => None,
        })
        .collect()
}

/// Reads a conf directory. `None` when the device has no directory for this
/// family (IPv6 disabled in the kernel, or a device without IPv6 state).
///
/// Entries are opened relative to the directory: a full `/proc/sys/...`
/// path walk per entry made reading both devices' ~250 entries cost
/// milliseconds of every ADD, relative opens a fraction of one.
pub fn read_conf(dir: &Path) -> Result<Option<Conf>, SysctlError> {
    let list_error = |source| SysctlError::List {
        path: dir.to_path_buf(),
        source,
    };
    let handle = match open_dir(dir) {
        Ok(handle) => handle,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(list_error(source)),
    };
    let mut conf = Conf::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let name = entry.map_err(list_error)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let value = match open_at(&handle, name, libc::O_RDONLY).and_then(read_value) {
            Ok(text) => Entry::Value(text),
            Err(_) => Entry::Skipped,
        };
        conf.insert(name.to_string(), value);
    }
    Ok(Some(conf))
}

/// What one [`read_conf`] returns.
type ConfRead = Result<Option<Conf>, SysctlError>;

/// The reads of [`read_confs`], shared by the calling thread and its helper.
struct SharedReads {
    dirs: Vec<PathBuf>,
    /// The index of the next directory nobody has claimed yet.
    next: AtomicUsize,
    results: Mutex<Vec<Option<ConfRead>>>,
    one_done: Condvar,
}

impl SharedReads {
    /// Reads unclaimed directories until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(dir) = self.dirs.get(i) else {
                return;
            };
            // A panic must not leave the caller waiting for this result.
            let read = std::panic::catch_unwind(|| read_conf(dir)).unwrap_or_else(|_| {
                Err(SysctlError::List {
                    path: dir.clone(),
                    source: io::Error::other("the reading thread panicked"),
                })
            });
            self.results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(read);
            self.one_done.notify_all();
        }
    }
}

/// [`read_conf`] of every directory of `dirs`, in their order.
///
/// Reading the ~260 entries of both devices is the largest part of an ADD
/// that weir controls (~1.8 ms on one thread of a 2-CPU VM, most of it the
/// kernel instantiating procfs entries), so a helper thread reads alongside
/// the calling one (~1.3 ms). It inherits the caller's network namespace, as
/// every thread does from the thread that spawns it. Both claim directories
/// one at a time and the caller waits only for directories the helper has
/// claimed: a helper that starts late (a busy node) finds nothing left and
/// ends, so it is never joined and the caller never waits for it to start.
fn read_confs(dirs: Vec<PathBuf>) -> Vec<ConfRead> {
    let count = dirs.len();
    let shared = Arc::new(SharedReads {
        dirs,
        next: AtomicUsize::new(0),
        results: Mutex::new((0..count).map(|_| None).collect()),
        one_done: Condvar::new(),
    });
    let helper = Arc::clone(&shared);
    // Without a helper the calling thread reads everything itself.
    let _ = std::thread::Builder::new()
        .name("weir-sysctl".into())
        .spawn(move || helper.work());
    shared.work();
    let mut results = shared.results.lock().unwrap_or_else(|e| e.into_inner());
    while results.iter().any(Option::is_none) {
        results = shared
            .one_done
            .wait(results)
            .unwrap_or_else(|e| e.into_inner());
    }
    results
        .iter_mut()
        .map(|read| read.take().expect("every directory was read"))
        .collect()
}

/// A sysctl's value without the trailing newline. procfs hands a whole value
/// to one read at offset 0; the loop only matters for a value longer than
/// the buffer.
fn read_value(mut file: File) -> io::Result<String> {
    let mut buf = [0u8; 1024];
    let mut text = Vec::new();
    loop {
        let n = file.read(&mut buf)?;
        text.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    let text = String::from_utf8(text).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// The mode bits are what procfs enforces on sysctls, root included:
/// `mc_forwarding` reads but never writes.
fn is_read_only(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o200 == 0)
}

fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
}

/// `openat(2)` of an entry of `dir`, never creating it.
fn open_at(dir: &File, name: &str, flags: libc::c_int) -> io::Result<File> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: dir is an open directory fd and name a NUL-terminated string;
    // the returned fd, when valid, is owned by nobody else.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned here only.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn write_value(dir: &File, dir_path: &Path, name: &str, value: &str) -> Result<(), SysctlError> {
    // O_TRUNC is what a shell's `>` does to a sysctl too.
    open_at(dir, name, libc::O_WRONLY | libc::O_TRUNC)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| SysctlError::Write {
            path: dir_path.join(name),
            value: value.to_string(),
            source,
        })
}

/// Gives device `to` every per-interface setting of device `from` it does not
/// already hold, under the sysctl tree `root` (normally [`PROC_SYS_NET`]).
/// Stops at the first write that fails; what was written before stays, which
/// is harmless when the caller then deletes `to`.
pub fn copy_settings(root: &Path, from: &str, to: &str) -> Result<Vec<Copied>, SysctlError> {
    // Every table of both devices, source before target, read up front; the
    // results are then taken in exactly the order a table-by-table walk would
    // read them, so the same error wins and a table the source lacks never
    // reports its target.
    let dirs: Vec<PathBuf> = TABLES
        .iter()
        .flat_map(|(family, table)| {
            let family_dir = root.join(family).join(table);
            [family_dir.join(from), family_dir.join(to)]
        })
        .collect();
    let mut confs = read_confs(dirs).into_iter();
    let mut copied = Vec::new();
    for (family, table) in TABLES {
        let (source, target) = (
            confs.next().expect("a source read per table"),
            confs.next().expect("a target read per table"),
        );
        let Some(source) = source? else {
            continue;
        };
        let target_dir = root.join(family).join(table).join(to);
        let target = target?.unwrap_or_default();
        let writes = plan(&source, &target);
        if writes.is_empty() {
            continue;
        }
        let target_handle = open_dir(&target_dir).map_err(|source| SysctlError::List {
            path: target_dir.clone(),
            source,
        })?;
        for (name, value) in writes {
            if is_read_only(&target_dir.join(&name)) {
                continue;
            }
            write_value(&target_handle, &target_dir, &name, &value)?;
            let was = match target.get(&name) {
                Some(Entry::Value(v)) => Some(v.clone()),
                _ => None,
            };
            copied.push(Copied {
                family,
                table,
                name,
                was,
                value,
            });
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(entries: &[(&str, Option<&str>)]) -> Conf {
        entries
            .iter()
            .map(|(name, value)| {
                let entry = match value {
                    Some(v) => Entry::Value(v.to_string()),
                    None => Entry::Skipped,
                };
                (name.to_string(), entry)
            })
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plan_copies_only_values_the_target_lacks() {
        let source = conf(&[
            ("arp_notify", Some("1")),
            ("arp_ignore", Some("0")),
            ("accept_ra", Some("0")),
            ("mc_forwarding", None),
            ("stable_secret", None),
        ]);
        let target = conf(&[
            ("arp_notify", Some("0")),
            ("arp_ignore", Some("0")),
            ("accept_ra", Some("1")),
            ("mc_forwarding", None),
            ("stable_secret", None),
        ]);
        assert_eq!(
            plan(&source, &target),
            owned(&[("accept_ra", "0"), ("arp_notify", "1")])
        );
    }

    #[test]
    fn plan_copies_what_the_target_cannot_show() {
        // A set stable_secret on the original, unset (EIO) on the new device.
        let source = conf(&[
            ("stable_secret", Some("fd00::1")),
            ("hop_limit", Some("64")),
        ]);
        let target = conf(&[("stable_secret", None)]);
        assert_eq!(
            plan(&source, &target),
            owned(&[("hop_limit", "64"), ("stable_secret", "fd00::1")])
        );
    }

    #[test]
    fn plan_of_equal_confs_is_empty() {
        let both = conf(&[("forwarding", Some("1")), ("tag", Some("0"))]);
        assert!(plan(&both, &both).is_empty());
        assert!(plan(&Conf::new(), &both).is_empty());
    }

    #[test]
    fn plan_keeps_multi_field_values_whole() {
        let source = conf(&[("ranges", Some("1\t2"))]);
        let target = conf(&[("ranges", Some("1\t3"))]);
        assert_eq!(plan(&source, &target), owned(&[("ranges", "1\t2")]));
    }

    #[test]
    fn read_confs_answers_in_the_order_asked() {
        let root = std::env::temp_dir().join(format!("weir-sysctl-order-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dirs: Vec<PathBuf> = (0..9).map(|i| root.join(format!("dev{i}"))).collect();
        for (i, dir) in dirs.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("index"), format!("{i}\n")).unwrap();
        }
        let reads = read_confs(dirs.clone());
        assert_eq!(reads.len(), dirs.len());
        for (i, read) in reads.into_iter().enumerate() {
            match read.unwrap() {
                None => assert_eq!(i % 3, 0, "dev{i} exists"),
                Some(conf) => assert_eq!(conf["index"], Entry::Value(i.to_string())),
            }
        }
        let _ = fs::remove_dir_all(&root);
    }

    /// A sysctl tree in a temporary directory: read-only entries are skipped
    /// by their mode, a family the source lacks is left alone, and what
    /// differs is written.
    #[test]
    fn copy_settings_writes_differing_writable_entries() {
        let root = std::env::temp_dir().join(format!("weir-sysctl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let put = |dev: &str, name: &str, value: &str, mode: u32| {
            let dir = root.join("ipv4/conf").join(dev);
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            fs::write(&path, format!("{value}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        for (dev, notify) in [("wx-eth0", "1"), ("eth0", "0")] {
            put(dev, "arp_notify", notify, 0o644);
            put(dev, "rp_filter", "2", 0o644);
        }
        put("wx-eth0", "mc_forwarding", "1", 0o444);
        put("eth0", "mc_forwarding", "0", 0o444);

        let copied = copy_settings(&root, "wx-eth0", "eth0").unwrap();
        assert_eq!(
            copied,
            [Copied {
                family: "ipv4",
                table: "conf",
                name: "arp_notify".into(),
                was: Some("0".into()),
                value: "1".into(),
            }]
        );
        let read = |dev: &str, name: &str| {
            fs::read_to_string(root.join("ipv4/conf").join(dev).join(name)).unwrap()
        };
        assert_eq!(read("eth0", "arp_notify"), "1");
        assert_eq!(read("eth0", "mc_forwarding"), "0\n");
        assert_eq!(read("wx-eth0", "arp_notify"), "1\n", "source untouched");

        // A target without the directory cannot take the values: an error.
        let err = copy_settings(&root, "wx-eth0", "gone0").unwrap_err();
        assert!(matches!(err, SysctlError::List { .. }), "{err}");
        let _ = fs::remove_dir_all(&root);
    }
}
