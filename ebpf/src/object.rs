//! What the split and the VXLAN monitor loaders share: loading an embedded
//! object with its globals against maps pinned by name (retrying a lost pin
//! race), refusing pinned maps of another shape, reaching its classifier
//! programs, and the pins and `.rodata` of what they attached.
//!
//! The attach policies themselves (netlink fallback, in-place link update,
//! ...) stay in [`crate::split`] and [`crate::vxlan`]: they differ on purpose.

use std::{
    fs, io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo, MapType},
    pin::PinError,
    programs::{ProgramError, SchedClassifier},
};
use tracing::{debug, warn};

use crate::{BpfRoot, Error, Result, io_err, sys};

/// Loads retried when another process pinned a map between our lookup and
/// our pin (two first loads on a fresh node).
const LOAD_ATTEMPTS: usize = 5;

/// `BPF_F_NO_PREALLOC`, the only map flag [`MapShape`] compares.
pub(crate) const BPF_F_NO_PREALLOC: u32 = 1;

/// The shape a pinned map must have for this build's ABI.
pub(crate) struct MapShape {
    pub name: &'static str,
    pub ty: MapType,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
    /// Expected `map_flags & BPF_F_NO_PREALLOC`; `None`: not compared (nor
    /// mentioned in the error).
    pub no_prealloc: Option<u32>,
}

/// Loads `object` with its maps pinned by name under `<root>/maps` (created
/// or reused), after `configure` set its globals; checks the pinned maps
/// against `shapes` and loads (verifies) `programs`. `what` names the object
/// in logs.
pub(crate) fn load<'a>(
    root: &BpfRoot,
    object: &[u8],
    what: &str,
    configure: impl Fn(&mut EbpfLoader<'a>),
    shapes: &[MapShape],
    programs: &[&'static str],
) -> Result<Ebpf> {
    let maps_dir = root.maps_dir();
    fs::create_dir_all(&maps_dir).map_err(io_err("creating", &maps_dir))?;

    let mut attempt = 0;
    let mut ebpf = loop {
        attempt += 1;
        let mut loader: EbpfLoader<'a> = EbpfLoader::new();
        loader
            // no CO-RE relocations in the object: kernel BTF has nothing to relocate
            .btf(None)
            .default_map_pin_directory(&maps_dir);
        configure(&mut loader);
        match loader.load(object) {
            Ok(ebpf) => break ebpf,
            Err(e) if attempt < LOAD_ATTEMPTS && lost_pin_race(&e) => {
                // another loader created and pinned the map first: the next
                // load opens its pin instead of creating one
                debug!(attempt, what, "map pin race while loading, retrying");
                continue;
            }
            Err(e) => {
                return Err(Error::Load {
                    source: Box::new(e),
                });
            }
        }
    };
    check_pinned_maps(root, shapes)?;

    for &name in programs {
        classifier_mut(&mut ebpf, name)?
            .load()
            .map_err(|e| Error::Program {
                program: name,
                source: Box::new(e),
            })?;
    }
    Ok(ebpf)
}

fn lost_pin_race(e: &EbpfError) -> bool {
    matches!(
        e,
        EbpfError::MapError(MapError::PinError { error: PinError::SyscallError(s), .. })
            if s.io_error.raw_os_error() == Some(libc::EEXIST)
    )
}

/// aya opens an existing pin without comparing it with the object's
/// definition; a pin left by an older build with another layout must be
/// refused, not silently shared.
fn check_pinned_maps(root: &BpfRoot, shapes: &[MapShape]) -> Result<()> {
    for s in shapes {
        let path = root.map_path(s.name);
        let info = MapInfo::from_pin(&path).map_err(|e| Error::Map {
            map: s.name,
            source: Box::new(e),
        })?;
        let found_ty = info.map_type().ok();
        let flags_differ = s
            .no_prealloc
            .is_some_and(|f| info.map_flags() & BPF_F_NO_PREALLOC != f);
        if found_ty == Some(s.ty)
            && info.key_size() == s.key
            && info.value_size() == s.value
            && info.max_entries() == s.max_entries
            && !flags_differ
        {
            continue;
        }
        let (ty, key, value, max) = (s.ty, s.key, s.value, s.max_entries);
        let detail = match s.no_prealloc {
            None => format!(
                "expected {ty:?} key {key} value {value} max_entries {max}, found {found_ty:?} key {} value {} \
                 max_entries {}",
                info.key_size(),
                info.value_size(),
                info.max_entries()
            ),
            Some(flags) => format!(
                "expected {ty:?} key {key} value {value} max_entries {max} flags {flags:#x}, \
                 found {found_ty:?} key {} value {} max_entries {} flags {:#x}",
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                info.map_flags()
            ),
        };
        return Err(Error::IncompatibleMap {
            map: s.name,
            path,
            detail,
        });
    }
    Ok(())
}

/// The public wrapper of an object [`load`]ed for one set of parameters
/// (`SplitObject`, `VxlanObject`): the aya object, a `Debug` that hides it,
/// its programs by name and `ebpf_mut`. Each loader adds accessors for its
/// own programs.
macro_rules! loaded_object {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name {
            ebpf: aya::Ebpf,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            fn program(&self, name: &str) -> &aya::programs::SchedClassifier {
                $crate::object::classifier(&self.ebpf, name)
            }

            fn program_mut(
                &mut self,
                name: &'static str,
            ) -> $crate::Result<&mut aya::programs::SchedClassifier> {
                $crate::object::classifier_mut(&mut self.ebpf, name)
            }

            /// The underlying aya object, e.g. to reach its maps.
            pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
                &mut self.ebpf
            }
        }
    };
}
pub(crate) use loaded_object;

/// A program of a loaded object that [`load`] checked is a classifier.
pub(crate) fn classifier<'a>(ebpf: &'a Ebpf, name: &str) -> &'a SchedClassifier {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .expect("load() checked both programs exist and are classifiers")
}

/// A classifier program of `ebpf`, or why `name` is none.
pub(crate) fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Program {
            program: name,
            source: Box::new(ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(|e| Error::Program {
            program: name,
            source: Box::new(e),
        })
}

pub(crate) fn pin_io_error(e: PinError) -> io::Error {
    match e {
        PinError::SyscallError(s) => s.io_error,
        other => io::Error::other(other.to_string()),
    }
}

/// Detaches the link pinned at `path` (`BPF_LINK_DETACH`, at once even while
/// another process holds an fd) and removes the pin. No pin is success.
pub(crate) fn retire_link_pin(path: &Path) -> Result<()> {
    match sys::obj_get(path) {
        Ok(fd) => {
            if let Err(e) = sys::link_detach(fd.as_fd()) {
                // removing the pin still detaches once the last fd closes
                debug!(path = %path.display(), error = %e, "BPF_LINK_DETACH failed");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => warn!(path = %path.display(), error = %e, "cannot open pinned link"),
    }
    remove_pin(path)
}

/// Removes a pin; a missing one is success.
pub(crate) fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing pin", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a directory of pins; a missing one is success.
pub(crate) fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", dir)(e)),
        _ => Ok(()),
    }
}

/// The subdirectories of `base` whose names `decode` accepts, decoded and
/// sorted; none when `base` does not exist.
pub(crate) fn list_dirs(
    base: &Path,
    decode: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", base)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("listing", base))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && let Some(name) = entry.file_name().to_str().and_then(&decode)
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The loaded program `prog_id` if it is `program` (the kernel keeps at most
/// 15 bytes of a name), with its `.rodata` of `rodata_size` bytes: what
/// `verify` compares with the parameters it expects.
pub(crate) fn program_rodata(
    prog_id: u32,
    program: &str,
    rodata_size: usize,
) -> Result<Vec<u8>, String> {
    let fd = sys::prog_get_fd_by_id(prog_id)
        .map_err(|e| format!("program id {prog_id} is gone: {e}"))?;
    let info =
        sys::prog_info(fd.as_fd()).map_err(|e| format!("cannot read program id {prog_id}: {e}"))?;
    if info.name.is_empty() || !program.starts_with(&info.name) {
        return Err(format!(
            "program id {prog_id} is {:?}, expected {program}",
            info.name
        ));
    }
    info.map_ids
        .iter()
        .find_map(|&id| {
            let fd: OwnedFd = sys::map_get_fd_by_id(id).ok()?;
            let mi = sys::map_info(fd.as_fd()).ok()?;
            if !mi.name.ends_with("rodata") || mi.value_size as usize != rodata_size {
                return None;
            }
            let mut value = vec![0u8; rodata_size];
            sys::map_lookup(fd.as_fd(), &0u32.to_ne_bytes(), &mut value).ok()?;
            Some(value)
        })
        .ok_or_else(|| format!("program id {prog_id} has no readable .rodata map"))
}
