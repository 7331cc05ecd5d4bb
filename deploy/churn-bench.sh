#!/usr/bin/env bash
# churn-bench.sh — a node's memory under sustained update churn, and after it (issue 14).
#
# The 1M-record RSS target is measured at rest after a restart (`scalebench`). This measures
# what a node holds while signed updates of its names keep arriving by gossip, and once they
# stop, all on loopback:
#   1. builds dpin and dpin-bench (release) unless binaries are given;
#   2. fills one data dir with N signed names (`dpin-bench dns-fill`, 1,000 zones);
#   3. for each binary in turn, on a fresh copy of that dir: starts `dpin node --no-probe`,
#      waits SETTLE seconds, then `dpin-bench gossip-load` sends RATE updates a second of
#      random names (from PEERS fresh libp2p peers) for DURATION seconds; every SAMPLE seconds
#      it prints the node's RSS (VmRSS) and the updates it applied
#      (`dpin_gossip_accepted_total`); then it waits REST seconds with nothing arriving and
#      prints the RSS at rest;
#   4. prints one line per binary: RSS before, at the end of the load, at rest, the updates
#      applied, and the growth per 100k applied.
#
# Usage: deploy/churn-bench.sh [NAME=PATH/TO/dpin ...]
#        (env: N, RATE, PEERS, DURATION, SETTLE, SAMPLE, REST, KEEP=1 keeps the work directory)
# As measured for the README:  N=1000000 RATE=3000 deploy/churn-bench.sh
# A node takes at most 500 gossip messages a second from one peer (250 in its first 10 s),
# so RATE above 500 × PEERS is partly dropped (the applied count says how much arrived).
# Binaries run one after another, never at once: RSS does not depend on the CPU share, but
# the applied rate does, so run it on an otherwise idle machine.
set -euo pipefail

N=${N:-1000000}
RATE=${RATE:-1000}
PEERS=${PEERS:-5}
DURATION=${DURATION:-300}
SETTLE=${SETTLE:-5}
SAMPLE=${SAMPLE:-30}
REST=${REST:-60}
. "$(dirname "$0")/bench-lib.sh"
whole_numbers N RATE PEERS DURATION SETTLE SAMPLE REST
(( SAMPLE > 0 )) || { echo "SAMPLE must be at least 1" >&2; exit 2; }

bench_start churn-bench
bench_build
bench_bins "$@"
bench_fill "$N"
rm -f "$WORK/queries"

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
applied() {
    curl -s --max-time 5 "http://$1/metrics" | awk '/^dpin_gossip_accepted_total / { print $2 }'
}

SUMMARY=()
for b in "${BINS[@]}"; do
    name=${b%%=*}
    bin=${b#*=}
    dir="$WORK/$name"
    rm -rf "$dir"
    cp -a "$WORK/fill" "$dir"
    "$bin" node --data-dir "$dir" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-probe \
        > "$WORK/$name.out" 2> "$WORK/$name.log" &
    node=$!
    PIDS+=("$node")
    target=$(wait_line "$WORK/$name.out" listen 300)
    api=$(wait_line "$WORK/$name.out" api 300)
    sleep "$SETTLE"
    before=$(rss_mb "$node")
    log "$name: RSS $before MB after $SETTLE s; $RATE updates/s from $PEERS peers for $DURATION s"
    "$BENCH" gossip-load --target "$target" --peers "$PEERS" --records "$N" --rate "$RATE" \
        --duration-s "$DURATION" > "$WORK/$name.load" 2>&1 &
    load=$!
    PIDS+=("$load")
    t=0
    while kill -0 "$load" 2>/dev/null; do
        sleep "$SAMPLE"
        t=$((t + SAMPLE))
        echo "$name t=${t}s rss_mb=$(rss_mb "$node") applied=$(applied "$api")"
    done
    wait "$load" || die "gossip-load failed: $(tail -3 "$WORK/$name.load")"
    end=$(rss_mb "$node")
    sleep "$REST"
    rest=$(rss_mb "$node")
    n=$(applied "$api")
    echo "$name rest=${REST}s rss_mb=$rest applied=$n"
    kill "$node"
    wait "$node" 2>/dev/null || true
    rm -rf "$dir"
    per=$(awk -v a="$before" -v r="$rest" -v n="$n" \
        'BEGIN { if (n > 0) printf "%.1f", (r - a) * 100000 / n; else print "-" }')
    SUMMARY+=("$(printf '%-12s %8s %8s %8s %9s %10s' "$name" "$before" "$end" "$rest" "$n" "$per")")
done

printf '\n%-12s %8s %8s %8s %9s %10s\n' binary "rss MB" "end MB" "rest MB" applied "MB/100k"
printf '%s\n' "${SUMMARY[@]}"
