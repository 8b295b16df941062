"""Radiographs → the (N, C, rows, columns) batch a 2-D network takes, as its ``image`` spec says.

One place for what every radiograph network needs (classifier and report generator alike): fit
the displayed image (:class:`inference.xray.Radiograph`, [0, 1], 1 = white) into the network's
size — letterboxed (aspect kept, black padding centred) or stretched — with an antialiased
bilinear resize (what PIL's resize, used to train on PNGs, does when it shrinks), then repeat it
into the channels and normalise each by its mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from inference.model_config import ImageInputSpec
from inference.xray import Radiograph

__all__ = ["network_input"]


def network_input(images: Sequence[Radiograph], spec: ImageInputSpec, device: torch.device) -> torch.Tensor:
    """float32 (len(images), spec.channels, *spec.size) on ``device``."""
    return torch.cat([_one(image, spec, device) for image in images])


def _one(image: Radiograph, spec: ImageInputSpec, device: torch.device) -> torch.Tensor:
    pixels = torch.from_numpy(image.pixels).to(device, torch.float32)[None, None]
    rows, columns = spec.size
    if spec.resize == "stretch":
        fitted = _resize(pixels, rows, columns)
    else:
        scale = min(rows / pixels.shape[2], columns / pixels.shape[3])
        height = max(1, min(rows, round(pixels.shape[2] * scale)))
        width = max(1, min(columns, round(pixels.shape[3] * scale)))
        top, left = (rows - height) // 2, (columns - width) // 2
        padding = (left, columns - width - left, top, rows - height - top)
        fitted = F.pad(_resize(pixels, height, width), padding)
    assert spec.mean is not None and spec.std is not None  # ImageInputSpec fills or requires them
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (fitted.expand(1, spec.channels, rows, columns) - mean) / std


def _resize(pixels: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    if tuple(pixels.shape[2:]) == (rows, columns):
        return pixels
    return F.interpolate(pixels, size=(rows, columns), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)
