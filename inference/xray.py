"""A CR or DX image as the 2-D float image a chest X-ray classifier expects.

Radiographs are stored for a display pipeline, not as physical values: the Modality LUT (rescale or
LUT), then the VOI LUT or window the modality chose (PS3.3 C.11.2), then the photometric
interpretation (MONOCHROME1: low values are white) together say what a radiologist sees. A
classifier trained on exported images (ChestX-ray14's PNGs, CheXpert's JPEGs) saw exactly that
display, so :func:`load_radiograph` reproduces it: values in [0, 1], 1 = white, bone bright.
:func:`load_radiograph_series` reads a stored CR/DX series into the frontal views a chest
classifier or report generator reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi  # pydicom.pixels has no __all__

from inference.errors import NotApplicable, RadiographError

__all__ = ["FRONTAL_VIEWS", "Radiograph", "RadiographSeries", "load_radiograph", "load_radiograph_series"]

RADIOGRAPH_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = ("PA", "AP")
"""View Position (0018,5101) values of frontal chest views; the classifiers are trained on these."""
# Body Part Examined values of a chest radiograph (PS3.16 Annex L defined term CHEST, and what
# modalities write in its place)
_CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
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


def _first(value: float | MultiValue[float]) -> float:
    """Window Center/Width may hold several windows; the first is the modality's default."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


@dataclass(frozen=True)
class RadiographSeries:
    """The frontal radiographs of one series, in Instance Number order, and their headers.

    ``headers[i]`` is the dataset of ``images[i]`` without its Pixel Data: the source a result
    references (SR evidence, source images).
    """

    images: tuple[Radiograph, ...]
    headers: tuple[Dataset, ...]

    def __post_init__(self) -> None:
        if not self.images or len(self.images) != len(self.headers):
            raise ValueError(f"a radiograph series needs one header per image and at least one image; got "
                             f"{len(self.images)} images and {len(self.headers)} headers")

    @property
    def modality(self) -> str:
        return self.images[0].modality

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(image.sop_instance_uid for image in self.images)


def load_radiograph_series(paths: Sequence[Path]) -> RadiographSeries:
    """Read the CR/DX series stored at ``paths`` and keep its frontal chest views.

    A frontal view has View Position PA or AP, or none (many CR plates do not say; a chest
    classifier is then the admin's routing choice). Raises NotApplicable for a series that is not
    CR/DX, not of the chest, or has lateral (or other) views only, and RadiographError (from
    :func:`load_radiograph`) for a frontal image that cannot be used.
    """
    if not paths:
        raise RadiographError("the series has no stored instances")
    datasets = sorted((pydicom.dcmread(path) for path in paths),
                      key=lambda ds: (int(ds.get("InstanceNumber") or 0), str(ds.get("SOPInstanceUID", ""))))
    first = datasets[0]
    series = str(first.get("SeriesInstanceUID", "?"))
    modality = str(first.get("Modality", ""))
    if modality not in RADIOGRAPH_MODALITIES:
        raise NotApplicable(f"series {series} is {modality or 'of no modality'}, not a radiograph (CR or DX)")
    body_part = str(first.get("BodyPartExamined", "") or "").upper()
    if body_part and body_part not in _CHEST_BODY_PARTS:
        raise NotApplicable(f"series {series} shows Body Part {body_part}, not the chest "
                            f"({', '.join(_CHEST_BODY_PARTS)}); the pipeline reads chest radiographs")
    frontal = [ds for ds in datasets if str(ds.get("ViewPosition", "") or "").upper() in ("", *FRONTAL_VIEWS)]
    if not frontal:
        views = sorted({str(ds.ViewPosition) for ds in datasets})
        raise NotApplicable(f"series {series} has only {', '.join(views)} views; the pipeline reads frontal "
                            f"chest radiographs ({' or '.join(FRONTAL_VIEWS)})")
    images = tuple(load_radiograph(ds) for ds in frontal)
    return RadiographSeries(images=images, headers=tuple(_without_pixels(ds) for ds in frontal))


def _without_pixels(ds: Dataset) -> Dataset:
    """The header of ``ds``: decoded pixels live in the Radiograph, a header need not hold them twice."""
    header = Dataset(ds)  # a shallow copy: the elements are shared, the element set is not
    header.file_meta = ds.file_meta
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    return header
