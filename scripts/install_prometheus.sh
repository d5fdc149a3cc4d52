#!/usr/bin/env bash
# Install the prometheus and promtool binaries into DEST (default .venv/bin) from Debian's `prometheus`
# package, without installing the package (no service, no root needed when the package lists are there):
# `apt-get download`, then unpack the two binaries. Does nothing when both are already there.
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"  # absolute: the unpacking below happens in a temporary directory
[ -x "$dest/prometheus" ] && [ -x "$dest/promtool" ] && exit 0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  # A fresh machine may have empty package lists; refreshing them needs root.
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; else sudo -n apt-get update -qq >/dev/null; fi
  apt-get download prometheus >/dev/null 2>&1
fi
dpkg-deb -x prometheus_*.deb unpacked
install -m 0755 unpacked/usr/bin/prometheus unpacked/usr/bin/promtool "$dest/"
"$dest/promtool" --version 2>&1 | head -1
