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

/// Entries per `BPF_MAP_LOOKUP_BATCH` call; grown if one hash bucket holds more.
const BATCH: usize = 512;

/// Calls `f` for every entry of a hash map, reading it in batches (one
/// syscall per [`BATCH`] entries instead of two per entry), and returns how
/// many entries it saw. Kernels without batched lookups on this map type
/// get the entry-by-entry walk. Entries created or removed during the walk
/// may or may not be seen; none is seen twice.
///
/// `K` and `V` must be the map's key and value types: aya checked their
/// sizes against the map's when it was opened.
pub(crate) fn for_each_entry<K, V>(
    map: &aya::maps::HashMap<MapData, K, V>,
    name: &'static str,
    mut f: impl FnMut(&K, &V),
) -> Result<u64>
where
    K: aya::Pod + Default,
    V: aya::Pod + Default,
{
    use std::os::fd::AsFd;

    use aya::maps::IterableMap;

    let fd = map.map().fd().as_fd();
    let mut size = BATCH;
    let mut keys: Vec<K> = vec![K::default(); size];
    let mut values: Vec<V> = vec![V::default(); size];
    let (mut token, mut next) = (None::<u64>, 0u64);
    let mut seen = 0u64;
    loop {
        // SAFETY: K and V are plain data (Pod) of the map's key and value
        // sizes, so the kernel writes at most `size` of each into buffers
        // of exactly that many.
        let (key_bytes, value_bytes) = unsafe {
            (
                std::slice::from_raw_parts_mut(
                    keys.as_mut_ptr().cast::<u8>(),
                    size * size_of::<K>(),
                ),
                std::slice::from_raw_parts_mut(
                    values.as_mut_ptr().cast::<u8>(),
                    size * size_of::<V>(),
                ),
            )
        };
        let (count, done) = match crate::sys::map_lookup_batch(
            fd,
            token.as_ref(),
            &mut next,
            key_bytes,
            value_bytes,
            size as u32,
        ) {
            Ok(r) => r,
            // One bucket holds more entries than fit: retry with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 20 => {
                size *= 4;
                keys.resize(size, K::default());
                values.resize(size, V::default());
                continue;
            }
            // No batched lookups here (EINVAL, ENOTSUPP): walk entry by
            // entry, from the start, if nothing was seen yet.
            Err(e)
                if seen == 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | 524 | libc::EOPNOTSUPP)
                    ) =>
            {
                for item in map.iter() {
                    let (k, v) = item.map_err(map_err(name))?;
                    f(&k, &v);
                    seen += 1;
                }
                return Ok(seen);
            }
            Err(e) => {
                return Err(map_err(name)(MapError::SyscallError(
                    aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error: e,
                    },
                )));
            }
        };
        let count = (count as usize).min(size);
        for (k, v) in keys[..count].iter().zip(&values[..count]) {
            f(k, v);
        }
        seen += count as u64;
        if done {
            return Ok(seen);
        }
        token = Some(next);
    }
}
