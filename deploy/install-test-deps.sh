#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, so that a fresh machine runs
# `cargo test --workspace` with nothing installed by hand. Idempotent; needs root (or sudo)
# only when something is missing.
#
# - libfaketime (Debian package `faketime`): the clock-skew end-to-end tests and the chaos
#   harness's `skew` fault shift one node's wall clock with it (LD_PRELOAD), leaving the
#   monotonic clock alone.
set -euo pipefail

LIBFAKETIME=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if [ -e "$LIBFAKETIME" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y faketime >/dev/null 2>&1 || {
  $SUDO apt-get update >/dev/null
  $SUDO apt-get install -y faketime >/dev/null
}
[ -e "$LIBFAKETIME" ] || { echo "faketime installed but $LIBFAKETIME is missing" >&2; exit 1; }
