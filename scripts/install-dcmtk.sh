#!/usr/bin/env bash
# dcmtk (dcm2pdf, dcmdump): the independent tool the document tests check wrapped PDFs with. Idempotent.
set -euo pipefail
if command -v dcmdump >/dev/null 2>&1 && command -v dcm2pdf >/dev/null 2>&1; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get install -y dcmtk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y dcmtk >/dev/null; }
