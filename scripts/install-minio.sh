#!/usr/bin/env bash
# Builds the pinned MinIO server from source and caches it outside the repo: MinIO's community
# edition is published as source only, so a real S3 for the tests is `go install`ed once per machine.
#   bash scripts/install-minio.sh          build when missing, print the binary's path last
#   bash scripts/install-minio.sh --path   only print where the binary is (or would be)
set -euo pipefail

# The one place the MinIO version is pinned (test/support/minio.ts asks this script for the path).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
CACHE="${DICOM_RELAY_CACHE:-$HOME/.cache/dicom-relay}"
DEST="$CACHE/minio-$MINIO_VERSION"
BIN="$DEST/minio"

if [ "${1:-}" = "--path" ]; then
  echo "$BIN"
  exit 0
fi

if [ -x "$BIN" ]; then
  echo "install-minio: MinIO $MINIO_VERSION already built: $BIN" >&2
  echo "$BIN"
  exit 0
fi

# a non-login shell (CI) may not have Go's usual install directory on PATH
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-minio: Go is needed to build MinIO $MINIO_VERSION from source (its community edition ships no binaries); install Go 1.24 or newer (https://go.dev/dl/) and run 'bash scripts/install-minio.sh' again." >&2
  exit 1
fi

mkdir -p "$CACHE"
# build into a temp dir next to the destination, then rename: a half-built binary is never at $BIN
work="$(mktemp -d "$CACHE/.minio-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "install-minio: building github.com/minio/minio@$MINIO_VERSION with $(go version | cut -d' ' -f3) into $BIN (takes a few minutes the first time)" >&2
GOBIN="$work" CGO_ENABLED=0 go install "github.com/minio/minio@$MINIO_VERSION" >&2
mkdir -p "$DEST"
mv "$work/minio" "$BIN"
echo "install-minio: done: $("$BIN" --version | head -n1)" >&2
echo "$BIN"
