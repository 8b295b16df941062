"""Findings → a derived image series (PS3.3 C.7.6.1.1.3): an image-to-image model's output as images.

One CT Image (A.3) or MR Image (A.4) instance per source slice, in the source's Study and Frame of
Reference, each placed exactly as its source slice (Image Position, Orientation, Pixel Spacing,
Slice Thickness; a frame of a multi-frame source by its functional groups), so that a viewer lays the
derived series on the source frames:

- Image Type DERIVED\\SECONDARY; Source Image Sequence names the slice (and frame) it was made from,
  purpose "Source image for image processing operation" (CID 7202); Derivation Code Sequence
  (CID 7203) and Derivation Description say how;
- the algorithm is identified in General Equipment (model = pipeline name, software version) and in
  Contributing Equipment as the processing equipment (CID 7005), with the model's SHA-256; the
  scanner that acquired the source is listed there as the acquisition equipment;
- the series description ends "(machine-generated, not for diagnosis)", whatever it is cut to;
- the values are stored as signed 16-bit with one Rescale Slope and Intercept for the whole series
  (:func:`choose_rescale`): integer values whose range fits 16 bits exactly; any others to within
  half a Rescale Slope, the slope being the range / 65534 (written as a 10-digit DS, rounded up);
- SOP Instance UIDs derive from the series' instance UID and the source slice, so a re-run writes the
  same UIDs and the PACS replaces the earlier images.

MR Image has no Modality LUT module: the rescale is written anyway (a Standard Extended SOP Class, as
MR scanners that rescale do), since without it float output could not be stored.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from dicom_sr import codes
from dicom_sr.errors import EncodingError
from dicom_sr.findings import DerivedImage, Findings
from dicom_sr.rtstruct import _PATIENT_AND_STUDY, _TYPE_2, _code_item, _image_reference
from dicom_sr.seg import MANUFACTURER, _check_source, _source_images, _tidy_copied_attributes
from dicom_sr.uids import derive_uid

__all__ = ["MACHINE_GENERATED", "build_derived_series", "choose_rescale", "quantise"]

#: What every derived series' description ends with: a reader must never take it for the scan.
MACHINE_GENERATED = " (machine-generated, not for diagnosis)"
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_STORED_MAX = 32767  # int16, symmetric about the intercept (-32768 is never written)
_DS_DIGITS = 10  # "-1.234567891e+30" is 16 characters, DS's limit
_LO_MAX_LENGTH = 64
_ST_MAX_LENGTH = 1024
_HU = "HU"
# copied from the source slice when present: the rest of Patient, Study, Series and the acquisition
_COPIED = ("StudyDescription", "PatientAge", "PatientIdentityRemoved", "DeidentificationMethod",
           "DeidentificationMethodCodeSequence", "BodyPartExamined", "AcquisitionDate", "AcquisitionTime",
           "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod")
_COPIED_TYPE_2 = {"CT": ("KVP", "AcquisitionNumber", "PatientPosition"),
                  "MR": ("ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength",
                         "AcquisitionNumber", "PatientPosition")}
_COPIED_MR = ("RepetitionTime", "InversionTime", "SequenceName", "MagneticFieldStrength", "ImagingFrequency",
              "ImagedNucleus", "FlipAngle")
# MR Image Type 1 attributes a source may lack (an Enhanced MR keeps them in functional groups)
_MR_TYPE_1 = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}  # RM: research mode, the neutral term


def _ds(value: float, *, up: bool = False) -> str:
    """``value`` as a DS of at most 16 characters; with ``up``, never less than ``value``."""
    text = f"{value:.{_DS_DIGITS}g}"
    if up and float(text) < value:
        text = f"{value * (1 + 10.0 ** -(_DS_DIGITS - 1)):.{_DS_DIGITS}g}"
    return text


def choose_rescale(values: np.ndarray) -> tuple[str, str]:
    """(Rescale Slope, Rescale Intercept) as DS texts that store ``values`` in int16.

    Integer values whose range fits in 65534 steps get slope 1 (and intercept 0 when they fit as
    they are): they round-trip exactly. Others get the intercept at the range's centre and the
    smallest slope that reaches both ends: each value is then read back within half a slope.
    """
    low, high = float(values.min()), float(values.max())
    if high - low <= 2 * _STORED_MAX and bool(np.all(values == np.round(values))):
        fits = low >= -_STORED_MAX and high <= _STORED_MAX
        return "1", "0" if fits else str(round((low + high) / 2))
    intercept = _ds((low + high) / 2)
    half = max(high - float(intercept), float(intercept) - low)
    return (_ds(half / _STORED_MAX, up=True) if half > 0 else "1"), intercept


def quantise(values: np.ndarray, slope: str, intercept: str) -> np.ndarray:
    """``values`` as the int16 stored values of (``slope``, ``intercept``), from :func:`choose_rescale`."""
    stored = np.rint((values.astype(np.float64) - float(intercept)) / float(slope))
    return np.clip(stored, -_STORED_MAX, _STORED_MAX).astype("<i2")


def _window(derived: DerivedImage) -> tuple[str, str]:
    """(Window Center, Window Width): the derived image's own, else its values' 1st-99th percentile."""
    if derived.window is not None:
        center, width = derived.window
    else:
        low, high = (float(v) for v in np.percentile(derived.values, (1, 99)))
        center, width = (low + high) / 2, max(high - low, 1.0)
    return _ds(center), _ds(width)


def _contributing_equipment(findings: Findings, header: Dataset, manufacturer: str,
                            now: datetime) -> list[Dataset]:
    """The scanner that acquired the source (when it says which), then radnode's algorithm that derived it."""
    items = []
    if header.get("Manufacturer"):
        scanner = Dataset()
        scanner.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(codes.ACQUISITION_EQUIPMENT)])
        for keyword in ("Manufacturer", "InstitutionName", "ManufacturerModelName", "DeviceSerialNumber",
                        "SoftwareVersions"):
            if header.get(keyword):
                scanner.add(copy.deepcopy(header[keyword]))
        items.append(scanner)
    algorithm = findings.algorithm
    processing = Dataset()
    processing.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(codes.PROCESSING_EQUIPMENT)])
    processing.Manufacturer = manufacturer
    processing.ManufacturerModelName = algorithm.name[:_LO_MAX_LENGTH]
    processing.SoftwareVersions = algorithm.version[:_LO_MAX_LENGTH]
    processing.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    model = f"; model SHA-256 {algorithm.model_sha256}" if algorithm.model_sha256 else ""
    processing.ContributionDescription = f"{algorithm.name} {algorithm.version}{model}"[:_ST_MAX_LENGTH]
    items.append(processing)
    return items


def _image_type_3(modality: str, header: Dataset) -> list[str]:
    """Image Type value 3 of a derived image: CT needs AXIAL or LOCALIZER (C.8.2.1.1.1; AXIAL, a slice,
    in any plane), taken from the source; MR keeps the source's, if it has one."""
    value = list(header.get("ImageType", []))[2:3]
    if modality == "CT":
        return value if value in (["AXIAL"], ["LOCALIZER"]) else ["AXIAL"]
    return value


def _source_reference(image: Dataset, frame: int | None) -> Dataset:
    item = _image_reference(image, frame)
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(codes.SOURCE_IMAGE_FOR_PROCESSING)])
    return item


def _series_description(findings: Findings) -> str:
    algorithm = findings.algorithm
    named = f"{algorithm.name} {algorithm.version}"
    return named[:_LO_MAX_LENGTH - len(MACHINE_GENERATED)] + MACHINE_GENERATED


def build_derived_series(
    findings: Findings,
    source: Sequence[pydicom.Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    manufacturer: str = MANUFACTURER,
) -> list[Dataset]:
    """One derived image per ``source`` slice (mask order) of ``findings.derived_image``.

    The images are CT Image for a CT source and MR Image for an MR one; another modality is refused
    with an :class:`EncodingError`. Their SOP Instance UIDs derive from ``sop_instance_uid``.
    """
    derived = findings.derived_image
    if derived is None:
        raise EncodingError("findings have no derived image: there is nothing to put in a derived series")
    first = source[0] if source else Dataset()
    modality = str(first.get("Modality", ""))
    sop_class = _SOP_CLASS.get(modality)
    if sop_class is None:
        raise EncodingError(f"a derived series is written as CT or MR images, but the source's modality is "
                            f"{modality or 'not stated'}: route the image pipeline to CT or MR series only")
    shape = _check_source(findings, source)
    if derived.values.shape[1:] != shape:
        raise EncodingError(f"derived image slices are {derived.values.shape[1:]}, source images are {shape}")
    placed = _source_images(findings, source)  # a frame of a multi-frame image placed as that frame
    slope, intercept = choose_rescale(derived.values)
    stored = quantise(derived.values, slope, intercept)
    center, width = _window(derived)
    algorithm = findings.algorithm
    now = datetime.now(UTC)
    images = []
    for index, (header, plane) in enumerate(zip(source, placed, strict=True)):
        frame = findings.source_frame(index)
        key = str(header.SOPInstanceUID) + ("" if frame is None else f"/{frame}")
        uid = derive_uid(sop_instance_uid, "derived-slice", key)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(uid)
        if "SpecificCharacterSet" in header:
            ds.SpecificCharacterSet = header.SpecificCharacterSet
        # General Image (C.7.6.1): derived from this slice, how, and by what
        ds.ImageType = ["DERIVED", "SECONDARY", *_image_type_3(modality, header)]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = uid
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        for keyword in _PATIENT_AND_STUDY:
            if keyword in header:
                ds.add(copy.deepcopy(header[keyword]))
            elif keyword in _TYPE_2:
                setattr(ds, keyword, "")
        for keyword in _COPIED:
            if keyword in header:
                ds.add(copy.deepcopy(header[keyword]))
        for keyword in _COPIED_TYPE_2[modality]:
            setattr(ds, keyword, header.get(keyword, ""))
        ds.Modality = modality
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = algorithm.name[:_LO_MAX_LENGTH]
        ds.SoftwareVersions = algorithm.version[:_LO_MAX_LENGTH]
        ds.SeriesDescription = _series_description(findings)
        ds.DerivationDescription = derived.description[:_ST_MAX_LENGTH]
        ds.DerivationCodeSequence = DicomSequence([_code_item(derived.derivation)])
        ds.SourceImageSequence = DicomSequence([_source_reference(header, frame)])
        ds.ContributingEquipmentSequence = DicomSequence(
            _contributing_equipment(findings, header, manufacturer, now))
        ds.SeriesInstanceUID = series_instance_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = index + 1
        # Type 2C while the body part may be paired: empty ("unknown") without a Body Part Examined,
        # absent when the source names an unpaired one and no side
        side = header.get("Laterality") or ""
        if side or not ds.get("BodyPartExamined"):
            ds.Laterality = side
        # Frame of Reference (C.7.4.1) and Image Plane (C.7.6.2): the source slice's own
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
        ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
        ds.ImagePositionPatient = plane.ImagePositionPatient
        ds.ImageOrientationPatient = plane.ImageOrientationPatient
        ds.PixelSpacing = plane.PixelSpacing
        ds.SliceThickness = plane.get("SliceThickness", "")
        if plane.get("SliceLocation") is not None:
            ds.SliceLocation = plane.SliceLocation
        if modality == "MR":
            for keyword, neutral in _MR_TYPE_1.items():
                setattr(ds, keyword, header.get(keyword) or neutral)
            for keyword in _COPIED_MR:
                if header.get(keyword) is not None:
                    ds.add(copy.deepcopy(header[keyword]))
        # Image Pixel (C.7.6.3), Modality LUT (C.11.1) and VOI LUT (C.11.2)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = _HU if derived.unit == codes.UNIT_HOUNSFIELD else "US"  # US: unspecified
        ds.WindowCenter = center
        ds.WindowWidth = width
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = stored[index].tobytes()
        _tidy_copied_attributes(ds)
        images.append(ds)
    return images
