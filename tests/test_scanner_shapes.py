"""One chest CT in every shape a scanner or PACS sends it gives the axial result, on its own frames.

The variants (tests/ct_variants.py) hold exactly the axial series' voxels: coronal and sagittal
reslices, a gantry-tilted copy and Legacy Converted Enhanced CT (one instance, or a stack split over
two). lung-qct must find the
same lung voxels in each (mapped through the affines), report the same volumes, and the SEG and SR
must be written on the variant's own slices or frames and pass dciodvfy and PixelMed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_sr import codes
from dicom_sr.findings import Findings
from dicom_sr.rtstruct import build_rtstruct
from dicom_sr.seg import build_seg
from dicom_sr.sr import build_sr
from inference.pipelines import create
from inference.pipelines.lung_qct import LungQCT
from inference.registry import ModelRegistry
from inference.reorient import run_on_source
from inference.volume import Volume, load_series
from node.config import load_config
from tests.ct_variants import VARIANTS, write_variant
from tests.dciodvfy import check_iod
from tests.pixelmed import validate_instance, validate_sr
from tests.rtstruct_masks import dice, rtstruct_masks, source_plane

CPU = torch.device("cpu")


CHEST = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
Layout = tuple[str, list[Path], Volume, Findings]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Layout]:
    """The chest CT in layout ``name`` ("axial" or one of VARIANTS) with lung-qct's findings on it,
    made once for the module: every test of a layout looks at the same run."""
    made: dict[str, Layout] = {}

    def layout(name: str) -> Layout:
        if name not in made:
            paths = (sorted(CHEST.glob("*.dcm")) if name == "axial"
                     else write_variant(name, CHEST, tmp_path_factory.mktemp(name)))
            volume = load_series(paths)
            made[name] = (name, paths, volume, run_on_source(LungQCT(), volume, CPU))
        return made[name]

    return layout


@pytest.fixture(scope="module")
def axial(layouts: Callable[[str], Layout]) -> tuple[Volume, Findings]:
    _, _, volume, findings = layouts("axial")
    return volume, findings


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, layouts: Callable[[str], Layout]) -> Layout:
    return layouts(str(request.param))


def _on_axial_grid(name: str, volume: Volume, mask: np.ndarray, axial: Volume) -> np.ndarray:
    """A variant's mask as a mask of the axial grid: each voxel moved to the axial voxel at its position.

    The tilted copy keeps the axial pixels on a sheared grid (other positions, same images): there the
    axial voxel is the one with the same indices.
    """
    if name == "tilted":
        return mask
    to_axial = np.linalg.inv(axial.affine) @ volume.affine
    indices = np.argwhere(mask).astype(np.float64)
    mapped = indices @ to_axial[:3, :3].T + to_axial[:3, 3]
    assert np.abs(mapped - np.rint(mapped)).max() < 1e-3, "every variant voxel sits on an axial voxel"
    moved = np.zeros(axial.shape, dtype=np.bool_)
    moved[tuple(np.rint(mapped).astype(np.int64).T)] = True
    return moved


def test_lung_qct_finds_exactly_the_axial_lung_voxels_in_every_layout(
        axial: tuple[Volume, Findings], variant: tuple[str, list[Path], Volume, Findings]) -> None:
    axial_volume, axial_findings = axial
    name, _, volume, findings = variant
    assert [s.label for s in findings.segments] == ["Right lung", "Left lung"]
    assert findings.segments[0].shape == volume.shape, "masks are on the variant's own grid"
    for segment, expected in zip(findings.segments, axial_findings.segments, strict=True):
        assert int(segment.mask.sum()) == int(expected.mask.sum()) > 100_000, segment.label
        on_axial = _on_axial_grid(name, volume, segment.full_mask(), axial_volume)
        assert np.array_equal(on_axial, expected.full_mask()), segment.label


def test_volumes_and_densities_are_the_axial_ones_within_1_percent(
        axial: tuple[Volume, Findings], variant: tuple[str, list[Path], Volume, Findings]) -> None:
    _, axial_findings = axial
    *_, findings = variant
    for group, expected in zip(findings.groups, axial_findings.groups, strict=True):
        assert group.tracking_id == expected.tracking_id
        for measurement, reference in zip(group.measurements, expected.measurements, strict=True):
            assert measurement.concept == reference.concept
            assert measurement.value == pytest.approx(reference.value, rel=0.01), (
                group.tracking_id, measurement.concept.meaning)


def _content_items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of an SR's tree."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.extend([item, *_content_items(item)])
    return items


def test_seg_and_sr_are_written_on_the_variants_own_frames_and_validate(
        tmp_path: Path, variant: tuple[str, list[Path], Volume, Findings]) -> None:
    name, paths, volume, findings = variant
    sources = {str(ds.SOPInstanceUID): ds
               for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    seg = build_seg(findings, list(volume.headers), series_instance_uid=pydicom.uid.generate_uid(),
                    sop_instance_uid=pydicom.uid.generate_uid(), series_number=9901)
    sr = build_sr(findings, list(volume.headers), seg, series_instance_uid=pydicom.uid.generate_uid(),
                  sop_instance_uid=pydicom.uid.generate_uid(), series_number=9902)

    shared_orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) > 50
    for frame in frames:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = reference.get("ReferencedFrameNumber")
        assert (number is not None) == name.startswith("legacy-enhanced"), "frames named in multi-frames"
        position, orientation = source_plane(sources[reference.ReferencedSOPInstanceUID],
                                              None if number is None else int(number))
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            position, abs=1e-4)
        assert [float(v) for v in shared_orientation.ImageOrientationPatient] == pytest.approx(
            orientation, abs=1e-6)

    images = [reference for item in _content_items(sr) if item.ValueType == "IMAGE"
              for reference in item.ReferencedSOPSequence
              if reference.ReferencedSOPInstanceUID != seg.SOPInstanceUID]  # the segments themselves
    assert images, "the SR draws each lung on a source image"
    for reference in images:
        assert reference.ReferencedSOPInstanceUID in sources
        assert ("ReferencedFrameNumber" in reference) == name.startswith("legacy-enhanced")

    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(seg_path)
    sr.save_as(sr_path)
    check_iod(seg_path).assert_no_errors()
    check_iod(sr_path).assert_no_errors()
    validate_instance(seg_path).assert_no_errors()
    validate_sr(sr_path).assert_no_errors()


def test_the_learned_lung_unet_reports_the_axial_volumes_for_the_coronal_reslice(
        axial: tuple[Volume, Findings], layouts: Callable[[str], Layout], tmp_path: Path) -> None:
    """The demo's learned pipeline lays the volume along its trained axes (SPL) itself: the coronal
    reslice's voxels reach the network as the axial ones, so the volumes are the axial run's."""
    axial_volume, _ = axial
    _, _, coronal, _ = layouts("coronal")
    demo = Path(__file__).resolve().parent.parent / "config" / "radnode.yaml"
    model = load_config(demo).models["lung-unet"]
    registry = ModelRegistry({"lung-unet": model.model_copy(update={"backend": "torch"})}, CPU, tmp_path)
    pipeline = create("lung-unet", "lung-unet", registry)

    expected = run_on_source(pipeline, axial_volume, CPU)  # type: ignore[arg-type]
    found = run_on_source(pipeline, coronal, CPU)  # type: ignore[arg-type]

    assert found.segments[0].shape == coronal.shape
    for group, reference in zip(found.groups, expected.groups, strict=True):
        assert group.tracking_id == reference.tracking_id
        volume, reference_volume = group.measurements[0], reference.measurements[0]
        assert volume.concept == codes.VOLUME
        assert volume.value == pytest.approx(reference_volume.value, rel=0.01), group.tracking_id


@pytest.mark.parametrize("layout", ["axial", *sorted(VARIANTS)])
def test_rtstruct_contours_fill_back_to_the_lung_masks_on_the_sources_own_slices_and_validate(
        tmp_path: Path, layout: str, layouts: Callable[[str], Layout]) -> None:
    _, paths, volume, findings = layouts(layout)
    sources = {str(ds.SOPInstanceUID): ds
               for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    rtstruct = build_rtstruct(findings, list(volume.headers), series_instance_uid=pydicom.uid.generate_uid(),
                              sop_instance_uid=pydicom.uid.generate_uid(), series_number=9905)
    path = tmp_path / "rtstruct.dcm"
    rtstruct.save_as(path, enforce_file_format=True)
    written = pydicom.dcmread(path)

    assert [roi.ROIName for roi in written.StructureSetROISequence] == ["Right lung", "Left lung"]
    assert {roi.ReferencedFrameOfReferenceUID for roi in written.StructureSetROISequence} == {
        volume.headers[0].FrameOfReferenceUID}
    slices = {(uid, findings.source_frame(i)): i for i, uid in enumerate(findings.source_sop_instance_uids)}
    masks = rtstruct_masks(written, sources, slices, volume.shape)
    for segment, mask in zip(findings.segments, masks, strict=True):
        assert dice(mask, segment.full_mask()) >= 0.95, segment.label
        assert np.array_equal(mask, segment.full_mask()), f"{segment.label}: contours on the mask's edges"
    check_iod(path).assert_no_errors()
    validate_instance(path).assert_no_errors()
