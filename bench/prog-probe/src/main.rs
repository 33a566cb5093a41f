//! `weir-prog-probe <bpf root> [samples] [repeat]`: nanoseconds per run of
//! weir's split path (entry stub + tail-called node program) on typical
//! frames, as the kernel times them in BPF_PROG_TEST_RUN, one line per case:
//! `<case> <median ns> <min ns> <max ns>` over `samples` (default 15) runs
//! of `repeat` (default 200000) executions each, the cases alternating.
//!
//! The kernel's loop adds its own few ns per execution to every case alike,
//! so compare cases and builds, not absolute figures against the in-path
//! BPF statistics of `make bench`. Frames are linear here; in a real path a
//! GSO packet's payload sits in page fragments, which the program never
//! reads.
//!
//! Needs root and bpffs. The root (a directory under /sys/fs/bpf) must not
//! exist; it is created and removed.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    path::PathBuf,
};

use weir_ebpf::{
    BpfRoot, SplitParams,
    abi::PodMode,
    maps::NodeMaps,
    split::{self, SplitStubs},
};

const TC_ACT_REDIRECT: u32 = 7;
const COUNTED_POD: u32 = 1;
const PASSTHROUGH_POD: u32 = 2;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: weir-prog-probe <bpf root> [samples] [repeat]");
        std::process::exit(2);
    };
    let samples: usize = args.next().map_or(15, |s| s.parse().expect("samples"));
    let repeat: u32 = args.next().map_or(200_000, |s| s.parse().expect("repeat"));
    assert!(
        !root.exists(),
        "{} exists; give a fresh path",
        root.display()
    );

    let result = std::panic::catch_unwind(|| run(&root, samples, repeat));
    let _ = std::fs::remove_dir_all(&root);
    if result.is_err() {
        std::process::exit(1);
    }
}

struct Case {
    name: &'static str,
    stub: fn(&Pods) -> BorrowedFd<'_>,
    frame: Vec<u8>,
    gso: Option<(u32, u32)>,
}

struct Pods {
    counted: SplitStubs,
    passthrough: SplitStubs,
}

fn run(root: &std::path::Path, samples: usize, repeat: u32) {
    let root = BpfRoot::new(root);
    let params = |pod_id| SplitParams {
        pod_id,
        wx_ifindex: 1000 + pod_id,
        wi_ifindex: 2000 + pod_id,
        outbound_via_peer: true,
    };
    let pods = Pods {
        counted: split::load(&root, &params(COUNTED_POD)).expect("loading the split"),
        passthrough: split::load(&root, &params(PASSTHROUGH_POD)).expect("loading the split"),
    };
    NodeMaps::open(&root)
        .expect("opening the node maps")
        .set_pod_mode(COUNTED_POD, PodMode::Count)
        .expect("setting count mode");

    let a = [10, 244, 0, 2];
    let b = [10, 244, 0, 3];
    let a6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let b6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    // 12 bytes of TCP options, like Linux's timestamps
    let data = tcp(40000, 5201, 0x10, 3, &[0x5a; 1000]);
    let ack = tcp(5201, 40000, 0x10, 3, &[]);
    let cases = [
        Case {
            name: "passthrough-tcp4-ack",
            stub: |p| p.passthrough.outer(),
            frame: eth(0x0800, &ipv4(6, b, a, &ack)),
            gso: None,
        },
        Case {
            name: "count-tcp4-gso-from-pod",
            stub: |p| p.counted.inner(),
            frame: eth(0x0800, &ipv4(6, a, b, &data)),
            gso: Some((4, 250)),
        },
        Case {
            name: "count-tcp4-ack-to-pod",
            stub: |p| p.counted.outer(),
            frame: eth(0x0800, &ipv4(6, b, a, &ack)),
            gso: None,
        },
        Case {
            name: "count-tcp6-ack-to-pod",
            stub: |p| p.counted.outer(),
            frame: eth(0x86dd, &ipv6(6, b6, a6, &ack)),
            gso: None,
        },
        Case {
            name: "count-udp4-from-pod",
            stub: |p| p.counted.inner(),
            frame: eth(0x0800, &ipv4(17, a, b, &udp(40001, 11111, &[0; 64]))),
            gso: None,
        },
    ];

    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..samples {
        for (i, c) in cases.iter().enumerate() {
            let (verdict, per_run) = test_run((c.stub)(&pods), &c.frame, c.gso, repeat);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{}: not redirected", c.name);
            ns[i].push(per_run);
        }
    }
    for (c, v) in cases.iter().zip(&mut ns) {
        v.sort_by(f64::total_cmp);
        println!(
            "{} {:.1} {:.1} {:.1}",
            c.name,
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}

/// Runs `prog` `repeat` times on `frame`; returns the verdict and the
/// kernel's mean ns per execution.
fn test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    gso: Option<(u32, u32)>,
    repeat: u32,
) -> (u32, f64) {
    // the input context is a zeroed prefix of struct __sk_buff
    let mut ctx = [0u8; 192];
    if let Some((segs, size)) = gso {
        ctx[164..168].copy_from_slice(&segs.to_ne_bytes()); // gso_segs
        ctx[176..180].copy_from_slice(&size.to_ne_bytes()); // gso_size
    }
    // union bpf_attr, its `test` member
    let mut attr = [0u8; 80];
    let mut put = |off: usize, bytes: &[u8]| attr[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(prog.as_raw_fd() as u32).to_ne_bytes()); // prog_fd
    put(8, &(frame.len() as u32).to_ne_bytes()); // data_size_in
    put(16, &(frame.as_ptr() as u64).to_ne_bytes()); // data_in
    put(32, &repeat.to_ne_bytes()); // repeat
    put(40, &(ctx.len() as u32).to_ne_bytes()); // ctx_size_in
    put(48, &(ctx.as_ptr() as u64).to_ne_bytes()); // ctx_in
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a bpf_attr; frame and ctx outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    assert!(
        rc == 0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    let word = |off: usize| u32::from_ne_bytes(attr[off..off + 4].try_into().unwrap());
    (word(4), f64::from(word(36))) // retval, duration
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, opt_words: usize, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    h.push(((5 + opt_words) as u8) << 4);
    h.push(flags);
    h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    h.extend(std::iter::repeat_n(1u8, opt_words * 4));
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}
