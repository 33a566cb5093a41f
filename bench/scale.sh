#!/usr/bin/env bash
# make bench-scale: the agent's PodFlow writer against a real control plane
# (etcd + kube-apiserver from scripts/controlplane-tools.sh), driven with
# synthetic flows (operator/tests/agent_kube_scale.rs does the measuring).
# No network namespaces or eBPF needed.
#
# Runs three configurations (each a fresh control plane):
#   saturated  1000 pods x 10 peers on 10 nodes, 5 req/s per node, 10s interval
#   fits       25 pods x 10 peers on 10 nodes (what 5 req/s per node can refresh every interval)
#   raised     1000 pods x 10 peers on 10 nodes, 50 req/s per node
# Knobs: WEIR_SCALE_SECS (120), WEIR_SCALE_ONLY=<name> to run one of them.
# Raw lines: bench/results/scale.raw; one JSON line per configuration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
mkdir -p bench/results
cargo build --release --locked -p weir-operator --example podflow_scale
out=bench/results/scale.raw
: > "$out"
run() {
  local name=$1; shift
  if [[ -n "${WEIR_SCALE_ONLY:-}" && "$WEIR_SCALE_ONLY" != "$name" ]]; then return; fi
  echo "bench-scale: $name ($*)" >&2
  env "$@" WEIR_SCALE_SECS="${WEIR_SCALE_SECS:-120}" \
    target/release/examples/podflow_scale 2>&1 \
    | tee /dev/stderr | sed -n "s/^SCALE /$name /p" >> "$out"
}
run saturated WEIR_SCALE_PODS=1000 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=5 WEIR_SCALE_INTERVAL=10
run fits WEIR_SCALE_PODS=25 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=5 WEIR_SCALE_INTERVAL=10
run raised WEIR_SCALE_PODS=1000 WEIR_SCALE_PEERS=10 WEIR_SCALE_NODES=10 WEIR_SCALE_QPS=50 WEIR_SCALE_INTERVAL=10
echo "bench-scale: results in $out" >&2
cat "$out"
