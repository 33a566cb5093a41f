#!/usr/bin/env bash
# Smoke test of the node runtime that scripts/cluster-tools.sh builds:
# containerd + runc (seccomp) + the pause and test images of image.sh, in a
# throwaway network + mount namespace, configured as a node of the local
# cluster will be. Checks:
#   1. containerd starts with the node config (printed with --print-config);
#   2. `ctr images import` takes the OCI archives;
#   3. `ctr run` of the test image through runc with seccomp (Seccomp: 2);
#   4. with crictl: a CRI pod (pause sandbox, CNI bridge + host-local inside
#      the namespace, RuntimeDefault seccomp, a cgroup parent of our own) and
#      a container in it running netprobe, as the kubelet would.
# Cleans up everything (processes, mounts, netns, cgroups in every v1
# controller and in unified), also on failure or Ctrl-C.
#
#   sudo bash scripts/containerd-smoke.sh [--print-config]
#
# Environment: WEIR_TOOLS (default /var/cache/weir/tools).
set -euo pipefail

WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
bin=$WEIR_TOOLS/cluster/bin
images=$WEIR_TOOLS/cluster/images
. "$(dirname "${BASH_SOURCE[0]}")/k8s-tools/versions.env"
NS=weir-smoke-$$
M=/run/weir-smoke-$$          # mount namespace handle
D=/var/lib/weir-smoke-$$      # the "node"'s directories, bound over the real paths
CG=weir-smoke-$$              # cgroup parent
SUBNET=10.99.0               # pod addresses, inside $NS only
log() { printf 'containerd-smoke: %s\n' "$*" >&2; }
die() { printf 'containerd-smoke: FAILED: %s\n' "$*" >&2; exit 1; }

print_config() {
  cat <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'registry.k8s.io/pause:$PAUSE_VERSION'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/opt/cni/bin']
    conf_dir = '/etc/cni/net.d'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '$bin/runc'
    SystemdCgroup = false
EOF
}
[[ ${1:-} != --print-config ]] || { print_config; exit 0; }
[[ $(id -u) -eq 0 ]] || die "run as root"
for f in containerd containerd-shim-runc-v2 ctr runc; do [[ -x $bin/$f ]] || die "$bin/$f missing (scripts/cluster-tools.sh)"; done

pid=
cleanup() {
  set +e
  if [[ -n $pid ]]; then
    # containers first (their shims outlive containerd), then containerd
    if [[ -x $bin/crictl ]]; then
      in_ns "$bin/crictl" rmp -fa >/dev/null 2>&1
    fi
    for t in $(in_ns "$bin/ctr" -n k8s.io tasks ls -q 2>/dev/null); do in_ns "$bin/ctr" -n k8s.io tasks kill -s KILL "$t"; done
    sleep 1
    for c in $(in_ns "$bin/ctr" -n k8s.io containers ls -q 2>/dev/null); do
      in_ns "$bin/ctr" -n k8s.io tasks rm -f "$c" >/dev/null 2>&1; in_ns "$bin/ctr" -n k8s.io containers rm "$c" >/dev/null 2>&1; done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  fi
  # what is left: container processes (in our cgroups), shims (in our netns)
  local p c
  for p in $(find /sys/fs/cgroup/pids/"$CG" -name cgroup.procs -exec cat {} + 2>/dev/null) \
    $(ip netns pids "$NS" 2>/dev/null); do
    kill -9 "$p" 2>/dev/null
  done
  sleep 0.5
  [[ ! -e $M/mnt ]] || {
    # the mounts live in the mount namespace and die with it; its handle:
    umount "$M/mnt" 2>/dev/null
  }
  umount "$M" 2>/dev/null
  rm -rf "$M"
  ip netns del "$NS" 2>/dev/null
  # overlay snapshots were mounted in the namespace only; the data stays in $D
  rm -rf "$D"
  for c in /sys/fs/cgroup/*/; do
    [[ -d $c$CG ]] || continue
    find "$c$CG" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  for c in /sys/fs/cgroup/*/; do [[ ! -d $c$CG ]] || log "leftover cgroup $c$CG"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { nsenter --net="/run/netns/$NS" --mount="$M/mnt" -- env PATH="$bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"; }

# --- the namespace -------------------------------------------------------------
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$M" "$D"
mount --bind "$M" "$M"
mount --make-private "$M"
touch "$M/mnt"
unshare --mount="$M/mnt" --propagation slave sh -ec "
  for d in /var/lib/containerd /run/containerd /opt/containerd /etc/cni/net.d /opt/cni/bin /var/lib/cni /etc/containerd; do
    mkdir -p $D\$d \$d; mount --bind $D\$d \$d; done"
print_config >"$D/etc/containerd/config.toml"
for p in bridge host-local loopback portmap; do cp "$WEIR_TOOLS/cni/$p" "$D/opt/cni/bin/"; done
cat >"$D/etc/cni/net.d/10-smoke.conflist" <<EOF
{"cniVersion":"1.0.0","name":"smoke","plugins":[
 {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"$SUBNET.0/24"}]]}},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
for c in cpu cpuacct cpuset memory pids systemd devices freezer blkio; do
  [[ -d /sys/fs/cgroup/$c ]] && mkdir -p "/sys/fs/cgroup/$c/$CG"
done
for f in cpus mems; do cat "/sys/fs/cgroup/cpuset/cpuset.$f" >"/sys/fs/cgroup/cpuset/$CG/cpuset.$f"; done

# --- containerd ----------------------------------------------------------------
in_ns containerd --config /etc/containerd/config.toml >"$D/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  in_ns ctr version >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$D/containerd.log"; die "containerd exited"; }
  sleep 0.2
done
in_ns ctr version >/dev/null || { tail -20 "$D/containerd.log"; die "containerd did not answer"; }
log "containerd $(in_ns ctr version | awk '/Server/{s=1} s&&/Version/{print $2; exit}') up in netns $NS"

# --- images --------------------------------------------------------------------
for a in "$images/pause-$PAUSE_VERSION.oci.tar" "$images/weir-test-tools-1.oci.tar"; do
  in_ns ctr -n k8s.io images import "$a" >/dev/null
done
in_ns ctr -n k8s.io images ls -q | grep -qx "registry.k8s.io/pause:$PAUSE_VERSION" || die "pause image not imported"
in_ns ctr -n k8s.io images ls -q | grep -qx "docker.io/weir-test/tools:1" || die "test image not imported"
log "imported: $(in_ns ctr -n k8s.io images ls -q | paste -sd' ')"

# --- ctr run with runc + seccomp -------------------------------------------------
out=$(in_ns ctr -n k8s.io run --rm --runc-binary "$bin/runc" --seccomp --cgroup "/$CG/ctr-smoke" \
  docker.io/weir-test/tools:1 ctr-smoke \
  sh -c 'grep ^Seccomp: /proc/self/status; id; ip -o link; netprobe 2>&1 | head -1')
grep -q '^Seccomp:[[:space:]]*2' <<<"$out" || die "ctr run: no seccomp filter: $out"
log "ctr run: ok ($(tr '\n' ';' <<<"$out"))"

# --- CRI: a pod as the kubelet would make it ------------------------------------
if [[ -x $bin/crictl ]]; then
  export CONTAINER_RUNTIME_ENDPOINT=unix:///run/containerd/containerd.sock IMAGE_SERVICE_ENDPOINT=unix:///run/containerd/containerd.sock
  cat >"$D/pod.json" <<EOF
{"metadata":{"name":"smoke","namespace":"default","uid":"smoke-$$","attempt":0},
 "log_directory":"/var/lib/containerd/pod-logs",
 "linux":{"cgroup_parent":"/$CG/pod-smoke",
   "security_context":{"seccomp":{"profile_type":0},"namespace_options":{"network":0,"pid":1,"ipc":0}}}}
EOF
  cat >"$D/ctr.json" <<EOF
{"metadata":{"name":"probe"},"image":{"image":"docker.io/weir-test/tools:1"},
 "command":["netprobe","serve","9000"],"log_path":"probe.log",
 "linux":{"security_context":{"seccomp":{"profile_type":0}}}}
EOF
  mkdir -p "$D/var/lib/containerd/pod-logs"
  pod=$(in_ns crictl --timeout 60s runp "$D/pod.json") || { tail -30 "$D/containerd.log"; die "crictl runp failed"; }
  c=$(in_ns crictl create "$pod" "$D/ctr.json" "$D/pod.json")
  in_ns crictl start "$c" >/dev/null
  ip=$(in_ns crictl inspectp "$pod" | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' | head -1)
  [[ $ip == "$SUBNET".* ]] || die "pod got no address from the bridge conflist: '$ip'"
  sleep 0.5
  seccomp=$(in_ns crictl exec "$c" grep ^Seccomp: /proc/1/status)
  grep -q '2$' <<<"$seccomp" || die "CRI container has no seccomp filter: $seccomp"
  sent=$(in_ns "$bin/ctr" -n k8s.io run --rm --net-host --runc-binary "$bin/runc" --cgroup "/$CG/ctr-client" \
    docker.io/weir-test/tools:1 smoke-client sh -c "netprobe udp-send $ip 9000 10 100 0 && netprobe tcp-send $ip 9000 100000")
  sleep 1.5
  got=$(in_ns crictl logs "$c" 2>&1)
  grep -q 'udp-recv .* datagrams=10 bytes=1000' <<<"$got" && grep -q 'tcp-recv .* bytes=100000' <<<"$got" ||
    die "netprobe in the pod saw: $got (sent: $sent)"
  log "CRI pod: ok (sandbox $pod, pod IP $ip, $seccomp; in the pod: $(tr '\n' ';' <<<"$got"))"
  in_ns crictl stopp "$pod" >/dev/null
  in_ns crictl rmp "$pod" >/dev/null
else
  log "crictl not built: CRI pod check skipped"
fi
log "all checks passed"
