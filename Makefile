# weir: the two entry points for a fresh machine are `make demo` and `make test`.
# Both install what they need first (scripts/bootstrap.sh, idempotent, cached).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all bootstrap build test test-unit test-privileged demo demo-down demo-netns image image-check bench bench-scale bench-agent bench-pod-start crds clippy clean fuzz

all: build

bootstrap:
	bash scripts/bootstrap.sh

build: bootstrap
	$(CARGO) build --workspace --all-targets

# Unit tests, then the privileged data-path tests (real netns, real plugins,
# real eBPF). The privileged ones fail loudly where the host cannot run them.
test: bootstrap
	bash scripts/test.sh

# The unit tests (every crate's lib tests, the CRD golden files and
# `crdgen --check`): no root, no network namespaces, no control plane; the
# eBPF crate's build still needs clang and libbpf headers.
test-unit:
	$(CARGO) run --locked -q -p weir-api --bin crdgen -- --check
	$(CARGO) test --workspace --locked --lib
	$(CARGO) test --locked -p weir-api --test crds

# The integration tests only (real netns, CNI chain, eBPF, control plane,
# the local cluster): root and bootstrap's tools; check-host names what is missing.
test-privileged: bootstrap
	bash scripts/check-host.sh
	$(CARGO) test --workspace --locked --tests -- --test-threads="$${WEIR_TEST_THREADS:-2}"

# weir on a local two-node cluster (containerd, kubelet, flannel VXLAN),
# installed by helm, with an app talking across the nodes; it stays up.
demo: bootstrap
	bash scripts/demo-cluster.sh

demo-down:
	bash e2e/cluster/cluster.sh down

# The quick one, without Kubernetes: pods in network namespaces, chained by
# cnitool; it needs neither the control plane nor the cluster's parts.
demo-netns:
	bash scripts/bootstrap.sh --no-controlplane
	bash scripts/demo.sh

# AFL++ on the plugin's parsers for FUZZ_SECONDS (default 600); crashes
# land in fuzz/regressions/, which `make test` runs once.
fuzz: bootstrap
	bash scripts/fuzz.sh

bench: bootstrap
	bash bench/run.sh

# The agent's PodFlow writer at scale against a real control plane.
bench-scale: bootstrap
	bash bench/scale.sh

# Pod start-to-ready on the local cluster, with weir in the chain and without.
bench-pod-start: bootstrap
	bash bench/pod-start.sh

# The node agent's and the VXLAN monitor's cost (throughput, RSS, CPU).
bench-agent: bootstrap
	bash bench/agent.sh

# The weir image as an OCI archive, without Docker (target/image/, see
# scripts/image.sh; Containerfile for Docker/buildah users).
image:
	CARGO="$(CARGO)" bash scripts/image.sh weir

# Build each image twice and fail unless the digests agree.
image-check:
	CARGO="$(CARGO)" bash scripts/image.sh --check-reproducible weir
	bash scripts/image.sh --check-reproducible cluster

# Regenerate crds/ from the CRD types in api/ (CI fails when it is stale).
# weir-api does not build the eBPF programs, so this needs no clang.
crds:
	$(CARGO) run -p weir-api --bin crdgen

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
