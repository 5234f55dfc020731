#!/usr/bin/env bash
# Orthanc and its DICOMweb plugin: the home PACS the forwarding tests send studies to. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt-ensure.sh Orthanc orthanc
# the plugin has no command of its own to look for: ask dpkg
if ! dpkg -s orthanc-dicomweb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "install-orthanc: installing Debian package orthanc-dicomweb" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc-dicomweb >&2 \
    || { $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc-dicomweb >&2; }
fi
