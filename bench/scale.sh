#!/usr/bin/env bash
# make bench-scale: the agent's PodFlow writer against a real control plane
# (etcd + kube-apiserver from scripts/controlplane-tools.sh), driven with
# synthetic flows (operator/examples/podflow_scale.rs does the measuring).
# No network namespaces or eBPF needed.
#
# Runs four configurations (each a fresh control plane):
#   saturated  1000 pods x 10 peers on 10 nodes, 5 req/s per node, 10s interval
#   fits       25 pods x 10 peers on 10 nodes (what 5 req/s per node can refresh every interval)
#   raised     1000 pods x 10 peers on 10 nodes, 50 req/s per node
#   sized      1000 pods x 10 peers on 100 nodes, 5 req/s per node, 300s interval:
#              sized so the targets can hold (200 changed entries per node per
#              interval, 400 with creation, <= 5 x 300; 20 000 applies per
#              interval, 40 000 with creation, under the ~160 applies/s one
#              API server serves on this machine x 300 s); 3 intervals, 15 min
# Knobs: WEIR_SCALE_SECS (120; sized: WEIR_SCALE_SIZED_SECS, 900),
# WEIR_SCALE_ONLY=<name> to run one of them (the other configurations' lines
# in the raw file are kept).
# Raw lines: bench/results/scale.raw; one JSON line per configuration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
mkdir -p bench/results
cargo build --release --locked -p weir-operator --example podflow_scale
out=bench/results/scale.raw
if [[ -n "${WEIR_SCALE_ONLY:-}" && -f "$out" ]]; then
  sed -i "/^${WEIR_SCALE_ONLY} /d" "$out"
else
  : > "$out"
fi
run() {
  local name=$1; shift
  if [[ -n "${WEIR_SCALE_ONLY:-}" && "$WEIR_SCALE_ONLY" != "$name" ]]; then return; fi
  echo "bench-scale: $name ($*)" >&2
  env WEIR_SCALE_SECS="${WEIR_SCALE_SECS:-120}" "$@" \
    target/release/examples/podflow_scale 2>&1 \
    | tee /dev/stderr | sed -n "s/^SCALE /$name /p" >> "$out"
}
run saturated WEIR_SCALE_PODS=1000 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=5 WEIR_SCALE_INTERVAL=10
run fits WEIR_SCALE_PODS=25 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=5 WEIR_SCALE_INTERVAL=10
run raised WEIR_SCALE_PODS=1000 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=50 WEIR_SCALE_INTERVAL=10
run sized WEIR_SCALE_PODS=1000 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=100 WEIR_SCALE_QPS=5 WEIR_SCALE_INTERVAL=300 \
  WEIR_SCALE_SECS="${WEIR_SCALE_SIZED_SECS:-900}"
echo "bench-scale: results in $out" >&2
cat "$out"
