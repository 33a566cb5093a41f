#!/usr/bin/env bash
# What the split's shape costs by itself, weir left out: one bridge, a plain
# client, and three servers with the same veth on the bridge:
#   unsplit  the server's own veth end is its eth0;
#   in-pod   weir's shape: that end renamed wx0, a new pair wi0/eth0, both
#            halves in the pod netns; wx0 ingress -> bpf_redirect(wi0),
#            wi0 ingress -> bpf_redirect_peer(wx0);
#   middle   the halves in a netns of their own between bridge and pod, only
#            eth0 in the pod netns; bpf_redirect_peer both ways, so no frame
#            passes the backlog queue twice.
# Each round runs the three back to back (order rotating), as fast as TCP
# goes and at a fixed offered rate; prints the per-round values and the
# medians of the ratios to unsplit with 95 % intervals. Needs root, clang,
# tc, iperf3, 2 CPUs.
# Knobs: SHAPES_ROUNDS (16), SHAPES_RATE_GBPS (8).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
rounds=${SHAPES_ROUNDS:-16}
rate=${SHAPES_RATE_GBPS:-8}
work=
NS=(wssN wssC wssU wssP wssM wssMid)

cleanup() {
  for n in "${NS[@]}"; do
    ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$n" 2>/dev/null || true
  done
  [[ -z $work ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ $(id -u) == 0 ]] || { echo "split-shapes: needs root" >&2; exit 1; }
for tool in clang tc iperf3 taskset python3; do
  command -v "$tool" >/dev/null || { echo "split-shapes: $tool not found; run scripts/bootstrap.sh" >&2; exit 1; }
done
cleanup
work=$(mktemp -d /tmp/weir-split-shapes.XXXXXX)

for n in "${NS[@]}"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n wssN link add br0 type bridge
ip -n wssN link set br0 up
port() { # <host end> <netns> <name there>
  ip -n wssN link add "$1" type veth peer name "$3" netns "$2"
  ip -n wssN link set "$1" master br0 up
}
ifindex() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["ifindex"])'; }
mac() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'; }
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
attach() { # <netns> <dev> <target ifindex> <peer: 0|1>
  local obj="$work/$1-$2.o" defs=(-DTARGET="$3")
  [[ $4 == 1 ]] && defs+=(-DPEER)
  clang -O2 -g -target bpf -I"/usr/include/$multiarch" "${defs[@]}" -c redirect.bpf.c -o "$obj"
  nsenter --net="/run/netns/$1" tc qdisc add dev "$2" clsact
  nsenter --net="/run/netns/$1" tc filter add dev "$2" ingress bpf da obj "$obj" sec tc
}

port hc wssC eth0
ip -n wssC addr add 10.79.0.2/24 dev eth0
ip -n wssC link set eth0 up
port hu wssU eth0
ip -n wssU addr add 10.79.0.11/24 dev eth0
ip -n wssU link set eth0 up
# in-pod: weir's shape
port hp wssP wx0
ip -n wssP link add wi0 type veth peer name eth0
ip -n wssP link set eth0 address "$(mac wssP wx0)"
ip -n wssP addr add 10.79.0.12/24 dev eth0
for d in wx0 wi0 eth0; do ip -n wssP link set "$d" up; done
attach wssP wx0 "$(ifindex wssP wi0)" 0
attach wssP wi0 "$(ifindex wssP wx0)" 1
# middle: the halves in wssMid, eth0 alone in the pod (same MAC on wx0 and
# eth0, so frames for the pod are PACKET_HOST when wx0 receives them)
port hm wssMid wx0
ip -n wssMid link add wi0 type veth peer name eth0 netns wssM
ip -n wssM link set eth0 address "$(mac wssMid wx0)"
ip -n wssM addr add 10.79.0.13/24 dev eth0
ip -n wssMid link set wx0 up
ip -n wssMid link set wi0 up
ip -n wssM link set eth0 up
attach wssMid wx0 "$(ifindex wssMid wi0)" 1
attach wssMid wi0 "$(ifindex wssMid wx0)" 1

for s in wssU wssP wssM; do ip netns exec "$s" taskset -c 1 iperf3 -s -D -p 5201; done
sleep 0.5
shapes=(unsplit in-pod middle)
declare -A addr=([unsplit]=10.79.0.11 [in-pod]=10.79.0.12 [middle]=10.79.0.13)
for s in "${shapes[@]}"; do
  ip netns exec wssC ping -c1 -W2 "${addr[$s]}" >/dev/null || { echo "split-shapes: $s does not answer" >&2; exit 1; }
done

measure() { # <address> [rate]: "<Gbit/s> <CPU s per GB, client + server>"
  local extra=()
  [[ -n ${2:-} ]] && extra=(-b "${2}G")
  ip netns exec wssC taskset -c 0 iperf3 -c "$1" -p 5201 -t 2 -O 1 -J "${extra[@]}" |
    python3 -c 'import json,sys
e=json.load(sys.stdin)["end"]; r=e["sum_received"]; c=e["cpu_utilization_percent"]
gbit = r["bits_per_second"] / 1e9
cpu_per_gb = (c["host_total"] + c["remote_total"]) / 100 * r["seconds"] / (r["bytes"] / 1e9)
print(f"{gbit:.3f} {cpu_per_gb:.4f}")'
}

raw="$work/raw"
echo "# round shape gbit_per_s cpu_s_per_gb fixed_gbit_per_s fixed_cpu_s_per_gb"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < 3; i++)); do
    s=${shapes[$(((i + r) % 3))]}
    line="$r $s $(measure "${addr[$s]}") $(measure "${addr[$s]}" "$rate")"
    echo "$line" | tee -a "$raw"
  done
done
python3 - "$raw" "$rate" <<'PY'
import math, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, shape, *v in rows:
    by.setdefault(int(r), {})[shape] = [float(x) for x in v]

def median_ci(values):
    # weir-bench's interval (e2e/src/report.rs median_ci): the order
    # statistics at ranks n/2 -+ 0.98 sqrt(n), distribution-free
    v = sorted(values)
    n = len(v)
    half = 0.98 * math.sqrt(n)
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, max(0, math.ceil(n / 2 + half) - 1))
    return statistics.median(v), v[min(lo, n - 1)], v[hi]

print(f"\nmedians over {len(by)} rounds, ratio to unsplit in the same round (95 % CI)")
print("| shape | throughput ratio | CPU per GB ratio, full speed | CPU per GB ratio at", sys.argv[2], "Gbit/s | 1 / that |")
print("|---|---:|---:|---:|---:|")
for shape in ("in-pod", "middle"):
    def ratio(i):
        return median_ci([by[r][shape][i] / by[r]["unsplit"][i] for r in by])
    cells = [f"{m:.3f} ({lo:.3f}–{hi:.3f})" for m, lo, hi in (ratio(0), ratio(1), ratio(3))]
    print(f"| {shape} | {' | '.join(cells)} | {1 / ratio(3)[0]:.3f} |")
PY
