"""Between the source grid and the model's: axes, intensity normalisation and resampling, in one place.

A model sees the volume laid along its ``input.orientation`` (when it names one: RAS for MONAI
bundles, see :mod:`inference.orientation`), normalised as its ``input.normalization`` says and
resampled to its ``input.spacing_mm`` (trilinear, like nnU-Net's and MONAI's image resampling); its
label map goes back by nearest neighbour and the inverse axis map to the exact source grid, so every
mask voxel is one source voxel and SEG frames line up with the source slices. A network of one fixed
input size (a detector, a regressor) sees the whole volume so prepared, centred in ``input.patch_size``
(cropped or zero-padded, as SFCN's brain-age preprocessing crops): :func:`fitted_input`, whose boxes
:meth:`FittedInput.box_to_volume` maps back onto the source grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inference.model_config import InputSpec, Normalization
from inference.orientation import AxisMap, axis_map
from inference.volume import Volume

__all__ = [
    "FittedInput",
    "fitted_input",
    "image_to_volume",
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
    if spec.kind == "mean":
        return voxels / voxels.mean().clamp(min=1e-8)
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


@dataclass(frozen=True)
class FittedInput:
    """A volume as a fixed-size network sees it, and the way back to the source grid.

    ``image`` is (channels, *patch_size); its voxel 0 is voxel ``offset`` of the volume resampled on
    the model's axes (``resampled_shape``; negative where padded); ``source_shape`` is the volume on
    the model's axes at its own spacing, which ``axes`` turn back into the volume's.
    """

    image: torch.Tensor
    offset: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    source_shape: tuple[int, ...]
    axes: AxisMap | None

    def box_to_volume(self, start: Sequence[float], stop: Sequence[float]
                      ) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """A box [start, stop) in the network input's voxel-edge coordinates → the same box on the
        source grid (slice, row, column), clipped to it; None when nothing of it is on the volume."""
        low, high = [], []
        for k in range(3):
            scale = self.source_shape[k] / self.resampled_shape[k]  # voxel edges map linearly both ways
            low.append(min(max((start[k] + self.offset[k]) * scale, 0.0), float(self.source_shape[k])))
            high.append(min(max((stop[k] + self.offset[k]) * scale, 0.0), float(self.source_shape[k])))
        if any(a >= b for a, b in zip(low, high, strict=True)):
            return None
        if self.axes is not None:
            return self.axes.box_to_volume(low, high, self.source_shape)
        return (low[0], low[1], low[2]), (high[0], high[1], high[2])


def fitted_input(volume: Volume, spec: InputSpec, device: torch.device) -> FittedInput:
    """:func:`model_input` centred in ``spec.patch_size``: cropped where larger, zero-padded where smaller."""
    image = model_input(volume, spec, device)
    resampled = tuple(int(n) for n in image.shape[1:])
    offset = tuple((n - size) // 2 for n, size in zip(resampled, spec.patch_size, strict=True))
    pads: list[int] = []
    for n, size, first in reversed(list(zip(resampled, spec.patch_size, offset, strict=True))):
        pads += [-first, size - n + first]  # F.pad crops where a pad is negative
    axes = _axes(volume, spec)
    return FittedInput(F.pad(image, pads), offset, resampled, _model_axes_shape(volume, axes), axes)


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


def image_to_volume(image: torch.Tensor, volume: Volume, spec: InputSpec) -> torch.Tensor:
    """The inverse of :func:`model_input` for an image the network made (z, y, x): trilinear, values kept."""
    axes = _axes(volume, spec)
    shape = _model_axes_shape(volume, axes)
    image = image if tuple(image.shape) == tuple(shape) else _trilinear(image, shape)
    return axes.to_volume(image) if axes else image


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
    return _trilinear(probability, shape).clamp_(0.0, 1.0)


def _trilinear(values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``values`` (z, y, x) resampled to ``shape`` at voxel centres, as :func:`model_input` resamples."""
    resized = F.interpolate(values[None, None].to(torch.float32), size=tuple(shape), mode="trilinear",
                            align_corners=False)
    return resized[0, 0]
