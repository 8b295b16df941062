"""Small 3-D detection and regression networks saved as real model files, for the tests.

``BrightBox`` is a hand-built detector whose answer is known: the box of every input voxel above 0.5,
so that a test can say where on the source the box must come back. ``tiny_regressor`` is a real
3-D CNN with seeded random weights (conv → ReLU → global average → linear), as SFCN is in small.
"""

from __future__ import annotations

from pathlib import Path

import torch

from inference.formats import model_sha256
from inference.model_config import InputSpec, ModelConfig, Normalization
from tests.tiny_models import CT_WINDOW

__all__ = [
    "BRIGHT_SCORE",
    "NODULE_FINDING",
    "YEARS_VALUE",
    "BrightBox",
    "detector_config",
    "regressor_config",
    "tiny_regressor",
]

BRIGHT_SCORE = 0.875
NODULE_FINDING = {"name": "Nodule", "code": "SCT:27925004", "meaning": "Nodule", "threshold": 0.5,
                  "site": "SCT:39607008", "site_meaning": "Lung"}
YEARS_VALUE = {"name": "Brain age", "code": "99RADNODE:BRAINAGE", "meaning": "Brain age", "unit": "a",
               "unit_meaning": "year", "finding": "SCT:12738006", "finding_meaning": "Brain",
               "scale": 10.0, "offset": 50.0}


class BrightBox(torch.nn.Module):
    """(1, 1, z, y, x) → two candidate rows: the box of the voxels above 0.5 with score
    :data:`BRIGHT_SCORE`, and the same box scoring 0.25 (below the threshold: dropped), class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.score = BRIGHT_SCORE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        bright = image[0, 0] > 0.5
        if not bool(bright.any()):
            return torch.zeros((0, 8))
        starts: list[float] = []
        stops: list[float] = []
        # per axis (the other two reduced, the later first): a CT's bright voxels are millions
        for first, second in ((1, 2), (0, 2), (0, 1)):
            present = torch.nonzero(bright.any(second).any(first)).flatten()
            starts.append(float(present[0]))
            stops.append(float(present[-1]) + 1.0)
        low, high = torch.tensor(starts), torch.tensor(stops)
        kept = torch.tensor([self.score, 0.0])
        dropped = torch.tensor([0.25, 0.0])
        return torch.stack([torch.cat([low, high, kept]), torch.cat([low, high, dropped])])


def tiny_regressor(seed: int = 0) -> torch.nn.Module:
    """conv 3×3×3 → ReLU → global average → linear to one number, seeded random weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 1),
    ).eval()


def detector_config(path: Path, **changes: object) -> ModelConfig:
    """A detection ModelConfig for ``path`` (pinned): the CT window, the whole chest CT in its patch."""
    fields: dict[str, object] = {
        "file": path, "format": "torchscript", "sha256": model_sha256(path), "backend": "torch",
        "task": "detection", "outputs": "probabilities", "findings": {0: NODULE_FINDING},
        "input": InputSpec(patch_size=(80, 512, 512), normalization=CT_WINDOW),
    }
    fields.update(changes)
    return ModelConfig.model_validate(fields)


def regressor_config(path: Path, **changes: object) -> ModelConfig:
    """A regression ModelConfig for ``path`` (pinned): z-scored, 2 mm voxels, one value in years."""
    fields: dict[str, object] = {
        "file": path, "format": "torchscript", "sha256": model_sha256(path), "backend": "torch",
        "task": "regression", "values": {0: YEARS_VALUE},
        "input": InputSpec(patch_size=(32, 64, 64), spacing_mm=(4.0, 4.0, 4.0),
                           normalization=Normalization(kind="zscore")),
    }
    fields.update(changes)
    return ModelConfig.model_validate(fields)
