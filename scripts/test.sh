#!/usr/bin/env bash
# Install everything radnode's tests need on a fresh Debian machine, then run the tests.
#   bash scripts/test.sh [pytest arguments]
# System packages (orthanc, dcmtk, dicom3tools) are installed only when missing (needs root or sudo);
# the virtual environment .venv, torch (CPU) and the project are installed only when missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# chromium: the status page is rendered headless in tests/test_web.py, and OHIF in tests/test_viewer.py
# orthanc-dicomweb: the STOW-RS destination in tests/test_delivery.py. (tests/test_dcmjs.py needs
# node.js with npm, not installed here: the nodesource build bundles npm and conflicts with Debian's.)
# pixelmed-apps: PixelMed's DicomSRValidator / DicomInstanceValidator in tests/test_pixelmed.py
ensure_debs orthanc dcmtk dicom3tools chromium orthanc-dicomweb pixelmed-apps
for tool in /usr/sbin/Orthanc /usr/bin/storescu /usr/bin/storescp /usr/bin/echoscu /usr/bin/dciodvfy /usr/bin/java; do
    [ -x "$tool" ] || die "$tool not found after installing system packages"
done
[ -f /usr/share/java/pixelmed.jar ] || die "/usr/share/java/pixelmed.jar not found after installing pixelmed-apps"
ensure_venv
ensure_torch
ensure_project test
ensure_viewer

cd "$RADNODE_ROOT"
# static checks first (seconds): configured in pyproject.toml, both must be clean
say "ruff check . && mypy (strict: node, inference, dicom_sr)"
.venv/bin/ruff check . || die "ruff found the problems above"
.venv/bin/mypy || die "mypy --strict found the type errors above"
# Most tests wait on servers (Orthanc, radnode processes, JVMs, chromium) more than they compute:
# three workers on two cores, each taking whole modules (their module-scoped servers are started
# once), longest first (tests/conftest.py). RADNODE_TEST_WORKERS=0 runs them in this process.
workers="${RADNODE_TEST_WORKERS:-3}"
parallel=(-n "$workers" --dist loadfile)
[ "$workers" = 0 ] && parallel=(-p no:xdist)
say "running tests: .venv/bin/python -m pytest -q --durations=25 ${parallel[*]} $*"
status=0
.venv/bin/python -m pytest -q --durations=25 "${parallel[@]}" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    die "pytest collected no tests (exit 5)"
fi
exit "$status"
