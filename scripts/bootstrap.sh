#!/usr/bin/env bash
# Bootstrap a build/test host for weir.
#
# Installs what the build and the data-path tests need, idempotently:
#   - Debian packages (only the missing ones; `apt-get update` only then),
#   - cnitool and the CNI reference plugins, built from their Go modules at
#     pinned versions (CNI spec 1.1.0: STATUS and GC) into $WEIR_TOOLS,
#     which lives outside the repo so reruns and later CI runs reuse it,
#   - the control plane (controlplane-tools.sh) and what the local
#     multi-node cluster runs (cluster-tools.sh: kubelet, containerd, runc,
#     flanneld, ..., and the pause and test images) into $WEIR_TOOLS too,
#   - bpffs at /sys/fs/bpf, /run/netns, kernel modules (best effort).
# A second run does no work beyond a few quick checks.
# With --no-controlplane (make demo-netns) the control plane and the
# cluster's tools, which the tests and `make demo` use, are not built.
#
# Environment:
#   WEIR_TOOLS   cache dir for the Go-built tools (default /var/cache/weir/tools)
#                -> $WEIR_TOOLS/bin/cnitool, $WEIR_TOOLS/cni/<plugin>
set -euo pipefail

# ---------------------------------------------------------------------------
# Pinned versions: change them here and nowhere else.
# cni v1.3.0: newest libcni/cnitool; cnitool has `gc` and `status` (spec 1.1.0).
# plugins v1.9.1: newest reference plugins release; supports spec 1.1.0.
CNI_VERSION=v1.3.0
CNI_PLUGINS_VERSION=v1.9.1
# Oldest Go that can build the pinned modules (plugins v1.9.1 declares go 1.24.2).
GO_MIN_VERSION=1.24.2

CNI_PLUGINS=(
  main/bridge main/loopback main/macvlan main/ipvlan main/ptp
  main/host-device main/dummy main/vlan
  ipam/host-local ipam/static
  meta/portmap meta/bandwidth meta/tuning meta/firewall meta/sbr
)

APT_PACKAGES=(
  clang llvm libbpf-dev bpftool
  iproute2 iperf3 sockperf qperf ethtool jq tcpdump
  util-linux kmod procps hyperfine iputils-ping
  containernetworking-plugins
  # The local multi-node cluster (scripts/cluster-tools.sh, scripts/image.sh,
  # e2e/cluster/cluster.sh): runc's seccomp support (cgo, static libseccomp),
  # pause (gcc -static), the test image's busybox, iptables(-restore) for
  # kube-proxy's iptables mode and flanneld --ip-masq, conntrack for
  # kube-proxy's UDP cleanup, openssl for the cluster's certificates, socat
  # for the API relay, binutils (strip) and file for the images.
  gcc libc6-dev pkg-config libseccomp-dev busybox-static iptables conntrack
  openssl socat binutils file
  # make fuzz: AFL++ (afl-fuzz and its compiler runtime for the target)
  afl++
  # kubectl weir graph: Graphviz lays out the SVG; the headless browser test
  # loads the HTML/SVG it writes.
  graphviz chromium
)

KERNEL_MODULES=(veth vxlan bridge sch_ingress cls_bpf)
# ---------------------------------------------------------------------------

WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
export WEIR_TOOLS

LOG_PREFIX=bootstrap
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Go needs a HOME (for its caches) even when CI strips the environment.
if [[ -z ${HOME:-} ]]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6 || true)
  export HOME=${HOME:-/root}
fi

# --- Debian packages --------------------------------------------------------
apt_packages() {
  local missing=() pkg status
  local -A installed=()
  while IFS=$'\t' read -r pkg status; do
    [[ $status == ii* ]] && installed[$pkg]=1
  done < <(dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
  for pkg in "${APT_PACKAGES[@]}"; do
    [[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "apt: all ${#APT_PACKAGES[@]} packages present"
    return
  fi
  is_root || die "apt: missing packages (${missing[*]}) and not root: run as root"
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  run_logged "$WEIR_TOOLS/logs/apt.log" apt-get update
  run_logged "$WEIR_TOOLS/logs/apt.log" apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"
}

# --- Go-built CNI tools ------------------------------------------------------
# stamp_ok NAME CONTENT FILE... : the stamp holds CONTENT and all FILEs are executable.
stamp_ok() {
  local stamp=$WEIR_TOOLS/stamps/$1 content=$2 f
  shift 2
  [[ -f $stamp && $(<"$stamp") == "$content" ]] || return 1
  for f in "$@"; do [[ -x $f ]] || return 1; done
}

# go_install DESTDIR LDFLAGS PKG@VER... : build into a temp dir, then move into place.
go_install() {
  local dest=$1 ldflags=$2 gobin tmp
  shift 2
  gobin=$(find_go "$GO_MIN_VERSION" "to build cnitool and the CNI plugins")
  rm -rf "$WEIR_TOOLS"/.build.* # leftovers of an interrupted build
  tmp=$(mktemp -d "$WEIR_TOOLS/.build.XXXXXX")
  GOBIN=$tmp CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -trimpath" \
    run_logged "$WEIR_TOOLS/logs/go-install.log" "$gobin" install -ldflags "$ldflags" "$@"
  mkdir -p "$dest"
  local f
  for f in "$tmp"/*; do
    mv -f "$f" "$dest/"
  done
  rm -rf "$tmp"
}

install_cnitool() {
  local bin=$WEIR_TOOLS/bin/cnitool
  if stamp_ok "cnitool-$CNI_VERSION" "$CNI_VERSION" "$bin"; then
    log "cnitool $CNI_VERSION: cached"
    return
  fi
  log "cnitool $CNI_VERSION: building (go install)"
  go_install "$WEIR_TOOLS/bin" "-s -w" \
    "github.com/containernetworking/cni/cnitool@$CNI_VERSION"
  printf '%s' "$CNI_VERSION" >"$WEIR_TOOLS/stamps/cnitool-$CNI_VERSION"
}

install_cni_plugins() {
  local p pkgs=() bins=() want
  for p in "${CNI_PLUGINS[@]}"; do
    pkgs+=("github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION")
    bins+=("$WEIR_TOOLS/cni/${p##*/}")
  done
  want="$CNI_PLUGINS_VERSION ${CNI_PLUGINS[*]}"
  if stamp_ok "plugins-$CNI_PLUGINS_VERSION" "$want" "${bins[@]}"; then
    log "CNI plugins $CNI_PLUGINS_VERSION: cached (${#CNI_PLUGINS[@]} plugins)"
    return
  fi
  log "CNI plugins $CNI_PLUGINS_VERSION: building ${#CNI_PLUGINS[@]} plugins (go install)"
  go_install "$WEIR_TOOLS/cni" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "${pkgs[@]}"
  printf '%s' "$want" >"$WEIR_TOOLS/stamps/plugins-$CNI_PLUGINS_VERSION"
}

# --- Kernel / host setup -----------------------------------------------------
setup_bpffs() {
  if [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null || true) == bpf_fs ]]; then
    log "bpffs: mounted at /sys/fs/bpf"
    return
  fi
  if ! is_root; then
    warn "bpffs: not mounted at /sys/fs/bpf and not root"
    return
  fi
  mkdir -p /sys/fs/bpf 2>/dev/null || true
  if mount -t bpf bpf /sys/fs/bpf; then
    log "bpffs: mounted /sys/fs/bpf"
  else
    warn "bpffs: mount -t bpf bpf /sys/fs/bpf failed"
  fi
}

setup_netns_dir() {
  [[ -d /run/netns ]] && return
  if is_root; then
    mkdir -p /run/netns
    log "created /run/netns"
  else
    warn "/run/netns missing and not root"
  fi
}

load_modules() {
  local m loaded=() failed=()
  for m in "${KERNEL_MODULES[@]}"; do
    # Already there (loaded or built in): nothing to do.
    [[ -d /sys/module/$m ]] && continue
    if is_root && command -v modprobe >/dev/null 2>&1 && modprobe -q "$m" 2>/dev/null; then
      loaded+=("$m")
    else
      failed+=("$m")
    fi
  done
  ((${#loaded[@]} == 0)) || log "modules: loaded ${loaded[*]}"
  # Not fatal: the kernel may have them built in without /sys/module entries.
  ((${#failed[@]} == 0)) || log "modules: not loadable (maybe built in): ${failed[*]}"
}

# --- Verification and summary -----------------------------------------------
# supported_versions JSON: the entries of "supportedVersions", one per line
# (plain bash: jq costs ~0.1 s a call, and this runs on every bootstrap).
supported_versions() {
  local re='"supportedVersions":[[:space:]]*\[([^]]*)\]' list
  [[ $1 =~ $re ]] || return 0
  list=${BASH_REMATCH[1]//[[:space:]\"]/}
  tr ',' '\n' <<<"$list"
}

verify_and_summarize() {
  local cnitool=$WEIR_TOOLS/bin/cnitool p out bad=()
  local usage
  usage=$("$cnitool" 2>&1 </dev/null || true)
  grep -qw gc <<<"$usage" && grep -qw status <<<"$usage" ||
    die "cnitool at $cnitool has no gc/status commands (need CNI spec 1.1.0 support)"

  for p in "${CNI_PLUGINS[@]}"; do
    p=${p##*/}
    out=$(CNI_COMMAND=VERSION "$WEIR_TOOLS/cni/$p" </dev/null 2>/dev/null) || { bad+=("$p(exec)"); continue; }
    supported_versions "$out" | grep -qx '1\.1\.0' || bad+=("$p")
  done
  ((${#bad[@]} == 0)) ||
    die "CNI plugins without spec 1.1.0 support in $WEIR_TOOLS/cni: ${bad[*]} (rm -r $WEIR_TOOLS/stamps to rebuild)"

  local bridge_about bridge_versions clang_v bpftool_v
  bridge_about=$("$WEIR_TOOLS/cni/bridge" </dev/null 2>&1 | head -n1 || true)
  bridge_versions=$(supported_versions "$(CNI_COMMAND=VERSION "$WEIR_TOOLS/cni/bridge" </dev/null)" | paste -sd, -)
  clang_v=$(clang --version 2>/dev/null | head -n1 | grep -o 'version [0-9.]*' | cut -d' ' -f2 || true)
  bpftool_v=$(bpftool version 2>/dev/null | head -n1 | awk '{print $NF}' || true)
  log "ok: cnitool cni $CNI_VERSION (gc,status); ${bridge_about:-bridge $CNI_PLUGINS_VERSION} [spec ${bridge_versions}]; clang ${clang_v:-?}; bpftool ${bpftool_v:-?}; tools in $WEIR_TOOLS"
}

main() {
  local start=$SECONDS
  mkdir -p "$WEIR_TOOLS/bin" "$WEIR_TOOLS/cni" "$WEIR_TOOLS/stamps" "$WEIR_TOOLS/logs" ||
    die "cannot create $WEIR_TOOLS (set WEIR_TOOLS to a writable dir, or run as root)"
  # One bootstrap at a time (parallel make targets, two shells).
  exec 9>"$WEIR_TOOLS/.bootstrap.lock"
  flock 9

  apt_packages
  install_cnitool
  install_cni_plugins
  if [[ ${1:-} == --no-controlplane ]]; then
    log "control plane and cluster tools: skipped (--no-controlplane: make demo-netns needs neither)"
  else
    bash "$(dirname "${BASH_SOURCE[0]}")/controlplane-tools.sh" # etcd, kube-apiserver, kubectl
    bash "$(dirname "${BASH_SOURCE[0]}")/cluster-tools.sh"      # kubelet, containerd, runc, flanneld, ...
  fi
  setup_bpffs
  setup_netns_dir
  load_modules
  verify_and_summarize
  log "done in $((SECONDS - start))s"
}

main "$@"
