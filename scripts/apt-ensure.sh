#!/usr/bin/env bash
# apt-ensure.sh COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is missing (idempotent).
set -euo pipefail
cmd="$1"; pkg="$2"
if command -v "$cmd" >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-ensure: '$cmd' is missing and there is no apt-get to install the Debian package '$pkg'; install it by hand." >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "apt-ensure: '$cmd' is missing; installing the Debian package '$pkg' needs root (run: sudo apt-get install -y $pkg)." >&2
  exit 1
fi
echo "apt-ensure: installing Debian package $pkg (for $cmd)" >&2
# the package lists may be missing or stale on a fresh machine
apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2
command -v "$cmd" >/dev/null 2>&1 || { echo "apt-ensure: $pkg installed but '$cmd' is still not found" >&2; exit 1; }
