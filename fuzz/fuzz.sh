#!/usr/bin/env bash
# Builds and runs the fuzz targets with nothing installed by hand beyond the Rust toolchain.
#
#   fuzz/fuzz.sh deps                  # install cargo-fuzz if missing (crates.io)
#   fuzz/fuzz.sh build [TARGET...]     # ASan + coverage build of every (or the named) target
#   fuzz/fuzz.sh run TARGET [RUNS] [MAX_SECONDS]
#   fuzz/fuzz.sh all [RUNS] [MAX_SECONDS]   # every target, one after another
#   fuzz/fuzz.sh list
#
# RUNS defaults to 1000000 (issue 12's target; -1 = no cap), MAX_SECONDS to 0 (no cap). Each run is started
# with `nice -n 19` on one core, from the target's corpus (fuzz/corpus/TARGET, grown in place)
# and writes crashes to fuzz/artifacts/TARGET. `run` and `all` append one line per run to
# fuzz/results.tsv (git-ignored): date, target, executions, seconds, crash files.
#
# Toolchain: cargo-fuzz needs nightly-only flags (-Zsanitizer). This uses `+nightly` when a
# nightly toolchain is installed, and otherwise the machine's stable toolchain with
# RUSTC_BOOTSTRAP=1 (which lets stable accept them); no toolchain is downloaded.
set -euo pipefail
cd "$(dirname "$0")"

RESULTS=results.tsv
TRIPLE=x86_64-unknown-linux-gnu

toolchain() {
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "+nightly"
  else
    export RUSTC_BOOTSTRAP=1
    echo ""
  fi
}

deps() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
}

targets() {
  sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^dpin-protocol-fuzz$'
}

build() {
  deps
  local tc
  tc=$(toolchain)
  if [ $# -eq 0 ]; then
    nice -n 19 cargo $tc fuzz build -O
  else
    for t in "$@"; do nice -n 19 cargo $tc fuzz build -O "$t"; done
  fi
}

run() {
  local t=$1 runs=${2:-1000000} secs=${3:-0}
  local bin=target/$TRIPLE/release/$t
  [ -x "$bin" ] || build "$t"
  mkdir -p "corpus/$t" "artifacts/$t"
  local log
  log=$(mktemp)
  local before after start end
  before=$(find "artifacts/$t" -type f | wc -l)
  start=$(date +%s.%N)
  local rc=0
  nice -n 19 "$bin" -runs="$runs" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" >"$log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  after=$(find "artifacts/$t" -type f | wc -l)
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  local took
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\trc=%s\n' "$(date -u +%FT%TZ)" "$t" "${execs:-?}" "$took" \
    "$((after - before))" "$rc" | tee -a "$RESULTS"
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}

case "${1:-}" in
  deps) deps ;;
  list) targets ;;
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  all)
    shift
    status=0
    for t in $(targets); do run "$t" "$@" || status=1; done
    exit $status
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
