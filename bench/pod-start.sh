#!/usr/bin/env bash
# Pod start-to-ready time on the local cluster, with weir in the node's
# chain and without, alternating round by round on the same node (a
# benchmark, not a test: `make bench-pod-start`; results in BENCHMARKS.md).
#
# Each round creates one pod per variant (the order alternates) on node 1,
# timing from just before `kubectl create` to the Ready condition seen by
# `kubectl wait` (a watch); the pod is then checked to be split (with) or
# not (without) and deleted. "with" is weir's conflist as install-cni writes
# it (flannel's list + weir, failurePolicy Ignore, attach tc) and the release
# `weir` binary; "without" is flannel's conflist alone. containerd reloads the
# conf dir on change; each pod's split is checked, so a round that ran with
# the wrong config is reported, never counted silently.
#
# Environment: WEIR_BENCH_PODS (pods per variant, default 30),
# WEIR_BENCH_PROFILE (release|debug, default release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
. scripts/k8s-tools/versions.env

PODS=${WEIR_BENCH_PODS:-30}
PROFILE=${WEIR_BENCH_PROFILE:-release}
export WEIR_CLUSTER_NAME=weirb WEIR_CLUSTER_API_PORT=16445
DIR=/var/lib/weir-cluster/$WEIR_CLUSTER_NAME
export KUBECONFIG=$DIR/admin.kubeconfig
K8S=$WEIR_TOOLS/k8s/$KUBERNETES_VERSION
kubectl() { "$K8S/kubectl" "$@"; }
out=bench/results/pod-start.raw
mkdir -p bench/results

tools=$(bash scripts/image.sh --profile "$PROFILE" tools | awk '{print $2}')
bash scripts/image.sh --profile "$PROFILE" weir >/dev/null
weir_bin=target/$PROFILE/weir
trap 'bash e2e/cluster/cluster.sh down' EXIT
bash e2e/cluster/cluster.sh up
bash e2e/cluster/cluster.sh import "$tools"
node=$WEIR_CLUSTER_NAME-node-1
root=$DIR/nodes/$node
install -m 0755 "$weir_bin" "$root/opt/cni/bin/weir"
with_conf=$(jq -c '.plugins += [{"type":"weir","failurePolicy":"Ignore","attach":"tc","logLevel":"info"}]' \
  "$root/etc/cni/net.d/10-flannel.conflist")

set_variant() { # with|without
  if [[ $1 == with ]]; then
    printf '%s\n' "$with_conf" >"$root/etc/cni/net.d/.00-weir.tmp"
    mv "$root/etc/cni/net.d/.00-weir.tmp" "$root/etc/cni/net.d/00-weir.conflist"
  else
    rm -f "$root/etc/cni/net.d/00-weir.conflist"
  fi
}

# start_pod NAME: prints the milliseconds from create to Ready.
start_pod() {
  local t0 t1
  t0=$(date +%s%N)
  kubectl create -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: { name: $1, namespace: default }
spec:
  nodeSelector: { kubernetes.io/hostname: $node }
  terminationGracePeriodSeconds: 0
  containers: [{ name: t, image: docker.io/weir-test/tools:1, imagePullPolicy: Never, command: [sleep, "100000"] }]
EOF
  kubectl wait --for=condition=Ready "pod/$1" --timeout=120s >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}

: >"$out"
# One pod of each first, untimed: images and caches warm.
for v in with without; do
  set_variant $v; sleep 1
  start_pod "warm-$v" >/dev/null; kubectl delete pod "warm-$v" --wait=true >/dev/null
done
for ((r = 1; r <= PODS; r++)); do
  if ((r % 2)); then order=(with without); else order=(without with); fi
  for v in "${order[@]}"; do
    set_variant $v
    # containerd reloads the conf dir on an fsnotify event; give it its turn.
    sleep 0.5
    name=p-$v-$r
    ms=$(start_pod "$name")
    links=$(kubectl exec "$name" -- ip -o link)
    split=no; grep -q wx-eth0 <<<"$links" && split=yes
    if [[ ($v == with && $split == no) || ($v == without && $split == yes) ]]; then
      echo "round $r: $v pod split=$split: config not reloaded yet, round not counted" >&2
      echo "$r $v $ms invalid" >>"$out"
    else
      echo "$r $v $ms" >>"$out"
    fi
    kubectl delete pod "$name" --wait=true >/dev/null
  done
  printf 'round %d/%d\r' "$r" "$PODS" >&2
done
echo >&2
python3 - "$out" <<'PY'
import math, sys
rows = [l.split() for l in open(sys.argv[1])]
ok = [r for r in rows if len(r) == 3]
def ci(xs):
    xs = sorted(xs); n = len(xs)
    lo = max(0, int(math.floor(n / 2 - 0.98 * math.sqrt(n))))
    hi = min(n - 1, int(math.ceil(n / 2 + 0.98 * math.sqrt(n))))
    med = (xs[(n - 1) // 2] + xs[n // 2]) / 2
    return med, xs[lo], xs[hi]
w = [int(r[2]) for r in ok if r[1] == "with"]
wo = [int(r[2]) for r in ok if r[1] == "without"]
# Paired by round: the difference of the two pods of one round.
by = {}
for r in ok: by.setdefault(r[0], {})[r[1]] = int(r[2])
d = [v["with"] - v["without"] for v in by.values() if len(v) == 2]
print(f"pods counted: with {len(w)}, without {len(wo)}; rounds not counted: {len(rows) - len(ok)}")
for name, xs in (("with weir", w), ("without weir", wo), ("paired difference", d)):
    m, lo, hi = ci(xs)
    print(f"{name:18} median {m:7.1f} ms  95% CI {lo}..{hi} ms")
PY
