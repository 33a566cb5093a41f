#!/usr/bin/env bash
# make bench-agent: what the node agent and flannel's VXLAN monitor cost on
# this host, measured in one run (e2e/src/bin/weir-bench-agent.rs measures).
#   - TCP throughput pod to pod across flannel-style VXLAN, monitor attached
#     to both nodes' underlay vs detached, alternating round by round,
#   - the monitor programs' own CPU time (BPF_ENABLE_STATS, read with bpftool if installed),
#   - the agent's RSS (VmRSS, VmHWM) with 0, 10k and 100k flows in its maps,
#   - its CPU per collection (utime+stime / collections) and its own
#     weir_collection_duration_seconds.
# Raw numbers: bench/results/agent-*.raw; the summary table: stdout (and
# bench/results/agent-summary.raw). Takes about 8 minutes.
#
# Knobs (environment): WEIR_BENCH_AGENT_ROUNDS (16), WEIR_BENCH_AGENT_TCP_SECS (3),
# WEIR_BENCH_AGENT_FLOWS (0,10000,100000), WEIR_BENCH_AGENT_REPS (3),
# WEIR_BENCH_AGENT_WINDOW_SECS (12), WEIR_BENCH_AGENT_PODS (100).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh

. bench/lib.sh
cleanup() { bench_cleanup /sys/fs/bpf/weir-bench-agent wbaa wbab; }

bash scripts/check-host.sh
command -v iperf3 >/dev/null || { echo "bench-agent: iperf3 not found; run scripts/bootstrap.sh" >&2; exit 1; }
[[ -r /sys/kernel/btf/vmlinux ]] || { echo "bench-agent: /sys/kernel/btf/vmlinux missing: the kernel has no BTF (weir's loader reads it)" >&2; exit 1; }
kernel=$(uname -r)
if [[ $(printf '6.6\n%s\n' "${kernel%%-*}" | sort -V | head -n1) != 6.6 ]]; then
  echo "bench-agent: kernel $kernel: the VXLAN monitor needs TCX (Linux >= 6.6)" >&2; exit 1
fi

cargo build --release --locked -p weir-operator -p weir-cni -p weir-e2e --bins

cleanup
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p bench/results
target/release/weir-bench-agent target/release/weir target/release/weir-operator bench/results
