#!/usr/bin/env bash
# Builds container images as OCI archives (`ctr images import` takes them)
# without Docker or a registry: one deterministic layer each (sorted tar,
# owner 0, mtime 0, fixed modes, gzip -n), so the same inputs give the same
# digest.
#
#   scripts/image.sh [weir]      the weir image (`make image`): weir-operator, the
#                                weir CNI binary and kubectl-weir (when built)
#                                -> target/image/weir-operator-<appVersion>.oci.tar
#                                   as docker.io/library/weir-operator:<appVersion>
#                                   (charts/weir's default image.repository and
#                                   appVersion, normalized as containerd names it)
#   scripts/image.sh tools       the cluster tests' and demo's app image: busybox
#                                applets and weir-traffic (e2e/src/bin)
#                                -> target/image/weir-test-tools-1.oci.tar
#                                   (docker.io/weir-test/tools:1)
#   scripts/image.sh cluster     the cluster's pause image (no Rust code in it;
#                                cluster-tools.sh builds pause first)
#                                -> $WEIR_TOOLS/cluster/images/pause-<v>.oci.tar
#                                   (registry.k8s.io/pause:<v>)
#   --profile release|debug      (before the target) which cargo build goes into
#                                weir and tools (default release; debug ones are
#                                stripped of debug info in the image)
#   scripts/image.sh --check-reproducible [weir|cluster]
#                                build each image twice from copies of its inputs
#                                (other temp dirs, umask, input mtimes) and fail
#                                unless the digests agree
#
# Each build prints `<ref> <archive> sha256:<manifest digest>` on stdout (the
# digest containerd shows for the image) and writes it beside the archive as
# <archive>.digest. `cluster` is skipped when a stamp says its inputs are
# unchanged.
#
# Environment:
#   WEIR_TOOLS     cache dir (default /var/cache/weir/tools)
#   CARGO          cargo (default cargo); CARGO_TARGET_DIR is honoured
#   WEIR_IMAGE_NO_BUILD=1   package the release binaries already built
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=k8s-tools/versions.env
. "$root/scripts/k8s-tools/versions.env"
WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
CARGO=${CARGO:-cargo}
target_dir=${CARGO_TARGET_DIR:-$root/target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
TEST_IMAGE_REF=docker.io/weir-test/tools:1
# The images' "config" objects. pause as upstream's: /pause, run as 65535.
# weir: no User, as the agent runs as root; the controller Deployment sets 65532.
PAUSE_CONFIG='{"User":"65535:65535","Entrypoint":["/pause"]}'
TOOLS_CONFIG='{"Env":["PATH=/usr/local/bin:/bin"],"Cmd":["/bin/sh"]}'
weir_config() {
  printf '{"Entrypoint":["/usr/local/bin/weir-operator"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Labels":{"org.opencontainers.image.title":"weir-operator","org.opencontainers.image.version":"%s"}}' "$1"
}

log() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: ERROR: %s\n' "$*" >&2; exit 1; }

# Fixed environment for everything that shapes the bytes.
export LC_ALL=C TZ=UTC
umask 022

# mkimage REF OUT ROOTFS CONFIG: write a single-layer OCI archive of ROOTFS
# to OUT, CONFIG being the image config's "config" object (JSON), with the
# index annotated with REF for containerd; prints the manifest digest.
mkimage() {
  local ref=$1 out=$2 rootfs=$3 config=$4 w diff layer cfg man
  w=$(mktemp -d)
  mkdir -p "$w/blobs/sha256"
  # GNU tar: names sorted, numeric owner 0:0, every mtime 0; modes as set in
  # ROOTFS (stage_* set them all); no xattrs/ACLs (tar's default).
  local t=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)
  tar "${t[@]}" -C "$rootfs" -cf "$w/layer.tar" .
  diff=$(sha256sum <"$w/layer.tar")
  diff=${diff%% *}
  gzip -n -9 <"$w/layer.tar" >"$w/layer.gz"
  rm "$w/layer.tar"
  layer=$(blob "$w" "$w/layer.gz")
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$diff" >"$w/config.json"
  cfg=$(blob "$w" "$w/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json",%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",%s}]}' \
    "$cfg" "$layer" >"$w/manifest.json"
  man=$(blob "$w" "$w/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$ref" "${ref##*:}" >"$w/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
  chmod 0644 "$w"/index.json "$w"/oci-layout "$w"/blobs/sha256/*
  chmod 0755 "$w/blobs" "$w/blobs/sha256"
  mkdir -p "$(dirname "$out")"
  tar "${t[@]}" -C "$w" -cf "$out.tmp" oci-layout index.json blobs
  mv -f "$out.tmp" "$out"
  rm -rf "$w"
  man=${man#\"digest\":\"}
  echo "${man%%\"*}"
}

# blob DIR FILE: move FILE into DIR/blobs/sha256 under its digest; prints the
# "digest":…,"size":… members of its descriptor.
blob() {
  local s z
  s=$(sha256sum <"$2")
  s=${s%% *}
  z=$(stat -c %s "$2")
  mv "$2" "$1/blobs/sha256/$s"
  printf '"digest":"sha256:%s","size":%s' "$s" "$z"
}

# put SRC ROOTFS PATH MODE: copy SRC (dereferenced) to ROOTFS/PATH with MODE.
put() {
  mkdir -p "$2$(dirname "$3")"
  cp -L "$1" "$2$3"
  chmod "$4" "$2$3"
}

# put_bin SRC ROOTFS PATH: a program; a debug build without its debug info.
put_bin() {
  put "$1" "$2" "$3" 0755
  [[ $PROFILE == release ]] || strip --strip-debug "$2$3"
}

# cargo_build ARGS...: the build of $PROFILE.
cargo_build() {
  local p=(--release)
  [[ $PROFILE == release ]] || p=()
  log "cargo build ${p[*]} $*"
  (cd "$root" && "$CARGO" build "${p[@]}" --locked "$@")
}

# stage_etc ROOTFS: /etc/passwd and /etc/group with root and nonroot (65532,
# the controller Deployment's runAsUser), and /tmp.
stage_etc() {
  mkdir -p "$1/etc" "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
  chmod 0644 "$1/etc/passwd" "$1/etc/group"
  chmod 1777 "$1/tmp"
}

# stage_libs ROOTFS BIN...: the shared libraries the BINs load (ldd) and the
# program interpreter, at the paths the loader looks them up by.
stage_libs() {
  local rootfs=$1 bin lib interp
  shift
  for bin in "$@"; do
    interp=$(readelf -l "$bin" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
    [[ -n $interp ]] || continue # static
    put "$interp" "$rootfs" "$interp" 0755
    while read -r lib; do
      put "$lib" "$rootfs" "$lib" 0755
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
  done
}

# finish_rootfs ROOTFS: directories 0755 (files have their modes already).
finish_rootfs() {
  find "$1" -type d ! -path "$1/tmp" -exec chmod 0755 {} +
}

app_version() {
  sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$root/charts/weir/Chart.yaml"
}

# --- the weir image -------------------------------------------------------------
PROFILE=release
weir_bins() { # the binaries in the image, as SRC:DEST lines
  local rel=$target_dir/$PROFILE
  echo "$rel/weir-operator:/usr/local/bin/weir-operator"
  echo "$rel/weir:/usr/local/bin/weir"
  [[ ! -x $rel/kubectl-weir ]] || echo "$rel/kubectl-weir:/usr/local/bin/kubectl-weir"
}

# stage_weir ROOTFS
stage_weir() {
  local rootfs=$1 line src bins=()
  while IFS=: read -r src line; do
    [[ -x $src ]] || die "$src missing (cargo build --profile $PROFILE -p weir-operator -p weir-cni --locked)"
    put_bin "$src" "$rootfs" "$line"
    bins+=("$src")
  done < <(weir_bins)
  # They link glibc dynamically: ship exactly the libraries ldd names and
  # the loader (from this build host, so they match what they were linked
  # against).
  stage_libs "$rootfs" "${bins[@]}"
  stage_etc "$rootfs"
  finish_rootfs "$rootfs"
}

build_weir() {
  local ver out rootfs digest ref
  ver=$(app_version)
  [[ -n $ver ]] || die "no appVersion in charts/weir/Chart.yaml"
  ref=docker.io/library/weir-operator:$ver
  [[ ${WEIR_IMAGE_NO_BUILD:-} == 1 ]] || cargo_build -p weir-operator -p weir-cni -p kubectl-weir
  out=$target_dir/image/weir-operator-$ver.oci.tar
  rootfs=$(mktemp -d)
  stage_weir "$rootfs"
  digest=$(mkimage "$ref" "$out" "$rootfs" "$(weir_config "$ver")")
  rm -rf "$rootfs"
  echo "$ref $out $digest" | tee "$out.digest"
}

# --- the cluster's images ---------------------------------------------------------
pause_bin() { echo "$WEIR_TOOLS/cluster/bin/pause"; }
busybox_bin() { command -v busybox 2>/dev/null || echo /bin/busybox; }

stage_pause() {
  put "$(pause_bin)" "$1" /pause 0755
  finish_rootfs "$1"
}

# stage_tools ROOTFS: busybox (static) with a link per applet, except
# busybox itself (a self-link would overwrite the binary), and weir-traffic.
stage_tools() {
  local rootfs=$1 a bb src=$target_dir/$PROFILE/weir-traffic
  bb=$(busybox_bin)
  file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ! ldd "$bb" >/dev/null 2>&1 ||
    die "$bb is not static (install busybox-static)"
  put "$bb" "$rootfs" /bin/busybox 0755
  for a in $("$bb" --list); do
    [[ $a == busybox || -e $rootfs/bin/$a ]] || ln -s busybox "$rootfs/bin/$a"
  done
  [[ -x $src ]] || die "$src missing (cargo build -p weir-e2e --bin weir-traffic)"
  put_bin "$src" "$rootfs" /usr/local/bin/weir-traffic
  stage_libs "$rootfs" "$src"
  stage_etc "$rootfs"
  finish_rootfs "$rootfs"
}

build_tools() {
  local out rootfs digest
  [[ ${WEIR_IMAGE_NO_BUILD:-} == 1 ]] || cargo_build -p weir-e2e --bin weir-traffic
  out=$target_dir/image/weir-test-tools-1.oci.tar
  rootfs=$(mktemp -d)
  stage_tools "$rootfs"
  digest=$(mkimage "$TEST_IMAGE_REF" "$out" "$rootfs" "$TOOLS_CONFIG")
  rm -rf "$rootfs"
  echo "$TEST_IMAGE_REF $out $digest" | tee "$out.digest"
}

cluster_images_dir() { echo "$WEIR_TOOLS/cluster/images"; }

# What the cluster images are made of: the stamp.
want_cluster() {
  local s
  s=$(cat "$(pause_bin)" "${BASH_SOURCE[0]}" | sha256sum)
  printf 'pause=%s inputs=%s' "$PAUSE_VERSION" "${s%% *}"
}

build_cluster() {
  local dir stamp w rootfs d out
  dir=$(cluster_images_dir)
  stamp=$WEIR_TOOLS/stamps/cluster-images
  [[ -x $(pause_bin) ]] || die "$(pause_bin) missing: run scripts/cluster-tools.sh first"
  w=$(want_cluster)
  if [[ -f $stamp && $(<"$stamp") == "$w" && -f $dir/pause-$PAUSE_VERSION.oci.tar.digest ]]; then
    cat "$dir/pause-$PAUSE_VERSION.oci.tar.digest"
    return
  fi
  mkdir -p "$dir" "$WEIR_TOOLS/stamps"
  rootfs=$(mktemp -d)
  stage_pause "$rootfs"
  out=$dir/pause-$PAUSE_VERSION.oci.tar
  d=$(mkimage "registry.k8s.io/pause:$PAUSE_VERSION" "$out" "$rootfs" "$PAUSE_CONFIG")
  echo "registry.k8s.io/pause:$PAUSE_VERSION $out $d" | tee "$out.digest"
  rm -rf "$rootfs"
  printf '%s' "$w" >"$stamp"
}

# --- reproducibility check ----------------------------------------------------
# check_twice REF STAGE_FN CONFIG [ARGS...]: stage the rootfs twice (the
# second time under another umask, with other mtimes, a second later) and
# compare the archives; the digest is the one a real build gives.
check_twice() {
  local ref=$1 stage=$2 config=$3 a b r1 r2 o1 o2
  shift 3
  r1=$(mktemp -d) r2=$(mktemp -d)
  o1=$(mktemp -d) o2=$(mktemp -d)
  "$stage" "$r1" "$@"
  a=$(mkimage "$ref" "$o1/a.tar" "$r1" "$config")
  (umask 077 && "$stage" "$r2" "$@")
  find "$r2" -exec touch -h -d '2001-02-03 04:05:06' {} +
  b=$(sleep 1 && mkimage "$ref" "$o2/b.tar" "$r2" "$config")
  cmp -s "$o1/a.tar" "$o2/b.tar" || { rm -rf "$r1" "$r2" "$o1" "$o2"; die "$ref: two builds differ ($a vs $b)"; }
  rm -rf "$r1" "$r2" "$o1" "$o2"
  log "$ref: reproducible ($a)"
}

check_reproducible() {
  local what=${1:-weir} np
  case $what in
  weir)
    [[ ${WEIR_IMAGE_NO_BUILD:-} == 1 ]] || cargo_build -p weir-operator -p weir-cni -p kubectl-weir
    check_twice "docker.io/library/weir-operator:$(app_version)" stage_weir "$(weir_config "$(app_version)")"
    ;;
  tools)
    [[ ${WEIR_IMAGE_NO_BUILD:-} == 1 ]] || cargo_build -p weir-e2e --bin weir-traffic
    check_twice "$TEST_IMAGE_REF" stage_tools "$TOOLS_CONFIG"
    ;;
  cluster)
    check_twice "registry.k8s.io/pause:$PAUSE_VERSION" stage_pause "$PAUSE_CONFIG"
    ;;
  *) die "--check-reproducible: weir, tools or cluster, not $what" ;;
  esac
}

if [[ ${1:-} == --profile ]]; then
  [[ ${2:-} == release || ${2:-} == debug ]] || die "--profile release|debug, not ${2:-nothing}"
  PROFILE=$2
  shift 2
fi
case ${1:-weir} in
weir) build_weir ;;
tools) build_tools ;;
cluster) build_cluster ;;
--check-reproducible) check_reproducible "${2:-weir}" ;;
-h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
*) die "unknown argument $1 (weir, tools, cluster, --check-reproducible [weir|tools|cluster])" ;;
esac
