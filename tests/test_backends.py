"""Backends behind one interface: agreement between them, the ``auto`` choice, and visible fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from inference.backends import open_backend
from inference.backends.export import ONNX_OPSET, onnx_for
from inference.errors import BackendUnavailable
from inference.formats import open_model
from inference.formats.base import ModelSource
from inference.model_config import InputSpec
from tests.tiny_models import CT_WINDOW, LABELS, model_config, save_torchscript, tiny_segmenter

CPU = torch.device("cpu")
SPEC = InputSpec(patch_size=(8, 16, 16), normalization=CT_WINDOW, batch_size=2)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this host)")


@pytest.fixture
def source(tmp_path: Path) -> ModelSource:
    """A small random TorchScript segmentation network, opened as the registry opens it."""
    path = save_torchscript(tiny_segmenter(seed=4), tmp_path / "tiny.ts")
    return open_model("tiny", model_config(path, input=SPEC))


def _batch(seed: int = 5, n: int = 2) -> torch.Tensor:
    return torch.rand((n, 1, *SPEC.patch_size), generator=torch.Generator().manual_seed(seed))


def test_torch_and_onnxruntime_logits_agree(source: ModelSource, tmp_path: Path) -> None:
    torch_backend = open_backend(source, "torch", CPU, "fp32", tmp_path)
    ort_backend = open_backend(source, "onnxruntime", CPU, "fp32", tmp_path)

    batch = _batch()
    torch.testing.assert_close(ort_backend(batch), torch_backend(batch), rtol=1e-4, atol=1e-5)
    assert ort_backend(_batch(n=1)).shape == (1, 3, *SPEC.patch_size)  # the batch axis is dynamic


def test_onnx_export_is_cached_by_model_sha256_and_opset(source: ModelSource, tmp_path: Path) -> None:
    path = onnx_for(source, tmp_path)
    written = path.stat().st_mtime_ns

    assert path == tmp_path / "onnx" / f"{source.sha256}-opset{ONNX_OPSET}.onnx"
    assert onnx_for(source, tmp_path).stat().st_mtime_ns == written  # reused, not exported again
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape
    dims = [d.dim_param or d.dim_value for d in shape.dim]
    assert dims == ["batch", 1, "slice", "row", "column"]


def test_explicit_tensorrt_without_cuda_names_the_reason(source: ModelSource, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="TensorRT needs a CUDA device"):
        open_backend(source, "tensorrt", CPU, "fp16", tmp_path)


def test_torch_cannot_run_an_onnx_file(tmp_path: Path, source: ModelSource) -> None:
    onnx_path = onnx_for(source, tmp_path)
    onnx_source = open_model("tiny-onnx", model_config(onnx_path, "onnx", input=SPEC))

    with pytest.raises(BackendUnavailable, match="ONNX file, which the torch backend cannot run"):
        open_backend(onnx_source, "torch", CPU, "fp32", tmp_path)


def test_auto_on_a_cpu_host_takes_onnxruntime_and_says_why(
    source: ModelSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="radnode.inference")

    backend = open_backend(source, "auto", CPU, "fp16", tmp_path)

    assert backend.name == "onnxruntime"
    assert "tensorrt skipped: no CUDA device" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _onnx_failing_at_run_time(path: Path) -> Path:
    """A valid ONNX graph that reshapes every input to a fixed (1, 3, 4, 4, 4): ORT loads it, then fails."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [5], [1, 3, 4, 4, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["logits"])], "fixed_reshape",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "slice", "row", "column"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4, 4])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_auto_falls_back_to_torch_with_a_warning_when_onnxruntime_fails_the_probe(
    source: ModelSource, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = ModelSource(name="tiny", sha256=source.sha256, input=SPEC, labels=LABELS,
                         build_module=source.build_module,
                         onnx_path=_onnx_failing_at_run_time(tmp_path / "broken.onnx"))
    caplog.set_level(logging.INFO, logger="radnode.inference")

    backend = open_backend(broken, "auto", CPU, "fp32", tmp_path)

    assert backend.name == "torch"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "backend onnxruntime failed, falling back" in warning.getMessage()
    assert "onnxruntime failed on a batch of shape (1, 1, 8, 16, 16)" in warning.getMessage()


def test_explicit_onnxruntime_that_fails_the_probe_is_an_error_not_a_fallback(
    source: ModelSource, tmp_path: Path
) -> None:
    broken = ModelSource(name="tiny", sha256=source.sha256, input=SPEC, labels=LABELS,
                         build_module=source.build_module,
                         onnx_path=_onnx_failing_at_run_time(tmp_path / "broken.onnx"))

    with pytest.raises(BackendUnavailable, match="onnxruntime failed on a batch"):
        open_backend(broken, "onnxruntime", CPU, "fp32", tmp_path)


def test_a_network_with_too_few_outputs_for_its_labels_fails_the_probe(tmp_path: Path) -> None:
    path = save_torchscript(tiny_segmenter(classes=2), tmp_path / "two.ts")  # labels go up to 2
    two_classes = open_model("two", model_config(path, input=SPEC))

    with pytest.raises(BackendUnavailable, match=r"logits of shape \(1, 2, 8, 16, 16\).*K >= 3"):
        open_backend(two_classes, "torch", CPU, "fp32", tmp_path)


def test_torch_compile_of_a_torchscript_model_is_refused_with_the_fix(source: ModelSource,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="set torch_compile: false"):
        open_backend(source, "torch", CPU, "fp32", tmp_path, torch_compile=True)


@needs_cuda
def test_cuda_fp16_autocast_agrees_with_fp32(source: ModelSource, tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    fp32 = open_backend(source, "torch", cuda, "fp32", tmp_path)
    fp16 = open_backend(source, "torch", cuda, "fp16", tmp_path)

    batch = _batch()
    assert "fp16 autocast" in fp16.describe()
    torch.testing.assert_close(fp16(batch), fp32(batch), rtol=1e-2, atol=1e-2)


@needs_cuda
def test_tensorrt_fp16_engine_is_built_once_and_reused_after_a_restart(
    source: ModelSource, tmp_path: Path
) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'radnode[tensorrt]')")
    cuda = torch.device("cuda")
    first = open_backend(source, "tensorrt", cuda, "fp16", tmp_path)
    engines = sorted((tmp_path / "tensorrt").glob("*.engine"))
    second = open_backend(source, "tensorrt", cuda, "fp16", tmp_path)  # as a restarted worker would

    assert (first.built, second.built) == (True, False)
    assert sorted((tmp_path / "tensorrt").glob("*.engine")) == engines and len(engines) == 1
    reference = open_backend(source, "torch", cuda, "fp32", tmp_path)
    batch = _batch()
    torch.testing.assert_close(second(batch), reference(batch), rtol=1e-2, atol=1e-2)
