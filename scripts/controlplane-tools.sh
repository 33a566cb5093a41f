#!/usr/bin/env bash
# Builds the control plane that weir's tests start — etcd, kube-apiserver,
# kube-controller-manager (the tests run only its garbage collector) and
# kubectl — and helm (the chart tests), from their Go modules, at the
# versions in scripts/k8s-tools/versions.env, into
#   $WEIR_TOOLS/k8s/<kubernetes version>/{etcd,kube-apiserver,kube-controller-manager,kubectl,helm}
# (WEIR_TOOLS defaults to /var/cache/weir/tools, outside the repo, so later
# runs and CI reuse it). Called by scripts/bootstrap.sh; safe to run alone.
#
# The builds use the wrapper modules in scripts/k8s-tools/{kubernetes,etcd,helm}
# (their go.mod says why). Two stamps (Kubernetes + etcd, and helm) record
# the versions and a hash of those go.mod/go.sum files, so a second run only
# compares the stamps (well under 2 s) and a change of version or module
# files rebuilds what it concerns. The first build compiles all of
# kube-apiserver, kube-controller-manager and kubectl: many minutes on 2 cores.
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
: "${KUBERNETES_VERSION:?versions.env sets no KUBERNETES_VERSION}" "${ETCD_VERSION:?versions.env sets no ETCD_VERSION}"
: "${HELM_VERSION:?versions.env sets no HELM_VERSION}"
# The pinned releases declare `go 1.26.0`.
GO_MIN_VERSION=1.26.0

WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
dest=$WEIR_TOOLS/k8s/$KUBERNETES_VERSION
stamp=$WEIR_TOOLS/stamps/k8s-$KUBERNETES_VERSION
helm_stamp=$WEIR_TOOLS/stamps/helm-$KUBERNETES_VERSION
logf=$WEIR_TOOLS/logs/controlplane-tools.log
bins=("$dest/etcd" "$dest/kube-apiserver" "$dest/kube-controller-manager" "$dest/kubectl")

LOG_PREFIX=controlplane-tools
# shellcheck source=lib.sh
. "$here/lib.sh"

# find_go, with what this script builds.
find_k8s_go() {
  find_go "$GO_MIN_VERSION" "to build etcd $ETCD_VERSION and Kubernetes $KUBERNETES_VERSION"
}

# want: what the stamp must hold for the cached binaries to be current.
want() {
  local sum
  sum=$(cat "$moddir"/kubernetes/go.{mod,sum} "$moddir"/etcd/go.{mod,sum} | sha256sum)
  printf 'kubernetes=%s etcd=%s modules=%s' "$KUBERNETES_VERSION" "$ETCD_VERSION" "${sum%% *}"
}

cached() {
  local f
  [[ -f $stamp && $(<"$stamp") == "$1" ]] || return 1
  for f in "${bins[@]}"; do [[ -x $f ]] || return 1; done
}

# want_helm: what the helm stamp must hold for the cached helm to be current.
want_helm() {
  local sum
  sum=$(cat "$moddir"/helm/go.{mod,sum} | sha256sum)
  printf 'helm=%s modules=%s' "$HELM_VERSION" "${sum%% *}"
}

cached_helm() {
  [[ -f $helm_stamp && $(<"$helm_stamp") == "$1" && -x $dest/helm ]]
}

# The wrapper go.mod files must name the versions in versions.env.
check_modules() {
  grep -Eq "^[[:space:]]*(require )?k8s\.io/kubernetes $KUBERNETES_VERSION( |$)" "$moddir/kubernetes/go.mod" &&
    grep -Eq "^[[:space:]]*(require )?go\.etcd\.io/etcd/server/v3 $ETCD_VERSION( |$)" "$moddir/etcd/go.mod" &&
    grep -Eq "^[[:space:]]*(require )?helm\.sh/helm/v3 $HELM_VERSION( |$)" "$moddir/helm/go.mod" ||
    die "scripts/k8s-tools/*/go.mod do not match versions.env (kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION): run WEIR_K8S_TOOLS_UPDATE=1 bash scripts/controlplane-tools.sh"
}

# update_modules GO: point the wrapper modules at the versions in versions.env.
update_modules() {
  local gobin=$1 gomod goline r staging_version header
  staging_version=v0.${KUBERNETES_VERSION#v1.}
  log "updating the wrapper modules to kubernetes $KUBERNETES_VERSION (staging $staging_version), etcd $ETCD_VERSION"
  cd "$moddir/kubernetes"
  # The new release's own go.mod says which staging modules it has.
  gomod=$("$gobin" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | jq -r .GoMod)
  [[ -f $gomod ]] || die "no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION"
  # Rewrite go.mod in the form it was made in (comment header, module, go,
  # tools, require, one replace block), then let go mod tidy complete it.
  header=$(sed '/^module /,$d' go.mod)
  goline=$(grep -m1 '^go ' go.mod)
  {
    printf '%s\n' "$header"
    printf 'module weir.dev/k8s-tools/kubernetes\n\n%s\n\n' "$goline"
    printf 'tool (\n\tk8s.io/kubernetes/cmd/kube-apiserver\n\tk8s.io/kubernetes/cmd/kubectl\n\tk8s.io/kubernetes/cmd/kube-controller-manager\n)\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
    for r in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod"); do
      printf '\t%s => %s %s\n' "$r" "$r" "$staging_version"
    done
    printf ')\n'
  } >go.mod.new
  mv go.mod.new go.mod
  run_logged "$logf" "$gobin" mod tidy
  cd "$moddir/etcd"
  run_logged "$logf" "$gobin" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  run_logged "$logf" "$gobin" mod tidy
  log "updating the helm wrapper module to helm $HELM_VERSION"
  cd "$moddir/helm"
  run_logged "$logf" "$gobin" get "helm.sh/helm/v3@$HELM_VERSION"
  run_logged "$logf" "$gobin" mod tidy
}

build() {
  local gobin=$1 tmp ldv=()
  rm -rf "$WEIR_TOOLS"/k8s/.build.* # leftovers of an interrupted build
  tmp=$(mktemp -d "$WEIR_TOOLS/k8s/.build.XXXXXX")
  # What `kube-apiserver --version`, `kubectl version` and the API's /version
  # report (the release build stamps the same variables).
  local major=${KUBERNETES_VERSION#v} minor
  minor=${major#*.}
  minor=${minor%%.*}
  major=${major%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldv+=("-X $p.gitVersion=$KUBERNETES_VERSION" "-X $p.gitMajor=$major" "-X $p.gitMinor=$minor"
      "-X $p.gitTreeState=clean" "-X $p.buildDate=1970-01-01T00:00:00Z")
  done
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
  # nice: other builds share the two cores.
  log "building etcd $ETCD_VERSION"
  cd "$moddir/etcd"
  run_logged "$logf" nice -n 10 "$gobin" build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  log "building kube-apiserver, kube-controller-manager and kubectl $KUBERNETES_VERSION (takes minutes the first time)"
  cd "$moddir/kubernetes"
  run_logged "$logf" nice -n 10 "$gobin" build -ldflags "-s -w ${ldv[*]}" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  # Check what was built before it replaces anything.
  "$tmp/etcd" --version 2>&1 | grep -q "etcd Version: ${ETCD_VERSION#v}" ||
    die "built etcd does not report version ${ETCD_VERSION#v}: $("$tmp/etcd" --version 2>&1 | head -n1)"
  "$tmp/kube-apiserver" --version 2>&1 | grep -qx "Kubernetes $KUBERNETES_VERSION" ||
    die "built kube-apiserver does not report $KUBERNETES_VERSION: $("$tmp/kube-apiserver" --version 2>&1 | head -n1)"
  "$tmp/kube-controller-manager" --version 2>&1 | grep -qx "Kubernetes $KUBERNETES_VERSION" ||
    die "built kube-controller-manager does not report $KUBERNETES_VERSION: $("$tmp/kube-controller-manager" --version 2>&1 | head -n1)"
  mkdir -p "$dest"
  mv -f "$tmp/etcd" "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$tmp/kubectl" "$dest/"
  rm -rf "$tmp"
}

build_helm() {
  local gobin=$1 tmp kv major minor ld
  rm -rf "$WEIR_TOOLS"/k8s/.helm.* # leftovers of an interrupted build
  tmp=$(mktemp -d "$WEIR_TOOLS/k8s/.helm.XXXXXX")
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
  cd "$moddir/helm"
  # As helm's Makefile: its version, and the Kubernetes version that
  # `helm template`/`helm lint` assume by default, from its k8s.io/client-go
  # (v0.Y.Z is Kubernetes 1.Y).
  kv=$("$gobin" list -f '{{.Version}}' -m k8s.io/client-go)
  kv=${kv#v0.}
  major=1 minor=${kv%%.*}
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  log "building helm $HELM_VERSION"
  run_logged "$logf" nice -n 10 "$gobin" build -ldflags "$ld" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
  "$tmp/helm" version --short 2>&1 | grep -q "^$HELM_VERSION" ||
    die "built helm does not report $HELM_VERSION: $("$tmp/helm" version --short 2>&1 | head -n1)"
  mkdir -p "$dest"
  mv -f "$tmp/helm" "$dest/"
  rm -rf "$tmp"
}

main() {
  local start=$SECONDS w gobin
  mkdir -p "$WEIR_TOOLS/k8s" "$WEIR_TOOLS/stamps" "$WEIR_TOOLS/logs" ||
    die "cannot create $WEIR_TOOLS (set WEIR_TOOLS to a writable dir, or run as root)"
  # Its own lock: bootstrap.sh, which calls this, holds .bootstrap.lock.
  exec 8>"$WEIR_TOOLS/.controlplane-tools.lock"
  flock 8

  if [[ ${WEIR_K8S_TOOLS_UPDATE:-} == 1 ]]; then
    gobin=$(find_k8s_go)
    (update_modules "$gobin")
  fi
  w=$(want)
  if cached "$w"; then
    log "etcd $ETCD_VERSION, kube-apiserver, kube-controller-manager and kubectl $KUBERNETES_VERSION: cached in $dest"
  else
    check_modules
    gobin=$(find_k8s_go)
    (build "$gobin")
    printf '%s' "$w" >"$stamp"
    log "built etcd $ETCD_VERSION, kube-apiserver, kube-controller-manager and kubectl $KUBERNETES_VERSION into $dest in $((SECONDS - start))s (log: $logf)"
  fi
  start=$SECONDS
  w=$(want_helm)
  if cached_helm "$w"; then
    log "helm $HELM_VERSION: cached in $dest"
  else
    check_modules
    gobin=${gobin:-$(find_k8s_go)}
    (build_helm "$gobin")
    printf '%s' "$w" >"$helm_stamp"
    log "built helm $HELM_VERSION into $dest in $((SECONDS - start))s (log: $logf)"
  fi
}

main "$@"
