#!/usr/bin/env bash
# Fuzzes everything the weir CNI plugin parses (CNI_* environment, CNI_ARGS,
# the stdin config with prevResult of every CNI version) with AFL++ on
# stable Rust: the target (fuzz/src/bin/weir-fuzz-afl.rs) is built with
# LLVM's SanitizerCoverage trace-pc-guard instrumentation and linked with
# AFL++'s compiler runtime (Debian's afl++, installed by bootstrap.sh), which
# provides the fork server and the coverage map. No nightly, no cargo-afl.
#
#   FUZZ_SECONDS   how long to fuzz (default 600)
#   FUZZ_OUT       AFL++'s output directory (default target/fuzz/out)
#
# Seeds: fuzz/corpus (fuzz/seeds.py writes them). Every crash found is copied
# to fuzz/regressions/ (which `make test` runs once) and the run fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-600}
FUZZ_OUT=${FUZZ_OUT:-target/fuzz/out}
AFL_RT=${AFL_RT:-/usr/lib/afl/afl-compiler-rt.o}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

command -v afl-fuzz >/dev/null || { echo "fuzz: afl-fuzz missing (scripts/bootstrap.sh installs afl++)" >&2; exit 1; }
[[ -f $AFL_RT ]] || { echo "fuzz: $AFL_RT missing (afl++)" >&2; exit 1; }

# --target keeps the instrumentation off build scripts and proc macros.
RUSTFLAGS="-C passes=sancov-module \
 -C llvm-args=-sanitizer-coverage-level=3 \
 -C llvm-args=-sanitizer-coverage-trace-pc-guard \
 -C llvm-args=-sanitizer-coverage-prune-blocks=0 \
 -C llvm-args=-sanitizer-coverage-trace-compares \
 -C debug-assertions -C overflow-checks -C opt-level=3 \
 -C link-arg=$AFL_RT" \
  cargo build --locked --release -p weir-fuzz --bin weir-fuzz-afl \
  --target "$TRIPLE" --target-dir target/fuzz/build
BIN=target/fuzz/build/$TRIPLE/release/weir-fuzz-afl

mkdir -p "$FUZZ_OUT"
echo "fuzz: $BIN for ${FUZZ_SECONDS}s, seeds fuzz/corpus, output $FUZZ_OUT" >&2
AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 \
AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1 \
  afl-fuzz -i fuzz/corpus -o "$FUZZ_OUT" -x fuzz/weir.dict -V "$FUZZ_SECONDS" -- "$BIN"

stats=$FUZZ_OUT/default/fuzzer_stats
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs|edges_found|total_edges) ' "$stats" >&2 || true
crashes=()
for f in "$FUZZ_OUT"/default/crashes/id:*; do
  [[ -e $f ]] || continue
  name=crash-$(sha256sum "$f" | cut -c1-16)
  cp "$f" "fuzz/regressions/$name"
  crashes+=("fuzz/regressions/$name")
done
if ((${#crashes[@]})); then
  echo "fuzz: ${#crashes[@]} crash(es), kept as regression tests: ${crashes[*]}" >&2
  exit 1
fi
echo "fuzz: no crash" >&2
