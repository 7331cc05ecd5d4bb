# bench-lib.sh — what deploy's benches share. Sourced, not run:
#   . "$(dirname "$0")/bench-lib.sh"
#
#   bench_start NAME      log/die with NAME's prefix; WORK, a fresh directory removed on exit
#                         (KEEP=1 keeps it); PIDS, every process listed there killed on exit
#   bench_build           builds dpin and dpin-bench (release); BENCH is dpin-bench
#   bench_bins ARGS...    BINS from NAME=EXECUTABLE arguments (default: this checkout's dpin)
#   bench_fill N          N signed names in $WORK/fill (`dpin-bench dns-fill`, 1,000 zones),
#                         dnsperf's queries for them in $WORK/queries
#   wait_line FILE KEY [TRIES]   prints VALUE of FILE's first "KEY VALUE" line, polling every
#                         0.1 s up to TRIES times (default 600: a million names load first)
#   sojourn_buckets API   the node's dpin_dns_udp_sojourn_seconds buckets from its /metrics
#   sojourn_p99 BEFORE AFTER   server-side p99 (ms) and % within 1 ms between two readings
#   whole_numbers VAR...  exits 2, saying which, unless every VAR holds a whole number
#   have TOOL             TOOL is on PATH
#   apt_install PKG...    installs Debian packages (through sudo unless root); fails without apt-get

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_start() {
    BENCH_NAME=$1
    PIDS=()
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/dpin-$BENCH_NAME.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
log() { echo "$BENCH_NAME: $*" >&2; }
die() { log "$*"; exit 1; }
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

whole_numbers() {
    local v
    for v in "$@"; do
        [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number" >&2; exit 2; }
    done
}
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    have apt-get || return 1
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    log "installing $* from Debian packages"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

bench_build() {
    log "building dpin and dpin-bench (release)"
    (cd "$REPO" && cargo build --release -q -p dpin-node --bin dpin -p dpin-sim --bin dpin-bench)
    BENCH="$REPO/target/release/dpin-bench"
}

bench_bins() {
    BINS=("$@")
    (( ${#BINS[@]} > 0 )) || BINS=("dpin=$REPO/target/release/dpin")
    local b
    for b in "${BINS[@]}"; do
        [[ $b == *=* && -x ${b#*=} ]] || die "not NAME=EXECUTABLE: $b"
    done
}

bench_fill() {
    log "filling $1 names"
    "$BENCH" dns-fill --records "$1" --data-dir "$WORK/fill" --zone-file "$WORK/zone" \
        --queries "$WORK/queries" >&2
    rm -f "$WORK/zone"
}

wait_line() {
    local file=$1 key=$2 tries=${3:-600} i v
    for i in $(seq "$tries"); do
        v=$(awk -v k="$key" '$1 == k { print $2; exit }' "$file" 2>/dev/null || true)
        [[ -n $v ]] && { echo "$v"; return 0; }
        sleep 0.1
    done
    log "no '$key' line in $file"
    return 1
}

# The node's dpin_dns_udp_sojourn_seconds buckets (kernel receipt of a query to its response
# handed back to the kernel), from its /metrics at $1; empty if they cannot be read.
sojourn_buckets() {
    curl -s --max-time 5 "http://$1/metrics" 2>/dev/null | grep '^dpin_dns_udp_sojourn_seconds_bucket' || true
}
# Server-side p99 (ms, interpolated within its bucket) and the share answered within 1 ms (%)
# of the queries between two sojourn_buckets readings ($1 before, $2 after); "nan nan" if none.
sojourn_p99() {
    awk 'FNR == NR { b[$1] = $2; next }
         { n++; d[n] = $2 - b[$1]; le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
           lim[n] = (le == "+Inf") ? 1e9 : le + 0 }
         END {
           if (n == 0 || d[n] <= 0) { print "nan nan"; exit }
           t = 0.99 * d[n]; pc = 0; pl = 0
           for (i = 1; i <= n; i++) {
             if (d[i] >= t) { v = (d[i] > pc) ? pl + (lim[i] - pl) * (t - pc) / (d[i] - pc) : lim[i]; break }
             pc = d[i]; pl = lim[i]
           }
           for (i = 1; i <= n; i++) if (lim[i] == 0.001) w = d[i] / d[n]
           printf "%.3f %.2f\n", v * 1000, w * 100 }' <(echo "$1") <(echo "$2")
}
