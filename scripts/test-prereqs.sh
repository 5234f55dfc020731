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
# dicom3tools' dciodvfy: the IOD checker the document tests run on wrapped PDFs and photos
bash scripts/apt-ensure.sh dciodvfy dicom3tools
bash scripts/install-orthanc.sh
# GDCM's gdcmconv: makes JPEG 2000 test files (dcmtk has no JPEG 2000 codec) for the transcoding tests
bash scripts/apt-ensure.sh gdcmconv libgdcm-tools
# pydicom's test files (Debian's python3-pydicom ships them): the corpus test stores or refuses each with a reason
if ! dpkg -s python3-pydicom >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pydicom >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pydicom >/dev/null 2>&1 || echo "test-prereqs: could not install python3-pydicom (the corpus test will fail)" >&2; }
fi
# the browser tests of the console and the viewer: Debian's Chromium (driven by playwright-core), a CJK font so
# screenshots show Chinese names, and OHIF's static build (cached under ~/.cache/dicom-relay)
bash scripts/apt-ensure.sh chromium chromium
if ! dpkg -s fonts-wqy-zenhei >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei >/dev/null 2>&1 || echo "test-prereqs: could not install fonts-wqy-zenhei (screenshots will show boxes for Chinese text)" >&2; }
fi
bash scripts/install-ohif.sh >/dev/null
