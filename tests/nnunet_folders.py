"""nnU-Net v2 trained-model folders with random weights, as ``nnUNetv2_train`` leaves them in nnUNet_results.

    DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION/
        plans.json      the plans' one 3d_fullres configuration (network architecture, patch, spacing)
        dataset.json    channel names and output labels
        fold_N/checkpoint_final.pth   network_weights (+ the training bookkeeping nnU-Net stores)

The network class is the one the plans name (``dynamic_network_architectures``), built with deep
supervision as a training run would, so the checkpoint holds the keys a real one holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CT_STATISTICS", "plain_conv_unet_plans", "write_nnunet_folder"]

CT_STATISTICS = {"max": 3071.0, "mean": 30.0, "median": 40.0, "min": -1024.0,
                 "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 350.0}
"""Foreground intensity statistics of the kind nnU-Net records for CT (CTNormalization uses them)."""

_IMPORTED_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def plain_conv_unet_plans(name: str, spacing: Sequence[float], patch: Sequence[int],
                          features: Sequence[int], *, normalization: str = "CTNormalization",
                          reader: str = "SimpleITKIO", transpose_forward: Sequence[int] = (0, 1, 2),
                          statistics: dict[str, float] | None = None) -> dict[str, Any]:
    """Plans of nnU-Net's default planner for a 3d_fullres PlainConvUNet.

    ``features`` per stage sets the depth (one stage per entry: stride 1, then 2 per stage), 3³
    kernels and two convolutions per stage, as ``ExperimentPlanner`` writes them. ``spacing`` and
    ``patch`` are in the image's axis order; the plans hold them after ``transpose_forward``, as
    nnU-Net does. ``statistics``: the foreground intensities CTNormalization uses.
    """
    forward = list(transpose_forward)
    spacing, patch = [spacing[i] for i in forward], [patch[i] for i in forward]
    stages = len(features)
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [2 * p for p in patch],
        "spacing": list(spacing),
        "normalization_schemes": [normalization],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                "n_conv_per_stage": [2] * stages,
                "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": list(_IMPORTED_KWARGS),
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [2 * p for p in patch],
        "image_reader_writer": reader,
        "transpose_forward": forward,
        "transpose_backward": [forward.index(axis) for axis in range(3)],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": statistics or CT_STATISTICS},
    }


def write_nnunet_folder(folder: Path, plans: dict[str, Any], class_names: Sequence[str],
                        folds: Sequence[int] = (0,), channel: str = "CT",
                        trainer: str = "nnUNetTrainer",
                        mirroring_axes: tuple[int, ...] | None = None,
                        adjust: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Write ``folder`` (the TRAINER__PLANS__CONF folder) for classes background + ``class_names``.

    Each fold gets its own seeded random weights, then ``adjust`` (e.g. larger logits) if given.
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    folder.mkdir(parents=True)
    labels = {"background": 0, **{name: value for value, name in enumerate(class_names, start=1)}}
    dataset = {"channel_names": {"0": channel}, "labels": labels, "numTraining": 1000,
               "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    kwargs = dict(plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])
    kwargs.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    for fold in folds:
        torch.manual_seed(fold)
        network = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=True, **kwargs)
        if adjust is not None:
            with torch.no_grad():
                adjust(network)
        (folder / f"fold_{fold}").mkdir()
        torch.save({
            "network_weights": network.state_dict(),
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                        "train_losses": [np.float64(1.0)], "val_losses": [np.float64(1.0)], "lrs": [0.01],
                        "epoch_start_timestamps": [time.time()], "epoch_end_timestamps": [time.time()]},
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold,
                          "dataset_json": dataset, "device": torch.device("cpu")},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": mirroring_axes,
        }, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
