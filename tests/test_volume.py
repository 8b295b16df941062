"""inference.volume: real CT files stacked into a Volume, and the series it must refuse."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from inference.errors import VolumeError
from inference.volume import load_series

CHEST = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def chest_paths() -> list[Path]:
    return sorted(CHEST.glob("*.dcm"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (only present in the team "
                    "workspace, not in a fresh clone)")
    return SHARED_DATA


def _copies(paths: list[Path], tmp_path: Path,
            edit: Callable[[int, pydicom.Dataset], None] = lambda i, ds: None) -> list[Path]:
    """Write ``paths`` to ``tmp_path`` after ``edit(index, dataset)`` changed each one."""
    out = []
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        edit(i, ds)
        target = tmp_path / f"{i:03d}.dcm"
        ds.save_as(target)
        out.append(target)
    return out


def test_loads_real_chest_ct_in_hounsfield_units_with_its_geometry(chest_paths: list[Path]) -> None:
    volume = load_series(chest_paths)

    assert volume.shape == (64, 512, 512)
    assert volume.voxels.dtype.is_floating_point and volume.voxels.element_size() == 4
    assert volume.spacing == pytest.approx((5.0, 0.841796875, 0.841796875))
    assert volume.voxels.min() == -1024  # air after RescaleIntercept −1024
    assert volume.modality == "CT"
    assert volume.normal == pytest.approx((0.0, 0.0, 1.0))
    assert len(volume.sop_instance_uids) == len(set(volume.sop_instance_uids)) == 64
    assert all("PixelData" not in ds for ds in volume.headers)
    assert [ds.SOPInstanceUID for ds in volume.headers] == list(volume.sop_instance_uids)


def test_sorts_slices_along_normal_even_when_files_are_shuffled(chest_paths: list[Path]) -> None:
    shuffled = chest_paths.copy()
    random.Random(7).shuffle(shuffled)

    volume = load_series(shuffled)

    z = [p[2] for p in volume.positions]
    assert z == sorted(z) and z[0] == -439.0 and z[-1] == -124.0
    reference = load_series(chest_paths)
    assert volume.sop_instance_uids == reference.sop_instance_uids
    assert bool((volume.voxels == reference.voxels).all())


def test_sort_direction_follows_the_normal_not_the_z_coordinate(chest_paths: list[Path],
                                                                tmp_path: Path) -> None:
    def mirror_rows(i: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]  # normal is now −z

    volume = load_series(_copies(chest_paths[20:26], tmp_path, mirror_rows))

    assert volume.normal == pytest.approx((0.0, 0.0, -1.0))
    z = [p[2] for p in volume.positions]
    assert z == sorted(z, reverse=True)


def test_applies_rescale_slope_and_intercept_of_each_slice(chest_paths: list[Path],
                                                           tmp_path: Path) -> None:
    def rescale_first(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            ds.RescaleSlope, ds.RescaleIntercept = 2, -3000

    paths = _copies(chest_paths[20:23], tmp_path, rescale_first)
    raw = pydicom.dcmread(paths[0]).pixel_array.astype(np.float32)

    volume = load_series(paths)

    index = volume.positions.index(tuple(float(v) for v in
                                         pydicom.dcmread(paths[0]).ImagePositionPatient))
    assert np.array_equal(volume.voxels[index].numpy(), raw * 2 - 3000)


def test_single_slice_takes_its_depth_from_spacing_between_slices(chest_paths: list[Path]) -> None:
    volume = load_series(chest_paths[:1])

    assert volume.shape == (1, 512, 512)
    assert volume.spacing[0] == 5.0


def test_accepts_gantry_tilt_with_uniform_spacing_along_the_normal(chest_paths: list[Path],
                                                                  tmp_path: Path) -> None:
    tilt = math.radians(20)

    def tilt_gantry(i: int, ds: pydicom.Dataset) -> None:
        # positions keep stepping 5 mm along z (the table), so they drift sideways in the plane
        ds.ImageOrientationPatient = [1, 0, 0, 0, math.cos(tilt), -math.sin(tilt)]

    volume = load_series(_copies(chest_paths[20:26], tmp_path, tilt_gantry))

    assert volume.spacing[0] == pytest.approx(5 * math.cos(tilt))
    assert volume.affine[:3, 0] == pytest.approx([0, 0, 5])  # exact first→last positions


def test_rejects_ge_gantry_tilt_series_with_non_uniform_spacing(shared_data: Path) -> None:
    with pytest.raises(VolumeError, match="not uniform") as caught:
        load_series(sorted((shared_data / "ct_head_tilt_ge").glob("*.dcm")))

    for gap in ("4.22 mm", "7.38 mm", "1.14 mm", "4.00 mm", "7.00 mm"):
        assert gap in str(caught.value)


def test_rejects_missing_slice_naming_the_gap(chest_paths: list[Path]) -> None:
    with pytest.raises(VolumeError, match=r"not uniform \(5.00 mm ×4, 10.00 mm ×1"):
        load_series(chest_paths[20:23] + chest_paths[24:27])


def test_rejects_duplicated_slice_position(chest_paths: list[Path], tmp_path: Path) -> None:
    def repeat_position(i: int, ds: pydicom.Dataset) -> None:
        if i == 3:
            ds.SOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = pydicom.dcmread(chest_paths[20]).ImagePositionPatient

    paths = _copies(chest_paths[20:23] + chest_paths[20:21], tmp_path, repeat_position)

    with pytest.raises(VolumeError, match="share a position along the normal"):
        load_series(paths)


def test_rejects_mixed_orientation_with_reason(chest_paths: list[Path], tmp_path: Path) -> None:
    def rotate_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 2:
            ds.ImageOrientationPatient = [0.99995, 0.01, 0, -0.01, 0.99995, 0]

    paths = _copies(chest_paths[20:25], tmp_path, rotate_one)
    odd_uid = pydicom.dcmread(paths[2]).SOPInstanceUID

    with pytest.raises(VolumeError, match="mixed orientations") as caught:
        load_series(paths)
    assert odd_uid in str(caught.value)


def test_rejects_mixed_series_naming_both(chest_paths: list[Path], tmp_path: Path) -> None:
    other = generate_uid()

    def move_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.SeriesInstanceUID = other

    with pytest.raises(VolumeError, match="mixed SeriesInstanceUID") as caught:
        load_series(_copies(chest_paths[20:24], tmp_path, move_one))
    assert other in str(caught.value)


def test_rejects_mixed_rows_and_columns(chest_paths: list[Path], tmp_path: Path) -> None:
    def shrink_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            ds.Rows = 256

    with pytest.raises(VolumeError, match="mixed Rows"):
        load_series(_copies(chest_paths[20:23], tmp_path, shrink_one))


def test_rejects_localizer_mixed_into_the_series(chest_paths: list[Path], tmp_path: Path) -> None:
    def make_scout(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    paths = _copies(chest_paths[20:24], tmp_path, make_scout)

    with pytest.raises(VolumeError, match="localizer") as caught:
        load_series(paths)
    assert pydicom.dcmread(paths[1]).SOPInstanceUID in str(caught.value)


def test_rejects_file_without_pixel_data_naming_the_file(chest_paths: list[Path],
                                                         tmp_path: Path) -> None:
    def strip_pixels(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            del ds.PixelData

    paths = _copies(chest_paths[20:23], tmp_path, strip_pixels)

    with pytest.raises(VolumeError, match="has no pixel data") as caught:
        load_series(paths)
    assert str(paths[1]) in str(caught.value)


@pytest.mark.parametrize("keyword", ["FrameOfReferenceUID", "ImagePositionPatient",
                                     "ImageOrientationPatient"])
def test_rejects_slices_that_cannot_be_placed_in_space(chest_paths: list[Path], tmp_path: Path,
                                                       keyword: str) -> None:
    def drop(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            delattr(ds, keyword)

    with pytest.raises(VolumeError, match=f"lack {keyword}"):
        load_series(_copies(chest_paths[20:23], tmp_path, drop))


def test_rejects_an_empty_series() -> None:
    with pytest.raises(VolumeError, match="no files"):
        load_series([])


def test_rejects_a_file_that_is_not_dicom() -> None:
    with pytest.raises(VolumeError, match="LICENSE.TCIA.txt"):
        load_series([CHEST / "LICENSE.TCIA.txt"])
