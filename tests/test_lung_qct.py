"""The lung-qct pipeline on a real chest CT, and on real data altered to fall outside its scope."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_sr import codes
from dicom_sr.findings import Findings
from inference.errors import NotApplicable
from inference.pipelines import create
from inference.pipelines.lung_qct import AIR_THRESHOLD_HU, LungQCT, _components
from inference.volume import Volume, load_series

CHEST = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted(CHEST.glob("*.dcm")))


@pytest.fixture(scope="module")
def findings(chest: Volume) -> Findings:
    return LungQCT().run(chest, CPU)


def _values(findings: Findings, tracking_id: str) -> dict[str, float]:
    group = next(g for g in findings.groups if g.tracking_id == tracking_id)
    return {
        m.concept.meaning + (f" ({m.derivation.meaning})" if m.derivation else ""): m.value
        for m in group.measurements
    }


def _patient_x(volume: Volume, mask: np.ndarray) -> float:
    centroid = np.argwhere(mask).mean(axis=0)
    return float(volume.affine[0, :3] @ centroid + volume.affine[0, 3])


def test_registry_builds_lung_qct() -> None:
    pipeline = create("lung-qct")

    assert (pipeline.name, pipeline.version) == ("lung-qct", "1.0.0")


def test_lung_volumes_on_real_chest_ct_are_adult_sized(findings: Findings) -> None:
    right, left, both = (_values(findings, t) for t in ("Right lung", "Left lung", "Both lungs"))

    for lung in (right, left):
        assert 1000 < lung[codes.VOLUME.meaning] < 4000
    assert both[codes.VOLUME.meaning] == pytest.approx(
        right[codes.VOLUME.meaning] + left[codes.VOLUME.meaning])
    for lung in (right, left, both):
        mld = lung["Attenuation Coefficient (Mean)"]
        assert -900 < mld < -750
        assert -1024 <= lung[codes.ATTENUATION_PERCENTILE_15.meaning] < mld
        assert 0 < lung[codes.LOW_ATTENUATION_AREA_950.meaning] < 50


def test_findings_name_segments_and_groups_with_their_codes(findings: Findings) -> None:
    assert findings.algorithm.name == "radnode lung-qct"
    assert [(s.label, s.property_type, s.category, s.anatomic_region) for s in findings.segments] \
        == [("Right lung", codes.RIGHT_LUNG, codes.ANATOMICAL_STRUCTURE, codes.CHEST),
            ("Left lung", codes.LEFT_LUNG, codes.ANATOMICAL_STRUCTURE, codes.CHEST)]
    assert findings.segments[0].color_rgb != findings.segments[1].color_rgb
    assert [(g.tracking_id, g.segment, g.finding) for g in findings.groups] == [
        ("Right lung", 0, codes.RIGHT_LUNG), ("Left lung", 1, codes.LEFT_LUNG),
        ("Both lungs", None, codes.LUNG)]
    mld = findings.groups[0].measurements[1]
    assert (mld.concept, mld.derivation, mld.unit) == (
        codes.ATTENUATION_COEFFICIENT, codes.MEAN, codes.UNIT_HOUNSFIELD)


def test_masks_are_on_source_grid(chest: Volume, findings: Findings) -> None:
    assert findings.source_sop_instance_uids == chest.sop_instance_uids
    right, left = (s.mask for s in findings.segments)
    for mask in (right, left):
        assert mask.dtype == np.bool_ and mask.shape == chest.shape
        assert mask.any()
    assert not (right & left).any()
    hu = chest.voxels.numpy()
    assert (hu[right | left] < AIR_THRESHOLD_HU).mean() > 0.9  # mostly aerated parenchyma


def test_right_lung_is_on_patient_right(chest: Volume, findings: Findings) -> None:
    right, left = (s.mask for s in findings.segments)

    # LPS: x grows towards the patient's left
    assert _patient_x(chest, right) < -30 < 30 < _patient_x(chest, left)


def test_left_right_comes_from_patient_coordinates_not_image_columns(chest: Volume,
                                                                    findings: Findings) -> None:
    columns = chest.shape[2]
    mirrored = dataclasses.replace(
        chest,
        voxels=chest.voxels.flip(2).contiguous(),
        orientation=(-1.0, 0.0, 0.0, *chest.orientation[3:]),
        positions=tuple((x + (columns - 1) * chest.spacing[2], y, z)
                        for x, y, z in chest.positions),
    )

    result = LungQCT().run(mirrored, CPU)

    for original, flipped in zip(findings.segments, result.segments, strict=True):
        assert np.array_equal(flipped.mask, original.mask[:, :, ::-1])


def test_excludes_trachea_outside_air_and_bowel_gas(chest: Volume, findings: Findings) -> None:
    hu = chest.voxels.numpy()
    lungs = findings.segments[0].mask | findings.segments[1].mask
    trachea = (40, slice(298, 306), slice(252, 262))  # above the carina, seen on the overlay
    stomach_gas = (8, slice(268, 285), slice(310, 330))  # below the left hemidiaphragm
    outside = (slice(None), slice(0, 40), slice(None))  # in front of the patient
    for region in (trachea, stomach_gas, outside):
        assert (hu[region] < -900).any()
        assert not lungs[region].any()


def test_vessels_inside_the_lungs_are_filled(chest: Volume, findings: Findings) -> None:
    hu = chest.voxels.numpy()
    for segment in findings.segments:
        assert (hu[segment.mask] >= AIR_THRESHOLD_HU).sum() * chest.voxel_volume_mm3 > 20_000


def test_a_handful_of_slices_is_not_applicable(chest: Volume) -> None:
    few = dataclasses.replace(chest, voxels=chest.voxels[20:26],
                              positions=chest.positions[20:26],
                              sop_instance_uids=chest.sop_instance_uids[20:26],
                              headers=chest.headers[20:26])

    with pytest.raises(NotApplicable, match="6 slices"):
        LungQCT().run(few, CPU)


def test_chest_ct_without_aerated_lungs_is_not_applicable(chest: Volume) -> None:
    voxels = chest.voxels.clone()
    interior = voxels[:, 130:420, 80:440]
    interior[interior < AIR_THRESHOLD_HU] = 40.0  # soft tissue wherever the body held air

    with pytest.raises(NotApplicable, match=r"no lungs found|no air-filled region"):
        LungQCT().run(dataclasses.replace(chest, voxels=voxels), CPU)


def test_one_lung_only_is_not_applicable_and_says_which(chest: Volume) -> None:
    voxels = chest.voxels.clone()
    patient_left = voxels[:, 130:420, 262:440]
    patient_left[patient_left < AIR_THRESHOLD_HU] = 40.0

    with pytest.raises(NotApplicable, match="only one lung \\(the right"):
        LungQCT().run(dataclasses.replace(chest, voxels=voxels), CPU)


def test_non_ct_modality_is_not_applicable(chest: Volume) -> None:
    with pytest.raises(NotApplicable, match="needs a CT series; this one is MR"):
        LungQCT().run(dataclasses.replace(chest, modality="MR"), CPU)


def test_localizer_is_not_applicable(chest: Volume) -> None:
    headers = tuple(copy.deepcopy(ds) for ds in chest.headers)
    for ds in headers:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    with pytest.raises(NotApplicable, match="localizer"):
        LungQCT().run(dataclasses.replace(chest, headers=headers), CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this host")
def test_runs_on_cuda_with_the_cpu_result(chest: Volume, findings: Findings) -> None:
    result = LungQCT().run(chest, torch.device("cuda"))

    for on_gpu, on_cpu in zip(result.segments, findings.segments, strict=True):
        assert np.array_equal(on_gpu.mask, on_cpu.mask)


@pytest.mark.parametrize("dims", [(0, 1), (1,)])
def test_connected_components_match_a_breadth_first_flood_fill(dims: tuple[int, ...]) -> None:
    rng = random.Random(3)
    shape = (5, 9, 11)
    mask = np.array([rng.random() < 0.55 for _ in range(np.prod(shape))]).reshape(shape)

    labels = _components(torch.from_numpy(mask), dims).numpy()

    expected = np.full(shape, -1)
    unit = np.eye(3, dtype=int)
    steps = [step for d in (*dims, 2) for step in (unit[d], -unit[d])]
    for start in zip(*np.nonzero(mask), strict=True):
        if expected[start] >= 0:
            continue
        expected[start] = len(set(expected.flat)) - 1
        queue = deque([np.array(start)])
        while queue:
            here = queue.popleft()
            for step in steps:
                there = tuple(here + step)
                if all(0 <= i < n for i, n in zip(there, shape, strict=True)) \
                        and mask[there] and expected[there] < 0:
                    expected[there] = expected[start]
                    queue.append(np.array(there))
    # same partition: a one-to-one mapping between the two labelings
    pairs = set(zip(labels[mask].tolist(), expected[mask].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert (labels[~mask] == -1).all()
