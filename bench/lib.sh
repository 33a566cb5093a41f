# Sourced by the bench scripts.
#
# bench_cleanup <bpf dir> <tag>...: removes what a bench run with these node
# tags leaves behind — network namespaces `<tag>-*` and the processes in them,
# the pins under <bpf dir>, the harness's work dirs and cnitool's cached
# results. The bench binaries remove them themselves; this also covers a run
# that was killed.
bench_cleanup() {
  local bpf_dir=$1 tag ns pid
  shift
  for tag in "$@"; do
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${tag}-" || true); do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "${TMPDIR:-/tmp}/weir-test-$tag"
    rm -f /var/lib/cni/results/weir-"$tag"-*
  done
  rm -rf "$bpf_dir"
}
