"""Several series of one study on one grid: what a multi-sequence model (T1, T1c, T2, FLAIR) needs.

Series of one MR session share a frame of reference (the scanner's patient coordinates), so a
voxel of one series is found in another through their affines alone: no intensity-based
registration, and nothing a patient moving between sequences would be corrected for. Series in
different frames of reference (another session, another scanner) are refused rather than
silently misaligned.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from inference.errors import VolumeError
from inference.volume import Volume

__all__ = ["RegistrationError", "onto_grid"]


class RegistrationError(VolumeError):
    """Two series cannot be put on one grid by their geometry alone."""


def onto_grid(moving: Volume, reference: Volume) -> torch.Tensor:
    """``moving``'s voxels resampled (trilinear) onto ``reference``'s grid, zero outside ``moving``.

    Returns a float32 tensor of ``reference.shape``. Raises RegistrationError when the two series
    do not share a frame of reference.
    """
    if moving.frame_of_reference_uid != reference.frame_of_reference_uid:
        raise RegistrationError(
            f"series {moving.series_instance_uid} (frame of reference {moving.frame_of_reference_uid}) and "
            f"series {reference.series_instance_uid} (frame of reference {reference.frame_of_reference_uid}) "
            "were not acquired in one patient coordinate system; radnode aligns series of one session "
            "only (no image registration)"
        )
    if moving.shape == reference.shape and np.allclose(moving.affine, reference.affine, atol=1e-3):
        return moving.voxels.to(torch.float32)
    # reference (slice, row, col) index → moving index, then both to grid_sample's [-1, 1] (x = col)
    index_map = np.linalg.inv(moving.affine) @ reference.affine
    theta = _to_normalized(moving.shape) @ index_map @ np.linalg.inv(_to_normalized(reference.shape))
    # grid_sample orders coordinates (x, y, z) = (col, row, slice): reverse the index axes
    flip = np.eye(4)[[2, 1, 0, 3]]
    theta = flip @ theta @ flip
    grid = F.affine_grid(torch.as_tensor(theta[:3], dtype=torch.float32)[None],
                         [1, 1, *reference.shape], align_corners=True)
    image = moving.voxels.to(torch.float32)[None, None]
    return F.grid_sample(image, grid.to(image.device), mode="bilinear", padding_mode="zeros",
                         align_corners=True)[0, 0]


def _to_normalized(shape: tuple[int, int, int]) -> np.ndarray:
    """(slice, row, col, 1) index → grid_sample's [-1, 1] per axis (align_corners: centres of the ends)."""
    matrix = np.eye(4)
    for axis, size in enumerate(shape):
        scale = 2.0 / max(size - 1, 1)
        matrix[axis, axis] = scale
        matrix[axis, 3] = -1.0
    return matrix
