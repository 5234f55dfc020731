#!/usr/bin/env bash
# Installs the external programs the test suite runs against (cached outside the repo).
# One call per program; each script is idempotent and fast when its program is already cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-minio.sh >/dev/null
bash scripts/install-postgres.sh >/dev/null
bash scripts/apt-ensure.sh zip zip
bash scripts/apt-ensure.sh openssl openssl
bash scripts/install-dcmtk.sh
bash scripts/install-orthanc.sh
