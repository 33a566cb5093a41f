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

use std::{os::fd::BorrowedFd, path::PathBuf};

use weir_ebpf::{
    BpfRoot, SplitParams,
    abi::PodMode,
    maps::NodeMaps,
    split::{self, SplitStubs},
};

// The tests' own frame builders and test run, so the probe times the frames
// the tests prove are parsed right.
#[path = "../../../ebpf/tests/common/frames.rs"]
#[allow(dead_code)]
mod frames;
#[path = "../../../ebpf/tests/common/prog_run.rs"]
#[allow(dead_code)]
mod prog_run;

use frames::{eth, ipv4, ipv6, tcp, udp};
use prog_run::{SkBuffCtx, test_run_repeated};

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
    ctx: Option<SkBuffCtx>,
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
            frame: eth(0x0800, &ipv4(6, b, a, &[], 0, &ack)),
            ctx: None,
        },
        Case {
            name: "count-tcp4-gso-from-pod",
            stub: |p| p.counted.inner(),
            frame: eth(0x0800, &ipv4(6, a, b, &[], 0, &data)),
            ctx: Some(SkBuffCtx::gso(4, 250)),
        },
        Case {
            name: "count-tcp4-ack-to-pod",
            stub: |p| p.counted.outer(),
            frame: eth(0x0800, &ipv4(6, b, a, &[], 0, &ack)),
            ctx: None,
        },
        Case {
            name: "count-tcp6-ack-to-pod",
            stub: |p| p.counted.outer(),
            frame: eth(0x86dd, &ipv6(6, b6, a6, &ack)),
            ctx: None,
        },
        Case {
            name: "count-udp4-from-pod",
            stub: |p| p.counted.inner(),
            frame: eth(
                0x0800,
                &ipv4(17, a, b, &[], 0, &udp(40001, 11111, &[0; 64])),
            ),
            ctx: None,
        },
    ];

    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..samples {
        for (i, c) in cases.iter().enumerate() {
            let (verdict, per_run) =
                test_run_repeated((c.stub)(&pods), &c.frame, c.ctx.as_ref(), repeat);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{}: not redirected", c.name);
            ns[i].push(f64::from(per_run));
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
