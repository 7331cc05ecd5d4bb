#!/usr/bin/env bash
# Checks deploy/dpin.service with `systemd-analyze verify` (Debian package `systemd`).
#
# verify also checks that ExecStart's binary exists. If /usr/local/bin/dpin is installed the
# unit is checked as it is; otherwise a copy whose ExecStart points at the built binary
# (target/release/dpin, else target/ci/dpin, else the test build's dpin-e2e, the same CLI,
# else target/debug/dpin) is checked, so CI needs no install.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: apt-get install systemd" >&2; exit 1; }
unit=deploy/dpin.service
if [ -x /usr/local/bin/dpin ]; then
  exec systemd-analyze verify "$unit"
fi
bin=""
for b in target/release/dpin target/ci/dpin target/ci/dpin-e2e target/debug/dpin; do
  if [ -x "$b" ]; then bin="$PWD/$b"; break; fi
done
[ -n "$bin" ] || { echo "no built dpin (cargo build --release -p dpin-node)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/dpin#$bin#" "$unit" > "$tmp/dpin.service"
systemd-analyze verify "$tmp/dpin.service"
echo "deploy/dpin.service: systemd-analyze verify OK (ExecStart checked as $bin)"
