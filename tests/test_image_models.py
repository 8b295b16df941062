"""Image-to-image models (``task: image``): the ct-denoise-network preset with random weights of RED-CNN.

The preset's own ``models:`` entry configures the network (tests/test_presets_config.py checks the file
as a whole); the pipeline's output must be the network's, mapped back to HU as ``output`` says. The
model's rules refuse what an administrator could get wrong, naming what to write instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from inference.errors import ModelError
from inference.formats import file_sha256
from inference.model_config import ModelConfig, Task
from inference.networks.redcnn import REDCNN
from inference.pipelines import create
from inference.pipelines.image import ImagePipeline
from inference.registry import ModelRegistry
from inference.volume import Volume, load_series
from tests.tiny_models import save_torchscript

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "config" / "presets" / "ct-denoise-network.yaml"
CHEST_CT = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
REDCNN_PARAMETERS = 1_848_865
"""RED-CNN's weights and biases: 5 convolutions and 5 transposed ones, 96 filters of 5 × 5 each."""


def _entry(file: Path) -> dict[str, Any]:
    entry: dict[str, Any] = yaml.safe_load(PRESET.read_text(encoding="utf-8"))["models"]["redcnn"]
    return {**entry, "file": str(file), "sha256": file_sha256(file), "backend": "torch"}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    module = REDCNN().eval()
    return module, save_torchscript(module, tmp_path_factory.mktemp("redcnn") / "redcnn.ts")


def _small_chest() -> Volume:
    """Two slices of the chest CT, a 128 × 128 piece of each: RED-CNN costs millions of operations a pixel."""
    volume = load_series(sorted(CHEST_CT.glob("*.dcm")))
    return dataclasses.replace(volume, voxels=volume.voxels[30:32, 192:320, 192:320].contiguous(),
                               positions=volume.positions[30:32], headers=volume.headers[30:32],
                               sop_instance_uids=volume.sop_instance_uids[30:32])


def test_redcnn_has_the_papers_weights_and_keeps_the_patch_size() -> None:
    module = REDCNN()
    assert sum(p.numel() for p in module.parameters()) == REDCNN_PARAMETERS
    assert module(torch.zeros(2, 1, 1, 40, 33)).shape == (2, 1, 1, 40, 33)


def test_the_preset_runs_redcnn_and_its_output_is_the_networks_in_hu(network, tmp_path) -> None:
    module, file = network
    config = ModelConfig.model_validate(_entry(file))
    assert config.task is Task.IMAGE
    pipeline = create("ct-denoise-network", "redcnn", ModelRegistry({"redcnn": config}, CPU, tmp_path))
    assert isinstance(pipeline, ImagePipeline)
    volume = _small_chest()
    findings = pipeline.run(volume, CPU)
    derived = findings.derived_image
    assert derived is not None and derived.values.shape == volume.shape
    assert derived.unit.value == "[hnsf'U]" and derived.derivation.value == "113087"
    assert findings.algorithm.model_sha256 == config.sha256
    # one 128 × 128 window covers each slice: the output is the network's on the scaled HU, back in HU
    scaled = ((volume.voxels.clamp(-1024, 3072) + 1024) / 4096)[:, None, None]  # a batch of slices
    with torch.inference_mode():
        expected = module(scaled)[:, 0, 0]
    expected = (expected * 4096 - 1024).clamp(-1024, 3072).numpy()
    assert np.allclose(derived.values, expected, atol=0.05)


def _image_model(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "file": "m.ts", "format": "torchscript", "sha256": "0" * 64, "task": "image",
        "input": {"patch_size": [1, 64, 64]},
        "output": {"description": "denoised", "derivation": "DCM:113087", "derivation_meaning": "Smoothing"},
    }
    return {**fields, **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"output": None}, r"an image model needs output \(description, derivation, derivation_meaning; "),
    ({"input": None}, r"a image model needs input \(patch_size"),
    ({"format": "nnunetv2"}, r"a image model is a torchscript or onnx file, not nnunetv2"),
    ({"labels": {1: {"name": "Lung", "code": "SCT:39607008", "meaning": "Lung", "colour": [1, 2, 3]}}},
     r"labels do not apply to a image model \(it takes input and output\)"),
    ({"output": {"description": "d", "derivation": "113087", "derivation_meaning": "Smoothing"}},
     r"output\.derivation\s+Value error, '113087' is not SCHEME:VALUE"),
    ({"output": {"description": "d", "derivation": "DCM:113087", "derivation_meaning": "Smoothing", "low": 5,
                 "high": 5}}, r"output low \(5\) must be below high \(5\)"),
])
def test_an_image_model_is_refused_naming_what_to_give(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(_image_model(**changes))


def test_output_belongs_to_image_models_only() -> None:
    lung = {"name": "Lung", "code": "SCT:39607008", "meaning": "Lung", "colour": [1, 2, 3]}
    with pytest.raises(ValidationError, match=r"output apply to task classification or report .*this model's "
                                              r"task is segmentation"):
        ModelConfig.model_validate(_image_model(task="segmentation", labels={1: lung}))


def test_a_network_of_several_output_channels_is_refused_as_an_image_model(tmp_path) -> None:
    file = save_torchscript(torch.nn.Conv3d(1, 2, 1), tmp_path / "two.ts")
    config = ModelConfig.model_validate({**_image_model(), "file": str(file), "sha256": file_sha256(file),
                                         "backend": "torch", "input": {"patch_size": [1, 32, 32]}})
    pipeline = create("two", "two", ModelRegistry({"two": config}, CPU, tmp_path))
    with pytest.raises(ModelError, match=r"model 'two' gives 2 output channels; an image model gives one"):
        pipeline.run(_small_chest(), CPU)
