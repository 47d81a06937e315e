#!/usr/bin/env bash
# What scraping /metrics costs a running pipeline: records/s of `subpass run PIPELINE` over a
# JSON-lines file, alternating runs without --metrics and with --metrics and a scraper polling
# every 100 ms (one curl process, --rate 10/s), and the median of each. On a shared machine the
# throughput figures are noisy; the second figure is not: the CPU time the server's thread spends
# per scrape (from the kernel's per-thread schedstat, user and system time), measured over 5,000
# scrapes of an idle pipeline, and what that is at 10 scrapes/s.
#
#   bash tools/metrics_cost.sh [PIPELINE] [RECORDS_FILE] [ROUNDS]
#
# Without RECORDS_FILE, 60,000 records for configs/mlp.yaml are generated into a temporary file.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-configs/mlp.yaml}
records=${2:-}
rounds=${3:-7}
bin=${CARGO_TARGET_DIR:-target}/release/subpass
[ -x "$bin" ] || cargo build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$records" ]; then
  records=$work/records.jsonl
  python3 - "$records" <<'EOF'
import random, sys
random.seed(3)
values = [f"{random.random():.4f}" for _ in range(784 * 97)]
with open(sys.argv[1], "w") as f:
    for i in range(60000):
        o = (i * 131) % (784 * 96)
        f.write('{"id":%d,"x":[%s]}\n' % (i, ",".join(values[o:o + 784])))
EOF
fi

rate() { grep -o '([0-9]* records/s)' "$1" | tr -dc 0-9; }

plain() {
  "$bin" run "$pipeline" --input "$records" >/dev/null 2>"$work/plain.err"
  rate "$work/plain.err"
}

scraped() {
  rm -f "$work/scraped.err"
  "$bin" run "$pipeline" --input "$records" --metrics 127.0.0.1:0 >/dev/null 2>"$work/scraped.err" &
  local pid=$!
  until grep -q 'metrics: listening on' "$work/scraped.err" 2>/dev/null; do sleep 0.01; done
  local url
  url=$(grep -o 'http://[^ ]*/metrics' "$work/scraped.err")
  curl -s --rate 10/s -o /dev/null "$url?[1-100000]" 2>/dev/null &
  local scraper=$!
  wait "$pid"
  kill "$scraper" 2>/dev/null || true
  wait "$scraper" 2>/dev/null || true
  rate "$work/scraped.err"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "load before: $(uptime)"
: >"$work/a"
: >"$work/b"
for i in $(seq "$rounds"); do
  a=$(plain)
  b=$(scraped)
  echo "round $i: without $a records/s, scraped every 100 ms $b records/s"
  echo "$a" >>"$work/a"
  echo "$b" >>"$work/b"
done
ma=$(median <"$work/a")
mb=$(median <"$work/b")
echo "load after: $(uptime)"
# The server's own CPU time per scrape.
rm -f "$work/idle.err"
# An open, silent stdin: a fifo this script holds both ends of.
mkfifo "$work/stdin"
exec 3<>"$work/stdin"
"$bin" run "$pipeline" --metrics 127.0.0.1:0 <"$work/stdin" >/dev/null 2>"$work/idle.err" 3>&- &
pid=$!
until grep -q 'metrics: listening on' "$work/idle.err" 2>/dev/null; do sleep 0.01; done
url=$(grep -o 'http://[^ ]*/metrics' "$work/idle.err")
thread=$(dirname "$(grep -l '^subpass-metrics$' /proc/"$pid"/task/*/comm | head -1)")
before=$(cut -d' ' -f1 "$thread/schedstat")
curl -s -o /dev/null "$url?[1-5000]"
after=$(cut -d' ' -f1 "$thread/schedstat")
exec 3>&- # EOF: the run ends
wait "$pid"
per_scrape=$(( (after - before) / 5000 ))
echo "server CPU per scrape: $per_scrape ns; at 10 scrapes/s: $(awk -v n="$per_scrape" 'BEGIN {printf "%.3f%%", 100 * n * 10 / 1e9}') of one core"
echo "median: without $ma records/s, scraped $mb records/s, cost $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.1f%%", 100 * (a - b) / a}')"
