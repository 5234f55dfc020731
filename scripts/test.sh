#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, type-checks, runs vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d node_modules ]; then npm ci --no-audit --no-fund; fi
bash scripts/test-prereqs.sh
npx tsc --noEmit
npx vitest run "$@"
