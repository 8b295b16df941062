"""Derived image series (dicom_sr/derived.py): an image-to-image pipeline's output as CT or MR images.

Each image lies on its source slice (or frame) in every scanner layout of the chest CT, its values read
back within the stated bound (half a Rescale Slope; exactly for whole numbers), its UIDs are the same on
a re-run, and it validates with dciodvfy and PixelMed (0 errors). The end-to-end path through Orthanc
is in tests/test_end_to_end.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_sr import codes
from dicom_sr.derived import MACHINE_GENERATED, build_derived_series, choose_rescale, quantise
from dicom_sr.errors import EncodingError
from dicom_sr.findings import Algorithm, DerivedImage, Findings
from dicom_sr.uids import ResultKind, result_uids
from inference.pipelines import create
from inference.pipelines.ct_denoise import CTDenoise
from inference.reorient import run_on_source
from inference.volume import Volume, load_series
from node.config import DEFAULT_FORMATS, PipelineOptions
from node.jobs.results import WRITERS, EncodeRequest
from tests.ct_variants import VARIANTS, write_variant
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc, wait_for
from tests.pixelmed import UNRECOGNIZED, validate_instance
from tests.result_objects import CHEST_DX, _load_mr
from tests.rtstruct_masks import source_plane

CPU = torch.device("cpu")
CHEST_CT = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
RESULT_TIMEOUT_S = 240


def _read_back(image: pydicom.Dataset) -> np.ndarray:
    return image.pixel_array.astype(np.float64) * float(image.RescaleSlope) + float(image.RescaleIntercept)


def _bound(image: pydicom.Dataset, values: np.ndarray) -> float:
    """The stated bound: exact for whole numbers stored with slope 1, else half a slope (and float error)."""
    slope = float(image.RescaleSlope)
    whole = slope == 1 and bool(np.all(values == np.round(values)))
    return 0.0 if whole else slope / 2 * (1 + 1e-9) + 1e-9 * float(np.abs(values).max())


def _series(findings: Findings, headers: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    ids = result_uids(headers[0].SeriesInstanceUID, "ct-denoise", "1.0.0", None, ResultKind.IMAGE)
    return build_derived_series(findings, headers, series_number=9906,
                                series_instance_uid=ids.series_instance_uid,
                                sop_instance_uid=ids.sop_instance_uid)


def _saved(images: list[pydicom.Dataset], folder: Path) -> list[Path]:
    paths = []
    for image in images:
        path = folder / f"{image.SOPInstanceUID}.dcm"
        image.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("values", [
    np.arange(-1024, 3072, dtype=np.float32),  # HU, whole numbers: exact with slope 1
    np.array([40000.0, 100000.0], dtype=np.float32),  # whole numbers outside int16, range within it
    np.linspace(-1000.5, 2000.25, 997, dtype=np.float32),  # fractions: within half a slope
    np.array([1e-6, 3e-6, 7.5e-6], dtype=np.float32),  # a tiny range
    np.array([-3e30, 1e30], dtype=np.float32),  # a range no int16 slope of 1 could hold
    np.full(5, 12.345, dtype=np.float32),  # constant, not whole
])
def test_rescale_reads_every_value_back_within_half_a_slope_and_whole_numbers_exactly(values) -> None:
    slope, intercept = choose_rescale(values)
    assert len(slope) <= 16 and len(intercept) <= 16, "DS values"
    stored = quantise(values, slope, intercept)
    assert stored.dtype == np.dtype("<i2")
    back = stored.astype(np.float64) * float(slope) + float(intercept)
    error = np.abs(back - values.astype(np.float64)).max()
    if np.all(values == np.round(values)) and np.ptp(values) <= 65534:
        assert slope == "1" and error == 0
    else:
        assert error <= float(slope) / 2 * (1 + 1e-9) + 1e-9 * np.abs(values).max()


@pytest.fixture(scope="module")
def chest() -> tuple[Volume, Findings]:
    volume = load_series(sorted(CHEST_CT.glob("*.dcm")))
    return volume, run_on_source(create("ct-denoise"), volume, CPU)


def test_ct_denoise_smooths_noise_and_keeps_edges(chest) -> None:
    volume, findings = chest
    assert findings.derived_image is not None
    before, after = volume.voxels.numpy(), findings.derived_image.values
    assert after.shape == before.shape and after.dtype == np.float32
    # neighbours that differ by noise (a few tens of HU) come closer; across an edge they stay apart
    step_before, step_after = np.abs(np.diff(before, axis=2)), np.abs(np.diff(after, axis=2))
    noise, edges = (step_before > 5) & (step_before < 60), step_before > 500
    assert step_after[noise].mean() < 0.6 * step_before[noise].mean()
    assert np.median(step_after[edges]) > 0.8 * np.median(step_before[edges])


def test_each_derived_image_lies_on_its_source_slice_and_reads_back_its_values(chest, tmp_path) -> None:
    volume, findings = chest
    assert findings.derived_image is not None
    images = _series(findings, list(volume.headers))
    assert len(images) == len(volume.headers)
    paths = _saved(images, tmp_path)
    for index, (path, header) in enumerate(zip(paths, volume.headers, strict=True)):
        image = pydicom.dcmread(path)
        assert image.SOPClassUID == pydicom.uid.CTImageStorage and image.Modality == "CT"
        assert list(image.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
            assert image[keyword].value == header[keyword].value, keyword
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert [float(v) for v in image[keyword].value] == [float(v) for v in header[keyword].value]
        assert float(image.SliceThickness) == float(header.SliceThickness)
        (source,) = image.SourceImageSequence
        assert source.ReferencedSOPInstanceUID == header.SOPInstanceUID
        assert source.ReferencedSOPClassUID == header.SOPClassUID
        assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"  # CID 7202
        assert image.DerivationCodeSequence[0].CodeValue == codes.SMOOTHING.value  # CID 7203
        assert image.SeriesDescription == "radnode ct-denoise 1.0.0" + MACHINE_GENERATED
        assert image.InstanceNumber == index + 1 and image.SeriesNumber == 9906
        values = findings.derived_image.values[index]
        assert np.abs(_read_back(image) - values).max() <= _bound(image, values)
    processing = [item for item in image.ContributingEquipmentSequence
                  if item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value]
    assert processing[0].ManufacturerModelName == "radnode ct-denoise"
    assert {pydicom.dcmread(p).SeriesInstanceUID for p in paths} == {images[0].SeriesInstanceUID}
    assert images[0].SeriesInstanceUID != volume.series_instance_uid
    for path in (paths[0], paths[len(paths) // 2], paths[-1]):
        check_iod(path).assert_no_errors()
    report = validate_instance(paths[0])  # PixelMed does not describe CT Image; it finds no error
    report.assert_no_errors()
    assert UNRECOGNIZED in report.output


def test_a_rerun_writes_the_same_uids_and_every_image_its_own(chest) -> None:
    volume, findings = chest
    first, again = _series(findings, list(volume.headers)), _series(findings, list(volume.headers))
    uids = [image.SOPInstanceUID for image in first]
    assert uids == [image.SOPInstanceUID for image in again]
    assert len(set(uids)) == len(uids)
    assert not set(uids) & set(volume.sop_instance_uids)


@pytest.mark.parametrize(("formats", "written"), [(DEFAULT_FORMATS, 64), (("seg", "sr"), 0)])
def test_the_derived_series_is_written_when_a_destination_takes_image_as_by_default(
        chest, formats: tuple[str, ...], written: int) -> None:
    volume, findings = chest
    (writer,) = [w for w in WRITERS if w.kind is ResultKind.IMAGE]
    uids = {"series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4"}
    request = EncodeRequest(findings, list(volume.headers), volume, PipelineOptions(), frozenset(formats),
                            lambda kind, variant: uids)
    assert (writer.format, writer.series_number) == ("image", 9906)
    images = writer.build(request, writer.series_number) if writer.applies(request) else []
    assert len(images) == written
    assert all(image.SeriesNumber == 9906 and image.SeriesInstanceUID == "1.2.3" for image in images)


@pytest.mark.parametrize("layout", sorted(VARIANTS))
def test_derived_images_lie_on_the_sources_own_slices_or_frames_in_every_layout(tmp_path, layout) -> None:
    paths = write_variant(layout, CHEST_CT, tmp_path / "source")
    volume = load_series(paths)
    findings = run_on_source(CTDenoise(), volume, CPU)
    assert findings.derived_image is not None
    images = _series(findings, list(volume.headers))
    written = _saved(images, tmp_path)
    for index, (path, header) in enumerate(zip(written, volume.headers, strict=True)):
        image = pydicom.dcmread(path)
        frame = findings.source_frame(index)
        position, orientation = source_plane(header, frame)
        assert np.allclose([float(v) for v in image.ImagePositionPatient], position, atol=1e-6)
        assert np.allclose([float(v) for v in image.ImageOrientationPatient], orientation, atol=1e-8)
        (source,) = image.SourceImageSequence
        assert source.ReferencedSOPInstanceUID == header.SOPInstanceUID
        assert source.get("ReferencedFrameNumber") == frame
        values = findings.derived_image.values[index]
        assert np.abs(_read_back(image) - values).max() <= _bound(image, values)
    check_iod(written[0]).assert_no_errors()


class _Identity:
    """A pipeline on axial (SPL) slices whose derived image is its input: turned back, it is the source."""

    name, version, orientation = "identity", "0", "SPL"

    def run(self, volume: Volume, device: torch.device) -> Findings:
        return Findings(Algorithm("identity", "0"), volume.sop_instance_uids, derived_image=DerivedImage(
            volume.voxels.numpy().copy(), codes.UNIT_HOUNSFIELD, "identity", codes.SMOOTHING))


def test_a_derived_image_made_on_turned_axes_comes_back_on_the_source_grid(tmp_path) -> None:
    volume = load_series(write_variant("coronal", CHEST_CT, tmp_path))
    findings = run_on_source(_Identity(), volume, CPU)
    assert findings.derived_image is not None
    assert np.array_equal(findings.derived_image.values, volume.voxels.numpy())


def test_an_mr_source_gives_mr_images_that_validate(tmp_path) -> None:
    headers, signal = _load_mr()
    findings = Findings(Algorithm("radnode mr-demo", "0.1"), tuple(h.SOPInstanceUID for h in headers),
                        derived_image=DerivedImage((signal * 0.37).astype(np.float32), codes.UNIT_NO_UNITS,
                                                   "scaled", codes.SMOOTHING))
    images = _series(findings, headers)
    (path,) = _saved(images[:1], tmp_path)
    image = pydicom.dcmread(path)
    assert image.SOPClassUID == pydicom.uid.MRImageStorage and image.RescaleType == "US"
    assert np.abs(_read_back(image) - findings.derived_image.values[0]).max() <= _bound(image, signal[0])
    check_iod(path).assert_no_errors()


def test_a_source_of_another_modality_is_refused_naming_what_to_route(chest) -> None:
    dx = pydicom.dcmread(CHEST_DX)
    values = np.zeros((1, int(dx.Rows), int(dx.Columns)), dtype=np.float32)
    findings = Findings(Algorithm("x", "1"), (dx.SOPInstanceUID,),
                        derived_image=DerivedImage(values, codes.UNIT_NO_UNITS, "none", codes.SMOOTHING))
    with pytest.raises(EncodingError, match=r"written as CT or MR images.*modality is DX: route the image "
                                            r"pipeline to CT or MR series only"):
        _series(findings, [dx])
    volume, _ = chest
    with pytest.raises(EncodingError, match="no derived image"):
        _series(Findings(Algorithm("x", "1"), volume.sop_instance_uids), list(volume.headers))


def test_a_derived_image_must_be_finite_float32_on_the_source_slices(chest) -> None:
    _, findings = chest
    assert findings.derived_image is not None
    with pytest.raises(ValueError, match="3-D float32"):
        DerivedImage(np.zeros((2, 3, 3)), codes.UNIT_HOUNSFIELD, "d", codes.SMOOTHING)
    with pytest.raises(ValueError, match="finite"):
        DerivedImage(np.full((2, 3, 3), np.nan, dtype=np.float32), codes.UNIT_HOUNSFIELD, "d",
                     codes.SMOOTHING)
    with pytest.raises(ValueError, match=r"derived image has 63 slices but the source has 64"):
        dataclasses.replace(findings, derived_image=dataclasses.replace(
            findings.derived_image, values=findings.derived_image.values[1:]))


@pytest.mark.slow
def test_the_derived_series_comes_back_from_orthanc_on_the_source_frames(
        tmp_path: Path, chest_ct_dir: Path, orthanc_factory: Callable[..., Orthanc]) -> None:
    # the destination names no formats: the default sends a derived series beside SEGs and SRs
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(pacs, tmp_path / "radnode", routes=[
        {"match": {"Modality": "CT"}, "pipelines": ["ct-denoise"], "send_to": ["pacs"]}])
    volume = load_series(sorted(chest_ct_dir.glob("*.dcm")))
    expected = CTDenoise().run(volume, CPU).derived_image
    assert expected is not None
    series_uid = result_uids(volume.series_instance_uid, "ct-denoise", CTDenoise.version, None,
                             ResultKind.IMAGE).series_instance_uid
    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", volume.headers[0].StudyInstanceUID)

        def derived() -> list[dict]:
            return [instance for series in pacs.series_of_study(study_id)
                    if series["MainDicomTags"].get("SeriesInstanceUID") == series_uid
                    for instance in pacs.instances_of_series(series["ID"])]

        instances = wait_for(derived, timeout=RESULT_TIMEOUT_S, interval=1.0,
                             until=lambda found: len(found) >= len(volume.headers),
                             what="the derived series from radnode in Orthanc")
        files = [pacs.download_instance(instance["ID"]) for instance in instances]
    assert len(files) == len(volume.headers)
    slices = {uid: index for index, uid in enumerate(volume.sop_instance_uids)}
    for number, data in enumerate(files):
        path = tmp_path / f"derived-{number}.dcm"
        path.write_bytes(data)
        image = pydicom.dcmread(path)
        assert image.StudyInstanceUID == volume.headers[0].StudyInstanceUID
        assert image.FrameOfReferenceUID == volume.frame_of_reference_uid
        index = slices[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
        header = volume.headers[index]
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert [float(v) for v in image[keyword].value] == [float(v) for v in header[keyword].value]
        values = expected.values[index]
        assert np.abs(_read_back(image) - values).max() <= _bound(image, values) + 1e-3  # the worker's floats
        if number == 0:
            check_iod(path).assert_no_errors()
            validate_instance(path).assert_no_errors()
