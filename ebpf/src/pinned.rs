//! Opening the pinned maps of [`crate::maps`] and [`crate::vxlan`] as their
//! ABI types, and the map error handling both share.

use std::{io, path::PathBuf};

use aya::maps::{Map, MapData, MapError};

use crate::{BpfRoot, Error, Result};

/// The error for a map that is not pinned yet: says which program's maps
/// are missing ([`Error::MapsNotPinned`], [`Error::VxlanMonitorNotLoaded`]).
pub(crate) type NotPinned = fn(map: &'static str, path: PathBuf, source: io::Error) -> Error;

pub(crate) fn map_err(map: &'static str) -> impl Fn(MapError) -> Error {
    move |e| Error::Map {
        map,
        source: Box::new(e),
    }
}

/// Opens `<root>/maps/<name>` as `T`; `try_from` checks the map type and
/// key/value sizes against the ABI types.
pub(crate) fn open<T>(root: &BpfRoot, name: &'static str, not_pinned: NotPinned) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = root.map_path(name);
    let data = MapData::from_pin(&path).map_err(|e| match e {
        MapError::SyscallError(s) if s.io_error.kind() == io::ErrorKind::NotFound => {
            not_pinned(name, path.clone(), s.io_error)
        }
        other => map_err(name)(other),
    })?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// aya reports a missing key as `KeyNotFound` on lookup but as the syscall's
/// ENOENT on delete.
pub(crate) fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Number of keys in a map now (a walk of `keys`).
pub(crate) fn count_keys<K>(
    map: &'static str,
    keys: impl Iterator<Item = Result<K, MapError>>,
) -> Result<u64> {
    let mut n = 0;
    for k in keys {
        k.map_err(map_err(map))?;
        n += 1;
    }
    Ok(n)
}

/// Sum over CPUs of one per-CPU u64 counter (wrapping, like the kernel's).
pub(crate) fn sum_per_cpu(per_cpu: &[u64]) -> u64 {
    per_cpu.iter().copied().fold(0u64, u64::wrapping_add)
}
