#!/usr/bin/env bash
# Runs every test: the whole workspace's unit and integration tests. The
# integration tests build real network namespaces, run the real CNI chain and
# load eBPF, so the host is checked first and the run stops with the reason
# if it cannot do that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh

bash scripts/check-host.sh

# crds/ must be what the CRD types generate; this names any stale file.
cargo run --locked -q -p weir-api --bin crdgen -- --check

# Tests name their namespaces and pins after themselves, so they run in
# parallel; two threads match the two cores we plan for.
cargo test --workspace --locked -- --test-threads="${WEIR_TEST_THREADS:-2}"
