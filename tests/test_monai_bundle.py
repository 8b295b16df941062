"""MONAI bundle folders, checked against MONAI's own bundle runner.

The test bundle is the shape of the Model Zoo's CT segmentation bundles: a MONAI UNet with random
weights, ``configs/inference.json`` (LoadImaged → Orientationd RAS → Spacingd → ScaleIntensityRanged,
SlidingWindowInferer, softmax → Invertd → argmax → SaveImaged) and ``configs/metadata.json``. A
block of the real chest CT goes through ``monai.bundle.run`` (its SupervisedEvaluator, as a NIfTI
file) and through radnode (open_model → axis_map → model_input → sliding_window → argmax → back to
the series' axes). Spacingd's pixdim is the CT's own spacing, so neither side interpolates: what is
compared is the network, the weights, the RAS axes and the intensity window radnode reads from the
bundle, and the blending of windows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest
import torch
import yaml

from inference.errors import ModelFormatError
from inference.formats import model_sha256, open_model
from inference.model_config import LabelSpec, ModelConfig
from inference.orientation import axis_map
from inference.volume import Volume, load_series
from tests.model_runs import LPS_TO_RAS, agreement, crop, radnode_labels

CLASSES = ("background", "lung", "vessel", "bone")
BLOCK = (slice(16, 48), slice(224, 288), slice(232, 280))  # (slice, row, col): 32 × 64 × 48 voxels
ROI_SIZE = (24, 32, 16)  # (x, y, z) in RAS: 3 × 3 × 3 windows over the block
NETWORK = {"spatial_dims": 3, "in_channels": 1, "out_channels": len(CLASSES), "channels": [4, 8, 16],
           "strides": [2, 2], "num_res_units": 1}


@pytest.fixture
def ct_block(chest_ct_dir: Path) -> Volume:
    """A block of the real chest CT, small enough for a CPU test; spacing (5, 0.84, 0.84) mm."""
    volume = load_series(sorted(chest_ct_dir.glob("*.dcm")))
    return crop(volume, BLOCK)


def _inference_config(spacing_xyz: list[float]) -> dict[str, Any]:
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": [],
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", **NETWORK},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": None},
            {"_target_": "Spacingd", "keys": "image", "pixdim": spacing_xyz, "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 500,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(ROI_SIZE), "sw_batch_size": 2,
                    "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False,
             "squeeze_end_dims": True, "separate_folder": False, "output_postfix": "seg"},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "cpu"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                      "val_data_loader": "@dataloader", "network": "@network", "inferer": "@inferer",
                      "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False},
        "run": ["$@evaluator.run()"],
    }


def _write_bundle(root: Path, spacing_xyz: list[float]) -> Path:
    """A bundle folder as the Model Zoo lays it out, with random weights."""
    from monai.networks.nets import UNet

    bundle = root / "chest_ct_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps(_inference_config(spacing_xyz), indent=2))
    metadata = {"version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": len(CLASSES),
                             "channel_def": {str(i): name for i, name in enumerate(CLASSES)}}},
    }}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(0)
    torch.save(UNet(**NETWORK).state_dict(), bundle / "models" / "model.pt")
    return bundle


def _config(bundle: Path, **overrides: Any) -> ModelConfig:
    label = LabelSpec(name="Lung", code="SCT:39607008", meaning="Lung", colour=(0, 128, 255))
    return ModelConfig(file=bundle, format="monai_bundle", sha256=model_sha256(bundle), labels={1: label},
                       backend="torch", **overrides)


def _monai_labels(bundle: Path, volume: Volume, tmp_path: Path) -> np.ndarray:
    """MONAI's bundle runner on the volume written as NIfTI (array (slice, row, col), RAS affine)."""
    from monai.bundle import run

    image = tmp_path / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume.voxels.numpy(), LPS_TO_RAS @ volume.affine), image)
    run(run_id="run", meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        datalist=[str(image)], output_dir=str(tmp_path / "monai"))
    return np.asarray(nibabel.load(tmp_path / "monai" / "ct_seg.nii.gz").dataobj).astype(np.int64)


# the reference runner warns that a bundle's config runs code (this one is the test's own), that NVIDIA's
# nvImageCodec is absent, and (through ignite → torch.distributed) that torch.jit is deprecated;
# none concerns what is compared
@pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")
@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader:UserWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_labels_match_monai_bundle_runner(ct_block: Volume, tmp_path: Path) -> None:
    axes = axis_map(ct_block.affine, "RAS")
    bundle = _write_bundle(tmp_path / "bundles", list(axes.spacing(ct_block.spacing)))
    source = open_model("chest", _config(bundle))
    ours = radnode_labels(source, ct_block, tmp_path / "engines")
    reference = _monai_labels(bundle, ct_block, tmp_path)

    assert ours.shape == ct_block.shape
    assert agreement(ours, reference, CLASSES, "MONAI bundle, 27 windows") >= 0.99


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _write_bundle(tmp_path / "bundles", [0.84, 0.84, 5.0])


def _edit_config(bundle: Path, edit: Any) -> None:
    path = bundle / "configs" / "inference.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_input_spec_comes_from_the_bundle_config(bundle: Path) -> None:
    source = open_model("chest", _config(bundle))

    assert source.input.orientation == "RAS"
    assert source.input.spacing_mm == (0.84, 0.84, 5.0)
    assert source.input.patch_size == ROI_SIZE
    assert (source.input.overlap, source.input.batch_size) == (0.5, 2)
    assert source.input.normalization.model_dump() == {"kind": "window", "low": -1000.0, "high": 500.0,
                                                       "mean": None, "std": None, "nonzero": False}
    assert source.class_names == {1: "lung", 2: "vessel", 3: "bone"}


def test_normalize_intensity_becomes_zscore(bundle: Path) -> None:
    _edit_config(bundle, lambda c: c["preprocessing"]["transforms"].__setitem__(
        4, {"_target_": "NormalizeIntensityd", "keys": "image"}))
    assert open_model("chest", _config(bundle)).input.normalization.kind == "zscore"


def test_yaml_input_overrides_the_bundle(bundle: Path) -> None:
    source = open_model("chest", _config(bundle, input={"patch_size": (16, 16, 16), "orientation": "LPS"}))
    assert (source.input.patch_size, source.input.orientation) == ((16, 16, 16), "LPS")


def test_unsupported_transform_is_named(bundle: Path) -> None:
    _edit_config(bundle, lambda c: c["preprocessing"]["transforms"].insert(
        3, {"_target_": "HistogramNormalized", "keys": "image"}))
    with pytest.raises(ModelFormatError, match=r"preprocessing transform 'HistogramNormalized' \(number 3\)"):
        open_model("chest", _config(bundle))


def test_bundle_without_orientation_is_refused(bundle: Path) -> None:
    _edit_config(bundle, lambda c: c["preprocessing"]["transforms"].pop(2))
    with pytest.raises(ModelFormatError, match="no Orientationd"):
        open_model("chest", _config(bundle))


def test_sigmoid_output_is_read_as_overlapping_regions_at_the_bundle_threshold(bundle: Path) -> None:
    def sigmoid(config: dict[str, Any]) -> None:
        transforms = config["postprocessing"]["transforms"]
        transforms[0].update(softmax=False, sigmoid=True)
        transforms[2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.4}

    _edit_config(bundle, sigmoid)
    source = open_model("chest", _config(bundle))
    assert (source.input.activation, source.input.threshold) == ("sigmoid", 0.4)
    # sigmoid channel i is label i + 1: every channel is a region, none is background
    assert source.class_names == {1: "background", 2: "lung", 3: "vessel", 4: "bone"}


def test_nonzero_channel_wise_normalisation_is_read(bundle: Path) -> None:
    _edit_config(bundle, lambda c: c["preprocessing"]["transforms"].__setitem__(
        4, {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}))
    assert open_model("chest", _config(bundle)).input.normalization.nonzero


@pytest.mark.parametrize("missing", ["configs/inference.json", "configs/metadata.json", "models/model.pt"])
def test_missing_bundle_file_is_named(bundle: Path, missing: str) -> None:
    (bundle / missing).unlink()
    with pytest.raises(ModelFormatError, match=f"{missing} does not exist"):
        open_model("chest", _config(bundle))


def test_weights_that_do_not_fit_network_def_are_named(bundle: Path) -> None:
    _edit_config(bundle, lambda c: c["network_def"].update(channels=[8, 16, 32]))
    with pytest.raises(ModelFormatError, match=r"models/model\.pt does not fit the network network_def"):
        open_model("chest", _config(bundle))


def test_unreadable_weights_are_named(bundle: Path) -> None:
    (bundle / "models" / "model.pt").write_bytes(b"not a state dict" * 64)
    with pytest.raises(ModelFormatError, match=r"models/model\.pt is not a readable PyTorch state dict"):
        open_model("chest", _config(bundle))


# tracing warns that it is deprecated and that InstanceNorm's shape check becomes a constant
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_weights_give_the_same_network(bundle: Path) -> None:
    """A bundle may ship models/model.ts instead of a state dict."""
    state_dict_network = open_model("chest", _config(bundle)).build_module()
    traced = torch.jit.trace(state_dict_network, torch.zeros((1, 1, *ROI_SIZE)))
    traced.save(str(bundle / "models" / "model.ts"))
    (bundle / "models" / "model.pt").unlink()
    torchscript_network = open_model("chest", _config(bundle)).build_module()

    batch = torch.rand((2, 1, *ROI_SIZE))
    with torch.no_grad():
        assert torch.allclose(torchscript_network(batch), state_dict_network(batch), atol=1e-5)


def test_yaml_config_reads_like_json(bundle: Path) -> None:
    json_spec = open_model("chest", _config(bundle)).input
    config = bundle / "configs" / "inference.json"
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config.read_text())))
    config.unlink()
    assert open_model("chest", _config(bundle)).input == json_spec
