#!/usr/bin/env bash
# install-ohif.sh: puts the OHIF Viewer's static build (npm package @ohif/app, its dist/ folder) into
# ~/.cache/dicom-relay/ohif-<version> and prints that directory. Idempotent: a complete copy is reused.
# `npm install @ohif/app` fails (one of its dependencies is not published), but the package's tarball carries a
# complete static build, so the tarball is fetched with `npm pack` and only dist/ is kept.
# dist/ort/ (the ONNX AI runtime, ~136 MB) is dropped: the relay's viewer does not use OHIF's AI tools.
# Usage: scripts/install-ohif.sh [version]   (default below; see docs/viewer.md before changing it)
set -euo pipefail
version="${1:-${OHIF_VERSION:-3.13.2}}"
cache="${DICOM_RELAY_CACHE:-$HOME/.cache/dicom-relay}"
dest="$cache/ohif-$version"
if [ -f "$dest/.complete" ] && [ -f "$dest/index.html" ]; then echo "$dest"; exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "install-ohif: npm is needed to fetch @ohif/app@$version" >&2; exit 1; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.ohif-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "install-ohif: fetching @ohif/app@$version (about 60 MB compressed)" >&2
(cd "$work" && npm pack --silent "@ohif/app@$version" >/dev/null)
tarball="$(ls "$work"/*.tgz | head -n 1)"
mkdir -p "$work/x"
tar -xzf "$tarball" -C "$work/x" package/dist
rm -rf "$work/x/package/dist/ort"
[ -f "$work/x/package/dist/index.html" ] || { echo "install-ohif: @ohif/app@$version has no dist/index.html" >&2; exit 1; }
touch "$work/x/package/dist/.complete"
rm -rf "$dest"
mv "$work/x/package/dist" "$dest"
echo "install-ohif: OHIF $version installed in $dest" >&2
echo "$dest"
