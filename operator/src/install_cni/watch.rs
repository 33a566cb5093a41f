//! Change notification for the conf dir and the bin dir (inotify).
//!
//! Only a hint: the installer also resyncs on a timer, which covers events
//! lost to a full queue, a directory created after the start (watched as
//! soon as it exists) or deleted and made again, and a host where inotify
//! cannot be had at all.

use std::ffi::OsString;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct Watched {
    dir: PathBuf,
    /// Only events for this name count (`None`: any name).
    only: Option<OsString>,
    wd: Option<WatchDescriptor>,
}

/// inotify on a few directories.
pub struct DirWatch {
    fd: AsyncFd<Fd>,
    watched: Vec<Watched>,
}

const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

impl DirWatch {
    /// An inotify instance (needs a tokio runtime); directories are added
    /// with [`watch`](Self::watch).
    pub fn new() -> std::io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the fd is the Inotify's own, which the AsyncFd owns (in
        // `Fd`) and so keeps open, unchanged, for its whole life.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(DirWatch {
            fd,
            watched: Vec::new(),
        })
    }

    /// Watches `dir` (events of any file, or only of `only`).
    pub fn watch(&mut self, dir: &Path, only: Option<&str>) {
        self.watched.push(Watched {
            dir: dir.to_owned(),
            only: only.map(OsString::from),
            wd: None,
        });
        self.ensure();
    }

    /// Adds the watches of directories that exist now and were not
    /// watched; returns the ones that still cannot be watched, with why.
    pub fn ensure(&mut self) -> Vec<(PathBuf, nix::Error)> {
        let mut failed = Vec::new();
        for w in self.watched.iter_mut().filter(|w| w.wd.is_none()) {
            match self.fd.get_ref().0.add_watch(&w.dir, MASK) {
                Ok(wd) => w.wd = Some(wd),
                Err(e) => failed.push((w.dir.clone(), e)),
            }
        }
        failed
    }

    /// Waits for a relevant event, then until things have been quiet for
    /// `quiet` (at most `quiet` × 10), so a burst gives one resync. Returns
    /// the names seen, for the debug log.
    pub async fn changed(&mut self, quiet: Duration) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        while seen.is_empty() {
            self.read_into(&mut seen).await;
        }
        let deadline = tokio::time::Instant::now() + quiet * 10;
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(until, self.read_into(&mut seen)).await {
                Ok(()) if tokio::time::Instant::now() < deadline => continue,
                _ => break,
            }
        }
        seen
    }

    async fn read_into(&mut self, seen: &mut Vec<PathBuf>) {
        let Ok(mut guard) = self.fd.readable().await else {
            // Cannot fail for inotify; do not spin if it ever does.
            std::future::pending::<()>().await;
            return;
        };
        let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
            Ok(Ok(events)) => events,
            Ok(Err(_)) | Err(_) => return,
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: resync everything.
                seen.push(PathBuf::from("(inotify queue overflow)"));
                continue;
            }
            let Some(w) = self.watched.iter_mut().find(|w| w.wd == Some(event.wd)) else {
                continue;
            };
            if event.mask.contains(AddWatchFlags::IN_IGNORED)
                || event.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                || event.mask.contains(AddWatchFlags::IN_MOVE_SELF)
            {
                // The directory went: watch it again when it is back.
                w.wd = None;
                seen.push(w.dir.clone());
                continue;
            }
            match (&event.name, &w.only) {
                (Some(name), Some(only)) if name != only => {}
                (Some(name), _) => seen.push(w.dir.join(name)),
                (None, _) => seen.push(w.dir.clone()),
            }
        }
    }
}
