"""The backend registry: every backend a plugin of its own module, checked and opened on demand,
and a backend registered from outside (here, by the test) taken by ``auto`` in its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference.backends import BACKENDS, BackendPlugin, open_backend
from inference.errors import BackendUnavailable
from inference.formats import open_model
from inference.formats.base import ModelSource
from inference.model_config import InputSpec
from tests.fresh_python import run_fresh
from tests.tiny_models import CT_WINDOW, model_config, save_torchscript, tiny_segmenter

CPU = torch.device("cpu")
SPEC = InputSpec(patch_size=(8, 16, 16), normalization=CT_WINDOW, batch_size=2)


@pytest.fixture
def source(tmp_path: Path) -> ModelSource:
    path = save_torchscript(tiny_segmenter(seed=4), tmp_path / "tiny.ts")
    return open_model("tiny", model_config(path, input=SPEC))


class Eager:
    """A backend of a plugin module that is not radnode's: the network, run as it is."""

    name = "eager"

    def __init__(self, module: torch.nn.Module) -> None:
        self.device = CPU
        self._module = module

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits: torch.Tensor = self._module(batch)
        return logits

    def describe(self) -> str:
        return "eager on cpu"


def _eager(source: ModelSource, device: torch.device, precision: str, cache_dir: Path,
           torch_compile: bool) -> Eager:
    assert source.build_module is not None
    return Eager(source.build_module())


@pytest.fixture
def eager_first() -> Iterator[None]:
    """``eager`` registered best of all, as a plugin of its own module would register it."""
    BACKENDS.register("eager", BackendPlugin(lambda source, device: None, _eager), before="tensorrt")
    yield
    BACKENDS.unregister("eager")


def test_every_backend_is_listed_in_autos_order_and_is_a_plugin() -> None:
    assert BACKENDS.names() == ("tensorrt", "onnxruntime", "torch")
    assert all(isinstance(BACKENDS.get(name), BackendPlugin) for name in BACKENDS.names())


def test_a_backend_that_cannot_run_here_says_why(source: ModelSource, tmp_path: Path) -> None:
    onnx_source = ModelSource(name="tiny-onnx", sha256=source.sha256, input=SPEC, labels=source.labels,
                              build_module=None, onnx_path=tmp_path / "tiny.onnx")

    assert BACKENDS.get("tensorrt").why_unavailable(source, CPU) == "no CUDA device"
    assert BACKENDS.get("torch").why_unavailable(onnx_source, CPU) == \
        "the model is an ONNX file, which torch cannot run"
    assert BACKENDS.get("torch").why_unavailable(source, CPU) is None
    assert BACKENDS.get("onnxruntime").why_unavailable(source, CPU) is None


def test_a_newly_registered_backend_is_taken_by_auto_and_by_name(source: ModelSource, tmp_path: Path,
                                                                 eager_first: None) -> None:
    assert open_backend(source, "auto", CPU, "fp32", tmp_path).name == "eager"
    assert open_backend(source, "eager", CPU, "fp32", tmp_path).name == "eager"


def test_an_unavailable_registered_backend_is_skipped_by_auto_with_its_reason(
    source: ModelSource, tmp_path: Path
) -> None:
    BACKENDS.register("never", BackendPlugin(lambda source, device: "no such hardware", _eager))
    onnx_only = ModelSource(name="tiny-onnx", sha256=source.sha256, input=SPEC, labels=source.labels,
                            build_module=None, onnx_path=tmp_path / "missing.onnx")
    try:
        with pytest.raises(BackendUnavailable, match=r"torch skipped: .*; never skipped: no such hardware$"):
            open_backend(onnx_only, "auto", CPU, "fp32", tmp_path)
    finally:
        BACKENDS.unregister("never")


def test_an_unknown_backend_lists_every_registered_one(source: ModelSource, tmp_path: Path,
                                                       eager_first: None) -> None:
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'cuda'; known: auto, eager, tensorrt, "
                                                 r"onnxruntime, torch$"):
        open_backend(source, "cuda", CPU, "fp32", tmp_path)


def test_the_registry_imports_no_backend_module_nor_optional_package_until_used() -> None:
    script = ("import sys\n"
              "from inference.backends import BACKENDS\n"
              "BACKENDS.names()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'tensorrt')"
              " or m.startswith('inference.backends.') and m != 'inference.backends.base'))")
    done = run_fresh(script)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
