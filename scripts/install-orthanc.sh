#!/usr/bin/env bash
# Orthanc and its DICOMweb plugin: the home PACS the forwarding tests send studies to. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt-ensure.sh Orthanc orthanc
if ! dpkg -s orthanc-dicomweb >/dev/null 2>&1; then
  # the plugin has no command of its own: apt-ensure is asked for a name that is never a command
  bash scripts/apt-ensure.sh orthanc-dicomweb-plugin-installed orthanc-dicomweb || dpkg -s orthanc-dicomweb >/dev/null 2>&1
fi
