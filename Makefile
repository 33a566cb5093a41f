# weir: the two entry points for a fresh machine are `make demo` and `make test`.
# Both install what they need first (scripts/bootstrap.sh, idempotent, cached).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all bootstrap build test test-unit test-privileged demo bench bench-scale bench-agent crds clippy clean

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

# The integration tests only (real netns, CNI chain, eBPF, control plane):
# root and bootstrap's tools; check-host names what is missing.
test-privileged: bootstrap
	bash scripts/check-host.sh
	$(CARGO) test --workspace --locked --tests -- --test-threads="$${WEIR_TEST_THREADS:-2}"

# The demo uses cnitool and the CNI plugins, not the control plane.
demo:
	bash scripts/bootstrap.sh --no-controlplane
	bash scripts/demo.sh

bench: bootstrap
	bash bench/run.sh

# The agent's PodFlow writer at scale against a real control plane.
bench-scale: bootstrap
	bash bench/scale.sh

# The node agent's and the VXLAN monitor's cost (throughput, RSS, CPU).
bench-agent: bootstrap
	bash bench/agent.sh

# Regenerate crds/ from the CRD types in api/ (CI fails when it is stale).
# weir-api does not build the eBPF programs, so this needs no clang.
crds:
	$(CARGO) run -p weir-api --bin crdgen

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
