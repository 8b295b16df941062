"""Between the source grid and the model's: axes, intensity normalisation and resampling, in one place.

A model sees the volume laid along its ``input.orientation`` (when it names one: RAS for MONAI
bundles, see :mod:`inference.orientation`), normalised as its ``input.normalization`` says and
resampled to its ``input.spacing_mm`` (trilinear, like nnU-Net's and MONAI's image resampling); its
label map goes back by nearest neighbour and the inverse axis map to the exact source grid, so every
mask voxel is one source voxel and SEG frames line up with the source slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from inference.model_config import InputSpec, Normalization
from inference.orientation import AxisMap, axis_map
from inference.volume import Volume

__all__ = [
    "labels_to_volume",
    "model_input",
    "normalize",
    "probability_to_source_grid",
    "probability_to_volume",
    "resampled_shape",
    "to_source_grid",
]


def normalize(voxels: torch.Tensor, spec: Normalization) -> torch.Tensor:
    """``voxels`` (HU for CT) → the intensities the model was trained on (float32)."""
    voxels = voxels.to(torch.float32)
    if spec.kind == "window":
        assert spec.low is not None and spec.high is not None  # Normalization validates window
        return (voxels.clamp(spec.low, spec.high) - spec.low) / (spec.high - spec.low)
    if spec.kind == "zscore":
        if spec.nonzero:
            inside = voxels != 0
            if not bool(inside.any()):
                return voxels
            values = voxels[inside]
            return torch.where(inside, (voxels - values.mean()) / values.std().clamp(min=1e-8), voxels)
        return (voxels - voxels.mean()) / voxels.std().clamp(min=1e-8)
    if spec.kind == "fixed":
        assert spec.mean is not None and spec.std is not None  # Normalization validates fixed
        if spec.low is not None or spec.high is not None:
            voxels = voxels.clamp(spec.low, spec.high)
        return (voxels - spec.mean) / spec.std
    return voxels


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target: Sequence[float]) -> tuple[int, ...]:
    """Grid size covering the same extent at ``target`` spacing (at least one voxel per axis)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def model_input(volume: Volume, spec: InputSpec, device: torch.device,
                extra: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The network's input (channels, z, y, x) on ``device``: on the model's axes, normalised, then
    resampled to ``spec.spacing_mm``.

    ``extra`` are further channels on ``volume``'s grid (other series of the study, registered to it
    by :func:`inference.registration.onto_grid`), in the model's channel order after ``volume``; each
    channel is normalised on its own, as multi-sequence MR models are trained. The caller checks that
    they are as many as ``spec.channels``.
    """
    axes = _axes(volume, spec)
    channels = []
    for voxels in (volume.voxels, *extra):
        voxels = axes.to_model(voxels) if axes else voxels
        channels.append(normalize(voxels.to(device), spec.normalization))
    image = torch.stack(channels)
    spacing = axes.spacing(volume.spacing) if axes else volume.spacing
    if spec.spacing_mm is None:
        return image
    size = resampled_shape(image.shape[1:], spacing, spec.spacing_mm)
    if size == tuple(image.shape[1:]):
        return image
    return F.interpolate(image[None], size=size, mode="trilinear", align_corners=False)[0]


def labels_to_volume(labels: torch.Tensor, volume: Volume, spec: InputSpec) -> torch.Tensor:
    """The inverse of :func:`model_input` for a label map: back to ``volume``'s exact grid and axes."""
    axes = _axes(volume, spec)
    labels = to_source_grid(labels, _model_axes_shape(volume, axes))
    return axes.to_volume(labels) if axes else labels


def probability_to_volume(probability: torch.Tensor, volume: Volume, spec: InputSpec) -> torch.Tensor:
    """The inverse of :func:`model_input` for one class's probability map (trilinear, in [0, 1])."""
    axes = _axes(volume, spec)
    probability = probability_to_source_grid(probability, _model_axes_shape(volume, axes))
    return axes.to_volume(probability) if axes else probability


def _axes(volume: Volume, spec: InputSpec) -> AxisMap | None:
    return axis_map(volume.affine, spec.orientation) if spec.orientation else None


def _model_axes_shape(volume: Volume, axes: AxisMap | None) -> tuple[int, ...]:
    return tuple(volume.shape[axis] for axis in axes.order) if axes else volume.shape


def to_source_grid(labels: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A label map (z, y, x) on the model's grid → the source grid ``shape``, by nearest neighbour.

    ``nearest-exact`` samples at voxel centres, the same convention as the trilinear resampling in
    :func:`model_input` (``align_corners=False``), so the two grids map onto each other exactly.
    """
    if tuple(labels.shape) == tuple(shape):
        return labels
    resized = F.interpolate(labels[None, None].to(torch.float32), size=tuple(shape), mode="nearest-exact")
    return resized[0, 0].to(labels.dtype)


def probability_to_source_grid(probability: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A probability map (z, y, x) on the model's grid → the source grid ``shape``, trilinear, in [0, 1]."""
    if tuple(probability.shape) == tuple(shape):
        return probability
    resized = F.interpolate(probability[None, None].to(torch.float32), size=tuple(shape), mode="trilinear",
                            align_corners=False)
    return resized[0, 0].clamp_(0.0, 1.0)
