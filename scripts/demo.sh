#!/usr/bin/env bash
# make demo: build weir in release mode and run the local demo: a node in a
# network namespace, three pods chained through bridge + host-local + weir by
# cnitool, real traffic, and the flows weir counted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
bash scripts/check-host.sh
cargo build --release --locked -p weir-cni -p weir-operator -p weir-e2e --bins
exec target/release/weir-demo target/release
