//! Atomic file replacement, and the weir binary's install.
//!
//! A file is written to a temporary name in the same directory (so the
//! rename stays on one filesystem), fsynced, given its mode, and renamed
//! over the target; then the directory is fsynced. A reader (the runtime
//! loading a conflist, or executing `weir`) sees the old file or the whole
//! new one, never a part. The temporary names end in [`TMP_SUFFIX`], which
//! no runtime reads (not a config extension, not the binary's name); ones
//! a crash left behind are removed by [`remove_stale_temps`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The ending of the installer's temporary files.
pub const TMP_SUFFIX: &str = ".weir-install-tmp";
/// The name the CNI binary has in the bin dir (its CNI `type`).
pub const BINARY_NAME: &str = "weir";

/// Replaces `dir/name` with `bytes` atomically, with `mode`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}-{}{TMP_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // The umask may have taken bits off.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Removes `dir/name`; a missing file is fine. Returns whether it was there.
pub fn remove(dir: &Path, name: &str) -> io::Result<bool> {
    match fs::remove_file(dir.join(name)) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the temporary files an earlier installer left in `dir`.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(TMP_SUFFIX))
        })
        .map(|e| e.path())
        .filter(|p| fs::remove_file(p).is_ok())
        .collect()
}

/// Reads a whole file; `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// SHA-256 of `bytes`, hex, for logs.
pub fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What [`BinaryInstaller::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryChange {
    /// The installed binary was already the same (by content) and mode.
    Unchanged,
    /// Written; `why` is for the log.
    Installed { why: String, sha256: String },
}

/// The installed binary's identity, to notice cheaply when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    mode: u32,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            mode: meta.mode(),
        }
    }
}

/// Keeps `<bin_dir>/weir` the same as the image's binary.
#[derive(Debug)]
pub struct BinaryInstaller {
    pub source: PathBuf,
    pub bin_dir: PathBuf,
    /// The installed file as last checked equal.
    verified: Option<Stamp>,
}

impl BinaryInstaller {
    pub fn new(source: PathBuf, bin_dir: PathBuf) -> BinaryInstaller {
        BinaryInstaller {
            source,
            bin_dir,
            verified: None,
        }
    }

    pub fn target(&self) -> PathBuf {
        self.bin_dir.join(BINARY_NAME)
    }

    /// Makes the installed binary the source's: nothing when it is
    /// unchanged since the last check (stat), or equal by content and
    /// executable; else an atomic replace with mode 0755.
    pub fn ensure(&mut self) -> io::Result<BinaryChange> {
        let target = self.target();
        let current = match fs::metadata(&target) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if current.is_some() && current == self.verified {
            return Ok(BinaryChange::Unchanged);
        }
        let source = read_file(&self.source)?;
        let why = match (&current, read_optional(&target)?) {
            (_, None) => "not installed".to_string(),
            (Some(stamp), Some(installed)) if installed == source => {
                if stamp.mode & 0o777 == 0o755 {
                    self.verified = Some(*stamp);
                    return Ok(BinaryChange::Unchanged);
                }
                format!("mode was {:o}", stamp.mode & 0o7777)
            }
            (_, Some(installed)) => format!(
                "installed one differs (sha256 {}, {} bytes)",
                sha256(&installed),
                installed.len()
            ),
        };
        write_atomic(&self.bin_dir, BINARY_NAME, &source, 0o755)?;
        self.verified = Some(Stamp::of(&fs::metadata(&target)?));
        Ok(BinaryChange::Installed {
            why,
            sha256: sha256(&source),
        })
    }

    /// Removes the installed binary if it is the source's (by content).
    /// `Ok(None)`: removed or absent; `Ok(Some(why))`: left in place.
    pub fn remove_if_ours(&mut self) -> io::Result<Option<String>> {
        let target = self.target();
        let Some(installed) = read_optional(&target)? else {
            return Ok(None);
        };
        let source = match read_file(&self.source) {
            Ok(s) => s,
            Err(e) => {
                return Ok(Some(format!(
                    "cannot compare it with {}: {e}",
                    self.source.display()
                )));
            }
        };
        if installed != source {
            return Ok(Some(format!(
                "it is not the binary this installer ships (sha256 {} vs {})",
                sha256(&installed),
                sha256(&source)
            )));
        }
        remove(&self.bin_dir, BINARY_NAME)?;
        self.verified = None;
        Ok(None)
    }
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempdir("atomic");
        write_atomic(&dir, "a.conflist", b"one", 0o644).unwrap();
        write_atomic(&dir, "a.conflist", b"two", 0o644).unwrap();
        assert_eq!(fs::read(dir.join("a.conflist")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["a.conflist"]);
        assert_eq!(
            fs::metadata(dir.join("a.conflist")).unwrap().mode() & 0o777,
            0o644
        );
        fs::write(dir.join(format!(".x.1-0{TMP_SUFFIX}")), b"half").unwrap();
        assert_eq!(remove_stale_temps(&dir).len(), 1);
        assert!(remove(&dir, "a.conflist").unwrap());
        assert!(!remove(&dir, "a.conflist").unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn binary_installs_once_and_repairs() {
        let dir = tempdir("binary");
        let source = dir.join("weir-src");
        fs::write(&source, b"\x7fELF not really").unwrap();
        let bin = dir.join("bin");
        fs::create_dir(&bin).unwrap();
        let mut installer = BinaryInstaller::new(source.clone(), bin.clone());
        let BinaryChange::Installed { why, sha256: sum } = installer.ensure().unwrap() else {
            panic!()
        };
        assert_eq!(why, "not installed");
        assert_eq!(sum, sha256(b"\x7fELF not really"));
        let target = bin.join(BINARY_NAME);
        assert_eq!(fs::read(&target).unwrap(), fs::read(&source).unwrap());
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o755);
        assert_eq!(installer.ensure().unwrap(), BinaryChange::Unchanged);
        // A fresh installer (a restart) finds it equal: no write.
        let ino = fs::metadata(&target).unwrap().ino();
        let mut again = BinaryInstaller::new(source.clone(), bin.clone());
        assert_eq!(again.ensure().unwrap(), BinaryChange::Unchanged);
        assert_eq!(fs::metadata(&target).unwrap().ino(), ino);
        // Overwritten by something else: put back.
        fs::write(&target, b"other").unwrap();
        let BinaryChange::Installed { why, .. } = installer.ensure().unwrap() else {
            panic!()
        };
        assert!(why.starts_with("installed one differs"), "{why}");
        // Mode lost: put back.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let BinaryChange::Installed { why, .. } = installer.ensure().unwrap() else {
            panic!()
        };
        assert_eq!(why, "mode was 644");
        // Removal only of what is ours.
        fs::write(&target, b"someone else's").unwrap();
        let kept = installer.remove_if_ours().unwrap();
        assert!(
            kept.unwrap()
                .contains("not the binary this installer ships")
        );
        assert!(target.exists());
        installer.ensure().unwrap();
        assert_eq!(installer.remove_if_ours().unwrap(), None);
        assert!(!target.exists());
        assert_eq!(installer.remove_if_ours().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
