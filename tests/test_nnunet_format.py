"""nnU-Net v2 trained-model folders, checked against nnU-Net's own predictor.

Each test writes the folder ``nnUNetv2_train`` would (plans.json, dataset.json, fold_N/
checkpoint_final.pth) for a small PlainConvUNet with random weights, then runs a block of the real
chest CT through ``nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`` (no mirroring, CPU) and
through radnode (open_model → torch backend → model_input → sliding_window → argmax → source grid).
The plans' spacing is the CT's own, so neither side resamples. With a patch as large as the block
both sides run one window, which isolates what the loader owns: the network, the fold ensemble, the
axis transpose and the normalisation radnode derives from the folder. With a smaller patch the
block's size puts nnU-Net's windows where radnode's are, and only the blending weights differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest
import torch

from inference.errors import ModelFormatError
from inference.formats import model_sha256, open_model
from inference.formats.base import ModelSource
from inference.model_config import LabelSpec, ModelConfig
from inference.pipelines.segmentation import SegmentationPipeline
from inference.registry import ModelRegistry
from inference.volume import Volume, load_series
from tests.model_runs import LPS_TO_RAS, agreement, crop, radnode_labels
from tests.nnunet_folders import plain_conv_unet_plans, write_nnunet_folder

CLASSES = ("background", "lung", "vessel", "bone")
# (slice, row, col) crop of the chest CT: 32 × 64 × 48 voxels; with a (32, 32, 24) patch and half
# overlap nnU-Net and radnode both put windows at 0 / 0, 16, 32 / 0, 12, 24
BLOCK = (slice(16, 48), slice(224, 288), slice(232, 280))
WHOLE_BLOCK_PATCH = (32, 64, 48)
SMALL_PATCH = (32, 32, 24)
TRANSPOSE_FORWARD = (2, 0, 1)  # the network sees (col, slice, row): plans spacing and patch are in that order
# nnU-Net accumulates blended logits in float16, where its Gaussian weight underflows near a window's
# faces: there its logits are rounded to about ±0.5. Random weights give logits of ~0.3, which that
# rounding scrambles; scaled up to the few units a trained network's logits differ by, they survive it
LOGIT_SCALE = 20.0
CT_STATS = {"max": 2000.0, "mean": -350.0, "median": -420.0, "min": -1024.0,
            "percentile_00_5": -1000.0, "percentile_99_5": 900.0, "std": 420.0}


@pytest.fixture
def ct_block(chest_ct_dir: Path) -> Volume:
    """A block of the real chest CT, small enough for a CPU test; spacing (5, 0.84, 0.84) mm."""
    volume = load_series(sorted(chest_ct_dir.glob("*.dcm")))
    return crop(volume, BLOCK)


def _plans(spacing: tuple[float, float, float], patch: tuple[int, int, int], reader: str) -> dict[str, Any]:
    return plain_conv_unet_plans("Dataset999_RadnodeTest", spacing, patch, (4, 8, 16), reader=reader,
                                 transpose_forward=TRANSPOSE_FORWARD, statistics=CT_STATS)


def _write_results_folder(root: Path, spacing: tuple[float, float, float], folds: int,
                          patch: tuple[int, int, int] = WHOLE_BLOCK_PATCH,
                          reader: str = "SimpleITKIO") -> Path:
    """What ``nnUNetv2_train`` leaves in nnUNet_results, with random weights (one seed per fold)."""

    def trained_scale(network: torch.nn.Module) -> None:  # see LOGIT_SCALE; every label present
        network.decoder.seg_layers[-1].weight.mul_(LOGIT_SCALE)
        network.decoder.seg_layers[-1].bias.copy_(torch.tensor([0.0, 0.05, -0.05, 0.0]) * LOGIT_SCALE)

    folder = root / "Dataset999_RadnodeTest" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    return write_nnunet_folder(folder, _plans(spacing, patch, reader), CLASSES[1:], folds=range(folds),
                               mirroring_axes=(0, 1, 2), adjust=trained_scale)


def _config(folder: Path, **overrides: Any) -> ModelConfig:
    label = LabelSpec(name="Lung", code="SCT:39607008", meaning="Lung", colour=(0, 128, 255))
    return ModelConfig(file=folder, format="nnunetv2", sha256=model_sha256(folder), labels={1: label},
                       backend="torch", **overrides)


def _use_scratch_nnunet_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnunetv2 insists on its three data folders being set; none is used here."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))


def _nnunet_labels(folder: Path, folds: tuple[int, ...], volume: Volume, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """nnU-Net's own prediction: SimpleITK axis order is the volume's (slice, row, col)."""
    _use_scratch_nnunet_paths(tmp_path, monkeypatch)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    image = volume.voxels.numpy()[None].astype(np.float32)
    return np.asarray(predictor.predict_single_npy_array(image, {"spacing": list(volume.spacing)}))


# the ensemble also goes through ONNX Runtime: the fold-averaging, transposing module exports to ONNX.
# Exporting torch's own InstanceNorm3d warns that a shape check becomes a constant (true for a fixed
# network) and that instance norm always normalises by the instance (it does, in eval mode too)
@pytest.mark.parametrize(("folds", "backend"), [((0,), "torch"), ((0, 1), "onnxruntime")],
                         ids=["one-fold-torch", "two-fold-ensemble-onnxruntime"])
def test_labels_match_nnunet_predictor(folds: tuple[int, ...], backend: str, ct_block: Volume, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _write_results_folder(tmp_path / "results", ct_block.spacing, folds=len(folds))
    source = open_model("chest", _config(folder, folds=list(folds)))
    ours = radnode_labels(source, ct_block, tmp_path / "engines", backend)
    reference = _nnunet_labels(folder, folds, ct_block, tmp_path, monkeypatch)

    assert ours.shape == ct_block.shape
    what = f"nnU-Net, {len(folds)} fold(s), one window, {backend}"
    assert agreement(ours, reference, CLASSES, what) >= 0.99


def test_segmentation_pipeline_segments_as_nnunet_predictor(ct_block: Volume, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML-driven pipeline (registry → SEG segment per coded label) on an nnU-Net folder."""
    folder = _write_results_folder(tmp_path / "results", ct_block.spacing, folds=1)
    registry = ModelRegistry({"chest": _config(folder)}, torch.device("cpu"), tmp_path / "cache")
    findings = SegmentationPipeline("chest-ct", "chest", registry).run(ct_block, torch.device("cpu"))
    reference = _nnunet_labels(folder, (0,), ct_block, tmp_path, monkeypatch) == 1

    [lung] = findings.segments  # only label 1 is coded in the YAML
    both = np.count_nonzero(lung.mask) + np.count_nonzero(reference)
    dice = 2 * np.count_nonzero(lung.full_mask() & reference) / both
    print(f"nnU-Net through SegmentationPipeline: lung Dice {dice:.4f}")
    assert lung.label == "Lung" and dice >= 0.99


def test_sliding_window_labels_match_nnunet_predictor(ct_block: Volume, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _write_results_folder(tmp_path / "results", ct_block.spacing, folds=1, patch=SMALL_PATCH)
    source = open_model("chest", _config(folder))
    ours = radnode_labels(source, ct_block, tmp_path / "engines")
    reference = _nnunet_labels(folder, (0,), ct_block, tmp_path, monkeypatch)

    assert agreement(ours, reference, CLASSES, "nnU-Net, 1 fold, 9 windows") >= 0.99


def test_labels_of_a_model_read_in_ras_match_nnunet_predictor(ct_block: Volume, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """NibabelIOWithReorient hands nnU-Net the axes (S, A, R): radnode must flip rows and columns too."""
    folder = _write_results_folder(tmp_path / "results", ct_block.spacing, folds=1,
                                   reader="NibabelIOWithReorient")
    source = open_model("chest", _config(folder))
    ours = radnode_labels(source, ct_block, tmp_path / "engines")
    _use_scratch_nnunet_paths(tmp_path, monkeypatch)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    image = tmp_path / "ct_0000.nii.gz"
    nibabel.save(nibabel.Nifti1Image(ct_block.voxels.numpy(), LPS_TO_RAS @ ct_block.affine), image)
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    (tmp_path / "nnunet").mkdir()
    predictor.predict_from_files_sequential([[str(image)]], str(tmp_path / "nnunet"),
                                            save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)
    reference = np.asarray(nibabel.load(tmp_path / "nnunet" / "ct.nii.gz").dataobj)

    assert source.input.orientation == "SAR"
    assert agreement(ours, reference, CLASSES, "nnU-Net NibabelIOWithReorient, one window") >= 0.99


def _open(folder: Path, **overrides: Any) -> ModelSource:
    return open_model("chest", _config(folder, **overrides))


@pytest.fixture
def results_folder(tmp_path: Path) -> Path:
    return _write_results_folder(tmp_path / "results", (5.0, 0.84, 0.84), folds=1)


def test_input_spec_comes_from_the_plans_in_volume_axis_order(results_folder: Path) -> None:
    spec = _open(results_folder).input

    assert spec.patch_size == WHOLE_BLOCK_PATCH  # plans hold it transposed: (48, 32, 64)
    assert spec.spacing_mm == (5.0, 0.84, 0.84)
    assert spec.orientation is None  # SimpleITKIO: the volume's own axis order
    assert spec.normalization.model_dump() == {"kind": "fixed", "low": -1000.0, "high": 900.0,
                                               "mean": -350.0, "std": 420.0, "nonzero": False}


def test_class_names_come_from_dataset_json(results_folder: Path) -> None:
    assert _open(results_folder).class_names == {1: "lung", 2: "vessel", 3: "bone"}


def _edit_json(path: Path, edit: Any) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_missing_plans_is_named(results_folder: Path) -> None:
    (results_folder / "plans.json").unlink()
    with pytest.raises(ModelFormatError, match=r"plans\.json does not exist"):
        _open(results_folder)


def test_missing_fold_is_named(results_folder: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"fold_3/checkpoint_final\.pth does not exist"):
        _open(results_folder, folds=[0, 3])


def test_fold_all_is_the_model_trained_on_every_case(results_folder: Path) -> None:
    (results_folder / "fold_0").rename(results_folder / "fold_all")
    source = _open(results_folder, folds=["all"])
    assert source.build_module is not None
    assert len(source.build_module().networks) == 1


def test_unreadable_checkpoint_is_named(results_folder: Path) -> None:
    (results_folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ModelFormatError, match=r"fold_0/checkpoint_final\.pth is not a readable nnU-Net"):
        _open(results_folder)


def test_checkpoint_that_does_not_fit_the_plans_is_named(results_folder: Path) -> None:
    def widen(plans: dict[str, Any]) -> None:
        architecture = plans["configurations"]["3d_fullres"]["architecture"]
        architecture["arch_kwargs"]["features_per_stage"] = [8, 16, 32]

    _edit_json(results_folder / "plans.json", widen)
    with pytest.raises(ModelFormatError, match=r"checkpoint_final\.pth does not fit the network plans\.json"):
        _open(results_folder)


class _RunsCodeWhenUnpickled:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return print, ("a checkpoint ran code",)


def test_checkpoint_that_runs_code_is_refused(results_folder: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"network_weights": {}, "payload": _RunsCodeWhenUnpickled()},
               results_folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelFormatError, match=r"not a readable nnU-Net checkpoint: it refers to print"):
        _open(results_folder)
    assert "ran code" not in capsys.readouterr().out


def test_unknown_configuration_lists_the_trained_ones(results_folder: Path) -> None:
    with pytest.raises(ModelFormatError, match=r"no configuration '3d_lowres'.*it has 3d_fullres"):
        _open(results_folder, configuration="3d_lowres")


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(normalization_schemes=["RescaleTo01Normalization"]), "'RescaleTo01Normalization'"),
    (lambda c: c.update(use_mask_for_norm=[True]), "inside the nonzero mask"),
    (lambda c: c.update(previous_stage="3d_lowres"), "cascade stage"),
    (lambda c: c["architecture"].update(network_class_name="os.system"), "'os.system', which is not a class"),
], ids=["normalization", "mask-for-norm", "cascade", "untrusted-class"])
def test_unsupported_plans_are_refused_by_name(results_folder: Path, change: Any, message: str) -> None:
    _edit_json(results_folder / "plans.json", lambda plans: change(plans["configurations"]["3d_fullres"]))
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        _open(results_folder)


def test_region_based_labels_are_refused(results_folder: Path) -> None:
    _edit_json(results_folder / "dataset.json", lambda d: d["labels"].update(lung=[1, 2]))
    with pytest.raises(ModelFormatError, match="region-based labels"):
        _open(results_folder)


def test_yaml_label_missing_from_dataset_json_is_named(results_folder: Path) -> None:
    label = LabelSpec(name="Heart", code="SCT:80891009", meaning="Heart", colour=(255, 0, 0))
    config = ModelConfig(file=results_folder, format="nnunetv2", sha256=model_sha256(results_folder),
                         labels={7: label})
    with pytest.raises(ModelFormatError, match=r"names value 7, but .*dataset\.json has only 1 \(lung\)"):
        open_model("chest", config)
