"""Every preset in config/presets is a complete configuration file: ``radnode config check`` says ok.

Generic over the folder: a preset added there is checked without a change here. What each preset's
model does is tested beside the model (tests/test_cxr_presets.py, …).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node_process import radnode_cli

PRESETS = sorted((Path(__file__).resolve().parent.parent / "config" / "presets").glob("*.yaml"))


def test_there_are_presets() -> None:
    assert PRESETS, "config/presets holds no *.yaml"


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_preset_passes_config_check(preset: Path) -> None:
    result = radnode_cli("config", "check", str(preset))
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
