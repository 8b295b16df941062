#!/usr/bin/env bash
# Start radnode on this machine: the DICOM listener with an embedded worker.
#   bash scripts/run.sh [extra `radnode serve` arguments]
# The first run creates .venv and installs torch (CPU) and radnode; later runs start at once.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_venv
ensure_torch
ensure_project ""

cd "$RADNODE_ROOT"
say "starting: radnode serve --config config/radnode.yaml --with-worker $*"
exec .venv/bin/radnode serve --config config/radnode.yaml --with-worker "$@"
