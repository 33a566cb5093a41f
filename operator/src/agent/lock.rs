//! One agent per node: two agents reading and resetting the same pinned maps
//! would double-count, so a second one refuses to start and says who holds
//! the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another weir agent is already running on this node (pid {holder}, lock {path}); stop it first"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot take the agent lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the agent's lifetime; the kernel drops the lock when the process
/// dies, so a `kill -9` never leaves a stale lock behind.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // flock(2), exclusive, not waiting; held until the file is closed.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid_and_lock_frees_on_drop() {
        let path = std::env::temp_dir().join(format!("weir-agent-lock-{}", std::process::id()));
        let first = AgentLock::acquire(&path).unwrap();
        let err = AgentLock::acquire(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        AgentLock::acquire(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
