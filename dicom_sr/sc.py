"""Findings → Secondary Capture images (PS3.3 A.8.1) of key slices with the segments burned in.

For viewers that cannot show a SEG: each image is one source slice, windowed to 8 bits, with every
segment drawn in its recommended colour (a translucent fill and an opaque outline). Key slices are,
per segment, the slice where it is largest (at most ``max_images``, biggest first, shown in slice
order). The images are RGB, in the source's Study, with the source slice in Source Image Sequence
and Patient Orientation from the slice's orientation; they carry no text (Burned In Annotation NO).

Rendering is numpy only: no dependency on how a pipeline made the masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_sr.findings import Findings
from dicom_sr.seg import (
    MANUFACTURER,
    EncodingError,
    _check_source,
    _highdicom_encoding,
    _set_laterality,
    _tidy_copied_attributes,
    _with_type_2_present,
)
from dicom_sr.uids import derive_uid

__all__ = ["DEFAULT_MAX_IMAGES", "build_sc", "key_slices", "mask_outline", "render_slice"]

DEFAULT_MAX_IMAGES = 6
_FILL_OPACITY = 0.35
_LO_MAX_LENGTH = 64
_ST_MAX_LENGTH = 1024  # PS3.5 6.2: Derivation Description is ST
# PS3.3 C.7.6.1.1.1: + x is the patient's Left, + y Posterior, + z Head
_LPS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def key_slices(findings: Findings, max_images: int = DEFAULT_MAX_IMAGES) -> list[int]:
    """Per segment, the slice where it has most pixels; the ``max_images`` largest, in slice order."""
    best: dict[int, int] = {}
    for segment in findings.segments:
        areas = np.zeros(segment.shape[0], dtype=np.int64)
        areas[segment.box[0]] = segment.mask.reshape(segment.mask.shape[0], -1).sum(axis=1)
        if areas.max() > 0:
            index = int(areas.argmax())
            best[index] = max(best.get(index, 0), int(areas[index]))
    chosen = sorted(best, key=lambda index: -best[index])[:max_images]
    return sorted(chosen)


def _window(header: pydicom.Dataset, pixels: np.ndarray) -> tuple[float, float]:
    """(low, high) of the source's first VOI window, else the slice's 1st-99th percentile."""
    if "WindowCenter" in header and "WindowWidth" in header:
        center = header.WindowCenter
        width = header.WindowWidth
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if width > 0:
            return center - width / 2, center + width / 2
    low, high = (float(v) for v in np.percentile(pixels, (1, 99)))
    return low, max(high, low + 1.0)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    interior = mask.copy()
    interior[1:, :] &= mask[:-1, :]
    interior[:-1, :] &= mask[1:, :]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    outline: np.ndarray = mask & ~interior  # numpy types operators on a bare ndarray as Any
    return outline


def render_slice(
    findings: Findings, index: int, pixels: np.ndarray, window: tuple[float, float]
) -> np.ndarray:
    """Slice ``index`` of ``pixels`` windowed to 8 bits, segments burned in: (rows, columns, 3) uint8."""
    low, high = window
    gray = np.clip((pixels[index].astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for segment in findings.segments:
        mask = segment.slice_mask(index)
        if not mask.any():
            continue
        color = np.asarray(segment.color_rgb, dtype=np.float32)
        rgb[mask] = (1.0 - _FILL_OPACITY) * rgb[mask] + _FILL_OPACITY * color
        rgb[mask_outline(mask)] = color
    burned: np.ndarray = np.rint(rgb).astype(np.uint8)  # a ufunc's result is typed Any
    return burned


def _plane(header: pydicom.Dataset, frame: int | None, sequence: str, keyword: str) -> list[float]:
    """A geometry attribute of a single-frame image, or of frame ``frame`` of a multi-frame one
    (its per-frame functional group, else the shared one, PS3.3 C.7.6.16)."""
    if frame is None:
        return [float(v) for v in header.get(keyword)]
    groups = [header.PerFrameFunctionalGroupsSequence[frame - 1],
              *header.get("SharedFunctionalGroupsSequence", [])]
    item = next(group.get(sequence)[0] for group in groups if group.get(sequence))
    return [float(v) for v in item.get(keyword)]


def _patient_orientation(orientation: Sequence[float]) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of a slice: the main direction of its rows and columns."""
    letters = []
    for vector in (orientation[:3], orientation[3:]):
        axis = int(np.argmax(np.abs(vector)))
        letters.append(_LPS_LETTERS[axis][vector[axis] > 0])
    return letters[0], letters[1]


def build_sc(
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    pixels: np.ndarray,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    max_images: int = DEFAULT_MAX_IMAGES,
    manufacturer: str = MANUFACTURER,
) -> list[hd.sc.SCImage]:
    """One Secondary Capture image per key slice (:func:`key_slices`) of ``findings.segments``.

    ``pixels`` is the source volume in modality units (e.g. HU), (slices, rows, columns) in mask
    order. The images' SOP Instance UIDs derive from ``sop_instance_uid`` and the slice's UID, so a
    re-run writes the same UIDs.
    """
    if not findings.segments:
        raise EncodingError("findings have no segments: there is nothing to draw")
    shape = _check_source(findings, source)
    if pixels.shape != (len(source), *shape):
        raise EncodingError(
            f"pixels are {pixels.shape}, the source series is {(len(source), *shape)} "
            "(slices, rows, columns)"
        )
    slices = key_slices(findings, max_images)
    if not slices:
        raise EncodingError("every segment mask is empty: there is no key slice to capture")
    algorithm = findings.algorithm
    description = f"{algorithm.name} {algorithm.version} key images"[:_LO_MAX_LENGTH]
    images = []
    with _highdicom_encoding("secondary capture"):
        for number, index in enumerate(slices, start=1):
            header, frame = source[index], findings.source_frame(index)
            orientation = _plane(header, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _plane(header, frame, "PixelMeasuresSequence", "PixelSpacing")
            key = str(header.SOPInstanceUID) + ("" if frame is None else f"/{frame}")
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=_with_type_2_present([header])[0],
                pixel_array=render_slice(findings, index, pixels, _window(header, pixels[index])),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                sop_instance_uid=derive_uid(sop_instance_uid, "key-slice", key),
                instance_number=number,
                manufacturer=manufacturer,
                patient_orientation=_patient_orientation(orientation),
                # highdicom annotates it tuple[int, int]; Pixel Spacing is DS (decimal), as passed
                pixel_spacing=(spacing[0], spacing[1]),  # type: ignore[arg-type]
                transfer_syntax_uid=ExplicitVRLittleEndian,
                manufacturer_model_name=algorithm.name,
                software_versions=algorithm.version,
                series_description=description,
            )
            reference = Dataset()
            reference.ReferencedSOPClassUID = header.SOPClassUID
            reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
            if frame is not None:
                reference.ReferencedFrameNumber = frame
            image.SourceImageSequence = [reference]
            image.ImageType = ["DERIVED", "SECONDARY"]
            image.DerivationDescription = (
                f"{algorithm.name} {algorithm.version} segments burned into the source slice"
            )[:_ST_MAX_LENGTH]
            image.BurnedInAnnotation = "NO"
            _set_laterality(image, header)
            _tidy_copied_attributes(image)
            images.append(image)
    return images
