#!/usr/bin/env bash
# dns-lock-bench.sh — DNS answers under gossip, binaries side by side (issue 14's DNS tail).
#
# `deploy/dns-bench.sh` compares dpin with Knot. This compares dpin builds with each other on
# what sets an answer's tail on a shared core, all on loopback:
#   1. builds dpin and dpin-bench (release) unless binaries are given;
#   2. fills one data dir with N signed names (`dpin-bench dns-fill`, 1,000 zones);
#   3. CYCLES times, each binary in turn on a fresh copy of that dir: `dpin node --no-probe
#      --dns` pinned to CPU SERVER_CPU; `dpin-bench gossip-load` sending RATE updates a second
#      from PEERS peers on CPU CLIENT_CPU at idle priority (`chrt --idle`, so it never delays
#      dnsperf); after SETTLE seconds, ROUNDS runs of dnsperf at QPS queries a second for
#      DURATION seconds, on CPU CLIENT_CPU;
#   4. prints one line per round, from the node's `/metrics` before and after it: answers,
#      server-side p99 (`dpin_dns_udp_sojourn_seconds`, interpolated in its bucket) and the
#      share within 1 ms; the answers' waits for the store lock
#      (`dpin_dns_store_lock_wait_seconds`: how many, their sum, how many over 1 ms); the
#      updates applied by gossip; and dnsperf's lost queries;
#   5. prints each binary's medians over all its rounds.
#
# Usage: deploy/dns-lock-bench.sh [NAME=PATH/TO/dpin ...]
#        (env: N, QPS, RATE, PEERS, CYCLES, ROUNDS, DURATION, SETTLE, SERVER_CPU, CLIENT_CPU,
#         KEEP=1 keeps the work directory)
# As measured for the README (stop 50):  CYCLES=3 deploy/dns-lock-bench.sh old=A new=B
# Needs: 2+ CPUs, dnsperf (installed from Debian packages if missing), chrt and taskset
# (util-linux).
# Alternate binaries and compare within one run: this machine's tail moves by 2x from one
# hour to the next; the lock waits move much less.
set -euo pipefail

N=${N:-1000000}
QPS=${QPS:-90000}
RATE=${RATE:-1000}
PEERS=${PEERS:-5}
CYCLES=${CYCLES:-2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
SETTLE=${SETTLE:-15}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
. "$(dirname "$0")/bench-lib.sh"
whole_numbers N QPS RATE PEERS CYCLES ROUNDS DURATION SETTLE SERVER_CPU CLIENT_CPU
(( CYCLES > 0 && ROUNDS > 0 && DURATION > 0 && QPS > 0 )) \
    || { echo "CYCLES, ROUNDS, DURATION and QPS must be at least 1" >&2; exit 2; }

bench_start dns-lock-bench
have dnsperf || apt_install dnsperf || die "dnsperf is not installed and could not be installed"
for tool in chrt taskset curl; do
    have "$tool" || die "needs $tool"
done
bench_build
bench_bins "$@"
bench_fill "$N"

# The metrics one round's line is computed from.
scrape() {
    curl -s --max-time 5 "http://$1/metrics" | grep -E \
        '^dpin_dns_udp_sojourn_seconds_bucket|^dpin_dns_store_lock_wait_seconds_(bucket|count|sum)|^dpin_records_total\{path="gossip",outcome="applied"\}' \
        || true
}
# One round from two scrapes ($1 before, $2 after): answers, p99 ms, % within 1 ms (from the
# sojourn buckets, `sojourn_p99`), waits, their sum in ms, waits over 1 ms, updates applied.
round() {
    local buckets='^dpin_dns_udp_sojourn_seconds_bucket'
    awk 'FNR == NR { b[$1] = $2; next }
         { d = $2 - b[$1] }
         /sojourn_seconds_bucket/ && /le="\+Inf"/ { an = d }
         /lock_wait_seconds_bucket/ && /le="0.001"/ { w1 = d }
         /lock_wait_seconds_count/ { wc = d }
         /lock_wait_seconds_sum/ { ws = d }
         /records_total/ { ap = d }
         END { printf "%d %s %d %.1f %d %d\n", an, p, wc, ws * 1000, wc - w1, ap }' \
        p="$(sojourn_p99 "$(grep "$buckets" <<<"$1")" "$(grep "$buckets" <<<"$2")")" \
        <(echo "$1") <(echo "$2")
}

printf '%-12s %5s %5s %9s %8s %9s %7s %9s %7s %8s %5s\n' binary cycle round answers "p99 ms" \
    "<=1ms %" waits "wait ms" ">1ms" applied lost
for c in $(seq "$CYCLES"); do
    for b in "${BINS[@]}"; do
        name=${b%%=*}
        bin=${b#*=}
        dir="$WORK/$name"
        rm -rf "$dir"
        cp -a "$WORK/fill" "$dir"
        RUST_LOG=warn taskset -c "$SERVER_CPU" "$bin" node --data-dir "$dir" \
            --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-probe --dns 127.0.0.1:0 \
            > "$WORK/$name.out" 2> "$WORK/$name.log" &
        node=$!
        PIDS+=("$node")
        api=$(wait_line "$WORK/$name.out" api)
        dns=$(wait_line "$WORK/$name.out" dns)
        target=$(wait_line "$WORK/$name.out" listen)
        chrt --idle 0 taskset -c "$CLIENT_CPU" "$BENCH" gossip-load --target "$target" \
            --peers "$PEERS" --records "$N" --rate "$RATE" --duration-s 3600 --seed "$c" \
            > "$WORK/$name.load" 2>&1 &
        load=$!
        PIDS+=("$load")
        sleep "$SETTLE"
        for r in $(seq "$ROUNDS"); do
            before=$(scrape "$api")
            taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "${dns##*:}" -d "$WORK/queries" \
                -c 4 -q 200 -t 2 -l "$DURATION" -Q "$QPS" > "$WORK/perf.txt" 2>&1 \
                || die "dnsperf failed: $(tail -3 "$WORK/perf.txt")"
            after=$(scrape "$api")
            lost=$(awk '/Queries lost:/ { print $3; exit }' "$WORK/perf.txt")
            read -r answers p99 within waits wms over1 applied <<<"$(round "$before" "$after")"
            printf '%-12s %5s %5s %9s %8s %9s %7s %9s %7s %8s %5s\n' "$name" "$c" "$r" \
                "$answers" "$p99" "$within" "$waits" "$wms" "$over1" "$applied" "${lost:-?}" \
                | tee -a "$WORK/rounds"
        done
        kill "$load" "$node" 2>/dev/null || true
        wait "$load" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
        PIDS=()
        rm -rf "$dir"
    done
done

# Each binary's medians over its rounds (columns as above).
echo
printf '%-12s %8s %9s %7s %9s %7s %8s   (medians of %d rounds each)\n' binary "p99 ms" \
    "<=1ms %" waits "wait ms" ">1ms" applied $((CYCLES * ROUNDS))
for b in "${BINS[@]}"; do
    name=${b%%=*}
    row=$(printf '%-12s' "$name")
    for col in 5 6 7 8 9 10; do
        m=$(awk -v n="$name" -v c="$col" '$1 == n { print $c }' "$WORK/rounds" | sort -g \
            | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }')
        row+=$(printf ' %8s' "$m")
    done
    echo "$row"
done
