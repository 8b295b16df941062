"""The detection and regression presets (config/presets/lung-nodule-detection.yaml, brain-age.yaml) on
real series, each with the preset's own ``models:`` entry pointed at a network installed and pinned here.

brain-age runs the real SFCN architecture with random weights (inference.networks.sfcn) on the brain
MR; lung-nodule-detection runs a hand-built detector of the task's contract (tests/tiny_detectors.py:
the box of the bright voxels) on the chest CT with the preset's axes, spacing, window and patch, since
the bundle's RetinaNetDetector is not a saved network (the preset's comment says how to export one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from dicom_sr.sr import build_sr
from inference.formats import file_sha256
from inference.model_config import ModelConfig
from inference.networks.sfcn import SFCN, BrainAge
from inference.pipelines import create
from inference.registry import ModelRegistry
from inference.volume import load_series
from tests.result_objects import MR_BRAIN
from tests.test_seg import CHEST_CT
from tests.tiny_detectors import BRIGHT_SCORE, BrightBox
from tests.tiny_models import save_torchscript

CPU = torch.device("cpu")
PRESETS = Path(__file__).resolve().parent.parent / "config" / "presets"
SFCN_PARAMETERS_MILLIONS = (2.9, 3.0)
"""The published SFCN's size: "about 3 million parameters" (Peng et al. 2021)."""


def _installed(preset: str, model: str, file: Path) -> tuple[dict[str, Any], ModelConfig]:
    """The preset, and its ``model`` entry pointing at ``file`` (pinned) as an admin installs it."""
    document = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text(encoding="utf-8"))
    entry = {**document["models"][model], "file": str(file), "sha256": file_sha256(file), "backend": "torch"}
    return document, ModelConfig.model_validate(entry)


def test_brain_age_preset_gives_an_age_within_sfcns_bins_from_random_weights(tmp_path: Path) -> None:
    torch.manual_seed(42)
    sfcn = SFCN().eval()
    low, high = SFCN_PARAMETERS_MILLIONS
    assert low * 1e6 < sum(p.numel() for p in sfcn.parameters()) < high * 1e6
    document, config = _installed("brain-age", "sfcn", save_torchscript(BrainAge(sfcn).eval(),
                                                                       tmp_path / "sfcn.ts"))
    (pipeline_name,) = document["pipelines"]
    brain = load_series(sorted(MR_BRAIN.glob("*.dcm")))
    pipeline = create(pipeline_name, "sfcn", ModelRegistry({"sfcn": config}, CPU, tmp_path / "cache"))
    findings = pipeline.run(brain, CPU)

    (group,) = findings.groups
    (age,) = group.measurements
    assert (age.concept.meaning, age.unit.value, group.finding.meaning) == ("Brain age", "a", "Brain")
    assert 42.5 <= age.value <= 81.5  # an expectation over the bins' centres
    build_sr(findings, list(brain.headers), None, series_instance_uid="2.25.1", sop_instance_uid="2.25.2",
             series_number=9902)


def test_lung_nodule_preset_brings_a_box_back_onto_the_chest_ct(tmp_path: Path) -> None:
    document, config = _installed("lung-nodule-detection", "lung-nodules",
                                  save_torchscript(BrightBox(), tmp_path / "detector.ts"))
    (pipeline_name,) = document["pipelines"]
    chest = load_series(sorted(CHEST_CT.glob("*.dcm")))
    pipeline = create(pipeline_name, "lung-nodules",
                      ModelRegistry({"lung-nodules": config}, CPU, tmp_path / "cache"))
    findings = pipeline.run(chest, CPU)

    (detection,) = findings.detections
    assert detection.score == pytest.approx(BRIGHT_SCORE)
    assert (detection.finding.meaning, detection.finding_site.meaning) == ("Nodule", "Lung")
    # the box of the voxels brighter than the window's middle (the body and the table), as far as the
    # patch reaches: 512 voxels of 0.703 mm are 360 mm of the CT's 431 mm rows and columns, centred
    bright = chest.voxels.numpy() > (-1024 + 300.5) / 2
    expected = np.array([[np.flatnonzero(bright.any(axis=others)).min(), np.flatnonzero(
        bright.any(axis=others)).max() + 1] for others in ((1, 2), (0, 2), (0, 1))], dtype=float)
    resampled = round(512 * chest.spacing[2] / 0.703125)
    margin = (resampled - 512) // 2 * 512 / resampled
    expected[1:] = expected[1:].clip(margin, 512 - margin)
    got = np.array([detection.start, detection.stop]).T
    assert np.abs(got - expected).max() <= 1.5, (got, expected)  # a model voxel is 0.84 source pixels
    build_sr(findings, list(chest.headers), None, series_instance_uid="2.25.1", sop_instance_uid="2.25.2",
             series_number=9902)
