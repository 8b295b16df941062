"""inference.volume: real CT and MR files stacked into a Volume, and the series it must refuse.

Every case is a real file from tests/data or a copy of one whose header a test edits with pydicom
(each such test says what it changed), or re-encodes with DCMTK or pydicom.
"""

from __future__ import annotations

import math
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, generate_uid

from inference.errors import NotApplicable, VolumeError
from inference.volume import load_series
from tests.dcmtk import DCMTK_BIN, dcmtk_env

DATA = Path(__file__).parent / "data"
CHEST = DATA / "ct_chest_lungdx_a0001"
GE_TILT = sorted((DATA / "ct_head_tilt_ge").glob("*.dcm"))
ENHANCED = DATA / "enhanced_multiframe"
SIEMENS_EPI = sorted((ENHANCED / "siemens_xa10").glob("*.dcm"))
EMRI = DATA / "transfer_syntaxes"


@pytest.fixture(scope="module")
def chest_paths() -> list[Path]:
    return sorted(CHEST.glob("*.dcm"))


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


def test_rejects_ge_gantry_tilt_series_with_non_uniform_spacing_naming_the_gaps() -> None:
    with pytest.raises(VolumeError, match="not uniform") as caught:
        load_series(GE_TILT)

    for gap in ("4.00 mm", "1.08 mm", "7.00 mm"):  # along the normal
        assert gap in str(caught.value)
    for gap in ("4.22 mm", "1.14 mm", "7.38 mm"):  # between positions, which drift with the tilt
        assert gap in str(caught.value)


def test_resamples_non_uniform_ge_tilt_series_to_a_uniform_gap_on_request() -> None:
    source = sorted((pydicom.dcmread(p) for p in GE_TILT), key=lambda ds: float(ds.ImagePositionPatient[2]))
    normal = np.cross(*np.reshape([float(v) for v in source[0].ImageOrientationPatient], (2, 3)))
    along = np.array([normal @ np.array(ds.ImagePositionPatient, dtype=float) for ds in source])
    hu = [ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
          for ds in source]

    volume = load_series(GE_TILT, resample_nonuniform=True)

    assert volume.resampled and volume.shape == (4, 512, 512)
    assert volume.spacing[0] == pytest.approx((along[-1] - along[0]) / 3)
    assert np.array_equal(volume.voxels[0].numpy(), hu[0])  # the end slices are the source's own
    assert np.array_equal(volume.voxels[-1].numpy(), hu[-1])
    # slice 1 lies 4.03 mm from the first, between source slices 1 (4.00 mm) and 2 (5.08 mm)
    weight = (along[0] + volume.spacing[0] - along[1]) / (along[2] - along[1])
    expected = hu[1] * np.float32(1 - weight) + np.float32(weight) * hu[2]
    assert np.allclose(volume.voxels[1].numpy(), expected, atol=1e-3)
    steps = np.diff(np.array(volume.positions), axis=0)
    assert np.allclose(steps, steps[0])  # evenly spaced positions, first to last
    assert volume.positions[0] == tuple(float(v) for v in source[0].ImagePositionPatient)
    assert volume.sop_instance_uids[1] == source[1].SOPInstanceUID  # the nearest source slice


def test_rejects_missing_slice_naming_the_gap(chest_paths: list[Path]) -> None:
    with pytest.raises(VolumeError, match=r"1 slice\(s\) missing: the series steps 5.00 mm .* 10.00 mm ×1"):
        load_series(chest_paths[20:23] + chest_paths[24:27])


def test_missing_slices_are_reported_with_their_positions_along_the_normal(chest_paths: list[Path]) -> None:
    along = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in chest_paths]
    with pytest.raises(VolumeError, match="2 slice\\(s\\) missing") as caught:
        load_series(chest_paths[20:23] + chest_paths[24:30] + chest_paths[31:33])
    low, high = sorted((along[23], along[30]))  # the normal is +z: positions are listed inferior first
    assert f"missing at {low:.2f}, {high:.2f} mm along the normal" in str(caught.value)


def test_rejects_missing_slices_even_when_resampling_is_allowed(chest_paths: list[Path]) -> None:
    with pytest.raises(VolumeError, match=r"2 slice\(s\) missing"):
        load_series(chest_paths[20:23] + chest_paths[25:28], resample_nonuniform=True)


def test_rejects_duplicated_slice_position(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices plus a copy of one under a new SOP Instance UID (edited with pydicom)."""
    def repeat_position(i: int, ds: pydicom.Dataset) -> None:
        if i == 3:
            ds.SOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = pydicom.dcmread(chest_paths[20]).ImagePositionPatient

    paths = _copies(chest_paths[20:23] + chest_paths[20:21], tmp_path, repeat_position)

    with pytest.raises(VolumeError, match="share a position along the normal"):
        load_series(paths)


def test_rejects_mixed_orientation_with_reason(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices, one rotated by 0.6° in plane (ImageOrientationPatient edited with pydicom)."""
    def rotate_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 2:
            ds.ImageOrientationPatient = [0.99995, 0.01, 0, -0.01, 0.99995, 0]

    paths = _copies(chest_paths[20:25], tmp_path, rotate_one)
    odd_uid = pydicom.dcmread(paths[2]).SOPInstanceUID

    with pytest.raises(VolumeError, match="mixed orientations") as caught:
        load_series(paths)
    assert odd_uid in str(caught.value)


def test_rejects_mixed_series_naming_both(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices, one given another SeriesInstanceUID (edited with pydicom)."""
    other = generate_uid()

    def move_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.SeriesInstanceUID = other

    with pytest.raises(VolumeError, match="mixed SeriesInstanceUID") as caught:
        load_series(_copies(chest_paths[20:24], tmp_path, move_one))
    assert other in str(caught.value)


def test_rejects_mixed_image_sizes(chest_paths: list[Path], tmp_path: Path) -> None:
    """One slice of the real CT is cut to its top 256 rows (pixel data and Rows edited with pydicom)."""
    def crop_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 0:
            ds.PixelData = ds.pixel_array[:256].tobytes()
            ds.Rows = 256

    paths = _copies(chest_paths[20:23], tmp_path, crop_one)

    with pytest.raises(VolumeError, match=r"mixed image sizes .*: 512×512 \(2 files\), 256×512 \(1 files\)") \
            as caught:
        load_series(paths)
    assert str(paths[0]) in str(caught.value)


def test_rejects_mixed_pixel_spacing(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices, one with PixelSpacing 0.7 mm instead of 0.84 mm (edited with pydicom)."""
    def respace_one(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.PixelSpacing = [0.7, 0.7]

    paths = _copies(chest_paths[20:23], tmp_path, respace_one)

    with pytest.raises(VolumeError, match=r"mixed PixelSpacing: .* has PixelSpacing \[0.7, 0.7\]") as caught:
        load_series(paths)
    assert str(paths[1]) in str(caught.value)


def test_rejects_localizer_mixed_into_the_series(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices, one marked ImageType ORIGINAL\\PRIMARY\\LOCALIZER (edited with pydicom)."""
    def make_scout(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    paths = _copies(chest_paths[20:24], tmp_path, make_scout)

    with pytest.raises(VolumeError, match="localizer") as caught:
        load_series(paths)
    assert pydicom.dcmread(paths[1]).SOPInstanceUID in str(caught.value)


def test_rejects_file_without_pixel_data_naming_the_file(chest_paths: list[Path],
                                                         tmp_path: Path) -> None:
    """Real chest CT slices, one with its Pixel Data removed (with pydicom)."""
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
    with pytest.raises(VolumeError, match=r"LICENSE\.TCIA\.txt"):
        load_series([CHEST / "LICENSE.TCIA.txt"])


def test_a_series_of_two_acquisitions_at_the_same_positions_is_refused_naming_them(
        chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices twice, the copies under new UIDs with Acquisition Number 2 (edited with
    pydicom): a repeated scan or a second contrast phase sent in one series."""
    def second_acquisition(i: int, ds: pydicom.Dataset) -> None:
        ds.AcquisitionNumber = 1 + i // 4
        if i >= 4:
            ds.SOPInstanceUID = generate_uid()

    paths = _copies(chest_paths[20:24] * 2, tmp_path, second_acquisition)
    with pytest.raises(VolumeError, match=r"2 stacks told apart by AcquisitionNumber: 1 \(4 slices\), "
                                          r"2 \(4 slices\) .* does not stack them into one volume"):
        load_series(paths)


def test_a_localizer_series_is_skipped_with_its_reason(chest_paths: list[Path], tmp_path: Path) -> None:
    """Real chest CT slices, all marked ImageType ORIGINAL\\PRIMARY\\LOCALIZER (edited with pydicom)."""
    def make_scout(i: int, ds: pydicom.Dataset) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    with pytest.raises(NotApplicable, match=r"skipped: the series is a localizer \(scout: "
                                            r"ImageType LOCALIZER, 3 image\(s\)\)"):
        load_series(_copies(chest_paths[20:23], tmp_path, make_scout))


def test_a_radiation_dose_report_is_skipped_with_its_reason(chest_paths: list[Path], tmp_path: Path) -> None:
    """A chest CT header turned into an X-Ray Radiation Dose SR (no pixel data; edited with pydicom)."""
    def make_dose_report(i: int, ds: pydicom.Dataset) -> None:
        del ds.PixelData
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
        ds.Modality = "SR"

    with pytest.raises(NotApplicable, match=r"skipped: the series holds no images \(a radiation dose"):
        load_series(_copies(chest_paths[:1], tmp_path, make_dose_report))


def test_a_screen_captured_dose_sheet_is_skipped_with_its_reason(chest_paths: list[Path],
                                                                 tmp_path: Path) -> None:
    """A chest CT slice as Secondary Capture, ImageType DERIVED\\SECONDARY\\SCREEN SAVE (pydicom)."""
    def make_screenshot(i: int, ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]

    with pytest.raises(NotApplicable, match="skipped: the series is secondary capture"):
        load_series(_copies(chest_paths[:1], tmp_path, make_screenshot))


def test_rejects_time_points_of_an_enhanced_mr_as_duplicated_positions() -> None:
    """Four real Siemens Enhanced MR files: 4 time points of the same 6 slice positions."""
    with pytest.raises(VolumeError, match=r"18 pair.* share a position along the normal") as caught:
        load_series(SIEMENS_EPI)
    assert "frame 1" in str(caught.value)


def test_loads_enhanced_mr_frames_from_per_frame_functional_groups() -> None:
    ds = pydicom.dcmread(SIEMENS_EPI[0])

    volume = load_series(SIEMENS_EPI[:1])

    assert volume.shape == (6, 64, 64) and volume.modality == "MR"
    assert volume.spacing == pytest.approx((2.4, 3.375, 3.375), abs=1e-6)
    assert volume.frame_numbers == (1, 2, 3, 4, 5, 6)
    assert volume.sop_instance_uids == (ds.SOPInstanceUID,) * 6
    frames = ds.PerFrameFunctionalGroupsSequence
    assert volume.positions[2] == pytest.approx(
        [float(v) for v in frames[2].PlanePositionSequence[0].ImagePositionPatient])
    assert volume.orientation == pytest.approx(
        [float(v) for v in frames[0].PlaneOrientationSequence[0].ImageOrientationPatient])
    assert np.array_equal(volume.voxels.numpy(), ds.pixel_array.astype(np.float32))  # slope 1, intercept 0


def test_loads_enhanced_ct_with_shared_groups_sorted_along_the_normal_in_hounsfield_units() -> None:
    """Orientation, pixel spacing and rescale are shared; positions are per frame, listed −159, −149 mm
    along an orientation whose normal is −z, so frame 2 comes first."""
    ds = pydicom.dcmread(ENHANCED / "eCT_Supplemental.dcm")

    volume = load_series([ENHANCED / "eCT_Supplemental.dcm"])

    assert volume.shape == (2, 512, 512) and volume.modality == "CT"
    assert volume.frame_numbers == (2, 1)
    assert volume.normal == pytest.approx((0, 0, -1))
    assert [p[2] for p in volume.positions] == [-149.0, -159.0]
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert np.array_equal(volume.voxels.numpy(), ds.pixel_array[::-1].astype(np.float32) - 1024)
    assert volume.headers == (volume.headers[0],) * 2 and "PixelData" not in volume.headers[0]


def test_rejects_enhanced_mr_that_mixes_magnitude_and_field_map_frames() -> None:
    with pytest.raises(VolumeError, match=r"mixed frame types .*T1\\M \(32 frames\), .*FIELD_MAP \(32"):
        load_series([ENHANCED / "IM_0027_fMAP.dcm"])


def test_rejects_enhanced_frame_without_a_plane_position(tmp_path: Path) -> None:
    """A copy of the real Siemens file with frame 3's Plane Position functional group removed."""
    def drop_position(i: int, ds: pydicom.Dataset) -> None:
        del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence

    with pytest.raises(VolumeError, match=r"frame 3 of .* has no PlanePositionSequence"):
        load_series(_copies(SIEMENS_EPI[:1], tmp_path, drop_position))


def test_rejects_multi_frame_image_without_functional_groups() -> None:
    """pydicom's emri_small files are Enhanced MR with their functional groups stripped."""
    with pytest.raises(VolumeError, match="multi-frame image without functional groups"):
        load_series([EMRI / "emri_small_RLE.dcm"])


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_decodes_compressed_enhanced_mr_frames(name: str, tmp_path: Path) -> None:
    """The real RLE and JPEG-LS Enhanced MR files (compressed pixel data untouched) given the functional
    groups pydicom's test copies lack (added with pydicom): 10 frames 1.2 mm apart, 1 mm pixels."""
    def add_groups(i: int, ds: pydicom.Dataset) -> None:
        shared = pydicom.Dataset()
        shared.PlaneOrientationSequence = Sequence([pydicom.Dataset()])
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PixelMeasuresSequence = Sequence([pydicom.Dataset()])
        shared.PixelMeasuresSequence[0].PixelSpacing = [1, 1]
        shared.PixelMeasuresSequence[0].SliceThickness = 1.2
        shared.PixelValueTransformationSequence = Sequence([pydicom.Dataset()])
        shared.PixelValueTransformationSequence[0].RescaleSlope = 2
        shared.PixelValueTransformationSequence[0].RescaleIntercept = -10
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence()
        for frame in range(10):
            position = pydicom.Dataset()
            position.ImagePositionPatient = [0, 0, 1.2 * frame]
            groups = pydicom.Dataset()
            groups.PlanePositionSequence = Sequence([position])
            ds.PerFrameFunctionalGroupsSequence.append(groups)

    paths = _copies([EMRI / name], tmp_path, add_groups)

    volume = load_series(paths)

    decoded = pydicom.dcmread(EMRI / name).pixel_array
    assert volume.shape == (10, 64, 64) and volume.spacing == pytest.approx((1.2, 1.0, 1.0))
    assert np.array_equal(volume.voxels.numpy(), decoded.astype(np.float32) * 2 - 10)


def _dcmtk(tool: str, *options: str) -> Callable[[Path, Path], None]:
    def convert(source: Path, target: Path) -> None:
        subprocess.run([str(DCMTK_BIN / tool), *options, str(source), str(target)],
                       env=dcmtk_env(), check=True, capture_output=True)
    return convert


def _pydicom_jpeg2000(source: Path, target: Path) -> None:
    ds = pydicom.dcmread(source)
    ds.compress(JPEG2000Lossless)
    ds.save_as(target)


@pytest.mark.parametrize("convert", [
    pytest.param(_dcmtk("dcmcrle"), id="rle-dcmcrle"),
    pytest.param(_dcmtk("dcmcjpeg", "+e1"), id="jpeg-lossless-sv1-dcmcjpeg"),
    pytest.param(_dcmtk("dcmcjpls", "+el"), id="jpeg-ls-lossless-dcmcjpls"),
    pytest.param(_pydicom_jpeg2000, id="jpeg-2000-lossless-pydicom"),
    pytest.param(_dcmtk("dcmconv", "+tb"), id="explicit-big-endian-dcmconv"),
])
def test_compressed_series_loads_exactly_as_the_uncompressed_one(
        chest_paths: list[Path], tmp_path: Path, convert: Callable[[Path, Path], None]) -> None:
    """Four real chest CT slices re-encoded losslessly in the test (DCMTK, or pydicom for JPEG 2000)."""
    originals = chest_paths[30:34]
    converted = []
    for path in originals:
        converted.append(tmp_path / path.name)
        convert(path, converted[-1])
    syntax = pydicom.dcmread(converted[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax != pydicom.dcmread(originals[0], stop_before_pixels=True).file_meta.TransferSyntaxUID

    assert np.array_equal(load_series(converted).voxels.numpy(), load_series(originals).voxels.numpy())


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_ignores_unused_high_bits_like_pydicom(chest_paths: list[Path], tmp_path: Path, signed: bool) -> None:
    """The real CT stores 12 of 16 bits; the copies get junk in the 4 unused high bits (and, signed,
    PixelRepresentation 1 so bit 11 is the sign), edited with pydicom."""
    def set_high_bits(i: int, ds: pydicom.Dataset) -> None:
        values = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xA000)
        ds.PixelData = values.tobytes()
        ds.PixelRepresentation = int(signed)

    paths = _copies(chest_paths[30:32], tmp_path, set_high_bits)

    volume = load_series(paths)

    for path in paths:
        ds = pydicom.dcmread(path)
        k = volume.sop_instance_uids.index(ds.SOPInstanceUID)
        assert np.array_equal(volume.voxels[k].numpy(), ds.pixel_array.astype(np.float32) - 1024)
    assert (volume.voxels < -1024).any() == signed
