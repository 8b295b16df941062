"""ONNX files: run as they are by ONNX Runtime or TensorRT; the torch backend cannot run them."""

from __future__ import annotations

import onnx

from inference.errors import ModelFormatError
from inference.formats.base import ModelSource
from inference.model_config import ModelConfig

__all__ = ["open_source"]

_AXES = {5: "(batch, channel, slice, row, column)", 4: "(batch, channel, row, column)"}
"""Input axes: a segmentation network's 3-D patches, a radiograph network's 2-D images."""


def open_source(name: str, config: ModelConfig, sha256: str) -> ModelSource:
    """Check the file is a valid ONNX graph with one input of its task's rank: a broken file fails at load."""
    path = config.file
    try:
        onnx.checker.check_model(str(path))  # the path form also checks external data files
        graph = onnx.load(str(path), load_external_data=False).graph
    except (onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"model {name!r}: {path} is not a valid ONNX model (models.{name}.format is onnx): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    spec = config.network_input
    assert spec is not None  # ModelConfig requires input (or image) for ONNX
    rank = len(spec.batch_shape(1))
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != rank:
        shapes = [len(value.type.tensor_type.shape.dim) for value in inputs]
        raise ModelFormatError(
            f"model {name!r}: {path} must take one {rank}-D input {_AXES[rank]} (a {config.task} "
            f"model); it takes {len(inputs)} input(s) of rank {shapes}"
        )
    return ModelSource(
        name=name,
        sha256=sha256,
        input=spec,
        labels=dict(config.labels),
        task=config.task,
        build_module=None,
        onnx_path=path,
    )
