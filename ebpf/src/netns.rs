//! Running work inside a pod's network namespace.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so the work runs on a
//! thread spawned for it and that thread ends with the work: no other code ever
//! runs on a thread whose namespace was switched. The netlink socket is opened
//! on that thread too, which binds it to the pod's namespace for its lifetime.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Why the pod's namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("cannot start the netlink connection in {path}: {source}")]
    Netlink {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the worker for {path}: {source}")]
    Runtime {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the worker inside {path} panicked")]
    Panicked { path: PathBuf },
}

/// Runs `work` on a fresh thread inside the namespace at `path`, with a netlink
/// handle bound to that namespace.
///
/// `work` gets the handle and returns a future; the future is driven on a
/// current-thread runtime so every await point stays on the switched thread.
pub fn run_in<T, F, Fut>(path: &Path, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let ns = open(path)?;
    let path_buf = path.to_path_buf();
    let thread_path = path_buf.clone();
    let worker = std::thread::Builder::new()
        .name("weir-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            let path = thread_path;
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
            drop(ns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetnsError::Runtime {
                    path: path.clone(),
                    source,
                })?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|source| NetnsError::Netlink {
                        path: path.clone(),
                        source,
                    })?;
                let driver = tokio::spawn(connection);
                let out = work(handle).await;
                driver.abort();
                Ok(out)
            })
        })
        .map_err(|source| NetnsError::Runtime {
            path: path_buf.clone(),
            source,
        })?;
    worker
        .join()
        .map_err(|_| NetnsError::Panicked { path: path_buf })?
}

/// Whether the namespace file still exists; DEL must succeed when it does not.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            NetnsError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// The (device, inode) that identifies a namespace file, whatever path names it.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `path` is the network namespace this process runs in (the
/// node's, for a plugin the runtime started): weir must never split that.
pub fn is_own(path: &Path) -> bool {
    match (ns_id(path), ns_id(Path::new("/proc/self/ns/net"))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether two paths name the same network namespace (compared by inode
/// while both exist, else by path).
pub fn same(a: &Path, b: &Path) -> bool {
    match (ns_id(a), ns_id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}
