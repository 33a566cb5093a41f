#!/usr/bin/env bash
# Check that this host can run weir's privileged tests (netns, eBPF, CNI).
# Prints every missing item with the reason and exits 1 if anything is
# missing, so tests fail loudly instead of passing silently.
# Run scripts/bootstrap.sh (as root) to fix most of what it reports.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

# shellcheck source=lib.sh
. "$here/lib.sh"

missing=0
fail() { printf 'check-host: MISSING: %s\n' "$*" >&2; missing=$((missing + 1)); }

# The toolchains README names: Rust (the workspace's rust-version) and Go
# (bootstrap builds cnitool, the CNI plugins and the control plane with it).
RUST_MIN=1.95.0
GO_MIN=1.26.0
if ! command -v rustc >/dev/null 2>&1; then
  fail "rustc: not found; install Rust >= $RUST_MIN (rustup toolchain install stable)"
else
  v=$(rustc --version | awk '{print $2}')
  version_at_least "$v" "$RUST_MIN" || fail "Rust $v is too old: need >= $RUST_MIN (rustup update stable)"
fi
gobin=$(command -v go 2>/dev/null || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; } || true)
if [[ -z $gobin ]]; then
  fail "go: not found; install Go >= $GO_MIN (bootstrap builds the test tools with it)"
else
  v=$("$gobin" env GOVERSION)
  v=${v#go}
  version_at_least "$v" "$GO_MIN" || fail "Go $v is too old: need >= $GO_MIN (bootstrap builds the test tools with it)"
fi

# root: creating netns, veth pairs and loading eBPF programs needs it.
if [[ $(id -u) -ne 0 ]]; then
  fail "root: running as uid $(id -u); netns, veth and eBPF need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)"
fi

# bpffs: pinned maps live under /sys/fs/bpf/weir.
if [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null || true) != bpf_fs ]]; then
  fail "bpffs: /sys/fs/bpf is not a bpf filesystem; run: mount -t bpf bpf /sys/fs/bpf"
fi

# ip netns add: the data-path tests build their pods and nodes out of netns.
if ! command -v ip >/dev/null 2>&1; then
  fail "ip: not found; install iproute2"
else
  ns="weir-check-$$-$RANDOM"
  if err=$(ip netns add "$ns" 2>&1); then
    ip netns del "$ns" 2>/dev/null || true
  else
    fail "ip netns add: cannot create a network namespace: ${err:-unknown error}"
  fi
fi

# clang: compiles the eBPF programs (-target bpf).
if ! command -v clang >/dev/null 2>&1; then
  fail "clang: not found; it compiles the eBPF programs (install clang, or run scripts/bootstrap.sh)"
fi

# cnitool and the reference plugins: the tests drive the CNI chain with them.
if ! command -v cnitool >/dev/null 2>&1; then
  fail "cnitool: not in PATH nor in $WEIR_TOOLS/bin; run scripts/bootstrap.sh"
fi
for p in bridge host-local loopback; do
  if [[ ! -x $CNI_TOOLS_PATH/$p ]]; then
    fail "CNI plugin $p: not at $CNI_TOOLS_PATH/$p; run scripts/bootstrap.sh"
  fi
done

if ((missing > 0)); then
  printf 'check-host: %d item(s) missing: this host cannot run the privileged tests\n' "$missing" >&2
  exit 1
fi
printf 'check-host: ok (Rust, Go, root, bpffs, netns, clang, cnitool, CNI plugins in %s)\n' "$CNI_TOOLS_PATH" >&2
