#!/usr/bin/env bash
# Builds what weir's local multi-node cluster runs on each node and beside
# the control plane, at the versions in scripts/k8s-tools/versions.env, into
# a fixed layout under $WEIR_TOOLS (default /var/cache/weir/tools, outside
# the repo, so later runs and CI reuse it):
#
#   $WEIR_TOOLS/cluster/bin/kubelet, kube-scheduler, kube-proxy   (Kubernetes, CGO_ENABLED=0)
#   $WEIR_TOOLS/cluster/bin/containerd, containerd-shim-runc-v2, ctr   (CGO_ENABLED=0)
#   $WEIR_TOOLS/cluster/bin/runc        (cgo + seccomp, static-pie)
#   $WEIR_TOOLS/cluster/bin/flanneld    (cgo, static: the udp backend needs cgo)
#   $WEIR_TOOLS/cluster/bin/pause       (gcc -static of Kubernetes' pause.c)
#   $WEIR_TOOLS/cluster/bin/crictl
#   $WEIR_TOOLS/cluster/cni/flannel     (the flannel CNI plugin, a CNI bin dir of its own)
#   $WEIR_TOOLS/cluster/images/pause-<v>.oci.tar, weir-test-tools-1.oci.tar
#                                       (scripts/image.sh cluster, run at the end)
#
# Called by scripts/bootstrap.sh after controlplane-tools.sh; safe to run
# alone. Each part has a stamp in $WEIR_TOOLS/stamps/cluster-<part> holding
# its version(s) and a hash of its wrapper module's go.mod/go.sum, so a
# second run only compares stamps (well under 2 s) and a change rebuilds
# only what it concerns. Binaries are built into a temp dir, checked
# (--version), then moved into place. Output: $WEIR_TOOLS/logs/cluster-tools.log.
#
# Wrapper modules (their go.mod says why each exists):
#   scripts/k8s-tools/kubernetes-node  kubelet, kube-scheduler, kube-proxy. Kept
#       apart from scripts/k8s-tools/kubernetes (same k8s.io/kubernetes and
#       replaces): the node binaries need modules and go.sum lines the control
#       plane does not, and controlplane-tools.sh's stamp hashes that module's
#       go.mod/go.sum, so adding them there would rebuild kube-apiserver & co.
#   scripts/k8s-tools/containerd, runc, flannel
#
# Environment:
#   WEIR_TOOLS               cache dir (default /var/cache/weir/tools)
#   WEIR_K8S_TOOLS_UPDATE=1  after changing versions.env: rewrite the wrapper
#                            go.mod/go.sum files for the new versions (needs
#                            the Go module proxy), then build
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
moddir=$here/k8s-tools
# shellcheck source=k8s-tools/versions.env
. "$moddir/versions.env"
for v in KUBERNETES_VERSION CONTAINERD_VERSION RUNC_VERSION FLANNEL_VERSION \
  FLANNEL_CNI_PLUGIN_VERSION PAUSE_VERSION CRICTL_VERSION; do
  [[ -n ${!v:-} ]] || { printf 'cluster-tools: ERROR: versions.env sets no %s\n' "$v" >&2; exit 1; }
done
# containerd v2.4.2 declares `go 1.26.6`, the highest of the pinned modules.
GO_MIN_VERSION=1.26.6

WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
dest=$WEIR_TOOLS/cluster
bindir=$dest/bin
cnidir=$dest/cni
logf=$WEIR_TOOLS/logs/cluster-tools.log

log() { printf 'cluster-tools: %s\n' "$*" >&2; }
die() { printf 'cluster-tools: ERROR: %s\n' "$*" >&2; exit 1; }

# run_logged CMD...: run CMD with its output appended to $logf; on failure
# show the end of the log and fail.
run_logged() {
  local rc=0
  printf '\n=== %s: (%s) %s\n' "$(date -u +%FT%TZ)" "$PWD" "$*" >>"$logf"
  "$@" >>"$logf" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    tail -n 40 "$logf" >&2
    die "'$*' failed (exit $rc); full log: $logf"
  fi
}

gobin=
go_cmd() {
  local g v
  if [[ -z $gobin ]]; then
    if command -v go >/dev/null 2>&1; then
      g=$(command -v go)
    elif [[ -x /usr/local/go/bin/go ]]; then
      g=/usr/local/go/bin/go
    else
      die "go not found (need Go >= $GO_MIN_VERSION)"
    fi
    v=$("$g" env GOVERSION)
    v=${v#go}
    [[ $(printf '%s\n%s\n' "$GO_MIN_VERSION" "$v" | sort -V | head -n1) == "$GO_MIN_VERSION" ]] ||
      die "Go $v is too old: need >= $GO_MIN_VERSION"
    gobin=$g
  fi
  echo "$gobin"
}

# modsum NAME...: hash of the wrapper modules' go.mod and go.sum.
modsum() {
  local n files=() sum
  for n in "$@"; do files+=("$moddir/$n/go.mod" "$moddir/$n/go.sum"); done
  sum=$(cat "${files[@]}" | sha256sum)
  echo "${sum%% *}"
}

# require_line MODULE VERSION NAME: the wrapper module NAME requires MODULE VERSION.
require_line() {
  grep -Eq "^[[:space:]]*(require )?${1//./\\.} ${2//./\\.}( |$)" "$moddir/$3/go.mod" ||
    die "scripts/k8s-tools/$3/go.mod does not require $1 $2 (versions.env): run WEIR_K8S_TOOLS_UPDATE=1 bash scripts/cluster-tools.sh"
}

# What `--version` reports, as Kubernetes' release build stamps it (the same
# flags as controlplane-tools.sh).
k8s_ldflags() {
  local major=${KUBERNETES_VERSION#v} minor p ld="-s -w"
  minor=${major#*.}
  minor=${minor%%.*}
  major=${major%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

# check_version BIN PATTERN ARGS...: BIN ARGS prints a line matching PATTERN.
check_version() {
  local bin=$1 pat=$2 out
  shift 2
  out=$("$bin" "$@" 2>&1 || true)
  grep -Eq "$pat" <<<"$out" || die "built $(basename "$bin") does not report /$pat/: $(head -n2 <<<"$out")"
}

# --- the parts --------------------------------------------------------------
# Each part: want_X prints its stamp, bins_X its binaries, build_X TMP builds
# them into TMP (in a subshell, cwd free) and checks them.

want_kubernetes() { printf 'kubernetes=%s modules=%s' "$KUBERNETES_VERSION" "$(modsum kubernetes-node)"; }
bins_kubernetes() { echo "$bindir/kubelet $bindir/kube-scheduler $bindir/kube-proxy"; }
build_kubernetes() {
  local tmp=$1 b
  require_line k8s.io/kubernetes "$KUBERNETES_VERSION" kubernetes-node
  cd "$moddir/kubernetes-node"
  CGO_ENABLED=0 run_logged nice -n 10 "$(go_cmd)" build -ldflags "$(k8s_ldflags)" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
  for b in kubelet kube-scheduler kube-proxy; do
    check_version "$tmp/$b" "^Kubernetes ${KUBERNETES_VERSION//./\\.}\$" --version
  done
}

want_containerd() { printf 'containerd=%s modules=%s' "$CONTAINERD_VERSION" "$(modsum containerd)"; }
bins_containerd() { echo "$bindir/containerd $bindir/containerd-shim-runc-v2 $bindir/ctr"; }
build_containerd() {
  local tmp=$1 pkg=github.com/containerd/containerd/v2 ld tags
  require_line $pkg "$CONTAINERD_VERSION" containerd
  cd "$moddir/containerd"
  # As containerd's Makefile: its version variables, urfave_cli_no_docs, and
  # no_grpc for the shim. With cgo off, btrfs (cgo only) drops out by itself;
  # no_btrfs/no_devmapper/no_zfs say so and skip two snapshotters we don't use
  # (the cluster uses overlayfs).
  ld="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
  tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"
  CGO_ENABLED=0 run_logged nice -n 10 "$(go_cmd)" build -tags "$tags" -ldflags "$ld" -o "$tmp/" \
    $pkg/cmd/containerd $pkg/cmd/ctr
  CGO_ENABLED=0 run_logged nice -n 10 "$(go_cmd)" build -tags "$tags no_grpc" -ldflags "$ld" -o "$tmp/" \
    $pkg/cmd/containerd-shim-runc-v2
  check_version "$tmp/containerd" " ${CONTAINERD_VERSION//./\\.}( |\$)" --version
  check_version "$tmp/ctr" " ${CONTAINERD_VERSION//./\\.}\$" --version
  check_version "$tmp/containerd-shim-runc-v2" "Version: +${CONTAINERD_VERSION//./\\.}\$" -v
}

# runc needs libseccomp's headers and static library (Debian libseccomp-dev;
# bootstrap.sh installs it).
ensure_libseccomp() {
  pkg-config --exists libseccomp 2>/dev/null && [[ -n $(pkg-config --variable=libdir libseccomp) ]] &&
    [[ -f $(pkg-config --variable=libdir libseccomp)/libseccomp.a ]] && return
  [[ $(id -u) -eq 0 ]] || die "libseccomp-dev is missing (runc's seccomp support needs it): apt-get install libseccomp-dev"
  log "installing libseccomp-dev (runc's seccomp support)"
  DEBIAN_FRONTEND=noninteractive run_logged apt-get install -y --no-install-recommends libseccomp-dev
}

want_runc() { printf 'runc=%s modules=%s' "$RUNC_VERSION" "$(modsum runc)"; }
bins_runc() { echo "$bindir/runc"; }
build_runc() {
  local tmp=$1
  require_line github.com/opencontainers/runc "$RUNC_VERSION" runc
  ensure_libseccomp
  cd "$moddir/runc"
  # runc's Makefile `static` target: cgo (nsenter is C), seccomp, a static PIE.
  # Its default tags also hold libpathrs (a Rust library we don't have);
  # without it runc uses its Go pathrs-lite, as its Makefile allows.
  CGO_ENABLED=1 run_logged nice -n 10 "$(go_cmd)" build -buildmode=pie \
    -tags "seccomp urfave_cli_no_docs netgo osusergo" \
    -ldflags "-s -w -linkmode external -extldflags -static-pie" -o "$tmp/runc" github.com/opencontainers/runc
  check_version "$tmp/runc" "^runc version ${RUNC_VERSION#v}\$" --version
  check_version "$tmp/runc" "^libseccomp: " --version
}

want_flannel() { printf 'flannel=%s modules=%s' "$FLANNEL_VERSION" "$(modsum flannel)"; }
bins_flannel() { echo "$bindir/flanneld"; }
build_flannel() {
  local tmp=$1
  require_line github.com/flannel-io/flannel "$FLANNEL_VERSION" flannel
  cd "$moddir/flannel"
  # As flannel's Makefile on amd64: cgo on (the udp backend needs it), static.
  CGO_ENABLED=1 run_logged nice -n 10 "$(go_cmd)" build -tags "netgo osusergo" \
    -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION -extldflags -static" \
    -o "$tmp/flanneld" github.com/flannel-io/flannel
  check_version "$tmp/flanneld" "^${FLANNEL_VERSION//./\\.}\$" --version
}

want_flannel_cni() { printf 'flannel-cni=%s' "$FLANNEL_CNI_PLUGIN_VERSION"; }
bins_flannel_cni() { echo "$cnidir/flannel"; }
build_flannel_cni() {
  local tmp=$1
  cd "$tmp"
  # No wrapper module: `go install pkg@version` builds with the plugins
  # module's own go.mod (no replace directives).
  GOBIN=$tmp CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" run_logged nice -n 10 "$(go_cmd)" install \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$FLANNEL_CNI_PLUGIN_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/flannel@$FLANNEL_CNI_PLUGIN_VERSION"
  local out
  out=$(CNI_COMMAND=VERSION "$tmp/flannel" </dev/null 2>&1 || true)
  grep -q '"0.3.1"' <<<"$out" || die "built flannel CNI plugin does not speak CNI 0.3.1: $out"
}

want_pause() { printf 'pause=%s kubernetes=%s cc=%s' "$PAUSE_VERSION" "$KUBERNETES_VERSION" "$(gcc -dumpfullversion 2>/dev/null)"; }
bins_pause() { echo "$bindir/pause"; }
build_pause() {
  local tmp=$1 dir
  cd "$moddir/kubernetes-node"
  dir=$("$(go_cmd)" list -m -f '{{.Dir}}' k8s.io/kubernetes)
  if [[ -z $dir || ! -f $dir/build/pause/linux/pause.c ]]; then
    run_logged "$(go_cmd)" mod download k8s.io/kubernetes
    dir=$("$(go_cmd)" list -m -f '{{.Dir}}' k8s.io/kubernetes)
  fi
  grep -q "^TAG ?= $PAUSE_VERSION\$" "$dir/build/pause/Makefile" ||
    die "k8s.io/kubernetes $KUBERNETES_VERSION builds pause $(grep '^TAG' "$dir/build/pause/Makefile"), versions.env says $PAUSE_VERSION"
  # Its Makefile's flags; VERSION without the git describe suffix.
  run_logged gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$tmp/pause" "$dir/build/pause/linux/pause.c"
  run_logged strip "$tmp/pause"
  check_version "$tmp/pause" "v${PAUSE_VERSION//./\\.}" -v
}

want_crictl() { printf 'crictl=%s' "$CRICTL_VERSION"; }
bins_crictl() { echo "$bindir/crictl"; }
build_crictl() {
  local tmp=$1
  cd "$tmp"
  GOBIN=$tmp CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" run_logged nice -n 10 "$(go_cmd)" install \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  check_version "$tmp/crictl" "${CRICTL_VERSION//./\\.}" --version
}

# part NAME: build NAME unless its stamp is current and its binaries exist.
part() {
  local name=$1 stamp w f bins start tmp
  stamp=$WEIR_TOOLS/stamps/cluster-${name//_/-}
  w=$("want_$name")
  read -r -a bins <<<"$("bins_$name")"
  if [[ -f $stamp && $(<"$stamp") == "$w" ]]; then
    for f in "${bins[@]}"; do [[ -x $f ]] || break; done
    [[ -x $f ]] && { log "${name//_/-}: cached ($w)"; return; }
  fi
  start=$SECONDS
  log "${name//_/-}: building ($w)"
  tmp=$(mktemp -d "$dest/.build.XXXXXX")
  ("build_$name" "$tmp")
  for f in "${bins[@]}"; do
    mkdir -p "$(dirname "$f")"
    mv -f "$tmp/$(basename "$f")" "$f"
  done
  rm -rf "$tmp"
  printf '%s' "$w" >"$stamp"
  log "${name//_/-}: built in $((SECONDS - start))s"
  printf '=== %s: %s built in %ss\n' "$(date -u +%FT%TZ)" "${name//_/-}" "$((SECONDS - start))" >>"$logf"
}

# --- updating the wrapper modules ---------------------------------------------
# kubernetes-node: ../kubernetes/go.mod (its k8s.io/kubernetes and replace
# block, which controlplane-tools.sh keeps current) with the node tools, tidied.
update_modules() {
  local header
  export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
  log "updating the wrapper module kubernetes-node to kubernetes $KUBERNETES_VERSION"
  require_line k8s.io/kubernetes "$KUBERNETES_VERSION" kubernetes
  cd "$moddir/kubernetes-node"
  header=$(sed '/^module /,$d' go.mod)
  {
    printf '%s\n' "$header"
    printf 'module weir.dev/k8s-tools/kubernetes-node\n\n'
    grep -m1 '^go ' ../kubernetes/go.mod
    printf '\ntool (\n\tk8s.io/kubernetes/cmd/kube-proxy\n\tk8s.io/kubernetes/cmd/kube-scheduler\n\tk8s.io/kubernetes/cmd/kubelet\n)\n\n'
    printf 'require k8s.io/kubernetes %s\n\n' "$KUBERNETES_VERSION"
    sed -n '/^replace (/,/^)/p' ../kubernetes/go.mod
  } >go.mod.new
  mv go.mod.new go.mod
  run_logged "$(go_cmd)" mod tidy
  log "updating the wrapper modules containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, flannel $FLANNEL_VERSION"
  cd "$moddir/containerd"
  run_logged "$(go_cmd)" get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION"
  run_logged "$(go_cmd)" mod tidy
  cd "$moddir/runc"
  run_logged "$(go_cmd)" get "github.com/opencontainers/runc@$RUNC_VERSION"
  run_logged "$(go_cmd)" mod tidy
  cd "$moddir/flannel"
  run_logged "$(go_cmd)" get "github.com/flannel-io/flannel@$FLANNEL_VERSION"
  run_logged "$(go_cmd)" mod tidy
}

main() {
  local start=$SECONDS
  mkdir -p "$bindir" "$cnidir" "$WEIR_TOOLS/stamps" "$WEIR_TOOLS/logs" ||
    die "cannot create $dest (set WEIR_TOOLS to a writable dir, or run as root)"
  # Its own lock: bootstrap.sh, which calls this, holds .bootstrap.lock.
  exec 7>"$WEIR_TOOLS/.cluster-tools.lock"
  flock 7
  rm -rf "$dest"/.build.* # leftovers of an interrupted build

  if [[ ${WEIR_K8S_TOOLS_UPDATE:-} == 1 ]]; then
    (update_modules)
  fi
  export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
  # Cheapest first; kubelet & co. late, as they reuse most of the control
  # plane's build cache (bootstrap.sh runs controlplane-tools.sh first).
  part flannel_cni
  part pause
  part runc
  part containerd
  part flannel
  part kubernetes
  part crictl
  # The pause and test images (cheap; image.sh keeps its own stamp).
  bash "$here/image.sh" cluster | sed 's/^/cluster-tools: image /' >&2
  log "done in $((SECONDS - start))s: $bindir/{kubelet,kube-scheduler,kube-proxy,containerd,containerd-shim-runc-v2,ctr,runc,flanneld,pause,crictl}, $cnidir/flannel"
}

main "$@"
