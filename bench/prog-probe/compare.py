#!/usr/bin/env python3
"""Compares weir-prog-probe builds: `compare.py <probe>... [rounds]`.

Runs the probes alternately (order reversed every other round), each pinned
to CPU 1 for 3 samples of 100 000 runs per case, and prints per case the
median over rounds of each build's ns per run and its ratio to the first
build. The "-pass" rows are each case minus the same process's
pass-through figure: what counting costs above forwarding, which cancels
most of the host's speed drift between processes. Needs root and bpffs.

To compare two versions of ebpf/c: build the probe for each
(`cargo build --release --manifest-path bench/prog-probe/Cargo.toml
--target-dir target/bench`) and copy `target/bench/release/weir-prog-probe`
away under a name of its own between the builds.
"""
import collections
import os
import statistics
import subprocess
import sys

PASS = "passthrough-tcp4-ack"


def main():
    args = sys.argv[1:]
    rounds = int(args.pop()) if args and args[-1].isdigit() else 10
    if not args:
        sys.exit(__doc__)
    root = f"/sys/fs/bpf/weir-prog-compare-{os.getpid()}"
    per_case = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in range(rounds):
        for probe in args if r % 2 == 0 else args[::-1]:
            out = subprocess.run(
                ["taskset", "-c", "1", probe, root, "3", "100000"],
                capture_output=True, text=True, check=True,
            ).stdout
            ns = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}
            for case, v in ns.items():
                per_case[case][probe].append(v)
                if case != PASS:
                    per_case[case + " -pass"][probe].append(v - ns[PASS])
    names = [os.path.basename(p) for p in args]
    print(f"{'case (median ns, ratio to ' + names[0] + ')':40}", *names)
    for case, runs in per_case.items():
        first = statistics.median(runs[args[0]])
        cells = []
        for probe in args:
            m = statistics.median(runs[probe])
            cells.append(f"{m:6.0f} ({m / first:.2f})")
        print(f"{case:40}", *cells)


if __name__ == "__main__":
    main()
