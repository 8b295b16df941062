"""Findings → RT Structure Set (PS3.3 A.19): the segments as contours a treatment planning system reads.

One ROI per segment (Structure Set ROI, ROI Contour and RT ROI Observations, PS3.3 C.8.8.5, C.8.8.6,
C.8.8.8), named, coloured and coded as in the SEG. Its contours are CLOSED_PLANAR polygons on the
source slices, traced along the pixel edges of the mask (:func:`slice_contours`):

- every 4-connected part of a slice is a contour of its own, every hole inside a part another one,
  and an island inside a hole again its own; a planning system combines the contours of one ROI on
  one slice by the even-odd rule (Eclipse, RayStation and Monaco do), which gives back the mask;
- a structure one pixel wide is a polygon around that pixel row (four corners at least), never the
  2-point or zero-area contour that tracing through pixel centres gives;
- the points are in the patient coordinates of each source slice's own position, orientation and
  pixel spacing (PS3.3 C.7.6.2.1.1), so every patient position and tilted or multi-frame source is
  placed as the scanner placed it, with no axis flipped;
- ContourData values are written with at most 16 characters (DS; some planning systems refuse
  longer ones), to a micrometre.

The Structure Set references the source's Frame of Reference and every source image (and frame);
each contour references the image it lies on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage
from scipy import ndimage

from dicom_sr import codes
from dicom_sr.errors import EncodingError
from dicom_sr.findings import Findings, Segment
from dicom_sr.outline import trace_region
from dicom_sr.seg import MANUFACTURER, _check_source, _source_images

__all__ = ["RTSTRUCT_LABEL", "build_rtstruct", "contour_points", "slice_contours"]

#: Structure Set Label (SH, 16 characters): what a planning system lists the structure set as.
RTSTRUCT_LABEL = "AI contours"
# RT Referenced Study: the Study Component Management SOP class (retired, but the value PS3.3
# C.8.8.5.3 and every planning system expect in Referenced SOP Class UID)
_STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"
_DS_MAX_CHARACTERS = 16
_LO_MAX_LENGTH = 64
# attributes of the Patient and General Study modules copied from the source, as SEG and SR do
_PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_TYPE_2 = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber"}


def slice_contours(plane: np.ndarray) -> list[np.ndarray]:
    """The closed pixel-edge polygons of one slice's mask, (column, row) vertices, first == last.

    Parts and the holes in them (and islands in those) each give one polygon; filled by the
    even-odd rule they are exactly ``plane``. Each part is traced within its own bounding box, so
    a slice of many specks costs what its specks cost.
    """
    contours = []
    parts, _ = ndimage.label(plane)
    for number, box in enumerate(ndimage.find_objects(parts), start=1):
        part = parts[box] == number
        filled = ndimage.binary_fill_holes(part)
        corner = np.array([box[1].start, box[0].start], dtype=np.float64)
        contours.append(trace_region(filled) + corner)
        holes, _ = ndimage.label(filled & ~part)
        for hole_number, hole_box in enumerate(ndimage.find_objects(holes), start=1):
            hole = ndimage.binary_fill_holes(holes[hole_box] == hole_number)
            contours.append(trace_region(hole) + corner + [hole_box[1].start, hole_box[0].start])
    return contours


def contour_points(polygon: np.ndarray, image: Dataset) -> np.ndarray:
    """Patient coordinates (mm) of ``polygon``'s (column, row) pixel-edge vertices on ``image``.

    Pixel centres lie at half-integer (column, row) here and the centre of the first pixel is at
    Image Position (Patient); rows follow the second direction of Image Orientation (Patient).
    """
    orientation = np.asarray(image.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    origin = np.asarray(image.ImagePositionPatient, dtype=np.float64)
    columns = polygon[:, 0:1] - 0.5
    rows = polygon[:, 1:2] - 0.5
    along_row, along_column = orientation[:3], orientation[3:]
    points: np.ndarray = origin + columns * column_spacing * along_row + rows * row_spacing * along_column
    return points


def _ds(value: float) -> str:
    """A DS value to a micrometre, trailing zeros dropped, within 16 characters."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if len(text) > _DS_MAX_CHARACTERS:
        raise EncodingError(f"a contour coordinate of {value} mm does not fit a DS value")
    return text


def _code_item(code: codes.Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _image_reference(image: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _roi_contours(segment: Segment, number: int, findings: Findings, source: Sequence[Dataset],
                  placed: Sequence[Dataset]) -> Dataset:
    """The ROI Contour item of ``segment``: its colour and its contours, slice by slice."""
    roi = Dataset()
    roi.ReferencedROINumber = number
    roi.ROIDisplayColor = list(segment.color_rgb)
    contours: list[Dataset] = []
    z0, y0, x0 = segment.origin
    for offset, plane in enumerate(segment.mask):
        if not plane.any():
            continue
        index = z0 + offset
        for polygon in slice_contours(plane):
            points = contour_points(polygon[:-1] + np.array([x0, y0]), placed[index])
            contour = Dataset()
            contour.ContourImageSequence = DicomSequence([
                _image_reference(source[index], findings.source_frame(index))
            ])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [_ds(v) for v in points.ravel()]
            contours.append(contour)
    if contours:
        roi.ContourSequence = DicomSequence(contours)
    return roi


def _observation(segment: Segment, number: int) -> Dataset:
    """RT ROI Observations: what the ROI is (its SEG property type), interpreted by no person."""
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIIdentificationCodeSequence = DicomSequence([_code_item(segment.property_type)])
    # ORGAN for anatomy; a lesion's role in a plan (GTV, …) is the clinician's call, left empty
    anatomy = segment.category == codes.ANATOMICAL_STRUCTURE
    observation.RTROIInterpretedType = "ORGAN" if anatomy else ""
    observation.ROIInterpreter = ""
    return observation


def _referenced_frame_of_reference(findings: Findings, source: Sequence[Dataset]) -> Dataset:
    """The source's Frame of Reference, study and series, with every image (and frame) in it."""
    first = source[0]
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    seen: dict[tuple[str, int | None], Dataset] = {}
    for index, image in enumerate(source):
        frame = findings.source_frame(index)
        seen.setdefault((str(image.SOPInstanceUID), frame), _image_reference(image, frame))
    series.ContourImageSequence = DicomSequence(list(seen.values()))
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame_of_reference = Dataset()
    frame_of_reference.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_of_reference.RTReferencedStudySequence = DicomSequence([study])
    return frame_of_reference


def build_rtstruct(
    findings: Findings,
    source: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str | None = None,
    manufacturer: str = MANUFACTURER,
) -> Dataset:
    """Encode ``findings.segments`` as an RT Structure Set on the ``source`` slices (mask order)."""
    if not findings.segments:
        raise EncodingError("findings have no segments: there is nothing to contour")
    _check_source(findings, source)
    placed = _source_images(findings, source)  # a frame of a multi-frame image placed as that frame
    algorithm = findings.algorithm
    first = source[0]
    now = datetime.now(UTC)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_instance_uid)
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_instance_uid
    for keyword in _PATIENT_AND_STUDY:
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
        elif keyword in _TYPE_2:
            setattr(ds, keyword, "")
    # Frame of Reference (C.7.4.1): the source's, which every contour point is in
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # RT Series (C.8.8.1) and General Equipment (C.7.5.1)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    description = series_description or f"AI contours (unverified): {algorithm.name} {algorithm.version}"
    ds.SeriesDescription = description[:_LO_MAX_LENGTH]
    ds.OperatorsName = ""
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = algorithm.name[:_LO_MAX_LENGTH]
    ds.SoftwareVersions = algorithm.version
    # Structure Set (C.8.8.5)
    ds.StructureSetLabel = RTSTRUCT_LABEL
    ds.StructureSetName = algorithm.name[:_LO_MAX_LENGTH]
    ds.StructureSetDescription = (f"Contours of {len(findings.segments)} structure(s) traced from the "
                                  f"segmentation of {algorithm.name} {algorithm.version}; not reviewed")
    ds.InstanceNumber = instance_number
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame_of_reference(findings, source)])
    rois, contours, observations = [], [], []
    for number, segment in enumerate(findings.segments, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = segment.label[:_LO_MAX_LENGTH]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{algorithm.name} {algorithm.version}"[:_LO_MAX_LENGTH]
        rois.append(roi)
        contours.append(_roi_contours(segment, number, findings, source, placed))
        observations.append(_observation(segment, number))
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"  # RT General Plan's word for "a person must still review it"
    return ds
