"""The shipped lung U-Net (inference/weights/lung_unet.{ts,onnx}, made by scripts/train_lung_unet.py).

Its TorchScript, ONNX and TensorRT forms agree on the real chest CT, it reproduces the classical
``lung-qct`` masks it was distilled from, and the ``lung-unet`` pipeline of config/radnode.yaml runs
end to end: Orthanc → radnode → SEG + SR back in Orthanc.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
import yaml

from dicom_sr import codes
from dicom_sr.findings import Findings
from inference.formats import file_sha256, open_model
from inference.model_config import ModelConfig
from inference.networks.unet3d import UNet3D
from inference.pipelines import create
from inference.pipelines.lung_qct import LungQCT
from inference.registry import ModelRegistry
from inference.volume import Volume, load_series
from node.config import load_config
from tests.dciodvfy import check_iod
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc

CPU = torch.device("cpu")
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "radnode.yaml"
MODEL = "lung-unet"
BACKEND_AGREEMENT_DICE = 0.99
LUNG_QCT_DICE_FLOOR = {"Right lung": 0.94, "Left lung": 0.93}
"""0.966 / 0.953 measured on this series by scripts/train_lung_unet.py (inference/weights/README.md), minus a
margin for other CPUs and library versions."""
RESULT_TIMEOUT_S = 300
_NO_TENSORRT = (
    "TensorRT needs a CUDA GPU; this host has none" if not torch.cuda.is_available()
    else "tensorrt is not installed (pip install 'radnode[tensorrt]')"
    if importlib.util.find_spec("tensorrt") is None else None
)
SEG_CODES = {"Right lung": codes.RIGHT_LUNG.value, "Left lung": codes.LEFT_LUNG.value}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _masks(findings: Findings) -> dict[str, np.ndarray]:
    return {segment.label: segment.full_mask() for segment in findings.segments}


@pytest.fixture(scope="module")
def model() -> ModelConfig:
    """The demo configuration's lung-unet entry (the TorchScript file, pinned)."""
    return load_config(DEMO_CONFIG).models[MODEL]


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted((Path(__file__).parent / "data" / "ct_chest_lungdx_a0001").glob("*.dcm")))


def _run(config: ModelConfig, volume: Volume, device: torch.device, cache: Path) -> Findings:
    """The lung-unet pipeline with ``config`` as its model, as a worker on ``device`` runs it."""
    registry = ModelRegistry({MODEL: config}, device, cache)
    return create(MODEL, MODEL, registry).run(volume, device)


@pytest.fixture(scope="module")
def torchscript_findings(model: ModelConfig, chest: Volume,
                         tmp_path_factory: pytest.TempPathFactory) -> Findings:
    config = model.model_copy(update={"backend": "torch"})
    return _run(config, chest, CPU, tmp_path_factory.mktemp("cache"))


def _onnx_config(model: ModelConfig) -> ModelConfig:
    """The ONNX file the training run wrote beside the TorchScript one."""
    onnx = model.file.with_suffix(".onnx")
    return ModelConfig.model_validate({**model.model_dump(), "file": onnx, "format": "onnx",
                                       "sha256": file_sha256(onnx), "backend": "onnxruntime"})


def test_shipped_weights_are_small_and_pinned_by_the_demo_config(model: ModelConfig) -> None:
    onnx = model.file.with_suffix(".onnx")
    assert file_sha256(model.file) == model.sha256
    for path in (model.file, onnx):
        assert path.stat().st_size <= 5 * 1024 * 1024, path
    assert onnx.name in (model.file.parent / "README.md").read_text(encoding="utf-8")
    assert file_sha256(onnx) in (model.file.parent / "README.md").read_text(encoding="utf-8")


def test_python_network_rebuilt_from_the_torchscript_file_matches_it_on_any_input_size(
    model: ModelConfig,
) -> None:
    source = open_model(MODEL, model)
    assert source.build_module is not None
    scripted = source.build_module()
    rebuilt = UNet3D.from_state_dict(scripted.state_dict()).eval()
    batch = torch.rand((2, 1, 13, 37, 41), generator=torch.Generator().manual_seed(5))

    with torch.inference_mode():
        expected, actual = scripted(batch), rebuilt(batch)
    assert actual.shape == (2, 3, 13, 37, 41)
    torch.testing.assert_close(actual, expected)


def test_torchscript_and_onnx_runtime_agree_on_the_chest_ct(
    model: ModelConfig, chest: Volume, torchscript_findings: Findings, tmp_path: Path
) -> None:
    onnx_findings = _run(_onnx_config(model), chest, CPU, tmp_path)

    torchscript, onnx = _masks(torchscript_findings), _masks(onnx_findings)
    assert torchscript.keys() == onnx.keys() == {"Right lung", "Left lung"}
    for name in torchscript:
        assert _dice(torchscript[name], onnx[name]) >= BACKEND_AGREEMENT_DICE, name


def test_it_reproduces_the_lung_qct_masks_it_was_distilled_from(chest: Volume,
                                                                torchscript_findings: Findings) -> None:
    teacher = _masks(LungQCT().run(chest, CPU))
    student = _masks(torchscript_findings)

    for name, floor in LUNG_QCT_DICE_FLOOR.items():
        assert _dice(student[name], teacher[name]) >= floor, name


def test_each_lung_s_measurements_are_found_at_that_lung(torchscript_findings: Findings) -> None:
    # an anatomical structure is its own finding site: viewers that label numbers by concept
    # name and site alone (OHIF v3) so say which lung "Volume" is about
    sites = {group.tracking_id: group.finding_site for group in torchscript_findings.groups}
    assert sites == {segment.label: segment.property_type for segment in torchscript_findings.segments}
    assert {site.meaning for site in sites.values() if site is not None} == {"Right lung", "Left lung"}


def test_a_series_stored_with_columns_toward_the_patients_right_gets_the_same_lungs(
    model: ModelConfig, chest: Volume, torchscript_findings: Findings, tmp_path: Path
) -> None:
    """The same voxels stored mirrored (row direction -x): the lungs must not swap sides."""
    columns, column_mm = chest.shape[2], chest.spacing[2]
    mirrored = dataclasses.replace(
        chest,
        voxels=chest.voxels.flip(2),
        orientation=(-1.0, 0.0, 0.0, *chest.orientation[3:]),
        positions=tuple((x + (columns - 1) * column_mm, y, z) for x, y, z in chest.positions),
    )

    found = _masks(_run(model.model_copy(update={"backend": "torch"}), mirrored, CPU, tmp_path))

    for name, mask in _masks(torchscript_findings).items():
        np.testing.assert_array_equal(found[name], mask[:, :, ::-1], err_msg=name)


@pytest.mark.skipif(_NO_TENSORRT is not None, reason=_NO_TENSORRT or "")
def test_tensorrt_fp16_agrees_with_torchscript(model: ModelConfig, chest: Volume,
                                               torchscript_findings: Findings, tmp_path: Path) -> None:
    config = _onnx_config(model).model_copy(update={"backend": "tensorrt", "precision": "fp16"})
    tensorrt = _masks(_run(config, chest, torch.device("cuda"), tmp_path))

    for name, mask in _masks(torchscript_findings).items():
        assert _dice(tensorrt[name], mask) >= BACKEND_AGREEMENT_DICE, name


# --- end to end: Orthanc → radnode (lung-unet) → Orthanc ------------------------------------------

def _demo_sections() -> dict[str, Any]:
    """The demo YAML's lung-unet model and pipeline, as an admin copies them into a node's file."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    return {"models": {MODEL: demo["models"][MODEL]}, "pipelines": {MODEL: demo["pipelines"][MODEL]}}


def _volumes(sr_file: Path) -> dict[str, float]:
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(sr_file).content)
    volumes = {}
    for group in report.get_volumetric_roi_measurement_groups():
        (volume,) = [m for m in group.get_measurements() if m.name.meaning == codes.VOLUME.meaning]
        volumes[group.tracking_identifier] = float(volume.value)
    return volumes


@pytest.mark.slow
def test_lung_unet_study_routed_from_orthanc_comes_back_as_coded_seg_and_sr(
    tmp_path: Path, chest_ct_dir: Path, chest: Volume, orthanc_factory: Callable[..., Orthanc]
) -> None:
    pacs = orthanc_factory()
    node = RadnodeProcess.beside(
        pacs, tmp_path / "radnode",
        routes=[{"match": {"Modality": "CT"}, "pipelines": [MODEL], "send_to": ["pacs"]}],
        extra=_demo_sections(),
    )
    study_uid = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID

    with node:
        pacs.upload_folder(chest_ct_dir)
        study_id = pacs.send_study("radnode", study_uid)
        start = time.monotonic()
        results = pacs.wait_for_results(study_id, "SEG and SR of lung-unet in Orthanc", RESULT_TIMEOUT_S)
        status = node.cli("status")
    print(f"last instance sent → lung-unet SEG+SR in Orthanc: {time.monotonic() - start:.1f} s")

    seg_file, sr_file = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg_file.write_bytes(results["SEG"][0])
    sr_file.write_bytes(results["SR"][0])
    seg = pydicom.dcmread(io.BytesIO(results["SEG"][0]))
    assert seg.StudyInstanceUID == study_uid
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert segments.keys() == SEG_CODES.keys()
    for label, segment in segments.items():
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == SEG_CODES[label]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"

    # Each lung's SR volume is its SEG mask's voxel count × the voxel volume, and near lung-qct's.
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    segment_of_frame = np.array([frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                                 for frame in seg.PerFrameFunctionalGroupsSequence])
    voxel_ml = chest.voxel_volume_mm3 / 1000
    teacher = _masks(LungQCT().run(chest, CPU))
    volumes = _volumes(sr_file)
    assert volumes.keys() == SEG_CODES.keys()
    for segment in seg.SegmentSequence:
        label = segment.SegmentLabel
        voxels = int(frames[segment_of_frame == segment.SegmentNumber].sum())
        assert volumes[label] == pytest.approx(voxels * voxel_ml, rel=1e-6)
        assert volumes[label] == pytest.approx(int(teacher[label].sum()) * voxel_ml, rel=0.1)

    check_iod(seg_file).assert_no_errors()
    check_iod(sr_file).assert_no_errors()
    assert status.returncode == 0, status.stderr
    assert MODEL in status.stdout and "succeeded" in status.stdout

