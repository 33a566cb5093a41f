#!/usr/bin/env bash
# weir's local multi-node Kubernetes cluster, on one machine, in network
# namespaces: no Docker engine, no registry, every address inside namespaces
# this script makes.
#
#   netns weir-cp       br0 10.200.0.1/24: etcd, kube-apiserver (:6443),
#                       kube-controller-manager (node IPAM), kube-scheduler
#   netns weir-node-N   eth0 10.200.0.1N on br0, its own mount + UTS
#                       namespace: containerd 2.x, runc (seccomp), kubelet,
#                       kube-proxy (iptables), flanneld (kube subnet manager,
#                       VXLAN); pods 10.244.N'.0/24 (node IPAM decides)
#   host 127.0.0.1:$WEIR_CLUSTER_API_PORT  a relay into weir-cp:6443, for
#                       kubectl, helm and the tests
#
# Usage: cluster.sh up | down | status | env | import IMAGE.tar... | node N CMD...
#   up      builds nothing: the tools come from scripts/bootstrap.sh
#           (controlplane-tools.sh, cluster-tools.sh); tears down any
#           leftover of an earlier (failed or killed) run first; waits until
#           every node is Ready with its podCIDR routed over VXLAN.
#   down    removes everything `up` made (processes, pods, mounts, netns,
#           cgroups, iptables live in the netns, host sysctls restored);
#           safe to run any time, also when nothing is up.
#   env     prints `export KUBECONFIG=...` for a shell.
#   import  imports OCI archives into every node's containerd (k8s.io).
#   node N  runs CMD inside node N's network, mount and UTS namespaces.
#
# Environment:
#   WEIR_CLUSTER_NAME      prefix of the namespaces, nodes and cgroups (default
#                          weir: weir-cp, weir-node-1, ...); clusters of other
#                          names run side by side (the tests use their own)
#   WEIR_CLUSTER_DIR       state (pki, kubeconfigs, logs, node roots);
#                          default /var/lib/weir-cluster/<name>
#   WEIR_CLUSTER_NODES     number of worker nodes (default 2)
#   WEIR_CLUSTER_API_PORT  host loopback port of the API relay (default 16443)
#   WEIR_TOOLS             tool cache (default /var/cache/weir/tools)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../../scripts/k8s-tools/versions.env
. "$repo/scripts/k8s-tools/versions.env"

DIR=${WEIR_CLUSTER_DIR:-/var/lib/weir-cluster/${WEIR_CLUSTER_NAME:-weir}}
NODES=${WEIR_CLUSTER_NODES:-2}
API_PORT=${WEIR_CLUSTER_API_PORT:-16443}
WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
NAME=${WEIR_CLUSTER_NAME:-weir}
CP=$NAME-cp
CP_IP=10.200.0.1
POD_CIDR=10.244.0.0/16
SVC_CIDR=10.96.0.0/24
NSDIR=/run/weir-cluster/$NAME
# Host sysctls the kubelet sets for the whole machine; restored by `down`.
KUBELET_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
CGROUP_CONTROLLERS=(cpu cpuacct cpuset memory pids systemd devices freezer blkio hugetlb unified)
# Per-node directories bound over the host's, so nodes share nothing there.
NODE_DIRS=(/etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers
  /var/lib/containerd /run/containerd /opt/containerd /run/flannel /etc/kube-flannel /var/lib/weir
  /var/lib/kube-proxy /etc/containerd /var/log/weir)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: ERROR: %s\n' "$*" >&2; exit 1; }
[[ $NAME =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "WEIR_CLUSTER_NAME must be 1-8 lower-case letters or digits"
node_name() { echo "$NAME-node-$1"; }
node_ip() { echo "10.200.0.1$1"; }
node_root() { echo "$DIR/nodes/$(node_name "$1")"; }

k8s_bin=$WEIR_TOOLS/k8s/$KUBERNETES_VERSION
cluster_bin() { # NAME: a binary built by scripts/cluster-tools.sh
  local f=$WEIR_TOOLS/cluster/bin/$1
  [[ -x $f ]] || die "$f missing: run scripts/bootstrap.sh (it runs scripts/cluster-tools.sh)"
  echo "$f"
}

in_node() { # N CMD...
  local n; n=$(node_name "$1"); shift
  nsenter --net=/run/netns/"$n" --mount="$NSDIR/$n.mnt" --uts="$NSDIR/$n.uts" -- "$@"
}
in_cp() { nsenter --net=/run/netns/$CP -- "$@"; }

# spawn NAME LOGFILE CMD...: a daemon in its own session; its pid in $DIR/pids.
spawn() {
  local name=$1 logf=$2; shift 2
  mkdir -p "$DIR/pids" "$DIR/logs"
  setsid "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

# supervise NAME LOGFILE N CMD...: CMD inside node N, restarted when it exits
# (as the kubelet restarts a DaemonSet's container).
supervise() {
  local name=$1 logf=$2 n; n=$(node_name "$3"); shift 3
  spawn "$name" "$logf" nsenter --net=/run/netns/"$n" --mount="$NSDIR/$n.mnt" --uts="$NSDIR/$n.uts" -- \
    sh -c 'while :; do "$@"; echo "cluster.sh: exited with $?; restarting in 2s"; sleep 2; done' sh "$@"
}

alive() { local p; p=$(cat "$DIR/pids/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; fails naming WHAT.
wait_for() {
  local what=$1 secs=$2 start=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < secs)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

kubectl() { "$k8s_bin/kubectl" --kubeconfig="$DIR/admin.kubeconfig" "$@"; }

# --- PKI (openssl) -------------------------------------------------------------
cert() { # NAME CN O [SANS]: a key + certificate signed by the cluster CA
  local name=$1 cn=$2 o=$3 sans=${4:-} p=$DIR/pki subj ext=$DIR/pki/$1.ext
  subj="/CN=$cn"; [[ -z $o ]] || subj="/O=$o$subj"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/$name.key" 2>/dev/null
  openssl req -new -key "$p/$name.key" -subj "$subj" -out "$p/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $sans ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$ext"
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$p/$name.crt" 2>/dev/null
  rm -f "$p/$name.csr" "$ext"
}

write_pki() {
  local p=$DIR/pki
  mkdir -p "$p"; chmod 700 "$p"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=weir-cluster-ca" -days 30 -out "$p/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "IP:$CP_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin weir-admin system:masters
  cert apiserver-kubelet kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert flannel weir-cluster:flannel ""
  local i
  for ((i = 1; i <= NODES; i++)); do cert "kubelet-$i" "system:node:$(node_name "$i")" system:nodes; done
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$p/sa.key" 2>/dev/null
  openssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

kubeconfig() { # OUT SERVER CERTNAME
  local out=$1 server=$2 c=$DIR/pki/$3
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weir
  cluster: {server: "$server", certificate-authority: "$DIR/pki/ca.crt"}
users:
- name: $3
  user: {client-certificate: "$c.crt", client-key: "$c.key"}
contexts:
- name: weir
  context: {cluster: weir, user: $3}
current-context: weir
EOF
  chmod 600 "$out"
}

# --- underlay -------------------------------------------------------------------
make_underlay() {
  ip netns add $CP
  ip -n $CP link set lo up
  ip -n $CP link add br0 type bridge
  ip -n $CP addr add $CP_IP/24 dev br0
  ip -n $CP link set br0 up
  local i n
  for ((i = 1; i <= NODES; i++)); do
    n=$(node_name "$i")
    ip netns add "$n"
    ip -n "$n" link set lo up
    ip link add eth0 netns "$n" type veth peer name "v$i" netns $CP
    ip -n $CP link set "v$i" master br0 up
    ip -n "$n" addr add "$(node_ip "$i")/24" dev eth0
    ip -n "$n" link set eth0 up
    ip -n "$n" route add default via $CP_IP
    nsenter --net=/run/netns/"$n" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
      net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null ||
      nsenter --net=/run/netns/"$n" sysctl -qw net.ipv4.ip_forward=1
  done
}

# A persistent mount + UTS namespace per node; the node's directories bound
# over the host's, its own bpffs (shared, for the agent's Bidirectional mount).
make_node_namespaces() {
  mkdir -p "$NSDIR"
  mountpoint -q "$NSDIR" || { mount --bind "$NSDIR" "$NSDIR"; mount --make-private "$NSDIR"; }
  local i n d root created=$DIR/host-dirs-created
  for ((i = 1; i <= NODES; i++)); do
    n=$(node_name "$i"); root=$(node_root "$i")
    for d in "${NODE_DIRS[@]}"; do
      mkdir -p "$root$d"
      # Bind targets appear on the host too: remember which we made.
      [[ -e $d ]] || { mkdir -p "$d"; echo "$d" >>"$created"; }
    done
    touch "$NSDIR/$n.mnt" "$NSDIR/$n.uts"
    unshare --mount="$NSDIR/$n.mnt" --uts="$NSDIR/$n.uts" --propagation slave sh -ec "
      hostname $n
      for d in ${NODE_DIRS[*]}; do mount --bind $root\$d \$d; done
      # The host's bpffs is private here: the node gets its own, shared (the
      # runtime refuses a Bidirectional/HostToContainer mount of a private one).
      while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
      mount -t bpf bpf /sys/fs/bpf
      mount --make-shared /sys/fs/bpf"
  done
}

make_cgroups() {
  local i n c
  for ((i = 1; i <= NODES; i++)); do
    n=$(node_name "$i")
    for c in "${CGROUP_CONTROLLERS[@]}"; do
      [[ -d /sys/fs/cgroup/$c ]] && mkdir -p "/sys/fs/cgroup/$c/$n"
    done
    for c in cpus mems; do
      cat "/sys/fs/cgroup/cpuset/cpuset.$c" >"/sys/fs/cgroup/cpuset/$n/cpuset.$c"
    done
  done
}

# --- control plane ------------------------------------------------------------------
start_control_plane() {
  local cp=$DIR/cp
  mkdir -p "$cp"
  kubeconfig "$DIR/admin.kubeconfig" "https://127.0.0.1:$API_PORT" admin
  kubeconfig "$cp/controller-manager.kubeconfig" "https://127.0.0.1:6443" controller-manager
  kubeconfig "$cp/scheduler.kubeconfig" "https://127.0.0.1:6443" scheduler
  kubeconfig "$cp/admin-in-cp.kubeconfig" "https://127.0.0.1:6443" admin
  log "starting etcd, kube-apiserver"
  spawn etcd "$DIR/logs/etcd.log" nsenter --net=/run/netns/$CP -- "$k8s_bin/etcd" --name=weir \
    --data-dir="$cp/etcd" --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=weir=http://127.0.0.1:2380 --unsafe-no-fsync=true --log-level=warn
  spawn kube-apiserver "$DIR/logs/kube-apiserver.log" nsenter --net=/run/netns/$CP -- "$k8s_bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --advertise-address=$CP_IP --secure-port=6443 \
    --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
    --client-ca-file="$DIR/pki/ca.crt" \
    --kubelet-client-certificate="$DIR/pki/apiserver-kubelet.crt" --kubelet-client-key="$DIR/pki/apiserver-kubelet.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range=$SVC_CIDR --allow-privileged=true --profiling=false \
    --kubelet-preferred-address-types=InternalIP \
    --cert-dir="$cp/apiserver-certs" --v=1
  # The relay: host loopback -> weir-cp's 6443, one nsenter'd socat per connection.
  spawn api-relay "$DIR/logs/api-relay.log" socat \
    "TCP-LISTEN:$API_PORT,bind=127.0.0.1,reuseaddr,fork" \
    "EXEC:nsenter --net=/run/netns/$CP socat STDIO TCP\:127.0.0.1\:6443"
  wait_for "kube-apiserver /readyz (log: $DIR/logs/kube-apiserver.log)" 240 \
    bash -c "[[ \$('$k8s_bin/kubectl' --kubeconfig='$DIR/admin.kubeconfig' get --raw /readyz 2>/dev/null) == ok ]]"
  log "starting kube-controller-manager, kube-scheduler"
  spawn kube-controller-manager "$DIR/logs/kube-controller-manager.log" nsenter --net=/run/netns/$CP -- \
    "$k8s_bin/kube-controller-manager" --kubeconfig="$cp/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$cp/controller-manager.kubeconfig" --authorization-kubeconfig="$cp/controller-manager.kubeconfig" \
    --use-service-account-credentials=true --leader-elect=false --secure-port=0 \
    --allocate-node-cidrs=true --cluster-cidr=$POD_CIDR --node-cidr-mask-size=24 --service-cluster-ip-range=$SVC_CIDR \
    --service-account-private-key-file="$DIR/pki/sa.key" --root-ca-file="$DIR/pki/ca.crt" \
    --node-monitor-grace-period=40s --v=1
  spawn kube-scheduler "$DIR/logs/kube-scheduler.log" nsenter --net=/run/netns/$CP -- \
    "$(cluster_bin kube-scheduler)" --kubeconfig="$cp/scheduler.kubeconfig" \
    --authentication-kubeconfig="$cp/scheduler.kubeconfig" --authorization-kubeconfig="$cp/scheduler.kubeconfig" \
    --leader-elect=false --secure-port=0 --v=1
  # flannel's RBAC (kube subnet manager), as its upstream manifest grants it.
  kubectl apply --server-side --field-manager=weir-cluster -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "weir-cluster:flannel"}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get]}
- {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [nodes/status], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "weir-cluster:flannel"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "weir-cluster:flannel"}
subjects: [{kind: User, name: "weir-cluster:flannel", apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "weir-cluster:kube-proxy"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-proxier"}
subjects: [{kind: User, name: "system:kube-proxy", apiGroup: rbac.authorization.k8s.io}]
EOF
}

# --- nodes -------------------------------------------------------------------------
write_node_files() { # N
  local i=$1 n root server="https://$CP_IP:6443" cni
  n=$(node_name "$i"); root=$(node_root "$i")
  kubeconfig "$root/var/lib/kubelet/kubeconfig" "$server" "kubelet-$i"
  kubeconfig "$root/var/lib/kube-proxy/kubeconfig" "$server" kube-proxy
  kubeconfig "$root/etc/kube-flannel/kubeconfig" "$server" flannel
  cp "$DIR/pki/ca.crt" "$root/var/lib/kubelet/ca.crt"
  cat >"$root/etc/containerd/config.toml" <<EOF
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
    sandbox = 'registry.k8s.io/pause:3.10.2'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/opt/cni/bin']
    conf_dir = '/etc/cni/net.d'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '$(cluster_bin runc)'
    SystemdCgroup = false
EOF
  cat >"$root/var/lib/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$n
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: /var/lib/kubelet/ca.crt}}
authorization: {mode: Webhook}
rotateCertificates: false
serverTLSBootstrap: false
volumePluginDir: /var/lib/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
registerNode: true
maxPods: 60
# The cluster test turns SACK off in its pods, so TCP wire bytes are exact.
allowedUnsafeSysctls: ["net.ipv4.tcp_sack"]
EOF
  cat >"$root/var/lib/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig}
hostnameOverride: $n
mode: iptables
clusterCIDR: $POD_CIDR
conntrack: {maxPerCore: 0}
EOF
  echo '{"Network":"'$POD_CIDR'","Backend":{"Type":"vxlan"}}' >"$root/etc/kube-flannel/net-conf.json"
  # flannel's CNI config, as kube-flannel's init container writes it.
  cat >"$root/etc/cni/net.d/10-flannel.conflist" <<'EOF'
{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # The CNI plugins a flannel node has: flannel, and the reference ones it
  # delegates to (Debian's containernetworking-plugins).
  for cni in bridge host-local loopback portmap; do
    install -m 0755 "/usr/lib/cni/$cni" "$root/opt/cni/bin/$cni"
  done
  install -m 0755 "$WEIR_TOOLS/cluster/cni/flannel" "$root/opt/cni/bin/flannel"
}

start_node() { # N
  local i=$1 n logs
  n=$(node_name "$i"); logs=$DIR/logs/$n
  mkdir -p "$logs"
  spawn "$n-containerd" "$logs/containerd.log" nsenter --net=/run/netns/"$n" --mount="$NSDIR/$n.mnt" \
    --uts="$NSDIR/$n.uts" -- env PATH="$(dirname "$(cluster_bin containerd)"):$PATH" \
    "$(cluster_bin containerd)" --config /etc/containerd/config.toml
  wait_for "$n containerd (log: $logs/containerd.log)" 60 in_node "$i" "$(cluster_bin ctr)" \
    --address /run/containerd/containerd.sock version
  spawn "$n-kubelet" "$logs/kubelet.log" nsenter --net=/run/netns/"$n" --mount="$NSDIR/$n.mnt" \
    --uts="$NSDIR/$n.uts" -- "$(cluster_bin kubelet)" --config=/var/lib/kubelet/config.yaml \
    --kubeconfig=/var/lib/kubelet/kubeconfig --hostname-override="$n" --node-ip="$(node_ip "$i")" \
    --root-dir=/var/lib/kubelet --v=1
  supervise "$n-flanneld" "$logs/flanneld.log" "$i" env NODE_NAME="$n" "$(cluster_bin flanneld)" \
    --kube-subnet-mgr --kubeconfig-file=/etc/kube-flannel/kubeconfig --iface=eth0 --ip-masq \
    --net-config-path=/etc/kube-flannel/net-conf.json
  spawn "$n-kube-proxy" "$logs/kube-proxy.log" nsenter --net=/run/netns/"$n" --mount="$NSDIR/$n.mnt" \
    --uts="$NSDIR/$n.uts" -- "$(cluster_bin kube-proxy)" --config=/var/lib/kube-proxy/config.yaml --v=1
}

import_images() { # ARCHIVE...
  local i a
  for ((i = 1; i <= NODES; i++)); do
    for a in "$@"; do
      a=$(realpath "$a") # the node's namespaces start at /
      in_node "$i" "$(cluster_bin ctr)" --address /run/containerd/containerd.sock -n k8s.io \
        images import --no-unpack=false "$a" >/dev/null ||
        die "importing $a into $(node_name "$i") failed"
    done
  done
}

node_ready() { # NAME: Ready, podCIDR set, flannel's subnet file written
  local n=$1 i=${1##*-}
  [[ $(kubectl get node "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]] &&
    [[ -n $(kubectl get node "$n" -o jsonpath='{.spec.podCIDR}') ]] &&
    [[ -s $(node_root "$i")/run/flannel/subnet.env ]]
}

up() {
  local start=$SECONDS i
  [[ $(id -u) == 0 ]] || die "needs root (network, mount and UTS namespaces, cgroups)"
  for b in kubelet kube-proxy kube-scheduler containerd containerd-shim-runc-v2 ctr runc flanneld; do
    cluster_bin "$b" >/dev/null
  done
  [[ -x $k8s_bin/kube-apiserver ]] || die "$k8s_bin/kube-apiserver missing: run scripts/bootstrap.sh"
  command -v socat >/dev/null || die "socat missing: run scripts/bootstrap.sh"
  down quiet
  mkdir -p "$DIR/logs"
  sysctl -n "${KUBELET_SYSCTLS[@]}" | paste -d= <(printf '%s\n' "${KUBELET_SYSCTLS[@]}") - >"$DIR/host-sysctls"
  sysctl -qw fs.inotify.max_user_instances=1024 fs.inotify.max_user_watches=524288
  write_pki
  make_underlay
  make_node_namespaces
  make_cgroups
  start_control_plane
  for ((i = 1; i <= NODES; i++)); do write_node_files "$i"; start_node "$i"; done
  log "importing the pause image"
  import_images "$(bash "$repo/scripts/image.sh" cluster | awk '{print $2}')"
  for ((i = 1; i <= NODES; i++)); do
    wait_for "$(node_name "$i") Ready with a podCIDR and flannel's subnet (logs: $DIR/logs/$(node_name "$i"))" 180 \
      node_ready "$(node_name "$i")"
  done
  wait_for "the default ServiceAccount" 60 kubectl get serviceaccount default -n default
  log "up in $((SECONDS - start))s: $NODES nodes; export KUBECONFIG=$DIR/admin.kubeconfig"
}

# --- teardown ------------------------------------------------------------------------
# our_pids: every process in this cluster's namespaces and node cgroups.
our_pids() {
  local ns n c
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(cp|node-[0-9]+)\$" || true); do
    ip netns pids "$ns" 2>/dev/null || true
  done
  for n in $(ls /sys/fs/cgroup/pids 2>/dev/null | grep -E "^$NAME-node-[0-9]+\$" || true); do
    for c in pids memory cpu; do
      [[ -d /sys/fs/cgroup/$c/$n ]] && find "/sys/fs/cgroup/$c/$n" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  done
  pgrep -f "^socat TCP-LISTEN:$API_PORT," 2>/dev/null || true
}

kill_cgroup_tree() { # NODE: every process in the node's cgroups (pods, shims)
  local n=$1 c procs
  for c in pids memory cpu; do
    [[ -d /sys/fs/cgroup/$c/$n ]] || continue
    procs=$(find "/sys/fs/cgroup/$c/$n" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [[ -z $procs ]] || kill -9 $procs 2>/dev/null || true
  done
}

remove_cgroups() { # NODE
  local n=$1 c
  for c in "${CGROUP_CONTROLLERS[@]}"; do
    [[ -d /sys/fs/cgroup/$c/$n ]] || continue
    find "/sys/fs/cgroup/$c/$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

down() {
  local quiet=${1:-} f p n ns
  # Everything in the cluster's namespaces and node cgroups (daemons, shims,
  # pods, host-network pods) and the relay. Pid files are not trusted: after
  # a crash or reboot their numbers may belong to someone else.
  rm -rf "$DIR/pids"
  # Killed processes need a moment to be reaped before namespaces and
  # cgroups can go; a restarting daemon is killed again.
  local tries=0 left
  while ((tries++ < 40)); do
    left=$(our_pids)
    [[ -n $left ]] || break
    kill -9 $left 2>/dev/null || true
    sleep 0.25
  done
  for n in $(ls /sys/fs/cgroup/pids 2>/dev/null | grep -E "^$NAME-node-[0-9]+\$" || true); do
    kill_cgroup_tree "$n"; remove_cgroups "$n"
  done
  for f in "$NSDIR"/*.mnt "$NSDIR"/*.uts; do
    [[ -e $f ]] || continue
    umount "$f" 2>/dev/null || true; rm -f "$f"
  done
  if mountpoint -q "$NSDIR" 2>/dev/null; then umount "$NSDIR" 2>/dev/null || true; fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(cp|node-[0-9]+)\$" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  if [[ -f $DIR/host-sysctls ]]; then
    sysctl -q -p "$DIR/host-sysctls" >/dev/null 2>&1 || true
  fi
  if [[ -f $DIR/host-dirs-created ]]; then
    tac "$DIR/host-dirs-created" | while read -r f; do rmdir "$f" 2>/dev/null || true; done
  fi
  rm -rf "$DIR"
  rmdir "$NSDIR" "$(dirname "$NSDIR")" "$(dirname "$DIR")" 2>/dev/null || true
  [[ -n $quiet ]] || log "down: nothing of the cluster is left"
}

status() {
  local f name
  for f in "$DIR"/pids/*.pid; do
    [[ -f $f ]] || { echo "not up"; return 1; }
    name=$(basename "$f" .pid)
    if alive "$name"; then echo "$name: running"; else echo "$name: DEAD (log: $DIR/logs)"; fi
  done
  kubectl get nodes -o wide
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$DIR/admin.kubeconfig" ;;
  import) shift; import_images "$@" ;;
  node) shift; i=$1; shift; in_node "$i" "$@" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
