"""dicom_sr.seg and dicom_sr.uids on a real chest CT: validity, alignment, exact round trip."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, SegmentationStorage, generate_uid
from scipy.ndimage import find_objects

from dicom_sr import codes
from dicom_sr.findings import Algorithm, Findings, Measurement, MeasurementGroup, Segment
from dicom_sr.seg import EncodingError, SegType, build_seg
from dicom_sr.uids import ResultKind, derive_uid, result_uids
from tests.dciodvfy import check_entities, check_iod

CHEST_CT = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
ALGORITHM = Algorithm(name="lung-qct", version="1.2.0", model_sha256="3f" * 32)
SEG_SERIES_NUMBER = 1001

# Slices each test segment covers, so that both segments have empty slices to omit.
RIGHT_SLICES = slice(4, 56)
LEFT_SLICES = slice(10, 64)


def load_chest_ct() -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The source headers (read without Pixel Data, as the node does) and the HU volume."""
    files = sorted(CHEST_CT.glob("*.dcm"))
    full = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in full]
    ).astype(np.float32)
    order = {ds.SOPInstanceUID: i for i, ds in enumerate(full)}
    headers = sorted(
        (pydicom.dcmread(f, stop_before_pixels=True) for f in files),
        key=lambda ds: order[ds.SOPInstanceUID],
    )
    assert "PixelData" not in headers[0]
    return headers, hu


def lung_masks(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crude lungs from the real pixels: air-like voxels inside the thorax, split left/right."""
    airlike = (hu > -1000) & (hu < -400)
    right = np.zeros_like(airlike)
    left = np.zeros_like(airlike)
    # Patient right is image left in this HFS axial series (first column at x = -228 mm).
    right[RIGHT_SLICES, 120:400, 60:256] = airlike[RIGHT_SLICES, 120:400, 60:256]
    left[LEFT_SLICES, 120:400, 256:452] = airlike[LEFT_SLICES, 120:400, 256:452]
    return right, left


def lung_findings(headers: list[pydicom.Dataset], hu: np.ndarray) -> Findings:
    """Findings as the lung pipeline makes them: two lung segments, three measurement groups."""
    right, left = lung_masks(hu)
    row_mm, column_mm = (float(v) for v in headers[0].PixelSpacing)
    voxel_ml = row_mm * column_mm * float(headers[0].SliceThickness) / 1000.0
    both = right | left

    def lung_group(tracking_id: str, mask: np.ndarray, index: int, site: codes.Code) -> MeasurementGroup:
        return MeasurementGroup(
            tracking_id=tracking_id,
            finding=codes.LUNG,
            finding_site=site,
            segment=index,
            measurements=(
                Measurement(codes.VOLUME, float(mask.sum()) * voxel_ml, codes.UNIT_MILLILITER),
                Measurement(
                    codes.ATTENUATION_COEFFICIENT,
                    float(hu[mask].mean()),
                    codes.UNIT_HOUNSFIELD,
                    derivation=codes.MEAN,
                ),
            ),
        )

    return Findings(
        algorithm=ALGORITHM,
        source_sop_instance_uids=tuple(ds.SOPInstanceUID for ds in headers),
        segments=(
            Segment("Right lung", codes.ANATOMICAL_STRUCTURE, codes.RIGHT_LUNG, (128, 174, 128), right,
                    anatomic_region=codes.CHEST),
            Segment("Left lung", codes.ANATOMICAL_STRUCTURE, codes.LEFT_LUNG, (241, 214, 145), left),
        ),
        groups=(
            lung_group("right-lung", right, 0, codes.RIGHT_LUNG),
            lung_group("left-lung", left, 1, codes.LEFT_LUNG),
            MeasurementGroup(
                tracking_id="both-lungs",
                finding=codes.LUNG,
                finding_site=codes.LUNG,
                region_segments=(0, 1),
                measurements=(
                    Measurement(codes.VOLUME, float(both.sum()) * voxel_ml, codes.UNIT_MILLILITER),
                    Measurement(codes.LOW_ATTENUATION_AREA_950,
                                100.0 * float((hu[both] < -950).mean()), codes.UNIT_PERCENT),
                    Measurement(codes.ATTENUATION_PERCENTILE_15, float(np.percentile(hu[both], 15)),
                                codes.UNIT_HOUNSFIELD),
                ),
            ),
        ),
    )


def seg_for(findings: Findings, headers: list[pydicom.Dataset], **kwargs: object) -> hd.seg.Segmentation:
    uids = result_uids(headers[0].SeriesInstanceUID, ALGORITHM.name, ALGORITHM.version,
                       ALGORITHM.model_sha256, ResultKind.SEG)
    return build_seg(findings, headers, series_instance_uid=uids.series_instance_uid,
                     sop_instance_uid=uids.sop_instance_uid, series_number=SEG_SERIES_NUMBER, **kwargs)


def decode_frames(seg: pydicom.Dataset, source_uids: tuple[str, ...]) -> dict[int, np.ndarray]:
    """Rebuild each segment's mask on the source grid from the written frames, by hand."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    index = {uid: i for i, uid in enumerate(source_uids)}
    masks = {
        int(item.SegmentNumber): np.zeros((len(source_uids), seg.Rows, seg.Columns), dtype=bool)
        for item in seg.SegmentSequence
    }
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        (source_item,) = group.DerivationImageSequence[0].SourceImageSequence
        masks[number][index[source_item.ReferencedSOPInstanceUID]] = frame.astype(bool)
    return masks


@pytest.fixture(scope="module")
def chest_ct() -> tuple[list[pydicom.Dataset], np.ndarray]:
    return load_chest_ct()


@pytest.fixture(scope="module")
def findings(chest_ct: tuple[list[pydicom.Dataset], np.ndarray]) -> Findings:
    return lung_findings(*chest_ct)


@pytest.fixture(scope="module")
def seg_file(chest_ct, findings, tmp_path_factory) -> Path:
    headers, _ = chest_ct
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg_for(findings, headers).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def seg(seg_file: Path) -> pydicom.Dataset:
    return pydicom.dcmread(seg_file)


# --- UIDs -------------------------------------------------------------------------------------


def test_derive_uid_is_deterministic_valid_and_unambiguous() -> None:
    uid = derive_uid("1.2.3", "lung-qct", "1.2.0", "", "seg")
    assert uid == derive_uid("1.2.3", "lung-qct", "1.2.0", "", "seg")
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert UID(uid).is_valid
    assert int(uid.removeprefix("2.25.")) < 2**128
    assert derive_uid("a.b", "c") != derive_uid("a", "b.c")


def test_result_uids_identify_source_pipeline_model_and_kind() -> None:
    base = ("1.2.3", "lung-qct", "1.2.0", "ab" * 32)
    seg = result_uids(*base, ResultKind.SEG)
    assert seg == result_uids(*base, "seg")
    assert seg.series_instance_uid != seg.sop_instance_uid
    others = [
        result_uids(*base, ResultKind.SR),
        result_uids("1.2.4", *base[1:], ResultKind.SEG),
        result_uids(base[0], base[1], "1.2.1", base[3], ResultKind.SEG),
        result_uids(*base[:3], None, ResultKind.SEG),
    ]
    assert len({seg.sop_instance_uid, *(o.sop_instance_uid for o in others)}) == 5
    assert result_uids(*base[:3], None, "seg") == result_uids(*base[:3], "", "seg")


# --- SEG --------------------------------------------------------------------------------------


def test_seg_passes_dciodvfy_without_errors(seg_file: Path) -> None:
    check_iod(seg_file).assert_no_errors()


def test_seg_is_consistent_with_source_series_per_dcentvfy(seg_file: Path) -> None:
    check_entities([*sorted(CHEST_CT.glob("*.dcm")), seg_file]).assert_no_errors()


def test_seg_is_binary_explicit_vr_little_endian(seg: pydicom.Dataset) -> None:
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert seg.SegmentationType == "BINARY"
    assert seg.BitsAllocated == 1


def test_seg_encodes_only_non_empty_frames(seg, findings) -> None:
    expected = {
        (number, slice_index)
        for number, segment in enumerate(findings.segments, start=1)
        for slice_index in np.flatnonzero(segment.mask.any(axis=(1, 2)))
    }
    index = {uid: i for i, uid in enumerate(findings.source_sop_instance_uids)}
    encoded = {
        (
            int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            index[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID],
        )
        for group in seg.PerFrameFunctionalGroupsSequence
    }
    assert encoded == expected
    assert int(seg.NumberOfFrames) == len(expected) < 2 * len(index)


def test_seg_frames_align_with_source_slices(seg, chest_ct) -> None:
    headers, _ = chest_ct
    position = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in headers}
    for group in seg.PerFrameFunctionalGroupsSequence:
        (source_item,) = group.DerivationImageSequence[0].SourceImageSequence
        frame_position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert frame_position == position[source_item.ReferencedSOPInstanceUID]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [
        float(v) for v in headers[0].ImageOrientationPatient
    ]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [
        float(v) for v in headers[0].PixelSpacing
    ]
    assert (seg.Rows, seg.Columns) == (headers[0].Rows, headers[0].Columns)


def test_seg_masks_round_trip_exactly(seg, findings) -> None:
    decoded = decode_frames(seg, findings.source_sop_instance_uids)
    for number, segment in enumerate(findings.segments, start=1):
        np.testing.assert_array_equal(decoded[number], segment.mask)


def test_seg_overlapping_segments_round_trip_exactly(chest_ct, findings, tmp_path) -> None:
    headers, _ = chest_ct
    right, left = (segment.mask for segment in findings.segments)
    both = Segment("Lungs", codes.ANATOMICAL_STRUCTURE, codes.LUNG, (197, 165, 145), right | left)
    overlapping = Findings(ALGORITHM, findings.source_sop_instance_uids, (*findings.segments, both))
    path = tmp_path / "overlapping.dcm"
    seg_for(overlapping, headers).save_as(path, enforce_file_format=True)
    decoded = decode_frames(pydicom.dcmread(path), findings.source_sop_instance_uids)
    for number, segment in enumerate(overlapping.segments, start=1):
        np.testing.assert_array_equal(decoded[number], segment.mask)


def _cropped(segment: Segment) -> Segment:
    """``segment`` with its mask cut to its bounding box, as a many-class pipeline hands it over."""
    (box,) = find_objects(segment.mask.view(np.uint8))
    start = tuple(int(axis.start) for axis in box)
    return dataclasses.replace(segment, mask=segment.mask[box].copy(), origin=start,
                               grid_shape=segment.mask.shape)


def test_segments_cropped_to_their_box_encode_exactly_as_whole_grid_masks(
    chest_ct, findings, tmp_path
) -> None:
    headers, _ = chest_ct
    cropped = dataclasses.replace(findings, segments=tuple(_cropped(s) for s in findings.segments))
    assert all(s.mask.size < s.full_mask().size for s in cropped.segments)
    for segment, whole in zip(cropped.segments, findings.segments, strict=True):
        np.testing.assert_array_equal(segment.full_mask(), whole.mask)
        slices = np.stack([segment.slice_mask(index) for index in range(whole.mask.shape[0])])
        np.testing.assert_array_equal(slices, whole.mask)

    for name, variant in (("whole", findings), ("cropped", cropped)):
        seg_for(variant, headers).save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    whole_seg, cropped_seg = (pydicom.dcmread(tmp_path / f"{name}.dcm") for name in ("whole", "cropped"))
    np.testing.assert_array_equal(cropped_seg.pixel_array, whole_seg.pixel_array)
    overlapping = dataclasses.replace(cropped, segments=(*cropped.segments, _cropped(
        Segment("Lungs", codes.ANATOMICAL_STRUCTURE, codes.LUNG, (197, 165, 145),
                findings.segments[0].mask | findings.segments[1].mask))))
    seg_for(overlapping, headers).save_as(tmp_path / "overlapping.dcm", enforce_file_format=True)
    decoded = decode_frames(pydicom.dcmread(tmp_path / "overlapping.dcm"), findings.source_sop_instance_uids)
    for number, segment in enumerate(overlapping.segments, start=1):
        np.testing.assert_array_equal(decoded[number], segment.full_mask())


def test_a_mask_box_outside_its_grid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a mask of shape \(2, 4, 4\) at \(3, 0, 0\) does not fit the grid"):
        Segment("Lung", codes.ANATOMICAL_STRUCTURE, codes.LUNG, (0, 0, 0), np.ones((2, 4, 4), dtype=bool),
                origin=(3, 0, 0), grid_shape=(4, 8, 8))


def test_seg_keeps_study_frame_of_reference_and_patient(seg, chest_ct) -> None:
    headers, _ = chest_ct
    source = headers[0]
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName",
                    "PatientSex", "PatientAge", "StudyDate", "StudyTime", "AccessionNumber"):
        assert seg[keyword].value == source[keyword].value, keyword
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_seg_describes_segments_with_codes_colours_and_algorithm(seg, findings) -> None:
    assert len(seg.SegmentSequence) == len(findings.segments)
    for item, segment in zip(seg.SegmentSequence, findings.segments, strict=True):
        assert item.SegmentLabel == segment.label
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator, prop.CodeMeaning) == (
            segment.property_type.value, segment.property_type.scheme, segment.property_type.meaning)
        if segment.anatomic_region is None:
            assert "AnatomicRegionSequence" not in item
        else:
            assert item.AnatomicRegionSequence[0].CodeValue == segment.anatomic_region.value
        lab = hd.color.CIELabColor.from_rgb(*segment.color_rgb).value
        assert tuple(item.RecommendedDisplayCIELabValue) == tuple(lab)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = item.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lung-qct", "1.2.0")
        assert algorithm.AlgorithmParameters == f"model_sha256={ALGORITHM.model_sha256}"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert UID(item.TrackingUID).is_valid
    # A segment a group is about carries that group's tracking identifier.
    assert [item.TrackingID for item in seg.SegmentSequence] == ["right-lung", "left-lung"]
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == (
        "radnode", "lung-qct", "1.2.0")


def test_seg_is_deterministic(chest_ct, findings, seg) -> None:
    headers, _ = chest_ct
    again = seg_for(findings, headers)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (seg.SeriesInstanceUID, seg.SOPInstanceUID)
    assert [i.TrackingUID for i in again.SegmentSequence] == [i.TrackingUID for i in seg.SegmentSequence]
    assert again.SeriesInstanceUID.startswith("2.25.")


def test_seg_accepts_headers_with_pixel_data_deleted(findings, tmp_path) -> None:
    files = sorted(CHEST_CT.glob("*.dcm"))
    by_uid = {}
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelData
        by_uid[ds.SOPInstanceUID] = ds
    stripped = [by_uid[uid] for uid in findings.source_sop_instance_uids]
    path = tmp_path / "seg.dcm"
    seg_for(findings, stripped).save_as(path, enforce_file_format=True)
    decoded = decode_frames(pydicom.dcmread(path), findings.source_sop_instance_uids)
    np.testing.assert_array_equal(decoded[1], findings.segments[0].mask)


def test_seg_rejects_source_headers_out_of_mask_order(chest_ct, findings) -> None:
    headers, _ = chest_ct
    with pytest.raises(EncodingError, match=r"order of findings\.source_sop_instance_uids"):
        seg_for(findings, headers[::-1])


def test_seg_rejects_findings_without_any_segment_pixel(chest_ct, findings) -> None:
    headers, _ = chest_ct
    empty = Segment("Nothing", codes.ANATOMICAL_STRUCTURE, codes.LUNG, (0, 0, 0),
                    np.zeros_like(findings.segments[0].mask))
    with pytest.raises(EncodingError, match="empty"):
        seg_for(Findings(ALGORITHM, findings.source_sop_instance_uids, (empty,)), headers)


# --- options: FRACTIONAL and LABELMAP -----------------------------------------------------------


def with_probabilities(findings: Findings) -> Findings:
    """Each lung with a probability map: 0.25-1.0 inside the mask, graded by row, 0 outside."""
    grade = np.linspace(0.25, 1.0, findings.segments[0].mask.shape[1], dtype=np.float32)[None, :, None]
    return dataclasses.replace(findings, segments=tuple(
        dataclasses.replace(s, probability=np.where(s.mask, grade, 0.0).astype(np.float32))
        for s in findings.segments
    ))


def test_fractional_seg_stores_probabilities_to_within_one_step_of_255(chest_ct, findings, tmp_path) -> None:
    headers, _ = chest_ct
    fractional = with_probabilities(findings)
    path = tmp_path / "fractional.dcm"
    seg_for(fractional, headers, seg_type=SegType.FRACTIONAL).save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    assert (seg.SegmentationType, seg.SegmentationFractionalType, int(seg.MaximumFractionalValue)) == (
        "FRACTIONAL", "PROBABILITY", 255)
    for number, segment in enumerate(fractional.segments, start=1):
        stored = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(fractional.source_sop_instance_uids),
            segment_numbers=[number], combine_segments=False, rescale_fractional=True,
            skip_overlap_checks=True,
        )[..., 0]
        np.testing.assert_allclose(stored, segment.probability, atol=0.5 / 255 + 1e-6)
    # only slices where a segment has a non-zero probability are encoded
    assert int(seg.NumberOfFrames) == sum(int(s.mask.any(axis=(1, 2)).sum()) for s in fractional.segments)


def test_labelmap_seg_is_one_frame_per_occupied_slice_holding_segment_numbers(
    chest_ct, findings, tmp_path
) -> None:
    headers, _ = chest_ct
    path = tmp_path / "labelmap.dcm"
    seg_for(findings, headers, seg_type=SegType.LABELMAP).save_as(path, enforce_file_format=True)
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage
    assert seg.SegmentationType == "LABELMAP"
    expected = np.zeros(findings.segments[0].mask.shape, dtype=np.uint8)
    for number, segment in enumerate(findings.segments, start=1):
        expected[segment.mask] = number
    index = {uid: i for i, uid in enumerate(findings.source_sop_instance_uids)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    decoded = np.zeros_like(expected)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        (source_item,) = group.DerivationImageSequence[0].SourceImageSequence
        decoded[index[source_item.ReferencedSOPInstanceUID]] = frame
    np.testing.assert_array_equal(decoded, expected)
    assert int(seg.NumberOfFrames) == int(expected.any(axis=(1, 2)).sum())


def test_labelmap_seg_rejects_overlapping_segments(chest_ct, findings) -> None:
    headers, _ = chest_ct
    right, left = (segment.mask for segment in findings.segments)
    both = Segment("Lungs", codes.ANATOMICAL_STRUCTURE, codes.LUNG, (197, 165, 145), right | left)
    overlapping = Findings(ALGORITHM, findings.source_sop_instance_uids, (*findings.segments, both))
    with pytest.raises(EncodingError, match="segments overlap"):
        seg_for(overlapping, headers, seg_type=SegType.LABELMAP)


# --- geometry of a tilted series ----------------------------------------------------------------


def test_seg_of_a_tilted_unevenly_spaced_series_puts_each_frame_at_its_source_slice(tmp_path) -> None:
    from tests.result_objects import load_tilted_head_ct, tilted_head_findings

    headers, hu = load_tilted_head_ct()
    findings = tilted_head_findings(headers, hu)
    path = tmp_path / "tilted.dcm"
    seg_for(findings, headers).save_as(path, enforce_file_format=True)
    seg = pydicom.dcmread(path)
    position = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in headers}
    referenced = set()
    for group in seg.PerFrameFunctionalGroupsSequence:
        (source_item,) = group.DerivationImageSequence[0].SourceImageSequence
        referenced.add(source_item.ReferencedSOPInstanceUID)
        assert [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] == position[
            source_item.ReferencedSOPInstanceUID]
    assert referenced == set(position)
    tilted = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
              .ImageOrientationPatient]
    assert tilted == [float(v) for v in headers[0].ImageOrientationPatient]
    assert abs(tilted[5]) > 0.3  # the column direction really leaves the axial plane (18.5° tilt)
    assert (seg.FrameOfReferenceUID, seg.StudyInstanceUID) == (
        headers[0].FrameOfReferenceUID, headers[0].StudyInstanceUID)
    decoded = decode_frames(seg, findings.source_sop_instance_uids)
    for number, segment in enumerate(findings.segments, start=1):
        np.testing.assert_array_equal(decoded[number], segment.mask)


def test_result_uids_of_another_encoding_variant_differ_and_the_default_is_unchanged() -> None:
    args = ("1.2.3", "lung-qct", "1.0.0", None, ResultKind.SEG)
    assert result_uids(*args) == result_uids(*args, "")
    assert result_uids(*args, "labelmap").sop_instance_uid != result_uids(*args).sop_instance_uid


ENHANCED = Path(__file__).parent / "data" / "enhanced_multiframe"
_MULTI_FRAME_SOURCES = {
    "enhanced-ct": (ENHANCED / "eCT_Supplemental.dcm", -500.0),  # 2 frames, shared plane orientation
    "enhanced-mr": (ENHANCED / "siemens_xa10" / "6_1.dcm", 100.0),  # 6 frames, per-frame groups only
}


def multi_frame_body(source: str = "enhanced-ct") -> tuple[list[pydicom.Dataset], Findings]:
    """A real multi-frame image (tests/data/enhanced_multiframe) and a body mask of each frame."""
    from inference.volume import load_series

    path, threshold = _MULTI_FRAME_SOURCES[source]
    volume = load_series([path])
    findings = Findings(
        algorithm=ALGORITHM,
        source_sop_instance_uids=volume.sop_instance_uids,
        segments=(Segment("Body", codes.ANATOMICAL_STRUCTURE, codes.CHEST, (128, 128, 128),
                          volume.voxels.numpy() > threshold),),
        source_frame_numbers=volume.frame_numbers,
    )
    return list(volume.headers), findings


@pytest.mark.parametrize("source", sorted(_MULTI_FRAME_SOURCES))
def test_seg_of_an_enhanced_image_references_each_source_frame_and_sits_on_it(source: str,
                                                                            tmp_path: Path) -> None:
    """Each SEG frame names its source frame (Referenced Frame Number, PS3.3 C.8.20) and has that
    frame's position and orientation; the mask of frame k is the one computed on frame k."""
    headers, findings = multi_frame_body(source)
    seg = build_seg(findings, headers, series_number=9901, series_instance_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    source = headers[0]
    shared = source.SharedFunctionalGroupsSequence[0]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(reference.ReferencedFrameNumber)
        groups = source.PerFrameFunctionalGroupsSequence[number - 1]
        position = (groups.get("PlanePositionSequence") or shared.PlanePositionSequence)[0]
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in position.ImagePositionPatient], abs=1e-4)
    orientation = (shared.get("PlaneOrientationSequence")
                   or source.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence)[0]
    written = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in written] == pytest.approx(
        [float(v) for v in orientation.ImageOrientationPatient])
    decoded = hd.seg.Segmentation.from_dataset(seg)
    for index, number in enumerate(findings.source_frame_numbers):
        mask = decoded.get_pixels_by_source_frame(source.SOPInstanceUID, [number], segment_numbers=[1])
        assert np.array_equal(mask[0, :, :, 0].astype(bool), findings.segments[0].mask[index])
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    check_iod(path).assert_no_errors()


def test_seg_of_a_multi_frame_source_without_frame_numbers_is_refused_with_a_clear_reason() -> None:
    headers, findings = multi_frame_body()
    with pytest.raises(EncodingError, match=r"repeats images .* name no frame numbers"):
        build_seg(dataclasses.replace(findings, source_frame_numbers=()), headers, series_number=9901,
                  series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
