#!/usr/bin/env bash
# `make demo`: weir on a real local cluster. Builds weir's image, brings up
# the two-node cluster (e2e/cluster/cluster.sh: containerd, kubelet,
# kube-proxy, flannel VXLAN), `helm install`s weir, starts a small app that
# talks TCP and UDP across the nodes, applies a CaptureProfile and prints
# `kubectl get podflows -o wide`. The cluster stays up; `make demo-down`
# takes it down.
#
# Environment: WEIR_DEMO_PROFILE=release|debug (the image's binaries;
# default release), WEIR_CLUSTER_* as in e2e/cluster/cluster.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
. scripts/k8s-tools/versions.env

export WEIR_CLUSTER_NAME=${WEIR_CLUSTER_NAME:-weir}
export WEIR_CLUSTER_API_PORT=${WEIR_CLUSTER_API_PORT:-16443}
DIR=/var/lib/weir-cluster/$WEIR_CLUSTER_NAME
export KUBECONFIG=$DIR/admin.kubeconfig
K8S=$WEIR_TOOLS/k8s/$KUBERNETES_VERSION
kubectl() { "$K8S/kubectl" "$@"; }
helm() { "$K8S/helm" "$@"; }

t0=$SECONDS
step() { printf '\n== [%4ss] %s\n' "$((SECONDS - t0))" "$*"; }
took() { printf '   done in %ss\n' "$(($SECONDS - $1))"; }

step "building weir's image and the demo's tools image (scripts/image.sh)"
s=$SECONDS
weir_image=$(bash scripts/image.sh --profile "${WEIR_DEMO_PROFILE:-release}" weir | awk '{print $2}')
tools_image=$(bash scripts/image.sh --profile "${WEIR_DEMO_PROFILE:-release}" tools | awk '{print $2}')
took $s

step "bringing up the cluster: control plane + 2 nodes (e2e/cluster/cluster.sh up)"
s=$SECONDS
bash e2e/cluster/cluster.sh up
bash e2e/cluster/cluster.sh import "$weir_image" "$tools_image"
took $s

step "helm install weir charts/weir -n weir-system --create-namespace"
s=$SECONDS
helm install weir charts/weir -n weir-system --create-namespace --wait --timeout 5m \
  --set image.pullPolicy=Never --set agent.interval=2s
took $s

step "the demo app in namespace shop: web (one per node) and loadgen"
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  selector: { app: web }
  ports:
    - { name: http, protocol: TCP, port: 5201, targetPort: 5201 }
    - { name: stats, protocol: UDP, port: 7001, targetPort: 7001 }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
        - { maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: { matchLabels: { app: web } } }
      containers:
        - name: web
          image: docker.io/weir-test/tools:1
          imagePullPolicy: Never
          command: [/bin/sh, -c, "weir-traffic udp-echo 7001 & exec weir-traffic tcp-sink 5201"]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: loadgen, namespace: shop }
spec:
  replicas: 1
  selector: { matchLabels: { app: loadgen } }
  template:
    metadata: { labels: { app: loadgen } }
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: loadgen
          image: docker.io/weir-test/tools:1
          imagePullPolicy: Never
          # The Service's address from the environment (no cluster DNS here).
          command: [/bin/sh, -c, "while true; do weir-traffic tcp-send $WEB_SERVICE_HOST:5201 200000 >/dev/null; weir-traffic udp-send $WEB_SERVICE_HOST:7001 20 512 >/dev/null; sleep 2; done"]
---
apiVersion: weir.dev/v1alpha1
kind: CaptureProfile
metadata: { name: all, namespace: shop }
spec:
  podSelector: {}
  # The app's conversations; without this, the pods' IPv6 neighbour
  # discovery shows up too (ICMPv6).
  protocols: [TCP, UDP]
  flushInterval: 5s
  flowTTL: 30m
  alerts:
    newPeer: { learningWindow: 2m }
    tcpResets: { count: 1 }
---
# A reader for `kubectl weir observe`: the agents review its token and show
# it the namespaces where it may get pods.
apiVersion: v1
kind: ServiceAccount
metadata: { name: flow-viewer, namespace: shop }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: flow-viewer, namespace: shop }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view }
subjects: [{ kind: ServiceAccount, name: flow-viewer, namespace: shop }]
EOF
kubectl -n shop rollout status deployment/web --timeout=180s
kubectl -n shop rollout status deployment/loadgen --timeout=180s
kubectl -n shop get pods -o wide

step "waiting for the first PodFlows"
until [[ $(kubectl get podflows -n shop -o name 2>/dev/null | wc -l) -ge 2 ]]; do
  ((SECONDS - t0 < 1800)) || { echo "no PodFlows after 30 min" >&2; exit 1; }
  sleep 2
done
sleep 6 # one more flush, so both ends of each conversation have reported
kubectl get captureprofiles -n shop
kubectl get podflows -n shop -o wide

plugin_dir=${CARGO_TARGET_DIR:-$PWD/target}/${WEIR_DEMO_PROFILE:-release}

cat <<EOF

weir is running on a two-node cluster (total $((SECONDS - t0))s). Use it:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$K8S:\$PATH                  # kubectl and helm
  kubectl get podflows -n shop -o wide -w   # the counts grow as loadgen talks
  kubectl get captureprofiles -A
  bash e2e/cluster/cluster.sh node 1 bpftool net   # weir's programs on node 1

  # kubectl weir: the plugin is in the image and here, put it on PATH
  export PATH=$plugin_dir:\$PATH
  kubectl weir top -n shop --by workload
  kubectl weir graph -n shop -o html > shop.html
  kubectl weir observe -n shop -f --token "\$(kubectl create token flow-viewer -n shop)"

  # alerts (the profile asks for new peers after 2 min, and TCP resets)
  kubectl events -n shop --types=Warning

The pods' traffic to the web Service appears twice: the loadgen's node sees
the Service's ClusterIP (kube-proxy translates it after the packet left the
pod), the web pod's node sees the loadgen pod talking to the web pod.

Take it down: make demo-down
EOF
