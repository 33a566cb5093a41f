#!/usr/bin/env bash
# make bench: what weir costs on this host, measured in one run with the
# variants alternating (e2e/src/bin/weir-bench.rs does the measuring).
#   - TCP throughput between two pods on one bridge: unsplit vs through one
#     split pod (into it and out of it; pass-through and counting) vs both
#     split (with the node program gone, pass-through, counting), 30 short
#     alternating rounds with a confidence interval on each median ratio;
#     each run also at a fixed offered rate, for the CPU it costs per GB,
#   - request/response round trips (sockperf ping-pong, UDP and TCP): p50, p99,
#   - ADD time of the whole CNI chain via cnitool, with weir vs without,
#   - where weir's share of an ADD goes: ADDs with weir under strace, and the
#     eBPF loader's phases timed alone (bench/loader-probe),
#   - the split program's own ns per frame on crafted frames, by the kernel's
#     BPF_PROG_TEST_RUN (bench/prog-probe; compare builds with its compare.py).
# Raw numbers: bench/results/*.raw; the summary table: stdout (and
# bench/results/summary.raw). Takes about 40 minutes. Results: BENCHMARKS.md.
#
# Knobs (environment): WEIR_BENCH_ROUNDS (30), WEIR_BENCH_TCP_SECS (2, after
# 1 s omitted), WEIR_BENCH_RATE_GBPS (8, the fixed offered rate),
# WEIR_BENCH_RTT_ROUNDS (15), WEIR_BENCH_RTT_SECS (2), WEIR_BENCH_ADDS (100),
# WEIR_BENCH_TRACED_ADDS (15), WEIR_BENCH_LOADER_SAMPLES (20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh

. bench/lib.sh
PROG_PROBE_ROOT=/sys/fs/bpf/weir-bench-prog-probe
cleanup() { bench_cleanup /sys/fs/bpf/weir-bench wbs wbu wbt; rm -rf "$PROG_PROBE_ROOT"; }

bash scripts/check-host.sh
for tool in iperf3 sockperf taskset bpftool; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found; run scripts/bootstrap.sh" >&2; exit 1; }
done
[[ -r /sys/kernel/btf/vmlinux ]] || { echo "bench: /sys/kernel/btf/vmlinux missing: the kernel has no BTF (weir's loader reads it)" >&2; exit 1; }

cargo build --release --locked -p weir-cni -p weir-e2e --bins
# The loader probe is its own small workspace (it needs aya directly).
cargo build --release --manifest-path bench/loader-probe/Cargo.toml --target-dir target/bench
cargo build --release --manifest-path bench/prog-probe/Cargo.toml --target-dir target/bench

cleanup
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p bench/results
target/release/weir-bench target/release/weir bench/results target/bench/release/weir-loader-probe

echo
echo "== split program per frame (bench/prog-probe, BPF_PROG_TEST_RUN): case, median / min / max ns of 15 samples =="
rm -rf "$PROG_PROBE_ROOT"
target/bench/release/weir-prog-probe "$PROG_PROBE_ROOT" | tee bench/results/prog-probe.raw
