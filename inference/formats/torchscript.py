"""TorchScript files (``torch.jit.save``): the network and its code in one file, no Python class needed.

torch 2.13 deprecates TorchScript in favour of ``torch.export``, but it is still how most
published segmentation models ship, so radnode loads it and silences that one warning here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from inference.errors import ModelFormatError
from inference.formats.base import ModelSource
from inference.model_config import ModelConfig

__all__ = ["open_source"]


def open_source(name: str, config: ModelConfig, sha256: str) -> ModelSource:
    """Load the file once to prove it is TorchScript; backends get a fresh copy each."""
    _load(name, config.file)
    spec = config.network_input
    assert spec is not None  # ModelConfig requires input (or image) for TorchScript
    return ModelSource(
        name=name,
        sha256=sha256,
        input=spec,
        labels=dict(config.labels),
        task=config.task,
        build_module=lambda: _load(name, config.file),
    )


def _load(name: str, path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelFormatError(
            f"model {name!r}: {path} is not a TorchScript file (models.{name}.format is "
            f"torchscript): {str(exc).splitlines()[0]}"
        ) from exc
    return module.eval()
