//! The `bpf(2)` commands weir issues itself, through libc: those aya 0.14 does
//! not expose publicly (link info, link detach, object lookup by id, batched
//! map lookup), and the few a pod ADD needs (load a stub, create a TCX link,
//! pin), where going through aya would cost a parse of the kernel's BTF on
//! every ADD.
//!
//! Structures are declared as prefixes of the uapi ones padded with zeros:
//! the kernel accepts a larger user buffer as long as the tail is zero, and
//! copies back only what it knows.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `bpf_link_type` value of TCX links.
pub(crate) const BPF_LINK_TYPE_TCX: u32 = 11;
/// `bpf_attach_type` value of TCX ingress.
pub(crate) const BPF_TCX_INGRESS: u32 = 46;
/// `bpf_prog_type` of tc classifiers.
pub(crate) const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `bpf_map_type` of tail-call tables.
pub(crate) const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;

/// Large enough for any `union bpf_attr` command used here.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable buffer of the size we pass; the kernel
    // only reads/writes within it and the user pointers placed inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_from(ret: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// `BPF_OBJ_GET`: opens a pinned object (map, program or link).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut attr).map(fd_from)
}

/// `BPF_LINK_DETACH`: detaches a link from its hook even while other
/// references (pins, fds held elsewhere) keep the link object alive.
pub(crate) fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

fn put_name(attr: &mut Attr, off: usize, name: &str) {
    // BPF_OBJ_NAME_LEN is 16 with the NUL; the kernel accepts [A-Za-z0-9_.]
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    attr.0[off..off + n].copy_from_slice(&bytes[..n]);
}

/// `BPF_MAP_CREATE` of a map without BTF.
pub(crate) fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, map_type);
    attr.put_u32(4, key_size);
    attr.put_u32(8, value_size);
    attr.put_u32(12, max_entries);
    put_name(&mut attr, 28, name);
    bpf(BPF_MAP_CREATE, &mut attr).map(fd_from)
}

/// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
pub(crate) fn map_update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u64(8, key.as_ptr() as u64);
    attr.put_u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// `BPF_PROG_LOAD` of raw instructions (no BTF, no relocations left to do).
/// On refusal the error carries the verifier's log.
pub(crate) fn prog_load(
    prog_type: u32,
    insns: &[u64],
    license: &std::ffi::CStr,
    name: &str,
) -> io::Result<OwnedFd> {
    let load = |log: &mut [u8]| {
        let mut attr = Attr::new();
        attr.put_u32(0, prog_type);
        attr.put_u32(4, insns.len() as u32);
        attr.put_u64(8, insns.as_ptr() as u64);
        attr.put_u64(16, license.as_ptr() as u64);
        if !log.is_empty() {
            attr.put_u32(24, 1);
            attr.put_u32(28, log.len() as u32);
            attr.put_u64(32, log.as_mut_ptr() as u64);
        }
        put_name(&mut attr, 48, name);
        bpf(BPF_PROG_LOAD, &mut attr).map(fd_from)
    };
    // the first attempt without a log: logging slows the verifier down
    load(&mut []).or_else(|first| {
        let mut log = vec![0u8; 64 * 1024];
        load(&mut log).map_err(|_| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            io::Error::new(
                first.kind(),
                format!(
                    "{first}; verifier log: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ),
            )
        })
    })
}

/// `BPF_OBJ_PIN`: pins a map, program or link at `path` on bpffs.
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    attr.put_u32(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `BPF_LINK_CREATE` of a TCX link at the end of the device's chain for
/// `attach_type` (ingress or egress).
pub(crate) fn tcx_link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32);
    attr.put_u32(4, ifindex);
    attr.put_u32(8, attach_type);
    bpf(BPF_LINK_CREATE, &mut attr).map(fd_from)
}

fn get_info(fd: BorrowedFd<'_>, buf: &mut [u64]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of_val(buf) as u32);
    attr.put_u64(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

fn u32_at(buf: &[u64], off: usize) -> u32 {
    let bytes: &[u8] = bytes_of(buf);
    u32::from_ne_bytes(bytes[off..off + 4].try_into().expect("4 bytes"))
}

fn bytes_of(buf: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding; viewing its storage as bytes is always valid.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), std::mem::size_of_val(buf)) }
}

/// What `bpf_link_info` tells about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For TCX links: the device, 0 once the device is gone.
    pub tcx_ifindex: u32,
    pub tcx_attach_type: u32,
}

pub(crate) fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut buf = [0u64; 16];
    get_info(fd, &mut buf)?;
    Ok(LinkInfo {
        link_type: u32_at(&buf, 0),
        id: u32_at(&buf, 4),
        prog_id: u32_at(&buf, 8),
        // the union after type/id/prog_id starts at 16 (8-byte aligned)
        tcx_ifindex: u32_at(&buf, 16),
        tcx_attach_type: u32_at(&buf, 20),
    })
}

/// What `bpf_prog_info` tells about a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProgInfo {
    pub id: u32,
    pub name: String,
    pub map_ids: Vec<u32>,
}

pub(crate) fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    // first call learns nr_map_ids, second fetches them
    let mut buf = [0u64; 32];
    get_info(fd, &mut buf)?;
    let nr = u32_at(&buf, 52) as usize;
    let mut ids = vec![0u32; nr];
    let mut buf = [0u64; 32];
    {
        let bytes: &mut [u8] =
            // SAFETY: as in bytes_of, for a mutable view.
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), 256) };
        bytes[52..56].copy_from_slice(&(nr as u32).to_ne_bytes());
        bytes[56..64].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    }
    get_info(fd, &mut buf)?;
    let got = (u32_at(&buf, 52) as usize).min(nr);
    ids.truncate(got);
    let raw_name = &bytes_of(&buf)[64..80];
    let end = raw_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw_name.len());
    Ok(ProgInfo {
        id: u32_at(&buf, 4),
        name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
        map_ids: ids,
    })
}

/// The program's instructions as the verifier left them (`xlated`), as raw
/// 8-byte instructions. Empty when the kernel withholds them (it does unless
/// the caller may read kernel addresses).
pub(crate) fn prog_xlated_insns(fd: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    let mut buf = [0u64; 32];
    get_info(fd, &mut buf)?;
    let len = u32_at(&buf, 20) as usize;
    let mut insns = vec![0u64; len / 8];
    if insns.is_empty() {
        return Ok(insns);
    }
    let mut buf = [0u64; 32];
    {
        let bytes: &mut [u8] =
            // SAFETY: as in bytes_of, for a mutable view.
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), 256) };
        // xlated_prog_len at 20, xlated_prog_insns at 32
        bytes[20..24].copy_from_slice(&((insns.len() * 8) as u32).to_ne_bytes());
        bytes[32..40].copy_from_slice(&(insns.as_mut_ptr() as u64).to_ne_bytes());
    }
    get_info(fd, &mut buf)?;
    Ok(insns)
}

/// What `bpf_map_info` tells about a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapInfo {
    pub id: u32,
    pub value_size: u32,
    pub name: String,
}

pub(crate) fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut buf = [0u64; 16];
    get_info(fd, &mut buf)?;
    let raw_name = &bytes_of(&buf)[24..40];
    let end = raw_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw_name.len());
    Ok(MapInfo {
        id: u32_at(&buf, 4),
        value_size: u32_at(&buf, 12),
        name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
    })
}

/// Ids of every program loaded on the host, in ascending order
/// (`BPF_PROG_GET_NEXT_ID`); ids are global, not per netns.
pub(crate) fn prog_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = Attr::new();
        attr.put_u32(0, start);
        match bpf(BPF_PROG_GET_NEXT_ID, &mut attr) {
            Ok(_) => {
                start = u32::from_ne_bytes(attr.0[4..8].try_into().expect("4 bytes"));
                ids.push(start);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn prog_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(fd_from)
}

pub(crate) fn map_get_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, id);
    bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).map(fd_from)
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`, whose length must be the map's value size.
pub(crate) fn map_lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u64(8, key.as_ptr() as u64);
    attr.put_u64(16, value.as_mut_ptr() as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
}

/// One `BPF_MAP_LOOKUP_BATCH` call: copies up to `max` entries into `keys`
/// and `values` (each at least `max` times the map's key / value size),
/// continuing after `token` (`None`: from the start) and leaving the next
/// position in `next`. Returns how many entries were copied and whether the
/// walk is complete (the kernel's ENOENT; that call may still copy entries).
pub(crate) fn map_lookup_batch(
    fd: BorrowedFd<'_>,
    token: Option<&u64>,
    next: &mut u64,
    keys: &mut [u8],
    values: &mut [u8],
    max: u32,
) -> io::Result<(u32, bool)> {
    // union bpf_attr, `batch`: in_batch, out_batch, keys, values (u64
    // pointers), count, map_fd (u32), elem_flags, flags (u64). Hash maps use
    // a 4-byte position; `token`/`next` are 8 bytes, more than any needs.
    let mut attr = Attr::new();
    attr.put_u64(0, token.map_or(0, |t| t as *const u64 as u64));
    attr.put_u64(8, next as *mut u64 as u64);
    attr.put_u64(16, keys.as_mut_ptr() as u64);
    attr.put_u64(24, values.as_mut_ptr() as u64);
    attr.put_u32(32, max);
    attr.put_u32(36, fd.as_raw_fd() as u32);
    let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    let count = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes"));
    match result {
        Ok(_) => Ok((count, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((count, true)),
        Err(e) => Err(e),
    }
}

/// Name of an interface of the calling thread's netns.
pub(crate) fn ifname(ifindex: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// All interface indexes of the calling thread's netns.
pub(crate) fn ifindexes() -> io::Result<Vec<u32>> {
    // SAFETY: plain libc call; the result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: the array ends with an entry whose index is 0 and name is NULL.
    unsafe {
        while (*p).if_index != 0 {
            out.push((*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}
