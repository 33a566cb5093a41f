//! Just enough rtnetlink for the tc (clsact + `cls_bpf`) attach mode: add the
//! clsact qdisc, add a direct-action `bpf` filter for a program fd, and find
//! and delete filters by program id. Every pod's stubs carry the same names,
//! so a pod with two interfaces in one netns needs the id to remove only its
//! own; and an fd is all a stub is (aya never sees it).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const RTM_NEWTFILTER: u16 = 44;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `htons(ETH_P_ALL)`, as `tcm_info`'s protocol half.
const ETH_P_ALL_BE: u32 = 0x0300;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the clsact ingress hook.
pub(crate) const CLSACT_INGRESS_PARENT: u32 = 0xFFFF_FFF2;
/// `TC_H_CLSACT`: the clsact qdisc's parent.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The handle the clsact qdisc always has (`ffff:`).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;

const NLMSGHDR_LEN: usize = 16;
const TCMSG_LEN: usize = 20;

/// One `cls_bpf` filter on a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpfFilter {
    pub ifindex: u32,
    pub handle: u32,
    /// `tcm_info`: priority << 16 | protocol, as the kernel reported it.
    pub info: u32,
    pub prog_id: u32,
}

struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 1 })
    }

    fn send(
        &mut self,
        msg_type: u16,
        flags: u16,
        tcm: [u8; TCMSG_LEN],
        attrs: &[u8],
    ) -> io::Result<u32> {
        self.seq += 1;
        let len = NLMSGHDR_LEN + TCMSG_LEN + attrs.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&tcm);
        buf.extend_from_slice(attrs);
        // SAFETY: buf is valid for len bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives until the reply to `seq` is complete, handing each message
    /// (type, payload) to `f`: a dump ends with NLMSG_DONE, a request with
    /// NLM_F_ACK with an NLMSG_ERROR whose errno 0 means success.
    fn recv_until_done(&mut self, seq: u32, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut data = &buf[..n as usize];
            while data.len() >= NLMSGHDR_LEN {
                let len = u32::from_ne_bytes(data[0..4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2"));
                let mseq = u32::from_ne_bytes(data[8..12].try_into().expect("4"));
                if len < NLMSGHDR_LEN || len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &data[NLMSGHDR_LEN..len];
                if mseq == seq {
                    match ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let err = payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().expect("4")))
                                .unwrap_or(-libc::EPROTO);
                            return if err == 0 {
                                Ok(())
                            } else {
                                Err(io::Error::from_raw_os_error(-err))
                            };
                        }
                        _ => f(ty, payload),
                    }
                }
                data = &data[align4(len).min(data.len())..];
            }
        }
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG_LEN] {
    let mut t = [0u8; TCMSG_LEN];
    t[0] = libc::AF_UNSPEC as u8;
    t[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    t[8..12].copy_from_slice(&handle.to_ne_bytes());
    t[12..16].copy_from_slice(&parent.to_ne_bytes());
    t[16..20].copy_from_slice(&info.to_ne_bytes());
    t
}

fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(data[0..2].try_into().expect("2")) as usize;
        let ty = u16::from_ne_bytes(data[2..4].try_into().expect("2")) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn put_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn kind_attr(kind: &str) -> Vec<u8> {
    let mut v = Vec::new();
    put_attr(&mut v, TCA_KIND, &c_string(kind));
    v
}

fn request(msg_type: u16, flags: u16, tcm: [u8; TCMSG_LEN], attrs: &[u8]) -> io::Result<()> {
    let mut sock = Socket::open()?;
    let seq = sock.send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, tcm, attrs)?;
    sock.recv_until_done(seq, |_, _| {})
}

/// Adds the clsact qdisc to `ifindex` in the calling thread's netns; one that
/// is already there is success.
pub(crate) fn add_clsact(ifindex: u32) -> io::Result<()> {
    match request(
        RTM_NEWQDISC,
        NLM_F_CREATE | NLM_F_EXCL,
        tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0),
        &kind_attr("clsact"),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Adds a direct-action `bpf` filter running `prog` on `parent` of
/// `ifindex`, for every protocol, at a priority the kernel picks (ahead of
/// the filters already there).
pub(crate) fn add_bpf_filter(
    ifindex: u32,
    parent: u32,
    prog: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> io::Result<()> {
    let mut options = Vec::new();
    put_attr(
        &mut options,
        TCA_BPF_FD,
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
    );
    put_attr(&mut options, TCA_BPF_NAME, &c_string(name));
    put_attr(
        &mut options,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    let mut attrs = kind_attr("bpf");
    put_attr(&mut attrs, TCA_OPTIONS | NLA_F_NESTED, &options);
    request(
        RTM_NEWTFILTER,
        NLM_F_CREATE | NLM_F_EXCL,
        tcmsg(ifindex, 0, parent, ETH_P_ALL_BE),
        &attrs,
    )
}

/// The `bpf` filters on `parent` of `ifindex` in the calling thread's netns.
/// A device without a clsact qdisc has none.
pub(crate) fn bpf_filters(ifindex: u32, parent: u32) -> io::Result<Vec<BpfFilter>> {
    let mut sock = Socket::open()?;
    let seq = sock.send(
        RTM_GETTFILTER,
        NLM_F_REQUEST | NLM_F_DUMP,
        tcmsg(ifindex, 0, parent, 0),
        &[],
    )?;
    let mut out = Vec::new();
    let res = sock.recv_until_done(seq, |ty, payload| {
        if ty != RTM_NEWTFILTER || payload.len() < TCMSG_LEN {
            return;
        }
        let handle = u32::from_ne_bytes(payload[8..12].try_into().expect("4"));
        let info = u32::from_ne_bytes(payload[16..20].try_into().expect("4"));
        let mut is_bpf = false;
        let mut prog_id = None;
        for (ty, value) in attrs(&payload[TCMSG_LEN..]) {
            match ty {
                TCA_KIND => is_bpf = value.split(|&b| b == 0).next() == Some(b"bpf"),
                TCA_OPTIONS => {
                    for (ty, v) in attrs(value) {
                        if ty == TCA_BPF_ID && v.len() >= 4 {
                            prog_id = Some(u32::from_ne_bytes(v[0..4].try_into().expect("4")));
                        }
                    }
                }
                _ => {}
            }
        }
        if let (true, Some(prog_id)) = (is_bpf, prog_id) {
            out.push(BpfFilter {
                ifindex,
                handle,
                info,
                prog_id,
            });
        }
    });
    match res {
        Ok(()) => Ok(out),
        // no qdisc on that parent, or the device vanished: no filters
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Deletes one filter found by [`bpf_filters`]; already gone is success.
pub(crate) fn delete_filter(parent: u32, f: &BpfFilter) -> io::Result<()> {
    match request(
        RTM_DELTFILTER,
        0,
        tcmsg(f.ifindex, f.handle, parent, f.info),
        &kind_attr("bpf"),
    ) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
        Err(e) => Err(e),
    }
}
