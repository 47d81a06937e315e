#!/usr/bin/env bash
# Fuzz for as long as asked: run the property tests of tests/fuzz (numbers, lines, records, the
# YAML loader) round after round, each round with a fresh seed, until MINUTES have passed (the
# last round started finishes). Prints each round, then the cases run and the failures.
#
# Usage (from any directory):  bash tools/fuzz.sh [MINUTES]        (default 10)
#   SUBPASS_FUZZ_CASES      cases per round, shared by the properties (default 20000, rounded
#                           down to a multiple of 100 so the shares are exact)
#   SUBPASS_FUZZ_TIMEOUT_MS a case running longer is a hang, and fails (default 10000)
#
# A failing case is shrunk, and its seed saved by proptest in tests/fuzz/*.proptest-regressions,
# which every later run (CI's included) replays first: commit it with the fix. The round's output
# is kept under the log directory printed at the end; any round can be replayed exactly with the
# command printed for it. Exits 1 if any round failed.
set -euo pipefail

minutes="${1:-10}"
[[ "$minutes" =~ ^[0-9]+$ ]] || { echo "usage: $0 [MINUTES]" >&2; exit 2; }
cases="${SUBPASS_FUZZ_CASES:-20000}"
cases=$(( cases / 100 * 100 ))
(( cases > 0 )) || { echo "fuzz.sh: SUBPASS_FUZZ_CASES must be at least 100" >&2; exit 2; }
export SUBPASS_FUZZ_CASES="$cases"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
logs="$(mktemp -d "${TMPDIR:-/tmp}/subpass-fuzz.XXXXXX")"

echo "fuzz.sh: building the fuzz tests"
cargo test --release --test fuzz --no-run --quiet

start=$SECONDS
deadline=$(( start + minutes * 60 ))
round=0
total=0
failed=0
failing_props=""
while (( round == 0 || SECONDS < deadline )); do
    round=$(( round + 1 ))
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' \n')
    log="$logs/round-$round.log"
    t0=$SECONDS
    if PROPTEST_RNG_SEED="$seed" cargo test --release --test fuzz --quiet >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=$(( failed + 1 ))
        props=$(grep -oE '^test [a-z_:]+ \.\.\. FAILED' "$log" | awk '{print $2}' | sort -u | tr '\n' ' ')
        failing_props="$failing_props $props"
    fi
    total=$(( total + cases ))
    echo "round $round: $cases cases, seed $seed, $(( SECONDS - t0 )) s: $status"
    if [[ $status == FAILED ]]; then
        echo "  failed: $props"
        grep -E 'minimal failing input|^Test failed' "$log" | cut -c1-300 | sort -u | sed 's/^/  /'
        echo "  replay: PROPTEST_RNG_SEED=$seed SUBPASS_FUZZ_CASES=$cases cargo test --release --test fuzz"
        echo "  log: $log"
    fi
done

elapsed=$(( SECONDS - start ))
echo
echo "fuzz.sh: $round rounds, $total cases in $(( elapsed / 60 )) min $(( elapsed % 60 )) s, $failed failed rounds"
if (( failed > 0 )); then
    echo "fuzz.sh: failing properties: $(echo "$failing_props" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' ')"
    echo "fuzz.sh: seeds saved in tests/fuzz/*.proptest-regressions; logs in $logs"
    exit 1
fi
echo "fuzz.sh: no failures; logs in $logs"
