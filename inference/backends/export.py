"""The ONNX form of a torch model, exported once into the backend cache (ONNX Runtime and TensorRT read it).

torch 2.13 offers two exporters: the torch.export-based one (``dynamo=True``, the default) rejects
TorchScript modules, which is the format models most often ship in, so radnode uses the
TorchScript-based exporter (``dynamo=False``) for every module: one path, and it keeps the batch
and spatial axes dynamic through ``dynamic_axes``. Its deprecation warnings are silenced here
alone; when torch removes it, this is the one function to change.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from inference.errors import BackendUnavailable
from inference.formats.base import ModelSource
from inference.model_config import InputSpec

__all__ = ["INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "onnx_for"]

ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_DYNAMIC_AXES = {0: "batch", 2: "slice", 3: "row", 4: "column"}
_EXPORTER_NOISE = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "no signature found for",
)


def onnx_for(source: ModelSource, cache_dir: Path) -> Path:
    """The model's ONNX file: its own when it is one, else exported into ``cache_dir/onnx``.

    The cache file is named by the model's SHA-256 and the opset, so a changed model or exporter
    setting never reuses a stale export; it is written under a temporary name and renamed, so
    two workers exporting at once never read half a file.
    """
    if source.onnx_path is not None:
        return source.onnx_path
    if source.build_module is None:
        raise BackendUnavailable(f"model {source.name!r} has neither an ONNX file nor a torch network")
    path = cache_dir / "onnx" / f"{source.sha256}-opset{ONNX_OPSET}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    example = torch.zeros(source.input.batch_shape(1), dtype=torch.float32)
    # a radiograph network takes images of one size and gives one value per output: only the batch varies
    axes_in, axes_out = (_DYNAMIC_AXES, _DYNAMIC_AXES) if isinstance(source.input, InputSpec) else \
        ({0: "batch"}, {0: "batch"})
    try:
        with warnings.catch_warnings():
            for message in _EXPORTER_NOISE:
                warnings.filterwarnings("ignore", message=message)
            # tracing an eval-mode network warns about data-dependent branches (InstanceNorm's
            # shape checks) that are constant for every patch; the export is still exact
            # torch.jit exports TracerWarning (its documented name) but leaves it out of __all__
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
            torch.onnx.export(
                source.build_module(), (example,), str(partial), dynamo=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                dynamic_axes={INPUT_NAME: axes_in, OUTPUT_NAME: axes_out},
            )
    except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as exc:
        partial.unlink(missing_ok=True)
        raise BackendUnavailable(
            f"model {source.name!r} cannot be exported to ONNX (opset {ONNX_OPSET}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    os.replace(partial, path)
    return path
