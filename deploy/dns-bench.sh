#!/usr/bin/env bash
# dns-bench.sh — dpin's DNS front-end against Knot DNS (or NSD) on the same names and machine.
#
# What it does, all on loopback:
#   1. installs dnsperf and knot from Debian packages if missing (falls back to nsd);
#   2. builds dpin (release) and fills one node with N names (A records): up to $CLI_MAX names
#      through the real CLI (a zone key, one signed publish each), above that (FILL=direct) by
#      `dpin-bench dns-fill`, which writes the signed records straight into the data dir
#      (1,000 zones; a million CLI publishes would take an hour of fsyncs); starts `dpin node
#      --dns` on it;
#   3. writes the SAME names and addresses into a Knot zone file for `dpin.` and starts knotd;
#   4. checks that both servers answer every name with NOERROR;
#   5. pins each server to CPU $SERVER_CPU and dnsperf to CPU $CLIENT_CPU (taskset), and for
#      each server searches the highest offered rate (dnsperf -Q) that is answered with 0% loss
#      and at >= 95% of the offered rate, with short runs (-l $DURATION);
#   6. measures p50/p99 latency at half that rate, or at LAT_QPS for both servers (dnsperf
#      -v, per-query latencies; median of $LAT_RUNS runs). With GOSSIP_RATE=R (R > 0), during
#      every latency run, of both
#      servers alike, R signed updates of the names a second reach the measured node by gossip,
#      and it verifies and applies them while it answers (the reference server receives
#      nothing; the load runs there too so the client CPU is shared the same way). By default
#      (GOSSIP_VIA=peers) `dpin-bench gossip-load` sends them itself: GOSSIP_PEERS (default 5)
#      fresh libp2p peers in one process on the client CPU, connected to the measured node.
#      With GOSSIP_VIA=nodes, GOSSIP_PEERS more dpin nodes (default 3, each holding a copy of
#      the same store) are connected to it, and `dpin-bench publish-load` publishes the
#      updates to them over HTTP in turn: closer to a real network, but on 2 CPUs those nodes
#      take the client CPU from dnsperf. The report says how many updates the measured node
#      applied by gossip;
#   7. prints both figures and the ratio dpin/reference; cleans everything up on exit.
#
# Usage: deploy/dns-bench.sh            (env: N, DURATION, SERVER_CPU, CLIENT_CPU, STEPS,
#                                        LAT_RUNS, LAT_QPS, CLIENTS, OUTSTANDING, REFERENCE=knot|nsd,
#                                        DPIN_ARGS, FILL=cli|direct, GOSSIP_RATE,
#                                        GOSSIP_VIA=peers|nodes, GOSSIP_PEERS,
#                                        LOAD_CPU=client|server, LOAD_NICE,
#                                        KEEP=1 keeps the work directory, DPIN=PATH measures
#                                        that dpin binary instead of building the tree's)
# At data scale (issue 14's target):  N=1000000 GOSSIP_RATE=1000 LOAD_CPU=client LOAD_NICE=idle deploy/dns-bench.sh
# Needs: 2+ CPUs, Debian/Ubuntu (apt-get) or dnsperf + knotd/nsd already installed, cargo.
# Other load on the machine (e.g. a parallel build) skews the absolute figures; the ratio,
# measured back to back, is the meaningful number.
set -euo pipefail

N=${N:-1000}
DURATION=${DURATION:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
STEPS=${STEPS:-6}
LAT_RUNS=${LAT_RUNS:-3}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
# Latency rate for both servers (queries/s); empty: half of each server's max.
LAT_QPS=${LAT_QPS:-}
[[ -z $LAT_QPS || $LAT_QPS =~ ^[1-9][0-9]*$ ]] || { echo "LAT_QPS must be a positive integer" >&2; exit 2; }
REFERENCE=${REFERENCE:-knot}
# How the dpin node is filled: cli (one publish per name) up to CLI_MAX names, direct above.
CLI_MAX=20000
FILL=${FILL:-$( (( N <= CLI_MAX )) && echo cli || echo direct)}
[[ $FILL == cli || $FILL == direct ]] || { echo "FILL must be cli or direct" >&2; exit 2; }
# Signed updates a second that reach the measured node by gossip while latency is measured
# (0 = none), sent by GOSSIP_PEERS peers of `dpin-bench gossip-load` (GOSSIP_VIA=peers) or
# published over HTTP to GOSSIP_PEERS other nodes (GOSSIP_VIA=nodes). A node takes at most 250
# gossip messages a second from a peer in its first 10 s and 500 after (its ingest budget), so
# 1,000 a second need at least 3 nodes, or 5 fresh peers.
GOSSIP_RATE=${GOSSIP_RATE:-0}
GOSSIP_VIA=${GOSSIP_VIA:-peers}
[[ $GOSSIP_VIA == peers || $GOSSIP_VIA == nodes ]] || { echo "GOSSIP_VIA must be peers or nodes" >&2; exit 2; }
GOSSIP_PEERS=${GOSSIP_PEERS:-$([[ $GOSSIP_VIA == peers ]] && echo 5 || echo 3)}
# Where the gossip load process runs (GOSSIP_VIA=peers), and at what priority. By default on
# the client CPU at normal priority, where on 2 CPUs it delays dnsperf's own sends and
# receives: the latency then rises for both servers alike, Knot's too, though Knot receives no
# gossip. LOAD_CPU=client LOAD_NICE=idle (SCHED_IDLE) is the set-up that measures the server:
# dnsperf is never preempted by the load, and the full rate still arrives (the report says
# how many updates dpin applied). On the server's CPU (LOAD_CPU=server) the load starves even
# at nice 19 or idle, since dpin at half rate and its own gossip work fill that core, and at
# nice 19 it still raised Knot's p99.
LOAD_CPU=${LOAD_CPU:-client}
LOAD_NICE=${LOAD_NICE:-0}
[[ $LOAD_CPU == client || $LOAD_CPU == server ]] || { echo "LOAD_CPU must be client or server" >&2; exit 2; }
if [[ $LOAD_NICE == idle ]]; then
    LOAD_PRIO=(chrt --idle 0)
elif [[ $LOAD_NICE =~ ^[0-9]+$ ]] && (( LOAD_NICE <= 19 )); then
    LOAD_PRIO=(nice -n "$LOAD_NICE")
else
    echo "LOAD_NICE must be 0..19 or idle" >&2; exit 2
fi
# Extra `dpin node` flags. Endpoint health probing is off by default: the reference server
# probes nothing, and probing N endpoints is background load that scales with the store, not
# with queries. DPIN_ARGS= (empty) measures with probing on.
DPIN_ARGS=${DPIN_ARGS---no-probe}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# The server-side p99 from the node's sojourn buckets (`sojourn_buckets`, `sojourn_p99`) and
# the package installs (`have`, `apt_install`); this script keeps its own log, clean-up and
# waits, defined below.
. "$REPO/deploy/bench-lib.sh"

log() { printf '[dns-bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Clean-up: every process we start is recorded here and killed by pid on exit.
PIDS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dpin-dns-bench.XXXXXX")
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Tools
have dnsperf || apt_install dnsperf || die "dnsperf is not installed and could not be installed"
if [[ $REFERENCE == knot ]] && ! have knotd; then
    apt_install knot || { log "knot unavailable, trying nsd"; REFERENCE=nsd; }
fi
if [[ $REFERENCE == nsd ]] && ! have nsd; then
    apt_install nsd || die "neither knot nor nsd could be installed"
fi
have taskset || die "taskset (util-linux) is required"
(( $(nproc) >= 2 )) || die "needs at least 2 CPUs (server and client pinned apart)"

# ---------------------------------------------------------------------------------------------
# 2. dpin
# DPIN=PATH measures that binary instead of the tree's (another build, against the same
# reference on the same day); dpin-bench is still the tree's.
if [[ -n ${DPIN:-} ]]; then
    [[ -x $DPIN ]] || die "DPIN is not an executable: $DPIN"
    build=()
else
    build=(-p dpin-node --bin dpin)
    DPIN="$REPO/target/release/dpin"
fi
if [[ $FILL == direct || $GOSSIP_RATE != 0 ]]; then
    build+=(-p dpin-sim --bin dpin-bench)
fi
if (( ${#build[@]} > 0 )); then
    log "building ${build[*]} (release)"
    (cd "$REPO" && cargo build --release -q "${build[@]}")
fi
BENCH="$REPO/target/release/dpin-bench"

# Waits until FILE has a line "KEY VALUE" and prints VALUE.
wait_line() {
    local file=$1 key=$2 i
    # 60 s: a node loads its store (a million names: a few seconds) before it prints.
    for i in $(seq 1 1200); do
        if grep -q "^$key " "$file" 2>/dev/null; then
            grep -m1 "^$key " "$file" | cut -d' ' -f2
            return 0
        fi
        sleep 0.05
    done
    return 1
}

mkdir -p "$WORK/dpin"
if [[ $FILL == direct ]]; then
    # The data dir, the reference zone file and the query file, with the same names.
    log "writing $N signed names into the data dir (dpin-bench dns-fill)"
    "$BENCH" dns-fill --records "$N" --data-dir "$WORK/dpin" --zone-file "$WORK/dpin.zone" \
        --queries "$WORK/queries.txt" || die "dns-fill failed"
fi
# Starts `dpin node` on data dir $1 pinned to CPU $2, output to $1.out/$1.log; extra flags after.
start_dpin() {
    local dir=$1 cpu=$2
    shift 2
    RUST_LOG=warn taskset -c "$cpu" "$DPIN" node --data-dir "$dir" \
        --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 $DPIN_ARGS "$@" \
        >"$dir.out" 2>"$dir.log" &
    PIDS+=($!)
}
start_dpin "$WORK/dpin" "$SERVER_CPU" --dns 127.0.0.1:0
# A million names take a few seconds to load before the node prints its addresses.
API=$(wait_line "$WORK/dpin.out" api) || die "dpin did not start (see $WORK/dpin.log)"
DPIN_DNS=$(wait_line "$WORK/dpin.out" dns) || die "dpin printed no dns address"
DPIN_PORT=${DPIN_DNS##*:}
[[ ${DPIN_DNS%:*} == 127.0.0.1 ]] || die "dpin DNS is not on loopback: $DPIN_DNS"
log "dpin node: api $API, dns $DPIN_DNS"

if [[ $FILL == cli ]]; then
    ZONE=$("$DPIN" keygen --out "$WORK/zone.key")
    log "zone $ZONE; publishing $N names"
    # Name i → n<i>.<zone>.dpin. A 127.1.<i/250>.<i%250+1> (loopback addresses; never contacted).
    addr_of() { echo "127.1.$(( $1 / 250 )).$(( $1 % 250 + 1 ))"; }
    for i in $(seq 1 "$N"); do
        echo "n$i $(addr_of "$i"):80"
    done >"$WORK/names.txt"
    # Four publishers at a time; each is one signed record, committed durably by the node.
    xargs -P 4 -L 1 sh -c '"$0" publish --key "$1" --api "$2" "$3" "$4" >/dev/null || exit 255' \
        "$DPIN" "$WORK/zone.key" "$API" <"$WORK/names.txt" \
        || die "publishing failed"

    # -----------------------------------------------------------------------------------------
    # 3. Reference server with the same names
    {
        echo "\$ORIGIN dpin."
        echo "\$TTL 60"
        echo "@ SOA ns.dpin. hostmaster.dpin. 1 60 60 86400 5"
        echo "@ NS ns.dpin."
        echo "ns A 127.0.0.1"
        while read -r label ep; do
            echo "$label.$ZONE A ${ep%:*}"
        done <"$WORK/names.txt"
    } >"$WORK/dpin.zone"
    for i in $(seq 1 "$N"); do echo "n$i.$ZONE.dpin A"; done >"$WORK/queries.txt"
fi

# The gossip sources (GOSSIP_VIA=nodes): GOSSIP_PEERS nodes holding the same names, connected
# to the measured one. With GOSSIP_VIA=peers, the load process connects its own peers to BOOT.
PEER_APIS=()
if (( GOSSIP_RATE > 0 )); then
    [[ $FILL == direct ]] || die "GOSSIP_RATE needs FILL=direct (the load updates the bench names)"
    (( GOSSIP_PEERS >= 1 )) || die "GOSSIP_PEERS must be at least 1"
    BOOT=$(wait_line "$WORK/dpin.out" listen) || die "dpin printed no listen address"
    if [[ $GOSSIP_VIA == nodes ]]; then
        for p in $(seq 1 "$GOSSIP_PEERS"); do
            mkdir -p "$WORK/peer$p"
            cp "$WORK/dpin/store.redb" "$WORK/peer$p/store.redb"
            start_dpin "$WORK/peer$p" "$CLIENT_CPU" --bootstrap "$BOOT"
            api=$(wait_line "$WORK/peer$p.out" api) || die "gossip peer $p did not start (see $WORK/peer$p.log)"
            PEER_APIS+=(--api "$api")
        done
        log "$GOSSIP_PEERS gossip peers (${PEER_APIS[*]}), bootstrapped from $BOOT"
    fi
fi

# A port below the ephemeral range (so no outgoing connection can hold it) that no socket uses.
free_port() {
    local p low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    (( low > 11000 )) || low=60000
    for _ in $(seq 1 100); do
        p=$(( 10000 + RANDOM % (low - 10000) ))
        if ! ss -Han "sport = :$p" 2>/dev/null | grep -q .; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Waits until something answers DNS on 127.0.0.1:$1 (any rcode) while pid $2 lives.
wait_dns() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if echo "ns.dpin A" | timeout 5 dnsperf -s 127.0.0.1 -p "$port" -n 1 -t 1 2>/dev/null \
            | grep -q "Queries completed: *1 "; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_knot() {
    mkdir -p "$WORK/knot/run" "$WORK/knot/db"
    cat >"$WORK/knot/knot.conf" <<EOF
server:
    listen: 127.0.0.1@$REF_PORT
    rundir: $WORK/knot/run
database:
    storage: $WORK/knot/db
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: $WORK
    semantic-checks: off
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: dpin.
    file: dpin.zone
EOF
    taskset -c "$SERVER_CPU" knotd -c "$WORK/knot/knot.conf" 2>"$WORK/knot.log" &
    REF_PID=$!
    PIDS+=("$REF_PID")
    REF_NAME="Knot $(knotd -V 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
}

start_nsd() {
    mkdir -p "$WORK/nsd"
    cat >"$WORK/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$REF_PORT
    port: $REF_PORT
    server-count: 1
    username: ""
    zonesdir: "$WORK"
    database: ""
    pidfile: "$WORK/nsd/nsd.pid"
    xfrdfile: "$WORK/nsd/xfrd.state"
    zonelistfile: "$WORK/nsd/zone.list"
    logfile: "$WORK/nsd.log"
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: dpin.
    zonefile: dpin.zone
EOF
    taskset -c "$SERVER_CPU" nsd -d -c "$WORK/nsd/nsd.conf" 2>>"$WORK/nsd.log" &
    REF_PID=$!
    PIDS+=("$REF_PID")
    REF_NAME="NSD $(nsd -v 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
}

start_reference() {
    if [[ $REFERENCE == knot ]]; then start_knot; else start_nsd; fi
}

# A port can still be taken between the check and the bind: retry on a fresh one.
for attempt in 1 2 3 4 5; do
    REF_PORT=$(free_port) || die "no free port"
    start_reference
    if wait_dns "$REF_PORT" "$REF_PID"; then
        break
    fi
    kill "$REF_PID" 2>/dev/null || true
    wait "$REF_PID" 2>/dev/null || true
    log "$REFERENCE did not come up on port $REF_PORT (attempt $attempt): $(tail -n 2 "$WORK/$REFERENCE.log" 2>/dev/null | tr '\n' ' ')"
    (( attempt < 5 )) || die "$REFERENCE does not start; see $WORK/$REFERENCE.log (KEEP=1 keeps it)"
done
log "$REF_NAME serving on 127.0.0.1:$REF_PORT"

# ---------------------------------------------------------------------------------------------
# 4. Same answers from both

# dnsperf on the client CPU. Prints the raw report.
dnsperf_run() {
    local port=$1
    shift
    taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" \
        -c "$CLIENTS" -q "$OUTSTANDING" -t 2 "$@" 2>&1
}
field() { # field REPORT "Queries lost:" → first number after the label
    awk -v k="$2" 'index($0, k) { sub(".*" k "[ \t]*", ""); print $1 + 0; exit }' <<<"$1"
}

check_all_noerror() {
    local port=$1 who=$2 out="" deadline=$((SECONDS + 30))
    while (( SECONDS < deadline )); do
        out=$(dnsperf_run "$port" -n 1 || true)
        if grep -q "NOERROR $N (100.00%)" <<<"$out" && [[ $(field "$out" "Queries completed:") -eq $N ]]; then
            log "$who answers all $N names with NOERROR"
            return 0
        fi
        sleep 0.5
    done
    printf '%s\n' "$out" >&2
    die "$who does not answer every name with NOERROR"
}
check_all_noerror "$DPIN_PORT" dpin
check_all_noerror "$REF_PORT" "$REF_NAME"

# ---------------------------------------------------------------------------------------------
# 5. Highest rate at 0% loss
# One run at offered rate $2 (0 = unlimited); prints "sent completed lost qps".
run_rate() {
    local port=$1 rate=$2 out
    if [[ $rate == 0 ]]; then
        out=$(dnsperf_run "$port" -l "$DURATION")
    else
        out=$(dnsperf_run "$port" -l "$DURATION" -Q "$rate")
    fi
    echo "$(field "$out" "Queries sent:") $(field "$out" "Queries completed:") \
$(field "$out" "Queries lost:") $(field "$out" "Queries per second:")"
}

# Prints the best achieved qps among runs with 0 lost queries and >= 95% of the offered rate.
max_rate() {
    local port=$1 who=$2 probe lost qps lo hi mid best=0 step
    read -r _ _ lost qps <<<"$(run_rate "$port" 0)"
    log "$who: unlimited (-q $OUTSTANDING outstanding): ${qps%.*} qps, lost $lost"
    lo=$(( ${qps%.*} / 4 ))
    hi=$(( ${qps%.*} * 5 / 4 ))
    for step in $(seq 1 "$STEPS"); do
        mid=$(( (lo + hi) / 2 ))
        read -r _ _ lost probe <<<"$(run_rate "$port" "$mid")"
        probe=${probe%.*}
        if [[ $lost -eq 0 ]] && (( probe * 100 >= mid * 95 )); then
            log "$who: -Q $mid -> $probe qps, 0 lost: pass"
            (( probe > best )) && best=$probe
            lo=$mid
        else
            log "$who: -Q $mid -> $probe qps, $lost lost: fail"
            hi=$mid
        fi
    done
    echo "$best"
}

# The server CPU's line of /proc/stat (its time in each state so far, in ticks).
server_cpu_ticks() {
    grep "^cpu$SERVER_CPU " /proc/stat
}
# How busy (%) the server CPU was between two server_cpu_ticks readings ($1 before, $2 after):
# everything but idle and I/O wait. Near 100 % a query queues behind whatever else runs there
# (a dpin node's gossip work, interrupts), and its latency tail grows with it.
cpu_busy() {
    awk 'NR == 1 { for (i = 2; i <= 9; i++) b[i] = $i; next }
         { t = 0; for (i = 2; i <= 9; i++) { d[i] = $i - b[i]; t += d[i] }
           if (t <= 0) { print "nan"; exit }
           printf "%.1f\n", 100 * (t - d[5] - d[6]) / t }' <(echo "$1") <(echo "$2")
}

# p50 and p99 latency (ms) at offered rate $2, from dnsperf's per-query verbose lines; with a
# node's API address as $3, also that node's server-side p99 and share within 1 ms over the
# run (sojourn_p99), else "- -"; last, how busy the server CPU was during the run (cpu_busy).
latency_once() {
    local port=$1 rate=$2 api=${3:-} before="" after="" cpu_before cpu_after
    [[ -n $api ]] && before=$(sojourn_buckets "$api")
    cpu_before=$(server_cpu_ticks)
    # To a file first: parsing while dnsperf runs would put awk on the server's CPU.
    dnsperf_run "$port" -l "$DURATION" -Q "$rate" -v >"$WORK/latency.txt"
    cpu_after=$(server_cpu_ticks)
    [[ -n $api ]] && after=$(sojourn_buckets "$api")
    local client
    client=$(awk '$1 == ">" && $2 == "NOERROR" { print $NF * 1000 }' "$WORK/latency.txt" \
        | sort -g \
        | awk '{ v[NR] = $1 } END {
                 if (NR == 0) { print "nan nan"; exit }
                 p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]
                 p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1]
                 printf "%.3f %.3f\n", p50, p99 }')
    local busy
    busy=$(cpu_busy "$cpu_before" "$cpu_after")
    if [[ -n $api ]]; then
        echo "$client $(sojourn_p99 "$before" "$after") $busy"
    else
        echo "$client - - $busy"
    fi
}

# The gossip load (GOSSIP_RATE > 0) around one server's latency runs: started before them,
# stopped (SIGTERM; it prints its summary) after.
LOAD_PID=""
start_load() {
    (( GOSSIP_RATE > 0 )) || return 0
    if [[ $GOSSIP_VIA == peers ]]; then
        local cpu=$([[ $LOAD_CPU == server ]] && echo "$SERVER_CPU" || echo "$CLIENT_CPU")
        "${LOAD_PRIO[@]}" taskset -c "$cpu" "$BENCH" gossip-load --target "$BOOT" --peers "$GOSSIP_PEERS" \
            --records "$N" --rate "$GOSSIP_RATE" --duration-s 3600 --seed "$RANDOM" \
            >"$WORK/load.$1.txt" 2>&1 &
    else
        taskset -c "$CLIENT_CPU" "$BENCH" publish-load "${PEER_APIS[@]}" --records "$N" \
            --rate "$GOSSIP_RATE" --duration-s 3600 --seed "$RANDOM" >"$WORK/load.$1.txt" 2>&1 &
    fi
    LOAD_PID=$!
    PIDS+=("$LOAD_PID")
    sleep 2 # connected, up to rate, and gossip flowing to the measured node
}
stop_load() {
    (( GOSSIP_RATE > 0 )) || return 0
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
    log "$(cat "$WORK/load.$1.txt")"
}
# The measured node's count of records applied by gossip (0 if it cannot be read).
gossip_applied() {
    curl -s --max-time 5 "http://$API/metrics" 2>/dev/null \
        | awk '/^dpin_records_total\{path="gossip",outcome="applied"\}/ { print $2 + 0; f = 1 }
               END { if (!f) print 0 }'
}

# Median p50 and median p99 over $LAT_RUNS runs (a single run's tail is at the mercy of
# whatever else the machine schedules in those seconds).
# With a node's API address as $4, also the median server-side p99 and share within 1 ms; last,
# the median share of the server CPU busy during the runs.
latency() {
    local port=$1 rate=$2 who=$3 api=${4:-} i p50 p99 sp99 within busy all=""
    for i in $(seq 1 "$LAT_RUNS"); do
        read -r p50 p99 sp99 within busy <<<"$(latency_once "$port" "$rate" "$api")"
        if [[ -n $api ]]; then
            log "$who: -Q $rate latency run $i: p50 $p50 ms, p99 $p99 ms; server-side p99 $sp99 ms, $within % within 1 ms; server CPU $busy % busy"
        else
            log "$who: -Q $rate latency run $i: p50 $p50 ms, p99 $p99 ms; server CPU $busy % busy"
        fi
        all+="$p50 $p99 $sp99 $within $busy"$'\n'
    done
    local col m=()
    for col in 1 2 3 4 5; do
        m+=("$(awk -v c="$col" 'NF { print $c }' <<<"$all" | sort -g \
            | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')")
    done
    echo "${m[*]}"
}

# The rate latency is measured at: half the server's max, or LAT_QPS for both servers.
lat_rate() {
    if [[ -n $LAT_QPS ]]; then
        echo "$LAT_QPS"
    else
        echo $(( $1 / 2 > 0 ? $1 / 2 : 1 ))
    fi
}
AT=$([[ -n $LAT_QPS ]] && echo "@ $LAT_QPS" || echo "@ half")

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
log "load before measuring: $LOAD"
DPIN_QPS=$(max_rate "$DPIN_PORT" dpin)
REF_QPS=$(max_rate "$REF_PORT" "$REF_NAME")
APPLIED_BEFORE=$(gossip_applied)
start_load dpin
read -r DPIN_P50 DPIN_P99 DPIN_SP99 DPIN_WITHIN DPIN_BUSY \
    <<<"$(latency "$DPIN_PORT" "$(lat_rate "$DPIN_QPS")" dpin "$API")"
stop_load dpin
APPLIED=$(( $(gossip_applied) - APPLIED_BEFORE ))
start_load reference
read -r REF_P50 REF_P99 _ _ REF_BUSY <<<"$(latency "$REF_PORT" "$(lat_rate "$REF_QPS")" "$REF_NAME")"
stop_load reference
if (( GOSSIP_RATE > 0 )); then
    if [[ $GOSSIP_VIA == peers ]]; then
        VIA="sent by gossip from $GOSSIP_PEERS peers (load process on the $LOAD_CPU CPU, nice $LOAD_NICE)"
    else
        VIA="published to $GOSSIP_PEERS other nodes"
    fi
    GOSSIP_LINE="gossip load during the latency runs: $GOSSIP_RATE updates/s offered, $VIA; the dpin node applied $APPLIED by gossip during its runs
  dpin runs:      $(cat "$WORK/load.dpin.txt")
  reference runs: $(cat "$WORK/load.reference.txt")"
else
    GOSSIP_LINE="no gossip load (GOSSIP_RATE=0)"
fi
RATIO=$(awk -v a="$DPIN_QPS" -v b="$REF_QPS" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')

# ---------------------------------------------------------------------------------------------
# 6. Report
cat <<EOF

DNS benchmark: $N names, A queries over UDP, loopback; server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU
dpin node flags: ${DPIN_ARGS:-(none)}; filled by: $FILL; load average at start: $LOAD
$GOSSIP_LINE
($CLIENTS clients, <= $OUTSTANDING outstanding, ${DURATION}s per run, $STEPS-step search over -Q)
server            max qps @ 0% loss   p50 ms $AT   p99 ms $AT (median of $LAT_RUNS runs)
dpin              $(printf '%-19s %-15s %s' "$DPIN_QPS" "$DPIN_P50" "$DPIN_P99")
$(printf '%-17s %-19s %-15s %s' "$REF_NAME" "$REF_QPS" "$REF_P50" "$REF_P99")
dpin server-side p99 $AT: $DPIN_SP99 ms, $DPIN_WITHIN % of answers within 1 ms (median of $LAT_RUNS runs; dpin_dns_udp_sojourn_seconds: from the kernel's receipt of a query to its response handed back, so the queue wait is in it and the client's own delays are not)
server CPU busy during the latency runs $AT (median of $LAT_RUNS runs): dpin $DPIN_BUSY %, ${REF_NAME%% *} $REF_BUSY % (everything on CPU $SERVER_CPU but idle and I/O wait: the server, its gossip work and the kernel's network processing)
ratio dpin/${REF_NAME%% *}: $RATIO
EOF
