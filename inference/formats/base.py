"""What a model file or folder yields once opened: a network, its input spec and its classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference.model_config import ImageInputSpec, InputSpec, LabelSpec, Task

__all__ = ["ModelSource"]


@dataclass(frozen=True)
class ModelSource:
    """One opened model, independent of the backend that will run it.

    ``build_module`` returns the eval-mode network on the CPU (None for a plain ONNX file);
    ``onnx_path`` is the ONNX form when the file is one (backends that need ONNX export the module
    into their cache otherwise). ``class_names`` are the names the model itself gives its outputs
    (nnU-Net's dataset.json, a bundle's metadata), ``labels`` the coded classes from the YAML.
    ``input`` is a segmentation network's 3-D patch, or a radiograph network's 2-D image.
    """

    name: str
    sha256: str
    input: InputSpec | ImageInputSpec
    labels: dict[int, LabelSpec]
    build_module: Callable[[], torch.nn.Module] | None
    onnx_path: Path | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    task: Task = Task.SEGMENTATION  # what the output means, for the backends' probe
