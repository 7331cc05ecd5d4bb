#!/usr/bin/env bash
# Installs what the test suite and CI need beyond the Rust toolchain, so that a fresh machine
# runs `cargo test --workspace` and .ci/run with nothing installed by hand. Idempotent; needs
# root (or sudo) only when something is missing.
#
# - libfaketime (Debian package `faketime`): the clock-skew end-to-end tests, the upgrade test
#   (its fixture's records are dated) and the chaos harness's `skew` fault shift one node's
#   wall clock with it (LD_PRELOAD), leaving the monotonic clock alone.
# - iproute2 (`ip`): the chaos harness's network namespaces (partitions, WAN links).
# - nftables (`nft`): the NAT test's router namespace masquerades (tests/nat.rs).
# - systemd (`systemd-analyze`): deploy/verify-unit.sh checks deploy/dpin.service. Usually
#   already there; installed only if missing.
set -euo pipefail

LIBFAKETIME=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
missing=()
[ -e "$LIBFAKETIME" ] || missing+=(faketime)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update >/dev/null
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
[ -e "$LIBFAKETIME" ] || { echo "faketime installed but $LIBFAKETIME is missing" >&2; exit 1; }
