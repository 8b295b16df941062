"""Test series made from the repository's chest CT or from nothing: copies with fresh UIDs (so one
real series can be sent many times as different series) and tiny synthetic CT series (for series
too long or too odd to keep as files). Bad-input cases built on them are in ``tests.corpus.bad``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["renamed_series", "send_datasets", "synthetic_series"]


def renamed_series(files: Sequence[Path], *, study_uid: str | None = None) -> list[Dataset]:
    """The files as one new series (new study unless ``study_uid``): every UID fresh, pixels kept."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    datasets = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    return datasets


def synthetic_series(slices: int, *, rows: int = 8, columns: int = 8, gap_mm: float = 1.0) -> list[Dataset]:
    """A valid axial CT series of ``slices`` tiny slices (air with a water square), Explicit VR LE."""
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    pixels = np.full((rows, columns), -1000, dtype=np.int16)
    pixels[rows // 4 : 3 * rows // 4, columns // 4 : 3 * columns // 4] = 0
    template = Dataset()
    template.SOPClassUID = CTImageStorage
    template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
    template.FrameOfReferenceUID = frame_uid
    template.Modality = "CT"
    template.SeriesNumber = 7
    template.PatientName, template.PatientID = "Synthetic^Patient", "SYN-0001"
    template.PatientBirthDate = "19600101"
    template.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    template.PixelSpacing = [1.0, 1.0]
    template.SliceThickness = gap_mm
    template.Rows, template.Columns = rows, columns
    template.SamplesPerPixel, template.PhotometricInterpretation = 1, "MONOCHROME2"
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 16, 15
    template.PixelRepresentation = 1
    template.RescaleSlope, template.RescaleIntercept = 1, 0
    template.PixelData = pixels.tobytes()
    datasets = []
    for index in range(slices):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, index * gap_mm]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    return datasets


def send_datasets(port: int, datasets: Sequence[Dataset], *, calling: str = "TESTSCU",
                  called: str = "RADNODE", acknowledged: list[str] | None = None) -> list[int]:
    """C-STORE ``datasets`` on one association; return each status (``-1``: no answer).

    Stops at the first unanswered request (association lost); ``acknowledged`` collects the SOP
    Instance UIDs answered Success as they come, so a caller sees them even mid-transfer.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID) for ds in datasets[:1]])
    statuses: list[int] = []
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
    except OSError:
        return statuses
    if not assoc.is_established:
        return statuses
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else -1
            statuses.append(code)
            if code == 0 and acknowledged is not None:
                acknowledged.append(str(ds.SOPInstanceUID))
            if code == -1 or not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
