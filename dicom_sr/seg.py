"""Findings → DICOM Segmentation (PS3.3 A.51 Segmentation IOD), via highdicom.

Three encodings (:class:`~dicom_sr.enums.SegType`, chosen per pipeline in the configuration):

    binary      1 bit per pixel, one frame per (segment, slice) that the segment touches (default)
    fractional  8 bits per pixel, Segment.probability × 255 (PROBABILITY, C.8.20.2.3)
    labelmap    the Label Map Segmentation SOP class (DICOM 2024b, A.51.x): one frame per slice,
                pixel = segment number; segments must not overlap

One segment per :attr:`Findings.segments` (Segment Description macro, PS3.3 C.8.20.4): category
(CID 7150), property type (CID 7151), anatomic region (CID 4), recommended display colour in
CIELab, tracking ID/UID, algorithm type AUTOMATIC with Algorithm Identification (C.8.20.2 /
TID 4019). Only non-empty frames are encoded; every frame references its source slice and carries
that slice's Image Position (Patient), so the SEG aligns pixel for pixel with the source series.

Errors::

    EncodingError (dicom_sr.errors)   the findings and source cannot make a valid object; the
                                      message names the rule. highdicom's own ValueError/TypeError
                                      are translated here, once, with ``raise … from exc``.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
)

from dicom_sr import codes
from dicom_sr.enums import SegType, parse
from dicom_sr.errors import EncodingError
from dicom_sr.findings import Findings, Segment
from dicom_sr.uids import derive_uid

__all__ = ["MANUFACTURER", "EncodingError", "SegType", "build_seg", "coded_concept"]

#: General Equipment Manufacturer (0008,0070) of every object radnode writes.
MANUFACTURER = "radnode"
#: Device Serial Number (0018,1000) when the caller names none (Type 1 in Enhanced General Equipment).
DEFAULT_DEVICE_SERIAL_NUMBER = "0"

# PS3.5 6.2: Content Label is CS, 16 characters of [A-Z0-9 _].
_CS_FORBIDDEN = re.compile(r"[^A-Z0-9 _]")
_CS_MAX_LENGTH = 16
_LO_MAX_LENGTH = 64


def coded_concept(code: codes.Code) -> hd.sr.CodedConcept:
    """The highdicom form of a radnode :class:`~dicom_sr.codes.Code`."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


@contextmanager
def _highdicom_encoding(what: str) -> Iterator[None]:
    """Run highdicom constructors; their ValueError/TypeError becomes EncodingError naming ``what``.

    highdicom copies the Patient and Study modules verbatim, and warns when Patient's Name has a
    single component ("Lung_Dx-A0001"): a value radnode must copy unchanged, or the PACS files the
    result under another patient. Only that warning is silenced; every other one still surfaces.
    So is the log line highdicom writes for the frames of one multi-frame source, which radnode passes
    as one header per frame (:func:`_frame_view`) and lists once afterwards.
    """
    log = logging.getLogger("highdicom.image")
    log.addFilter(_repeated_source_instances)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r'The string ".*" is unlikely to represent the intended person name',
            category=UserWarning,
        )
        try:
            yield
        except EncodingError:
            raise
        except (ValueError, TypeError) as exc:
            raise EncodingError(f"highdicom rejected the {what}: {exc}") from exc
        finally:
            log.removeFilter(_repeated_source_instances)


def _repeated_source_instances(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Duplicate entries found in the ReferencedSeriesSequence")


def _tidy_copied_attributes(dataset: pydicom.Dataset) -> None:
    """Fix what highdicom copies verbatim from the source so that the result validates and round-trips.

    - A Referenced Study Sequence whose items lack Referenced SOP Class UID is removed: some
      archives (e.g. TCIA's) fill this Type 3 sequence with items missing the Type 1 attribute
      (PS3.3 10.8 SOP Instance Reference macro), which makes the whole result fail validation.
    - De-identified sources that do not say how (Patient Identity Removed YES, no method) get
      Deidentification Method "not stated in the source images", which the result must have.
    - Every sequence and item gets a defined length. Copied sequences keep the source's undefined
      lengths, and DCMTK-based archives (Orthanc) re-encode those with defined lengths on C-STORE;
      written with defined lengths, the object the PACS returns is byte for byte the one we sent.
    """
    sequence = dataset.get("ReferencedStudySequence")
    if sequence is not None and any("ReferencedSOPClassUID" not in item for item in sequence):
        del dataset.ReferencedStudySequence
    if (
        dataset.get("PatientIdentityRemoved") == "YES"
        and not dataset.get("DeidentificationMethod")
        and not dataset.get("DeidentificationMethodCodeSequence")
    ):  # Type 1C then (C.7.1.1); some de-identifiers leave it empty, and radnode cannot know more
        dataset.DeidentificationMethod = "not stated in the source images"
    _define_lengths(dataset)


def _set_laterality(image: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Laterality of an image result, from its source (PS3.3 C.7.3.1, C.7.6.1).

    General Series Laterality is Type 2C: kept when the source has a value, absent otherwise (an
    empty one says "unknown", dciodvfy's warning). Image Laterality then says what is known: the
    source's, else U (unpaired), which is what a source that names no side images; validators
    that cannot know whether the body part is paired (PixelMed) ask for one of the two.
    """
    if "Laterality" in image and not image.Laterality:
        del image.Laterality
    side = str(source.get("ImageLaterality") or source.get("Laterality") or "U")
    if source.get("Laterality"):
        image.Laterality = source.Laterality
    image.ImageLaterality = side


def _define_lengths(dataset: pydicom.Dataset) -> None:
    for element in dataset:
        if element.VR == "SQ":
            element.is_undefined_length = False
            for item in element.value:
                item.is_undefined_length_sequence_item = False
                _define_lengths(item)


# Type 2 attributes of the Patient and General Study modules that highdicom copies from the first
# source image (PS3.3 C.7.1.1, C.7.2.1); it fails with AttributeError where one is absent.
_COPIED_TYPE_2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def _with_type_2_present(source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """``source`` with the first header's absent Type 2 patient/study attributes present and empty.

    Real series lack some (the GE head CT in tests/data has no Patient's Birth Date); Type 2
    means "present, may be empty", which is what the result must then carry. The caller's
    datasets are not changed: the first one is copied when something is missing.
    """
    first = source[0]
    missing = [keyword for keyword in _COPIED_TYPE_2 if keyword not in first]
    if not missing:
        return list(source)
    first = copy.copy(first)
    for keyword in missing:
        setattr(first, keyword, None)
    return [first, *source[1:]]


def _content_label(name: str) -> str:
    label = _CS_FORBIDDEN.sub("_", name.upper())[:_CS_MAX_LENGTH].strip()
    return label or "RADNODE"


def _check_source(findings: Findings, source: Sequence[pydicom.Dataset]) -> tuple[int, int]:
    """Check that ``source`` is the series the masks were computed on; return (rows, columns)."""
    if not source:
        raise EncodingError("build_seg needs the source slice headers, got none")
    uids = tuple(str(ds.SOPInstanceUID) for ds in source)
    if len(set(uids)) != len(uids) and not findings.source_frame_numbers:
        raise EncodingError(
            f"the source repeats images ({len(uids)} slices in {len(set(uids))} instance(s)) but the "
            "findings name no frame numbers: a multi-frame source needs them to place each frame"
        )
    if uids != findings.source_sop_instance_uids:
        raise EncodingError(
            "source headers must be in the order of findings.source_sop_instance_uids "
            f"(mask slice i is source[i]); got {len(uids)} headers, "
            f"{len(findings.source_sop_instance_uids)} UIDs in the findings"
        )
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {ds.get(attribute) for ds in source}
        if len(values) != 1 or None in values:
            raise EncodingError(f"source slices must share one {attribute}, got {sorted(map(str, values))}")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in source}
    if len(shapes) != 1:
        raise EncodingError(f"source slices must share one Rows x Columns, got {sorted(shapes)}")
    (shape,) = shapes
    return shape


_SINGLE_FRAME_CLASS = {
    "CT": CTImageStorage, "MR": MRImageStorage, "PT": PositronEmissionTomographyImageStorage,
}
# What a frame view of a multi-frame image leaves out: the frames' own geometry replaces these
_MULTI_FRAME_ONLY = {"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "NumberOfFrames",
                     "PixelData", "FloatPixelData", "DoubleFloatPixelData"}


def _source_images(findings: Findings, source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """What highdicom takes as the source: one single-frame header per mask slice.

    A series of single-frame images is its images. A slice that is a frame of a multi-frame image
    (Enhanced or Legacy Converted CT/MR, one instance or several, or mixed with single-frame ones)
    becomes a header of that frame alone, placed by its functional groups (PS3.3 C.7.6.16), so that
    highdicom writes each SEG frame with its source frame's position and orientation;
    :func:`_name_source_frames` then adds the frame numbers to the references.
    """
    if not any(frame is not None for frame in findings.source_frame_numbers):
        return list(source)
    return [ds if frame is None else _frame_view(ds, frame)
            for ds, frame in zip(source, findings.source_frame_numbers, strict=True)]


def _frame_view(image: pydicom.Dataset, frame: int) -> pydicom.Dataset:
    """Frame ``frame`` of the multi-frame ``image`` as the header of a single-frame image."""
    view = pydicom.Dataset()
    for element in image:
        if element.keyword not in _MULTI_FRAME_ONLY:
            view.add(copy.copy(element))  # its own elements: setting one must not change the source
    # highdicom tells a multi-frame image by its SOP class; the references get the real one back
    view.SOPClassUID = _SINGLE_FRAME_CLASS.get(str(image.get("Modality", "")), SecondaryCaptureImageStorage)
    view.ImagePositionPatient = _frame_item(image, frame, "PlanePositionSequence").ImagePositionPatient
    orientation = _frame_item(image, frame, "PlaneOrientationSequence")
    view.ImageOrientationPatient = orientation.ImageOrientationPatient
    measures = _frame_item(image, frame, "PixelMeasuresSequence")
    view.PixelSpacing = measures.PixelSpacing
    if measures.get("SliceThickness") is not None:
        view.SliceThickness = measures.SliceThickness
    return view


def _frame_item(image: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset:
    """A functional group of frame ``frame``: its own, else the shared one."""
    groups = [image.PerFrameFunctionalGroupsSequence[frame - 1],
              *image.get("SharedFunctionalGroupsSequence", [])]
    found: pydicom.Dataset | None = next((group.get(sequence)[0] for group in groups if group.get(sequence)),
                                         None)
    if found is None:
        raise EncodingError(f"frame {frame} of {image.SOPInstanceUID} has no {sequence}: "
                            "it cannot be placed")
    return found


def _name_source_frames(seg: pydicom.Dataset, findings: Findings,
                        source: Sequence[pydicom.Dataset]) -> None:
    """Each SEG frame's source reference names the frame it was derived from (Referenced Frame Number,
    PS3.3 C.8.20.3.1 / C.7.6.1.1.4), found by the frame's position; each source instance is listed once."""
    slices = {}
    for index, (ds, frame) in enumerate(zip(source, findings.source_frame_numbers, strict=True)):
        position = (ds.ImagePositionPatient if frame is None
                    else _frame_item(ds, frame, "PlanePositionSequence").ImagePositionPatient)
        slices[(str(ds.SOPInstanceUID), _position_key(position))] = findings.source_frame(index)
    classes = {str(ds.SOPInstanceUID): ds.SOPClassUID for ds in source}
    for item in seg.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        key = (str(reference.ReferencedSOPInstanceUID),
               _position_key(item.PlanePositionSequence[0].ImagePositionPatient))
        reference.ReferencedSOPClassUID = classes[key[0]]
        if slices.get(key) is not None:
            reference.ReferencedFrameNumber = slices[key]
    seg.SourceImageSequence = _each_instance_once(seg.SourceImageSequence, classes)
    for series in seg.ReferencedSeriesSequence:
        series.ReferencedInstanceSequence = _each_instance_once(series.ReferencedInstanceSequence, classes)


def _position_key(position: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in position)


def _each_instance_once(references: Sequence[pydicom.Dataset],
                        classes: dict[str, pydicom.uid.UID]) -> list[pydicom.Dataset]:
    """``references`` with each instance once, under its own SOP class."""
    once = list({str(item.ReferencedSOPInstanceUID): item for item in references}.values())
    for item in once:
        item.ReferencedSOPClassUID = classes[str(item.ReferencedSOPInstanceUID)]
    return once


def _label_map(findings: Findings) -> np.ndarray | None:
    """The segments as one label map (slices, rows, columns) of segment numbers; None if they overlap."""
    segments = findings.segments
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    label_map = np.zeros(segments[0].shape, dtype=dtype)
    n_labelled = 0
    for number, segment in enumerate(segments, start=1):
        np.copyto(label_map[segment.box], number, where=segment.mask)
        n_labelled += int(np.count_nonzero(segment.mask))
    return label_map if np.count_nonzero(label_map) == n_labelled else None


def _pixel_array(findings: Findings, shape: tuple[int, int], seg_type: SegType) -> np.ndarray:
    """One array for highdicom's constructor, in the cheapest form that encodes the same frames.

    BINARY: a label map (slices, rows, columns) of segment numbers is encoded about 7x faster by
    highdicom than the stacked form (slices, rows, columns, segments) and yields the same frames
    (``bench/seg.py``); overlapping segments (a lobe inside a lung) cannot share one and are
    stacked. FRACTIONAL: stacked probabilities (the mask where a segment has none). LABELMAP: the
    label map, or an error naming the overlap.
    """
    segments = findings.segments
    for segment in segments:
        if segment.shape[1:] != shape:
            raise EncodingError(
                f"segment {segment.label!r}: mask slices are {segment.shape[1:]}, "
                f"source images are {shape}"
            )
    if seg_type is SegType.FRACTIONAL:
        return np.stack(
            [
                probability if (probability := segment.full_probability()) is not None
                else segment.full_mask().astype(np.float32)
                for segment in segments
            ],
            axis=-1,
        )
    label_map = _label_map(findings)
    if label_map is not None:
        return label_map
    if seg_type is SegType.LABELMAP:
        raise EncodingError(
            "segments overlap, so they cannot be one LABELMAP segmentation; use binary or fractional"
        )
    return np.stack([segment.full_mask() for segment in segments], axis=-1).view(np.uint8)


def _segment_descriptions(
    findings: Findings, sop_instance_uid: str
) -> list[hd.seg.SegmentDescription]:
    algorithm = findings.algorithm
    parameters = {"model_sha256": algorithm.model_sha256} if algorithm.model_sha256 else None
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=coded_concept(codes.ARTIFICIAL_INTELLIGENCE),
        version=algorithm.version,
        source=MANUFACTURER,
        parameters=parameters,
    )
    # A segment that a measurement group is about is tracked under that group's identifier, so
    # the SEG segment and the SR group (TID 1411) carry the same Tracking ID and UID.
    tracking_ids: dict[int, str] = {}
    for group in findings.groups:
        if group.segment is not None:
            tracking_ids.setdefault(group.segment, group.tracking_id)
    descriptions = []
    for index, segment in enumerate(findings.segments):
        tracking_id = tracking_ids.get(index, segment.label)
        description = hd.seg.SegmentDescription(
            segment_number=index + 1,
            segment_label=segment.label,
            segmented_property_category=coded_concept(segment.category),
            segmented_property_type=coded_concept(segment.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            tracking_id=tracking_id,
            tracking_uid=derive_uid(sop_instance_uid, "tracking", tracking_id),
            anatomic_regions=(
                [coded_concept(segment.anatomic_region)] if segment.anatomic_region else None
            ),
            display_color=hd.color.CIELabColor.from_rgb(*segment.color_rgb),
        )
        _add_modifiers(description, segment)
        descriptions.append(description)
    return descriptions


def _add_modifiers(description: hd.seg.SegmentDescription, segment: Segment) -> None:
    """Laterality and other modifiers, nested in the coded items they qualify (PS3.3 C.8.20.2).

    highdicom's SegmentDescription takes no modifiers, so they are added to its items here.
    """
    if segment.property_modifier is not None:
        item = description.SegmentedPropertyTypeCodeSequence[0]
        item.SegmentedPropertyTypeModifierCodeSequence = [coded_concept(segment.property_modifier)]
    if segment.anatomic_region_modifier is not None:
        if segment.anatomic_region is None:
            raise ValueError(f"segment {segment.label!r}: an anatomic region modifier needs a region")
        item = description.AnatomicRegionSequence[0]
        item.AnatomicRegionModifierSequence = [coded_concept(segment.anatomic_region_modifier)]


def build_seg(
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str | None = None,
    manufacturer: str = MANUFACTURER,
    device_serial_number: str = DEFAULT_DEVICE_SERIAL_NUMBER,
    institution_name: str | None = None,
    seg_type: SegType | str = SegType.BINARY,
) -> hd.seg.Segmentation:
    """Encode ``findings.segments`` as one Segmentation of the ``source`` series (``seg_type``).

    ``source`` are the source slice headers in mask order (``source[i]`` ↔ ``mask[i]`` ↔
    ``findings.source_sop_instance_uids[i]``); Pixel Data is not needed. The equipment is
    (``manufacturer``, model = pipeline name, software version = pipeline version). Raises
    :class:`EncodingError` naming the rule when the inputs do not fit together.
    """
    if not findings.segments:
        raise EncodingError("findings have no segments: there is nothing to put in a SEG")
    if not any(segment.mask.any() for segment in findings.segments):
        raise EncodingError("every segment mask is empty: a SEG needs at least one frame")
    seg_type = parse(SegType, seg_type, "seg_type")
    shape = _check_source(findings, source)
    algorithm = findings.algorithm
    if series_description is None:
        series_description = f"{algorithm.name} {algorithm.version} segmentation"[:_LO_MAX_LENGTH]
    with _highdicom_encoding("segmentation"):
        descriptions = _segment_descriptions(findings, sop_instance_uid)
        pixel_array = _pixel_array(findings, shape, seg_type)
        seg = hd.seg.Segmentation(
            source_images=_with_type_2_present(_source_images(findings, source)),
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues(seg_type.name),
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number=device_serial_number,
            institution_name=institution_name,
            series_description=series_description,
            content_label=_content_label(algorithm.name),
            content_description=f"{algorithm.name} {algorithm.version}"[:_LO_MAX_LENGTH],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=True,
        )
    if findings.source_frame_numbers:
        _name_source_frames(seg, findings, source)
    _set_laterality(seg, source[0])
    _tidy_copied_attributes(seg)
    return seg
