//! `contention [gap]`: does counting on both CPUs at once slow each down,
//! and does that depend on whether their flow entries lie side by side in
//! the preallocated LRU map (`gap` 0) or apart (`gap` filler flows created
//! between them)? Prints, three times, each CPU's ns per run of a counted
//! TCP ACK alone and with the other CPU counting its own flow. A lead for
//! the in-path counting cost (BENCHMARKS.md), not part of `make bench`.
//! Needs root, bpffs and 2 CPUs.
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use weir_ebpf::{BpfRoot, SplitParams, abi::PodMode, maps::NodeMaps, split};

#[path = "../../../../ebpf/tests/common/frames.rs"]
#[allow(dead_code)]
mod frames;
#[path = "../../../../ebpf/tests/common/prog_run.rs"]
#[allow(dead_code)]
mod prog_run;
use frames::*;
use prog_run::*;

/// Pins the calling thread to `cpu`; a thread left unpinned would measure
/// something else, so a refusal stops the probe.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // only touch the set they are given.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

fn frame(sport: u16) -> Vec<u8> {
    eth(
        0x0800,
        &ipv4(
            6,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            &[],
            0,
            &tcp(sport, 5201, 0x10, 3, &[]),
        ),
    )
}

fn run_on(cpu: usize, fd: BorrowedFd<'_>, f: &[u8], samples: usize) -> f64 {
    pin(cpu);
    let mut v: Vec<f64> = (0..samples)
        .map(|_| f64::from(test_run_repeated(fd, f, None, 200_000).1))
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let gap: u16 = std::env::args().nth(1).map_or(0, |s| s.parse().unwrap());
    let root_path = PathBuf::from(format!("/sys/fs/bpf/contend-{}", std::process::id()));
    let root = BpfRoot::new(&root_path);
    let p = |id| SplitParams {
        pod_id: id,
        wx_ifindex: 1000 + id,
        wi_ifindex: 2000 + id,
        outbound_via_peer: true,
    };
    let a = split::load(&root, &p(1)).unwrap();
    let mut maps = NodeMaps::open(&root).unwrap();
    maps.set_pod_mode(1, PodMode::Count).unwrap();
    let fa = frame(40000);
    let fb = frame(50000);
    // flow A, then `gap` filler flows, then flow B: preallocated elements
    // are handed out in order
    test_run_repeated(a.outer().as_fd(), &fa, None, 1);
    for i in 0..gap {
        test_run_repeated(a.outer().as_fd(), &frame(1000 + i), None, 1);
    }
    test_run_repeated(a.outer().as_fd(), &fb, None, 1);
    for _ in 0..3 {
        let alone_a = run_on(0, a.outer(), &fa, 5);
        let alone_b = run_on(1, a.outer(), &fb, 5);
        let (ca, cb) = std::thread::scope(|s| {
            let ha = s.spawn(|| run_on(0, a.outer(), &fa, 5));
            let hb = s.spawn(|| run_on(1, a.outer(), &fb, 5));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        println!("gap {gap}: alone {alone_a:.0}/{alone_b:.0} ns, together {ca:.0}/{cb:.0} ns");
    }
    let _ = std::fs::remove_dir_all(&root_path);
}
