#!/bin/sh
# Start a local dpin cluster of N nodes (default 5) on loopback.
#
#   deploy/local-cluster.sh [N] [extra dpin-sim cluster flags, e.g. --dns --base-dir DIR]
#
# Builds the release binaries, then runs `dpin-sim cluster`, which prints every node's API and
# DNS address and ready-to-paste `dpin resolve` / `dig` lines. Ctrl-C stops every node; from
# another shell, `target/release/dpin-sim stop --base-dir DIR` does the same.
set -eu
cd "$(dirname "$0")/.."
nodes=${1:-5}
[ $# -gt 0 ] && shift
cargo build --release -p dpin-node -p dpin-sim
exec target/release/dpin-sim cluster --nodes "$nodes" --dns "$@"
