#!/usr/bin/env bash
# The supervision target of issue 12, measured: N records (default 10^5) through
# configs/digits-mlp.yaml with a panic injected on 1 record in 10^4, at random lines and stages.
# Checks that the run exits 0, that each faulted line is an error line, and that every other
# record's output line equals a clean run's, in order; prints both runs' times and the restarts.
#
# Usage (from any directory):  bash tools/supervise_target.sh [N] [SEED]
# Builds the test binary (`--features fail-points`) into target/fail-points.
set -euo pipefail
N=${1:-100000}
SEED=${2:-1}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/fail-points}
cargo build --release --quiet --features fail-points
BIN="$CARGO_TARGET_DIR/release/subpass"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

awk -v n="$N" '{ l[NR] = $0 } END { for (i = 0; i < n; i++) print l[i % NR + 1] }' \
  examples/digits-test.jsonl > "$work/in.jsonl"
# Faults: N / 10^4 distinct lines, each in stage body or head, from a seeded generator.
faults=$(awk -v n="$N" -v seed="$SEED" 'BEGIN {
  srand(seed); k = int(n / 10000); if (k < 1) k = 1
  while (c < k) { l = 1 + int(rand() * n); if (!(l in s)) { s[l] = 1; c++;
    printf "%s%s#%d", (c > 1 ? "," : ""), (rand() < 0.5 ? "body" : "head"), l } } }')
echo "faults: $faults"

timed() { # timed NAME ARGS...: run, print elapsed seconds and exit status
  local name=$1; shift
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" || rc=$?
  t1=$(date +%s.%N)
  echo "$name: exit $rc in $(echo "$t1 - $t0" | bc) s"
}
timed clean "$BIN" run configs/digits-mlp.yaml --input "$work/in.jsonl" \
  --output "$work/clean.jsonl" --errors "$work/clean.err" 2>/dev/null
timed faulty env FAILPOINTS="stage=return($faults)" "$BIN" run configs/digits-mlp.yaml \
  --input "$work/in.jsonl" --output "$work/faulty.jsonl" --errors "$work/faulty.err" \
  --stats "$work/stats.json" 2>/dev/null

# The clean run's lines less the faulted ones must be the faulty run's lines, byte for byte.
echo "$faults" | tr ',' '\n' | sed 's/.*#//' | sort -n > "$work/lines"
awk 'NR == FNR { skip[$1] = 1; next } !(FNR in skip)' "$work/lines" "$work/clean.jsonl" \
  > "$work/expected.jsonl"
grep -o '"line":[0-9]*' "$work/faulty.err" | sed 's/.*://' > "$work/error-lines"
echo "records: $(wc -l < "$work/clean.jsonl") clean, $(wc -l < "$work/faulty.jsonl") with faults, $(wc -l < "$work/faulty.err") error lines"
grep -o '"name": "[a-z.]*"\|"restarts": [0-9]*' "$work/stats.json" | paste - - | tr -d '"' | sed 's/^/  /'
if cmp -s "$work/expected.jsonl" "$work/faulty.jsonl" && cmp -s "$work/lines" "$work/error-lines"; then
  echo "OK: every other record written as in the clean run, in order; each faulted line an error line"
else
  echo "MISMATCH" >&2
  exit 1
fi
