#!/usr/bin/env bash
# Installs the external programs the test suite runs against (cached outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
