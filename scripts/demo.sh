#!/usr/bin/env bash
# make demo: build weir in release mode and run the local demo: a node in a
# network namespace, three pods chained through bridge + host-local + weir by
# cnitool, real traffic, and the flows weir counted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
bash scripts/check-host.sh
# Only the three binaries the demo runs.
cargo build --release --locked -p weir-cni --bin weir -p weir-operator --bin weir-operator -p weir-e2e --bin weir-demo
exec target/release/weir-demo target/release
