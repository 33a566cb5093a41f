# weir: the two entry points for a fresh machine are `make demo` and `make test`.
# Both install what they need first (scripts/bootstrap.sh, idempotent, cached).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all bootstrap build test test-unit test-privileged demo bench bench-scale bench-agent crds clippy clean fuzz

all: build

bootstrap:
	bash scripts/bootstrap.sh

build: bootstrap
	$(CARGO) build --workspace --all-targets

# Unit tests, then the privileged data-path tests (real netns, real plugins,
# real eBPF). The privileged ones fail loudly where the host cannot run them.
test: bootstrap
	bash scripts/test.sh

demo: bootstrap
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

# The node agent's and the VXLAN monitor's cost (throughput, RSS, CPU).
bench-agent: bootstrap
	bash bench/agent.sh

# Regenerate crds/ from the CRD types (CI fails when it is stale).
crds:
	$(CARGO) run -p weir-operator --bin crdgen

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
