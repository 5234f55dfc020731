#!/usr/bin/env bash
# Installs Debian's PostgreSQL server when it is missing: the tests start their own throwaway cluster
# from its binaries (test/support/postgres.ts runs initdb and postgres as the postgres user).
#   bash scripts/install-postgres.sh          install when missing, print the bin directory last
#   bash scripts/install-postgres.sh --path   only print the bin directory (empty when not installed)
# Progress goes to stderr; stdout is the bin directory only. POSTGRESQL_LIB_DIR (default
# /usr/lib/postgresql) is where the versioned binaries are looked for.
set -euo pipefail
LIB="${POSTGRESQL_LIB_DIR:-/usr/lib/postgresql}"

bin_dir() {
  # the newest /usr/lib/postgresql/<version>/bin that has both initdb and postgres
  local v
  for v in $(ls "$LIB" 2>/dev/null | grep -E '^[0-9]+$' | sort -rn); do
    if [ -x "$LIB/$v/bin/initdb" ] && [ -x "$LIB/$v/bin/postgres" ]; then
      echo "$LIB/$v/bin"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = "--path" ]; then
  bin_dir || true
  exit 0
fi

if dir="$(bin_dir)" && id -u postgres >/dev/null 2>&1; then
  echo "install-postgres: PostgreSQL already installed: $dir" >&2
  echo "$dir"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-postgres: Debian's postgresql package is not installed and installing it needs root; run 'sudo apt-get install -y postgresql' (or run this script as root) and try again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres: no apt-get on this machine: install a PostgreSQL server (initdb and postgres under /usr/lib/postgresql/<version>/bin, or set POSTGRES_BIN_DIR) and try again." >&2
  exit 1
fi

# The tests start their own clusters: ask Debian not to create and start the default one on port 5432
# (documented in postgresql-common's README; only written when the admin has no such file yet).
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  echo "install-postgres: writing /etc/postgresql-common/createcluster.conf (create_main_cluster = false)" >&2
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi

echo "install-postgres: apt-get update" >&2
if ! apt-get update >&2; then
  echo "install-postgres: 'apt-get update' failed (no network to the Debian mirror?); PostgreSQL could not be installed." >&2
  exit 1
fi
echo "install-postgres: apt-get install -y postgresql" >&2
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confold postgresql >&2; then
  echo "install-postgres: 'apt-get install -y postgresql' failed (see above); the PostgreSQL tests cannot run without it." >&2
  exit 1
fi

if ! dir="$(bin_dir)"; then
  echo "install-postgres: the postgresql package is installed but no initdb/postgres was found under $LIB/<version>/bin." >&2
  exit 1
fi
if ! id -u postgres >/dev/null 2>&1; then
  echo "install-postgres: the postgresql package did not create the postgres user, which the tests run the server as." >&2
  exit 1
fi
echo "install-postgres: done: $("$dir/postgres" --version)" >&2
echo "$dir"
