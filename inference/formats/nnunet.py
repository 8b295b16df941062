"""nnU-Net v2 trained-model folders: the format TotalSegmentator, MRSegmentator and STU-Net ship.

The folder is the one ``nnUNetv2_train`` writes (``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONF``)::

    plans.json      network architecture, patch size, spacing, axis transpose, intensity statistics
    dataset.json    channel names and output labels
    fold_N/checkpoint_final.pth   one trained network per cross-validation fold

radnode reads it without nnU-Net itself: the network is built from the plans' architecture with
``dynamic_network_architectures`` (the package nnU-Net builds it with) and the checkpoint's
``network_weights`` are loaded into it. The module radnode runs takes its input in the volume's
axis order and applies the plans' ``transpose_forward`` itself; several folds become one module
that averages their logits, as nnU-Net's predictor does. Like ``nnUNetv2_predict --disable_tta``,
radnode does not mirror the input at test time.

The plans' preprocessing becomes the model's :class:`~inference.model_config.InputSpec`: spacing
and patch size (back in the volume's axis order), and ``CTNormalization`` (clip to the foreground
0.5/99.5 percentiles, then subtract the foreground mean and divide by its standard deviation),
``ZScoreNormalization`` or ``NoNormalization``. What radnode cannot reproduce (cascades, 2D
configurations, region-based labels, several input channels, normalisation inside a mask, other
schemes) is refused with a :class:`~inference.errors.ModelFormatError` naming it.

nnU-Net does not record how its training images were oriented, only how they were read:
``NibabelIOWithReorient`` reorients to RAS and hands nnU-Net the axes (S, A, R), which radnode
reproduces through ``input.orientation = "SAR"``; other readers see the order the training files
stored, and radnode gives them the volume's own (slice, row, column) order, the order SimpleITK
reads from a NIfTI written from a DICOM series without reorientation. Tools that reorient before
nnU-Net reads (TotalSegmentator: RAS, so SimpleITK hands nnU-Net (S, A, R)) are stated by
``models.NAME.orientation`` (``SAR``); the rest of the input still comes from the plans.
"""

from __future__ import annotations

import json
import pydoc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dynamic_network_architectures  # type: ignore[import-untyped]
import numpy as np
import pydantic
import torch
from numpy._core.multiarray import scalar as numpy_scalar

from inference.errors import ModelFormatError
from inference.formats.base import ModelSource
from inference.formats.checkpoint import load_weights_file
from inference.model_config import InputSpec, ModelConfig, Normalization

__all__ = ["FoldEnsemble", "open_source"]

_TRUSTED_MODULES = (f"{dynamic_network_architectures.__name__}.", "torch.nn.")
"""Plans may name classes only from these packages: a pinned folder still must not import arbitrary code."""
_READER_ORIENTATION = {"NibabelIOWithReorient": "SAR"}
"""nnU-Net image readers whose array axes are fixed patient directions (see the module docstring)."""
# nnU-Net's training log in the checkpoint holds numpy scalars; allowing them keeps weights_only loading
_CHECKPOINT_GLOBALS: list[Any] = [
    numpy_scalar,
    (numpy_scalar, "numpy.core.multiarray.scalar"),  # checkpoints written with numpy 1.x
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
]
# nnU-Net < 2.4 plans describe the network with these keys instead of an "architecture" entry
_LEGACY_CLASSES = {
    "PlainConvUNet": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
    "ResidualEncoderUNet": (
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", "n_blocks_per_stage"
    ),
}


class FoldEnsemble(torch.nn.Module):
    """nnU-Net's fold networks on radnode's axes: transpose in, average the folds' logits, transpose back."""

    def __init__(self, networks: Sequence[torch.nn.Module], transpose_forward: Sequence[int]) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        backward = [int(i) for i in np.argsort(transpose_forward)]
        self.forward_axes = (0, 1, *(2 + int(axis) for axis in transpose_forward))
        self.backward_axes = (0, 1, *(2 + axis for axis in backward))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.permute(self.forward_axes)
        logits: torch.Tensor = self.networks[0](batch)
        for network in self.networks[1:]:
            logits = logits + network(batch)
        if len(self.networks) > 1:
            logits = logits / len(self.networks)
        return logits.permute(self.backward_axes)


def open_source(name: str, config: ModelConfig, sha256: str) -> ModelSource:
    """Read the plans, dataset and checkpoints of ``config.file``; build the network once to prove them."""
    folder = config.file
    plans = _read_json(name, folder / "plans.json")
    dataset = _read_json(name, folder / "dataset.json")
    class_names = _class_names(name, folder / "dataset.json", dataset)
    configuration = _configuration(name, folder / "plans.json", plans, config.configuration)
    checkpoints = [folder / f"fold_{fold}" / config.checkpoint for fold in config.folds]
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise ModelFormatError(
                f"model {name!r}: {checkpoint} does not exist; the nnU-Net folder {folder} has no "
                f"{config.checkpoint} for fold {checkpoint.parent.name.removeprefix('fold_')} "
                f"(models.{name}.folds / models.{name}.checkpoint)"
            )
    channels = len(dataset.get("channel_names", dataset.get("modality", {})))
    spec = config.input or _input_spec(name, folder / "plans.json", plans, configuration, channels,
                                       config.orientation)
    for value in config.labels:
        if value not in class_names:
            raise ModelFormatError(
                f"model {name!r}: models.{name}.labels names value {value}, but {folder / 'dataset.json'} "
                f"has only {', '.join(f'{v} ({n})' for v, n in sorted(class_names.items()))}"
            )

    def build() -> torch.nn.Module:
        networks = [_network(name, folder / "plans.json", configuration, channels, len(class_names) + 1)
                    for _ in checkpoints]
        for network, checkpoint in zip(networks, checkpoints, strict=True):
            _load_weights(name, network, checkpoint, config.configuration)
        return FoldEnsemble(networks, plans.get("transpose_forward", [0, 1, 2])).eval()

    build()
    return ModelSource(
        name=name,
        sha256=sha256,
        input=spec,
        labels=dict(config.labels),
        build_module=build,
        class_names=class_names,
    )


def _read_json(name: str, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFormatError(f"model {name!r}: {path} does not exist; an nnU-Net v2 model folder has "
                               f"plans.json, dataset.json and fold_N/ (models.{name}.file names the folder)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"model {name!r}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise ModelFormatError(f"model {name!r}: {path} must hold a JSON object")
    return content


def _class_names(name: str, path: Path, dataset: dict[str, Any]) -> dict[int, str]:
    """dataset.json ``labels`` (name → value) as value → name, foreground only; consecutive like nnU-Net's."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFormatError(f"model {name!r}: {path} has no 'labels' object")
    if "regions_class_order" in dataset or any(isinstance(v, list) for v in labels.values()):
        raise ModelFormatError(f"model {name!r}: {path} defines region-based labels, which radnode does not "
                               "support (only one label per voxel)")
    values = {label: value for label, value in labels.items() if label != "ignore"}
    if sorted(values.values()) != list(range(len(values))):
        raise ModelFormatError(f"model {name!r}: {path} labels must be 0 (background), 1, 2, … without gaps; "
                               f"found {sorted(values.values())}")
    return {int(value): label for label, value in values.items() if value != 0}


def _configuration(name: str, path: Path, plans: dict[str, Any], chosen: str) -> dict[str, Any]:
    """The chosen configuration with its ``inherits_from`` chain resolved (parents first)."""
    configurations = plans.get("configurations", {})
    if chosen not in configurations:
        raise ModelFormatError(f"model {name!r}: {path} has no configuration {chosen!r} (models.{name}."
                               f"configuration); it has {', '.join(sorted(configurations)) or 'none'}")
    resolved: dict[str, Any] = {}
    seen: list[str] = []
    current: str | None = chosen
    while current is not None:
        if current in seen or current not in configurations:
            raise ModelFormatError(f"model {name!r}: {path} configuration {seen[-1]!r} inherits from "
                                   f"{current!r}, which is missing or circular")
        seen.append(current)
        resolved = {**configurations[current], **resolved}
        current = configurations[current].get("inherits_from")
    if resolved.get("previous_stage") is not None:
        raise ModelFormatError(f"model {name!r}: configuration {chosen!r} is a cascade stage (it needs the "
                               f"segmentation of {resolved['previous_stage']!r} as input), which radnode "
                               "does not run; use a 3d_fullres or 3d_lowres configuration")
    if len(resolved.get("patch_size", [])) != 3:
        raise ModelFormatError(f"model {name!r}: configuration {chosen!r} is not 3D (patch_size "
                               f"{resolved.get('patch_size')}); radnode runs 3D configurations only")
    return resolved


def _input_spec(name: str, path: Path, plans: dict[str, Any], configuration: dict[str, Any],
                channels: int, orientation: str | None) -> InputSpec:
    """The plans' preprocessing as an InputSpec, axes back in the volume's order (transpose_backward);
    ``orientation`` (``models.NAME.orientation``) overrides the reader's."""
    if channels != 1:
        raise ModelFormatError(f"model {name!r}: the model takes {channels} input channels; radnode derives "
                               f"the input of one-channel nnU-Net models only (give models.{name}.input)")
    try:
        scheme = configuration["normalization_schemes"][0]
        if configuration.get("use_mask_for_norm", [False])[0]:
            raise ModelFormatError(f"model {name!r}: {path} normalises {scheme} inside the nonzero mask "
                                   "(use_mask_for_norm), which radnode does not reproduce")
        if scheme == "CTNormalization":
            stats = plans["foreground_intensity_properties_per_channel"]["0"]
            normalization = Normalization(kind="fixed", low=stats["percentile_00_5"],
                                          high=stats["percentile_99_5"], mean=stats["mean"], std=stats["std"])
        elif scheme == "ZScoreNormalization":
            normalization = Normalization(kind="zscore")
        elif scheme == "NoNormalization":
            normalization = Normalization(kind="none")
        else:
            raise ModelFormatError(f"model {name!r}: {path} uses normalization {scheme!r}; radnode supports "
                                   "CTNormalization, ZScoreNormalization and NoNormalization")
        backward = [int(i) for i in np.argsort(plans.get("transpose_forward", [0, 1, 2]))]
        return InputSpec(
            channels=1,
            orientation=orientation or _READER_ORIENTATION.get(plans.get("image_reader_writer", "")),
            spacing_mm=tuple(configuration["spacing"][i] for i in backward),
            normalization=normalization,
            patch_size=tuple(configuration["patch_size"][i] for i in backward),
            batch_size=1,  # nnU-Net's predictor runs one window at a time: half the memory of two, as fast
            window_scheme="nnunet",
        )
    except (KeyError, IndexError, TypeError, pydantic.ValidationError) as exc:
        raise ModelFormatError(f"model {name!r}: {path} has no usable preprocessing for radnode: "
                               f"{type(exc).__name__}: {exc}") from exc


def _network(name: str, path: Path, configuration: dict[str, Any], channels: int,
             classes: int) -> torch.nn.Module:
    """The plans' network without deep supervision (what nnU-Net's predictor builds)."""
    architecture = configuration.get("architecture") or _legacy_architecture(name, path, configuration)
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(name, path, kwargs[key])
    kwargs["deep_supervision"] = False
    network_class = _locate(name, path, architecture["network_class_name"])
    try:
        network: torch.nn.Module = network_class(input_channels=channels, num_classes=classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelFormatError(f"model {name!r}: {path} architecture cannot be built: {exc}") from exc
    return network


def _legacy_architecture(name: str, path: Path, configuration: dict[str, Any]) -> dict[str, Any]:
    """Plans from nnU-Net < 2.4 (``UNet_class_name`` …) → the ``architecture`` entry newer plans carry."""
    try:
        class_name, blocks_key = _LEGACY_CLASSES[configuration["UNet_class_name"]]
        stages = len(configuration["n_conv_per_stage_encoder"])
        return {
            "network_class_name": class_name,
            "arch_kwargs": {
                "n_stages": stages,
                "features_per_stage": [min(configuration["UNet_base_num_features"] * 2**i,
                                           configuration["unet_max_num_features"]) for i in range(stages)],
                "conv_op": "torch.nn.Conv3d",
                "kernel_sizes": configuration["conv_kernel_sizes"],
                "strides": configuration["pool_op_kernel_sizes"],
                blocks_key: configuration["n_conv_per_stage_encoder"],
                "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"],
                "conv_bias": True,
                "norm_op": "torch.nn.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    except KeyError as exc:
        raise ModelFormatError(f"model {name!r}: {path} describes no network radnode can build (missing "
                               f"{exc}; it needs an 'architecture' entry or UNet_class_name "
                               f"{' or '.join(_LEGACY_CLASSES)})") from exc


def _locate(name: str, path: Path, dotted: str) -> Any:
    found = pydoc.locate(dotted) if dotted.startswith(_TRUSTED_MODULES) else None
    if found is None:
        raise ModelFormatError(f"model {name!r}: {path} names {dotted!r}, which is not a class of "
                               f"{' or '.join(m.rstrip('.') for m in _TRUSTED_MODULES)} installed here "
                               "(custom nnU-Net trainers and networks are not supported)")
    return found


def _load_weights(name: str, network: torch.nn.Module, path: Path, configuration: str) -> None:
    """Load the checkpoint's ``network_weights`` into ``network``; no code from the file runs."""
    checkpoint = load_weights_file(name, path, "nnU-Net checkpoint", _CHECKPOINT_GLOBALS)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelFormatError(f"model {name!r}: {path} has no 'network_weights'; it is not an nnU-Net v2 "
                               "checkpoint")
    trained = checkpoint.get("init_args", {}).get("configuration", configuration)
    if trained != configuration:
        raise ModelFormatError(f"model {name!r}: {path} was trained as configuration {trained!r}, but "
                               f"models.{name}.configuration is {configuration!r}")
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except RuntimeError as exc:
        raise ModelFormatError(f"model {name!r}: {path} does not fit the network plans.json describes: "
                               f"{str(exc).splitlines()[0]}") from exc
