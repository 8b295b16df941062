"""Small random 3-D segmentation networks saved as real model files, for the inference tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from inference.formats import model_sha256
from inference.model_config import InputSpec, LabelSpec, ModelConfig, Normalization

__all__ = ["CT_WINDOW", "LABELS", "model_config", "save_torchscript", "tiny_segmenter"]

#: Two coded classes with their colours, as a YAML ``labels:`` section gives them.
LABELS = {
    1: LabelSpec(name="Lung", code="SCT:39607008", meaning="Lung", colour=(64, 160, 255)),
    2: LabelSpec(name="Soft tissue", code="SCT:87784001", meaning="Soft tissue", colour=(255, 170, 0),
                 category="SCT:85756007", category_meaning="Tissue"),
}
CT_WINDOW = Normalization(kind="window", low=-1000, high=400)


def tiny_segmenter(seed: int = 0, channels: int = 1, classes: int = 3) -> torch.nn.Module:
    """conv 3×3×3 → ReLU → conv 1×1×1 with seeded random weights: a real 3-D network, fast on a CPU."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, classes, 1)
    ).eval()


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    """Script and save ``module`` (torch 2.13 deprecates TorchScript; models still ship in it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def model_config(path: Path, file_format: str = "torchscript", **changes: object) -> ModelConfig:
    """A ModelConfig for ``path`` pinned to its real SHA-256; ``changes`` override any field."""
    fields: dict[str, object] = {
        "file": path,
        "format": file_format,
        "sha256": model_sha256(path),
        "backend": "torch",
        "input": InputSpec(patch_size=(16, 32, 32), normalization=CT_WINDOW, batch_size=2),
        "labels": LABELS,
    }
    fields.update(changes)
    return ModelConfig.model_validate(fields)
