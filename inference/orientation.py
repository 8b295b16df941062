"""The one place where a model's patient-axis convention (RAS, LPS, …) meets the Volume's axes.

A :class:`~inference.volume.Volume` is stored as the series lies, (slice, row, column), with an
affine into DICOM's LPS patient space. A model may expect other array axes: a MONAI bundle works
in RAS with array axes (x, y, z) (``input.orientation = "RAS"``), an nnU-Net model read with
``NibabelIOWithReorient`` in (S, A, R). :func:`axis_map` finds the flips and the permutation that
turn the volume into that order (the closest one, without interpolation, as nibabel's
``io_orientation`` and MONAI's ``Orientationd`` do), and :class:`AxisMap` applies it to the model's
input and undoes it on the model's label map, so every mask voxel is still one source voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AxisMap", "axis_map"]

# the direction toward which each LPS patient axis grows, and the opposite one
_POSITIVE = "LPS"
_NEGATIVE = "RAI"


@dataclass(frozen=True)
class AxisMap:
    """Model axis *k* is volume axis ``order[k]``, reversed where ``flip[k]``."""

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """Voxel size along the model's axes."""
        return (float(spacing[self.order[0]]), float(spacing[self.order[1]]), float(spacing[self.order[2]]))

    def to_model(self, voxels: torch.Tensor) -> torch.Tensor:
        """(z, y, x) on the volume's axes → the same voxels on the model's axes."""
        turned = voxels.permute(self.order)
        flipped = [axis for axis in range(3) if self.flip[axis]]
        return turned.flip(flipped) if flipped else turned

    def to_volume(self, labels: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_model`, for the label map (or any grid on the model's axes)."""
        flipped = [axis for axis in range(3) if self.flip[axis]]
        labels = labels.flip(flipped) if flipped else labels
        return labels.permute(tuple(int(i) for i in np.argsort(self.order)))

    def box_to_volume(self, start: Sequence[float], stop: Sequence[float], shape: Sequence[int]
                      ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The inverse of :meth:`to_model` for a box [start, stop) on a model-axes grid of ``shape``,
        in voxel-edge coordinates (voxel i spans [i, i + 1)): its (start, stop) on the volume's axes."""
        low, high = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        for k, (axis, flip) in enumerate(zip(self.order, self.flip, strict=True)):
            low[axis], high[axis] = ((shape[k] - stop[k], shape[k] - start[k]) if flip
                                     else (start[k], stop[k]))
        return (low[0], low[1], low[2]), (high[0], high[1], high[2])


def axis_map(affine: np.ndarray, orientation: str) -> AxisMap:
    """How to lay a volume with ``affine`` ((slice, row, col, 1) → LPS mm) along ``orientation``.

    Each volume axis is assigned the patient axis it is closest to (the largest direction cosine,
    the strongest first, so an oblique series still gets three distinct axes); ``orientation``
    names, per model axis, the direction it must grow toward (``"RAS"``: x toward Right …).
    """
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    patient_axis = [-1, -1, -1]  # per volume axis
    remaining = np.abs(directions.copy())
    for _ in range(3):
        row, column = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        patient_axis[column] = int(row)
        remaining[row, :] = -1
        remaining[:, column] = -1
    order: list[int] = []
    flip: list[bool] = []
    for letter in orientation.upper():
        wanted = _POSITIVE.index(letter) if letter in _POSITIVE else _NEGATIVE.index(letter)
        volume_axis = patient_axis.index(wanted)
        grows_positive = directions[wanted, volume_axis] > 0
        order.append(volume_axis)
        flip.append(grows_positive != (letter in _POSITIVE))
    return AxisMap((order[0], order[1], order[2]), (flip[0], flip[1], flip[2]))
