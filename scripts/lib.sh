# shellcheck shell=bash
# Shared steps for scripts/run.sh and scripts/test.sh (sourced, not run). Every step is idempotent:
# it checks first and only installs what is missing, so a second run is fast.

RADNODE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$RADNODE_ROOT/.venv"
TORCH_VERSION="2.13.0"
# A CPU build of torch from local disk: a plain `pip install torch` pulls a multi-GB CUDA build.
TORCH_WHEEL_DIR="${RADNODE_TORCH_WHEEL_DIR:-/opt/wheels}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

say() { printf 'radnode: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $*"
    fi
}

# apt packages whose status is not "install ok installed".
missing_debs() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$pkg"
    done
}

# Install Debian packages that are missing; services they ship are not started (policy-rc.d = 101).
ensure_debs() {
    local missing
    missing="$(missing_debs "$@" | tr '\n' ' ')"
    if [ -z "${missing// /}" ]; then
        say "system packages present: $*"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing packages ($missing) and no apt-get on this machine"
    say "installing system packages: $missing"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made_policy=1
    fi
    # shellcheck disable=SC2086  # $missing is a list of package names
    if ! { as_root apt-get update -qq &&
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
        [ "$made_policy" -eq 1 ] && as_root rm -f "$policy"
        die "apt-get install failed for: $missing"
    fi
    [ "$made_policy" -eq 1 ] && as_root rm -f "$policy"
    case " $missing " in
        *" orthanc "*) stop_system_orthanc ;;
    esac
}

# Debian's orthanc package ships a service on 4242/8042; tests start their own Orthanc on free ports,
# so a service that our install started is stopped and disabled.
stop_system_orthanc() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now orthanc >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/orthanc ]; then
        as_root /etc/init.d/orthanc stop >/dev/null 2>&1 || true
        as_root update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
    if command -v ss >/dev/null 2>&1 && ss -ltn | grep -qE '[:.](4242|8042)[[:space:]]'; then
        say "note: something still listens on 4242/8042 (a system Orthanc?); tests use free ports anyway"
    fi
}

# Python 3.11+ for the virtual environment.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return
        fi
    done
    die "Python 3.11 or newer not found (set PYTHON=/path/to/python3.11)"
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return
    fi
    local python
    python="$(find_python)"
    say "creating virtual environment .venv ($("$python" --version 2>&1))"
    "$python" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
}

# pip install, quiet; drops pip's warnings about --extra-index-url folders this machine lacks.
pip_install() {
    "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2 || true)
}

installed_version() {
    "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import importlib.metadata as metadata, sys
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    sys.exit(1)
PY
}

ensure_torch() {
    local have
    have="$(installed_version torch || true)"
    if [ "${have%%+*}" = "$TORCH_VERSION" ]; then
        return
    fi
    if compgen -G "$TORCH_WHEEL_DIR/torch-${TORCH_VERSION}+cpu-*.whl" >/dev/null; then
        say "installing torch $TORCH_VERSION (CPU) from $TORCH_WHEEL_DIR …"
        pip_install --find-links "$TORCH_WHEEL_DIR" "torch==${TORCH_VERSION}"
    else
        say "installing torch $TORCH_VERSION (CPU) from $TORCH_CPU_INDEX …"
        pip_install --index-url "$TORCH_CPU_INDEX" \
            --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
    fi
    say "torch $(installed_version torch) installed"
}

# pip install -e ".[extras]" unless it was done for this very pyproject.toml (stamp in .venv).
ensure_project() {
    local extras="$1" spec="." stamp want candidate candidates
    [ -n "$extras" ] && spec=".[$extras]"
    stamp="$VENV/.radnode-installed${extras:+-$extras}"
    candidates=("$stamp")
    [ -z "$extras" ] && candidates+=("$VENV/.radnode-installed-test")  # ".[test]" includes "."
    want="$(sha256sum "$RADNODE_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if installed_version radnode >/dev/null; then
        for candidate in "${candidates[@]}"; do
            [ "$(cat "$candidate" 2>/dev/null)" = "$want" ] && return
        done
    fi
    say "installing radnode ($spec, editable) …"
    # torch stays the build ensure_torch (or the admin) put there: a dependency that asks for a
    # newer torch (nnunetv2 → torchvision) must pick its release for this torch, not pull a CUDA build
    printf 'torch==%s\n' "$(installed_version torch)" > "$VENV/torch-constraint.txt"
    (cd "$RADNODE_ROOT" && pip_install -c "$VENV/torch-constraint.txt" -e "$spec")
    printf '%s\n' "$want" > "$stamp"
}

# tests/test_viewer.py opens results in the OHIF viewer: playwright-core (`npm ci` in tests/viewer,
# no browser download: it drives the Debian chromium) and the built @ohif/app, fetched by
# `npm pack` and checked against the integrity pinned in tests/viewer/package.json. Without npm the
# test skips (as tests/test_dcmjs.py does), so this only says so.
ensure_viewer() {
    if ! command -v npm >/dev/null 2>&1; then
        say "note: npm not found: tests/test_viewer.py and tests/test_dcmjs.py will skip (Debian: nodejs npm)"
        return
    fi
    (cd "$RADNODE_ROOT" && "$VENV/bin/python" -m tests.ohif_viewer install) ||
        die "installing tests/viewer (playwright-core, OHIF) failed"
}
