#!/usr/bin/env bash
# Measures blob put/get throughput (64 MiB, K=3) on a 5-node loopback cluster (4 storage nodes)
# and the time from a holder's SIGKILL to its offer lapsing and to K copies being restored.
# Two puts: one as soon as the storage offers are listed (the holders still hold the uploader,
# new to them, to their probation budget: protocol::ingest, 10 s), and one on the settled
# cluster, SETTLE_S seconds (default 12) after the last node started, which is the figure
# a running network gives.
# Usage: deploy/blob-bench.sh [SIZE_MIB]   (builds the release binary first)
#        DPIN=/path/to/dpin deploy/blob-bench.sh [SIZE_MIB]   (uses that binary, no build: to
#        compare two builds side by side on one machine)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-64}
if [ -n "${DPIN:-}" ]; then B=$DPIN; else cargo build --release -q -p dpin-node; B=$PWD/target/release/dpin; fi
T=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
# Offers refresh at the node's default (10 s, lapse after 30 s) unless REFRESH_MS says otherwise:
# a short refresh hides how long repair waits for a dead holder's offer to lapse.
REFRESH_MS=${REFRESH_MS:-10000}
X=(--listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --no-probe --offer-refresh-ms "$REFRESH_MS" --repair-interval-ms 1000)
start() { # name, extra args...
  local n=$1; shift
  "$B" node --data-dir "$T/$n" "${X[@]}" "$@" >"$T/$n.out" 2>"$T/$n.err" & pids+=($!)
  for _ in $(seq 100); do grep -q '^api ' "$T/$n.out" 2>/dev/null && return; sleep 0.1; done
  echo "node $n did not start" >&2; exit 1
}
start n0
BOOT=$(grep '^listen' "$T/n0.out" | head -1 | cut -d' ' -f2)
for i in 1 2 3 4; do start "n$i" --bootstrap "$BOOT" --offer-storage 4G; done
started=$(date +%s.%N)
A0=$(grep '^api' "$T/n0.out" | cut -d' ' -f2)
for _ in $(seq 100); do [ "$("$B" offers --api "$A0" --kind storage --json | grep -o '"kind":"storage"' | wc -l)" = 4 ] && break; sleep 0.2; done
SETTLE_S=${SETTLE_S:-12}
# put_get LABEL: puts a fresh random file, reads it back, prints both rates; sets H.
put_get() {
  head -c $((SIZE_MIB << 20)) /dev/urandom >"$T/file"
  local t0 t1 t2
  t0=$(date +%s.%N); H=$("$B" put --api "$A0" "$T/file" --replicas 3 2>/dev/null); t1=$(date +%s.%N)
  "$B" get --api "$A0" "$H" --out "$T/copy" 2>/dev/null; t2=$(date +%s.%N)
  cmp -s "$T/file" "$T/copy" || { echo "copy differs" >&2; exit 1; }
  awk -v s="$SIZE_MIB" -v a="$t0" -v b="$t1" -v c="$t2" -v l="$1" 'BEGIN {
    printf "put  %d MiB K=3: %.2f s = %.1f MiB/s (%s)\n", s, b-a, s/(b-a), l;
    printf "get  %d MiB:     %.2f s = %.1f MiB/s (through a node holding no copy)\n", s, c-b, s/(c-b) }'
}
put_get "cluster just formed: holders still on probation for the uploader"
FIRST=$H
sleep "$(awk -v s="$started" -v w="$SETTLE_S" -v n="$(date +%s.%N)" 'BEGIN { d = s + w - n; print (d > 0 ? d : 0) }')"
put_get "settled: ${SETTLE_S} s after the last node started"
# Kill one holder of the second blob, time the lapse of its offer and the return to 3 complete
# copies of every blob it held (with 4 storage nodes and K = 3 it held the first blob too, or
# not; the line says how many).
HOLDER=$("$B" blob --api "$A0" "$H" --json | grep -o '"peer_id":"[^"]*"' | head -1 | cut -d'"' -f4)
LOST=()
for h in "$FIRST" "$H"; do "$B" blob --api "$A0" "$h" --json | grep -q "$HOLDER" && LOST+=("$h"); done
for i in 1 2 3 4; do grep -q "$HOLDER" "$T/n$i.out" && VICTIM=$i; done
kill -9 "$(pgrep -f "data-dir $T/n$VICTIM ")"; k=$(date +%s.%N)
until ! "$B" offers --api "$A0" --json | grep -q "$HOLDER"; do sleep 0.05; done; l=$(date +%s.%N)
restored() { # every blob the victim held has 3 complete copies, none on the victim
  local h j
  for h in "${LOST[@]}"; do
    j=$("$B" blob --api "$A0" "$h" --json)
    grep -q '"complete_copies":3' <<<"$j" && ! grep -q "$HOLDER" <<<"$j" || return 1
  done
}
until restored; do sleep 0.05; done; r=$(date +%s.%N)
awk -v k="$k" -v l="$l" -v r="$r" -v rf="$REFRESH_MS" -v n="${#LOST[@]}" -v s="$SIZE_MIB" 'BEGIN {
  printf "holder killed -> offer no longer listed: %.2f s (refresh %d ms, lapse after 3 refreshes)\n", l-k, rf;
  printf "offer no longer listed -> 3 complete copies again: %.2f s (repair interval 1 s)\n", r-l;
  printf "holder killed -> 3 complete copies again (K restored): %.2f s (%d blob(s) of %d MiB lost a copy)\n", r-k, n, s }'
