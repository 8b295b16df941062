"""The systemd units install as they are and pass `systemd-analyze verify`.

verify runs against a throw-away root: the host's own unit files (for sysinit.target and the
like), radnode's units put there by `radnode install-units`, and an executable at the path the
units name. systemd-analyze exits 0 even on unknown keys or bad values, printing them as
warnings, so the test also requires an empty stderr; the last test proves that such a warning is
caught.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from node.ops.cli import SYSTEMD_UNITS_DIR, _build_parser
from tests.node_process import radnode_cli

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HOST_UNITS = Path("/usr/lib/systemd/system")
SERVICES = ["radnode-listener.service", "radnode-worker@.service", "radnode-worker-cpu.service"]
UNITS = [*SERVICES, "radnode.target"]
HARDENING = {
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/radnode",
    "Restart": "on-failure",
    "User": "radnode",
}

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or not HOST_UNITS.is_dir(), reason="systemd-analyze not installed"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's units, radnode's units (installed by the command) and radnode."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    radnode = root / "opt/radnode/.venv/bin/radnode"
    radnode.parent.mkdir(parents=True)
    radnode.write_text("#!/bin/sh\n")
    radnode.chmod(0o755)
    done = radnode_cli("install-units", "--dest", str(root / "etc/systemd/system"), "--no-reload")
    assert done.returncode == 0, done.stderr
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", *units],
        capture_output=True, text=True, timeout=120, check=False,
    )


def _service(unit: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD_UNITS_DIR / unit)
    return parser["Service"]


def test_install_units_puts_every_unit_in_place_unchanged(root: Path) -> None:
    for unit in UNITS:
        installed = root / "etc/systemd/system" / unit
        assert installed.read_bytes() == (SYSTEMD_UNITS_DIR / unit).read_bytes()


def test_every_unit_passes_systemd_analyze_verify_without_a_warning(root: Path) -> None:
    done = _verify(root, "radnode-listener.service", "radnode-worker@0.service",
                   "radnode-worker@1.service", "radnode-worker-cpu.service", "radnode.target")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


@pytest.mark.parametrize("unit", SERVICES)
def test_services_run_hardened_as_radnode_with_the_etc_config(unit: str) -> None:
    service = _service(unit)
    assert {key: service.get(key) for key in HARDENING} == HARDENING
    assert "--config /etc/radnode/radnode.yaml" in service["ExecStart"]


@pytest.mark.parametrize("unit", SERVICES)
def test_exec_start_is_a_command_line_radnode_accepts(unit: str) -> None:
    argv = shlex.split(_service(unit)["ExecStart"].replace("%i", "1").replace("%H", "host"))
    assert argv[0] == "/opt/radnode/.venv/bin/radnode"
    _build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown option


def test_gpu_worker_instance_is_the_gpu_index() -> None:
    service = _service("radnode-worker@.service")
    assert service["Environment"] == "CUDA_VISIBLE_DEVICES=%i"
    assert "--gpu %i" in service["ExecStart"] and "--hostname gpu%i@%H" in service["ExecStart"]
    cpu = _service("radnode-worker-cpu.service")
    assert cpu["Environment"] == "CUDA_VISIBLE_DEVICES=" and "--cpu" in cpu["ExecStart"]


def test_verify_reports_a_misspelt_key_so_the_check_above_means_something(root: Path) -> None:
    broken = root / "etc/systemd/system/radnode-broken.service"
    text = (SYSTEMD_UNITS_DIR / "radnode-listener.service").read_text()
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystm=strict"))
    try:
        done = _verify(root, "radnode-broken.service")
    finally:
        broken.unlink()
    assert "Unknown key 'ProtectSystm'" in done.stderr
