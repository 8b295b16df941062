"""inference.orientation against nibabel's own reorientation (the one MONAI's Orientationd uses)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from inference.orientation import axis_map
from inference.volume import load_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TILT = np.array([[np.cos(0.2), -np.sin(0.2), 0.0], [np.sin(0.2), np.cos(0.2), 0.0], [0.0, 0.0, 1.0]])


def _affines() -> list[np.ndarray]:
    """Every assignment of volume axes to patient axes and directions, each slightly oblique."""
    affines = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = TILT @ (np.eye(3)[:, list(order)] * np.array(signs) * np.array([5.0, 0.8, 0.7]))
            affines.append(affine)
    return affines


@pytest.mark.parametrize("code", ["RAS", "SAR", "LPS", "PIL"])
def test_axis_map_lays_voxels_out_as_nibabel_does(code: str) -> None:
    voxels = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5)
    for affine in _affines():
        axes = axis_map(affine, code)
        expected = apply_orientation(voxels.numpy(), ornt_transform(io_orientation(LPS_TO_RAS @ affine),
                                                                    axcodes2ornt(tuple(code))))
        assert np.array_equal(axes.to_model(voxels).numpy(), expected), (affine, code)
        assert torch.equal(axes.to_volume(axes.to_model(voxels)), voxels)


def test_axial_ct_in_ras_runs_columns_right_rows_anterior_slices_up(chest_ct_dir: Path) -> None:
    volume = load_series(sorted(chest_ct_dir.glob("*.dcm")))
    axes = axis_map(volume.affine, "RAS")

    # columns grow toward the patient's left and rows toward posterior (LPS), so both are reversed
    assert axes.order == (2, 1, 0) and axes.flip == (True, True, False)
    assert axes.spacing(volume.spacing) == (volume.spacing[2], volume.spacing[1], volume.spacing[0])
