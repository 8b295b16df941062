"""Sliding-window inference: a volume of any size through a network trained on fixed-size patches.

Windows of ``patch_size`` overlap by ``overlap`` of a patch; their logits are blended with a
Gaussian weight (sigma = 1/8 of the patch per axis, largest at the centre) so each voxel is
predicted mostly by the windows that see it with the most context. nnU-Net and MONAI both do this
but place and weigh windows slightly differently, and a model is best run the way it was
validated: ``scheme="monai"`` reproduces ``sliding_window_inference(mode="gaussian",
sigma_scale=0.125)`` (regular steps, the last window flush with the end; weight floored at 1e-3),
``scheme="nnunet"`` nnU-Net v2's predictor (windows spread evenly; the Gaussian truncated at
4 sigma, only its zeros raised to its smallest value). Windows go to the network ``batch_size`` at
a time. A volume smaller than the patch is padded symmetrically, and the
result cropped back, so the logits always lie on the input grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "GAUSSIAN_SIGMA_SCALE",
    "MIN_WEIGHT",
    "Scheme",
    "gaussian_weight",
    "sliding_window",
    "window_starts",
]

Scheme = Literal["monai", "nnunet"]

GAUSSIAN_SIGMA_SCALE = 0.125
"""sigma of the blending Gaussian as a fraction of the patch size along each axis."""
MIN_WEIGHT = 1e-3
"""Floor of the blending weight, so a voxel seen only by window edges is still averaged, not 0/0."""
_NNUNET_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, which nnU-Net's Gaussian uses


def window_starts(size: int, patch: int, overlap: float, scheme: Scheme = "monai") -> list[int]:
    """Start indices along one axis, about every ``patch * (1 - overlap)`` voxels.

    ``monai``: exactly that step, the last window flush with the end; ``nnunet``: as many windows,
    spread evenly from the start to the end.
    """
    if patch >= size:
        return [0]
    if scheme == "nnunet":
        count = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
        return [round((size - patch) / (count - 1) * i) for i in range(count)]
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def gaussian_weight(patch_size: Sequence[int], device: torch.device,
                    scheme: Scheme = "monai") -> torch.Tensor:
    """Separable Gaussian over the patch, 1 at its centre (see the module docstring for the schemes)."""
    weight = torch.ones((), device=device)
    for axis, size in enumerate(patch_size):
        sigma = size * GAUSSIAN_SIGMA_SCALE
        if scheme == "nnunet":  # a delta at size // 2 through scipy's truncated Gaussian filter
            x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
            profile = torch.exp(x**2 / (-2 * sigma**2)) * (x.abs() <= int(_NNUNET_TRUNCATE * sigma + 0.5))
        else:
            x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32, device=device)
            profile = torch.exp(x**2 / (-2 * sigma**2))
        weight = weight.unsqueeze(-1) * profile.view((1,) * axis + (size,))
    if scheme == "nnunet":
        return torch.where(weight > 0, weight, weight[weight > 0].min())
    return weight.clamp(min=max(float(weight.min()), MIN_WEIGHT))


def sliding_window(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                   patch_size: Sequence[int], overlap: float, batch_size: int,
                   device: torch.device, pad_value: float = 0.0, scheme: Scheme = "monai") -> torch.Tensor:
    """Blended logits (K, z, y, x) on ``device`` for ``image`` (C, z, y, x).

    ``predict`` maps a float32 batch (N, C, *patch_size) to logits (N, K, *patch_size), as a
    :class:`~inference.backends.base.Backend` does; the sums are accumulated on ``device``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (channels, slices, rows, columns), got shape {tuple(image.shape)}")
    size = tuple(int(s) for s in image.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    shortfall = [max(p - s, 0) for s, p in zip(size, patch, strict=True)]
    pad = []
    for missing in reversed(shortfall):  # F.pad lists the last axis first
        pad += [missing // 2, missing - missing // 2]
    padded = F.pad(image.to(device, torch.float32), pad, value=pad_value) if any(shortfall) else \
        image.to(device, torch.float32)
    grid = tuple(int(s) for s in padded.shape[1:])
    corners = [(z, y, x) for z in window_starts(grid[0], patch[0], overlap, scheme)
               for y in window_starts(grid[1], patch[1], overlap, scheme)
               for x in window_starts(grid[2], patch[2], overlap, scheme)]
    weight = gaussian_weight(patch, device, scheme)
    total: torch.Tensor | None = None
    weight_sum = torch.zeros(grid, dtype=torch.float32, device=device)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first:first + batch_size]
        windows = [tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in chunk]
        logits = predict(torch.stack([padded[(slice(None), *w)] for w in windows]))
        logits = logits.to(device, torch.float32)
        if total is None:
            total = torch.zeros((logits.shape[1], *grid), dtype=torch.float32, device=device)
        for window, window_logits in zip(windows, logits, strict=True):
            total[(slice(None), *window)] += window_logits * weight
            weight_sum[window] += weight
    assert total is not None  # there is always at least one window
    total /= weight_sum
    crop = tuple(slice(missing // 2, missing // 2 + s) for missing, s in zip(shortfall, size, strict=True))
    return total[(slice(None), *crop)]
