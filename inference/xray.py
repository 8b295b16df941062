"""A CR or DX image as the 2-D float image a chest X-ray classifier expects.

Radiographs are stored for a display pipeline, not as physical values: the Modality LUT (rescale or
LUT), then the VOI LUT or window the modality chose (PS3.3 C.11.2), then the photometric
interpretation (MONOCHROME1: low values are white) together say what a radiologist sees. A
classifier trained on exported images (ChestX-ray14's PNGs, CheXpert's JPEGs) saw exactly that
display, so :func:`load_radiograph` reproduces it: values in [0, 1], 1 = white, bone bright.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

from inference.errors import NotApplicable, RadiographError

__all__ = ["Radiograph", "load_radiograph"]

RADIOGRAPH_MODALITIES = ("CR", "DX")
# DX "For Processing" SOP classes: raw detector values, before the vendor's image processing
_FOR_PROCESSING = {
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
}
SpacingSource = Literal["PixelSpacing", "ImagerPixelSpacing"]


@dataclass(frozen=True)
class Radiograph:
    """One radiograph as displayed: ``pixels`` float32 (rows, columns) in [0, 1], 1 = white.

    ``spacing_mm`` is (row, column) pixel spacing when the image states one, and ``spacing_source``
    which attribute it came from: ``PixelSpacing`` is calibrated at the patient, ``ImagerPixelSpacing``
    is at the detector (so includes the geometric magnification, ~10% for a PA chest). ``voi`` says
    which display transform was applied, for the SR's record of what the model saw.
    """

    pixels: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float] | None
    spacing_source: SpacingSource | None
    voi: str
    modality: str
    view_position: str | None
    sop_instance_uid: str


def load_radiograph(source: Dataset | Path | str) -> Radiograph:
    """Read a CR/DX image (a file or a dataset) into a :class:`Radiograph`.

    Raises NotApplicable for an image that is not a CR or DX radiograph, and RadiographError for
    one that is but cannot be used (raw "For Processing" data, colour, several frames, undecodable
    pixel data, an invalid window); each message says what the image has.
    """
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
    uid = str(ds.get("SOPInstanceUID", "?"))
    modality = str(ds.get("Modality", ""))
    if modality not in RADIOGRAPH_MODALITIES:
        raise NotApplicable(f"image {uid} is {modality or 'of no modality'}, not a radiograph (CR or DX)")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _FOR_PROCESSING:
        raise RadiographError(
            f"image {uid} is {_FOR_PROCESSING[sop_class]} (raw detector data); "
            "configure the modality to send the For Presentation image"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographError(f"image {uid} is {photometric or 'of unknown photometric interpretation'}, "
                              "not a grey-scale (MONOCHROME1/2) radiograph")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise RadiographError(f"image {uid} has {ds.NumberOfFrames} frames; a radiograph has one")
    if "PixelData" not in ds:
        raise RadiographError(f"image {uid} has no pixel data")
    try:
        stored = ds.pixel_array
    except (ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:  # no decoder, truncated…
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise RadiographError(
            f"image {uid}: pixel data cannot be decoded (transfer syntax {syntax}): {exc}"
        ) from exc
    values = apply_modality_lut(stored, ds)
    display, voi = _apply_voi(values, ds, uid)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    spacing, spacing_source = _spacing(ds)
    return Radiograph(
        pixels=np.ascontiguousarray(display, dtype=np.float32),
        spacing_mm=spacing,
        spacing_source=spacing_source,
        voi=voi,
        modality=modality,
        view_position=str(ds.ViewPosition) if ds.get("ViewPosition") else None,
        sop_instance_uid=uid,
    )


def _apply_voi(values: np.ndarray, ds: Dataset, uid: str) -> tuple[np.ndarray, str]:
    """Values after the Modality LUT → [0, 1] through the image's first VOI LUT or window.

    Like pydicom's ``apply_voi_lut``, a VOI LUT Sequence wins over a window; an image with neither
    is shown over its own full range (what a viewer does).
    """
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # LUT input values are integers; pydicom indexes the LUT with them
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        return mapped.astype(np.float64) / (2**depth - 1), "VOI LUT Sequence"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window(values.astype(np.float64), center, width, function, uid), (
            f"window {center:g}/{width:g} {function}"
        )
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise RadiographError(f"image {uid} is blank: every pixel is {low:g} and it has no window")
    return (values.astype(np.float64) - low) / (high - low), f"full range {low:g}..{high:g}"


def _window(values: np.ndarray, center: float, width: float, function: str, uid: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 windowing onto [0, 1] (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        if width <= 0:
            raise RadiographError(f"image {uid}: window width {width:g} must be > 0 for SIGMOID")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise RadiographError(f"image {uid}: window width {width:g} must be > 0 for LINEAR_EXACT")
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise RadiographError(
            f"image {uid}: VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID"
        )
    if width < 1:
        raise RadiographError(f"image {uid}: window width {width:g} must be >= 1 for LINEAR")
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, SpacingSource | None]:
    """Pixel spacing at the patient if calibrated, else at the detector, else none (PS3.3 C.8.11.4)."""
    keywords: tuple[SpacingSource, ...] = ("PixelSpacing", "ImagerPixelSpacing")
    for keyword in keywords:
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return (float(value[0]), float(value[1])), keyword
    return None, None


def _first(value: float | MultiValue) -> float:
    """Window Center/Width may hold several windows; the first is the modality's default."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)
