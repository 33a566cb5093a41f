//! `weir-loader-probe <phase> <bpf root>`: times one phase of what loading
//! weir's split program costs, as the first call in this fresh process, and
//! prints the milliseconds. This is paid once per node (by the first CNI
//! STATUS or ADD), no longer by every ADD.
//!
//! Phases:
//! - `read`: reading /sys/kernel/btf/vmlinux, I/O only;
//! - `btf`: `aya::Btf::from_sys_fs()` (read + parse), which aya 0.14's
//!   `EbpfLoader::new()` always does, even when `.btf(None)` follows;
//! - `features`: aya's feature probing, done once per process on first use;
//! - `load`: `weir_ebpf::probe` on a root where nothing is loaded yet (the
//!   caller removes it first): BTF parse, features, object, maps created
//!   under `<bpf root>/maps`, the program through the verifier, pins.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(phase), Some(root)) = (args.next(), args.next()) else {
        eprintln!("usage: weir-loader-probe read|btf|features|load <bpf root>");
        std::process::exit(2);
    };
    let start = Instant::now();
    match phase.as_str() {
        "read" => drop(std::fs::read("/sys/kernel/btf/vmlinux").expect("reading kernel BTF")),
        "btf" => drop(aya::Btf::from_sys_fs().expect("parsing kernel BTF")),
        "features" => drop(aya::features()),
        "load" => {
            weir_ebpf::probe(&weir_ebpf::BpfRoot::new(&root)).expect("loading weir's eBPF object")
        }
        other => {
            eprintln!("unknown phase {other:?}");
            std::process::exit(2);
        }
    }
    println!("{:.3}", start.elapsed().as_secs_f64() * 1e3);
}
