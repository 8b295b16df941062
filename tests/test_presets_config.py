"""Every preset in config/presets is a complete configuration file: ``radnode config check`` says ok.

Generic over the folder: a preset added there is checked without a change here. What each preset's
model does is tested beside the model (tests/test_cxr_presets.py, …).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.errors import ModelChecksumMismatch, ModelFileMissing
from inference.formats import open_model
from node.config import load_config
from tests.node_process import radnode_cli

PRESETS = sorted((Path(__file__).resolve().parent.parent / "config" / "presets").glob("*.yaml"))


def test_there_are_presets() -> None:
    assert PRESETS, "config/presets holds no *.yaml"


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_preset_passes_config_check(preset: Path) -> None:
    result = radnode_cli("config", "check", str(preset))
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_preset_weights_installed_but_not_pinned_are_refused_saying_so(preset: Path, tmp_path: Path) -> None:
    config = load_config(preset)
    for name, model in config.models.items():
        installed = tmp_path / name
        installed.write_bytes(b"the admin's copy of the weights")
        with pytest.raises(ModelChecksumMismatch, match=rf"models\.{name}\.sha256 is still the preset's "
                                                        rf"placeholder.*radnode model hash {installed}"):
            open_model(name, model.model_copy(update={"file": installed}))


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_preset_weights_not_installed_are_named_with_where_they_are_expected(preset: Path,
                                                                            tmp_path: Path) -> None:
    for name, model in load_config(preset).models.items():
        missing = tmp_path / "models" / model.file.name
        with pytest.raises(ModelFileMissing) as raised:
            open_model(name, model.model_copy(update={"file": missing}))
        assert f"model {name!r}: {missing} does not exist" in str(raised.value)
        assert f"models.{name}.file" in str(raised.value)
