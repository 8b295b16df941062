"""Loading CR/DX images as displayed radiographs (inference.xray) from the real DX in tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from inference.errors import NotApplicable, RadiographError
from inference.xray import load_radiograph

DX_FILE = Path(__file__).parent / "data" / "dx_chest_highdicom" / "dx_image.dcm"
# regions of this lateral thorax (169 x 211): dark lung field, and the thoracic spine above it
LUNG = (slice(92, 108), slice(128, 140))
SPINE = (slice(44, 54), slice(100, 130))


@pytest.fixture
def dx() -> Dataset:
    """The real DX: 8-bit MONOCHROME1, window 128/256, PixelSpacing and ImagerPixelSpacing."""
    return pydicom.dcmread(DX_FILE)


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def test_monochrome1_dx_is_shown_with_bone_bright_and_lung_dark(dx: Dataset) -> None:
    assert dx.PhotometricInterpretation == "MONOCHROME1"
    image = load_radiograph(DX_FILE)
    assert image.pixels.shape == (169, 211) and image.pixels.dtype == np.float32
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert image.pixels[SPINE].mean() > image.pixels[LUNG].mean() + 0.2
    assert image.voi == "window 128/256 LINEAR"
    assert image.modality == "DX" and image.sop_instance_uid == dx.SOPInstanceUID


def test_monochrome2_copy_of_the_same_image_loads_identically(dx: Dataset) -> None:
    """MONOCHROME2 stores 255 - p for MONOCHROME1's p: the displayed image must not change."""
    expected = load_radiograph(dx).pixels
    _set_pixels(dx, 255 - dx.pixel_array)
    dx.PhotometricInterpretation = "MONOCHROME2"
    dx.PresentationLUTShape = "IDENTITY"
    dx.WindowCenter = 256 - 128  # the same window, mirrored onto the inverted values
    np.testing.assert_allclose(load_radiograph(dx).pixels, expected, atol=1e-6)


def test_rescale_is_applied_before_the_window(dx: Dataset) -> None:
    expected = load_radiograph(dx).pixels
    dx.RescaleSlope, dx.RescaleIntercept = 2, -100
    dx.WindowCenter, dx.WindowWidth = 2 * 128 - 100 - 0.5, 2 * 255 + 1  # same window in rescaled units
    np.testing.assert_allclose(load_radiograph(dx).pixels, expected, atol=1e-3)


def test_voi_lut_sequence_wins_over_the_window(dx: Dataset) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.LUTData = [min(255, 2 * value) for value in range(256)]  # a steeper, contrast-raising curve
    dx.VOILUTSequence = Sequence([lut])
    image = load_radiograph(dx)
    stored = dx.pixel_array.astype(np.float64)
    np.testing.assert_allclose(image.pixels, 1.0 - np.minimum(255, 2 * stored) / 255, atol=1e-6)
    assert image.voi == "VOI LUT Sequence"


def test_sigmoid_window_puts_the_centre_at_mid_grey(dx: Dataset) -> None:
    dx.VOILUTFunction = "SIGMOID"
    dx.WindowCenter = float(dx.pixel_array[SPINE][0, 0])
    value = load_radiograph(dx).pixels[SPINE][0, 0]
    assert value == pytest.approx(0.5, abs=1e-6)


def test_image_without_window_is_shown_over_its_full_range(dx: Dataset) -> None:
    del dx.WindowCenter, dx.WindowWidth
    image = load_radiograph(dx)
    assert image.voi == "full range 5..255"
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0


def test_spacing_falls_back_to_the_detector_then_to_none(dx: Dataset) -> None:
    assert load_radiograph(dx).spacing_source == "PixelSpacing"
    dx.ImagerPixelSpacing = [0.15, 0.16]
    del dx.PixelSpacing
    image = load_radiograph(dx)
    assert image.spacing_mm == (0.15, 0.16) and image.spacing_source == "ImagerPixelSpacing"
    del dx.ImagerPixelSpacing
    image = load_radiograph(dx)
    assert image.spacing_mm is None and image.spacing_source is None


def test_ct_image_is_not_a_radiograph(dx: Dataset) -> None:
    dx.Modality = "CT"
    with pytest.raises(NotApplicable, match="is CT, not a radiograph"):
        load_radiograph(dx)


def test_for_processing_image_is_refused_with_what_to_send(dx: Dataset) -> None:
    dx.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1.1"
    with pytest.raises(RadiographError, match=r"raw detector data.*For Presentation"):
        load_radiograph(dx)


def test_colour_image_is_refused(dx: Dataset) -> None:
    dx.PhotometricInterpretation = "RGB"
    dx.SamplesPerPixel = 3
    with pytest.raises(RadiographError, match="is RGB, not a grey-scale"):
        load_radiograph(dx)


def test_multiframe_image_is_refused(dx: Dataset) -> None:
    _set_pixels(dx, np.stack([dx.pixel_array] * 2))
    dx.NumberOfFrames = 2
    with pytest.raises(RadiographError, match="has 2 frames"):
        load_radiograph(dx)


def test_truncated_pixel_data_is_refused(dx: Dataset) -> None:
    dx.PixelData = dx.PixelData[: len(dx.PixelData) // 2]
    with pytest.raises(RadiographError, match="pixel data cannot be decoded"):
        load_radiograph(dx)


@pytest.mark.parametrize(("function", "width", "message"), [
    ("LINEAR", 0, "must be >= 1 for LINEAR"),
    ("LINEAR_EXACT", 0, "must be > 0 for LINEAR_EXACT"),
    ("GAMMA", 256, "'GAMMA' is not LINEAR"),
])
def test_unusable_window_is_refused(dx: Dataset, function: str, width: float, message: str) -> None:
    dx.VOILUTFunction, dx.WindowWidth = function, width
    with pytest.raises(RadiographError, match=message):
        load_radiograph(dx)


def test_blank_image_without_window_is_refused(dx: Dataset) -> None:
    _set_pixels(dx, np.full_like(dx.pixel_array, 7))
    del dx.WindowCenter, dx.WindowWidth
    with pytest.raises(RadiographError, match="blank: every pixel is 7"):
        load_radiograph(dx)
