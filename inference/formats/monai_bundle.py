"""MONAI bundle folders: the format VISTA3D, Swin UNETR and the MONAI Model Zoo ship.

A bundle is a folder::

    configs/inference.json (or .yaml)   network_def, preprocessing, inferer, postprocessing
    configs/metadata.json               among others the output channels' names
    models/model.pt                     the network's state dict (or models/model.ts, TorchScript)

The network is built from ``network_def`` by MONAI's own ``ConfigParser`` and the weights loaded
into it (``weights_only``). The preprocessing becomes an :class:`~inference.model_config.InputSpec`
radnode applies itself, so a bundle runs through the same backends and sliding window as any
other model:

=========================  ===================================================================
``Orientationd``           ``input.orientation`` (bundles work in RAS, array axes x, y, z)
``Spacingd``               ``input.spacing_mm`` (in those axes)
``ScaleIntensityRanged``   ``window`` normalisation (output range 0..1, clipped)
``NormalizeIntensityd``    ``zscore`` normalisation (whole volume, not ``nonzero``)
``SlidingWindowInferer``   ``patch_size`` (roi_size), ``overlap``, ``batch_size`` (sw_batch_size)
=========================  ===================================================================

Loading, channel and type transforms need nothing from radnode; any other transform changes what
the network sees in a way radnode does not reproduce and is refused by name, as is a sigmoid
(multi-label) output, which radnode's argmax would misread.

Parsing a bundle's configuration evaluates the Python expressions in it (MONAI's design), which is
why the folder is pinned by SHA-256 in the YAML before it is opened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import torch
import yaml

from inference.errors import ModelFormatError
from inference.formats.base import ModelSource
from inference.formats.checkpoint import load_weights_file
from inference.model_config import InputSpec, ModelConfig, Normalization

__all__ = ["open_source"]

log = logging.getLogger("radnode.inference")

_NO_EFFECT = frozenset({
    "LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd", "AddChanneld", "AsChannelFirstd",
    "EnsureType", "EnsureTyped", "ToTensor", "ToTensord", "CastToType", "CastToTyped", "ToDevice",
    "ToDeviced", "Identity", "Identityd",
})
"""Preprocessing transforms that leave the voxels the network sees as radnode gives them."""
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def open_source(name: str, config: ModelConfig, sha256: str) -> ModelSource:
    """Parse the bundle's inference config and metadata; build the network once to prove them."""
    from monai.bundle.config_parser import ConfigParser

    folder = config.file
    config_file = next((folder / "configs" / n for n in _CONFIG_NAMES if (folder / "configs" / n).is_file()),
                       None)
    if config_file is None:
        raise ModelFormatError(f"model {name!r}: {folder / 'configs' / 'inference.json'} does not exist "
                               f"(nor inference.yaml); a MONAI bundle needs it (models.{name}.file names the "
                               "folder)")
    metadata_file = folder / "configs" / "metadata.json"
    parser = ConfigParser()
    try:
        parser.read_config(config_file)
        metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"model {name!r}: {exc.filename} does not exist; a MONAI bundle needs it"
                               ) from exc
    except (ValueError, yaml.YAMLError) as exc:  # JSON and YAML syntax errors
        raise ModelFormatError(f"model {name!r}: {config_file} or {metadata_file} cannot be read: {exc}"
                               ) from exc
    bundle = _Bundle(name, config_file, parser)
    class_names = _class_names(name, metadata_file, metadata)
    spec = config.input or bundle.input_spec()
    for value in config.labels:
        if class_names and value not in class_names:  # a bundle need not name its channels
            raise ModelFormatError(f"model {name!r}: models.{name}.labels names value {value}, but "
                                   f"{metadata_file} names only channels {sorted(class_names)}")
    build = _weights_loader(name, folder, bundle)
    build()
    return ModelSource(name=name, sha256=sha256, input=spec, labels=dict(config.labels), build_module=build,
                       class_names=class_names)


class _Bundle:
    """Reads values out of one parsed inference config, translating MONAI's errors once."""

    def __init__(self, name: str, path: Path, parser: Any) -> None:
        self.name = name
        self.path = path
        self.parser = parser

    def value(self, key: str, default: Any = None) -> Any:
        """The config item ``key`` (``::``-separated), references and expressions resolved."""
        if key not in self.parser:
            return default
        try:
            return self.parser.get_parsed_content(key, instantiate=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # MONAI wraps most in RuntimeError
            raise ModelFormatError(f"model {self.name!r}: {self.path} item {key!r} cannot be evaluated: "
                                   f"{exc}") from exc

    def error(self, problem: str) -> ModelFormatError:
        return ModelFormatError(f"model {self.name!r}: {self.path}: {problem}")

    def network(self) -> torch.nn.Module:
        if "network_def" not in self.parser:
            raise self.error("no 'network_def'; radnode builds the network from it")
        network = self.value("network_def")
        if not isinstance(network, torch.nn.Module):
            raise self.error(f"network_def is a {type(network).__name__}, not a torch network")
        return network

    def input_spec(self) -> InputSpec:
        """InputSpec from ``preprocessing`` and ``inferer`` (see the module docstring)."""
        spec: dict[str, Any] = {"channels": 1}
        transforms = self.parser.get("preprocessing::transforms")
        if not isinstance(transforms, list):
            raise self.error("preprocessing must be a Compose with a literal list of transforms")
        for index, transform in enumerate(transforms):
            target = str(transform.get("_target_", "")) if isinstance(transform, dict) else ""
            kind = target.rsplit(".", 1)[-1]
            key = f"preprocessing::transforms::{index}"
            if kind in _NO_EFFECT:
                continue
            if kind == "Orientationd":
                spec["orientation"] = str(self.value(f"{key}::axcodes"))
            elif kind == "Spacingd":
                spec["spacing_mm"] = tuple(float(v) for v in self.value(f"{key}::pixdim"))
            elif kind == "ScaleIntensityRanged":
                spec["normalization"] = self._window(key)
            elif kind == "NormalizeIntensityd":
                if self.value(f"{key}::nonzero", False) or self.value(f"{key}::subtrahend") is not None:
                    raise self.error("NormalizeIntensityd with nonzero or a subtrahend is not supported")
                spec["normalization"] = Normalization(kind="zscore")
            else:
                raise self.error(f"preprocessing transform {target or transform!r} (number {index}) is not "
                                 "supported by radnode; supported: Orientationd, Spacingd, "
                                 "ScaleIntensityRanged, NormalizeIntensityd, "
                                 f"{', '.join(sorted(_NO_EFFECT))}")
        if "orientation" not in spec:
            raise self.error("preprocessing has no Orientationd, so the axes the network expects are unknown")
        self._check_output()
        spec.update(self._inferer())
        try:
            return InputSpec(**spec)
        except pydantic.ValidationError as exc:
            raise self.error(f"its preprocessing is not usable: {exc}") from exc

    def _window(self, key: str) -> Normalization:
        low, high = self.value(f"{key}::a_min"), self.value(f"{key}::a_max")
        out = (self.value(f"{key}::b_min"), self.value(f"{key}::b_max"),
               bool(self.value(f"{key}::clip", False)))
        if out != (0, 1, True):
            raise self.error(f"ScaleIntensityRanged maps to b_min={out[0]}, b_max={out[1]}, clip={out[2]}; "
                             "radnode supports b_min=0, b_max=1, clip=true")
        return Normalization(kind="window", low=float(low), high=float(high))

    def _inferer(self) -> dict[str, Any]:
        target = str(self.parser.get("inferer::_target_", "")).rsplit(".", 1)[-1]
        if target != "SlidingWindowInferer":
            raise self.error(f"inferer is {target or 'missing'!r}; radnode needs a SlidingWindowInferer")
        roi = self.value("inferer::roi_size")
        mode = str(self.value("inferer::mode", "constant"))
        if mode != "gaussian":
            log.warning("model %s: the bundle's inferer blends windows with mode %r; radnode blends them "
                        "with a Gaussian, so results differ slightly where windows overlap", self.name, mode)
        return {"patch_size": tuple(int(v) for v in roi),
                "overlap": float(self.value("inferer::overlap", 0.25)),
                "batch_size": int(self.value("inferer::sw_batch_size", 1))}

    def _check_output(self) -> None:
        """Refuse outputs radnode's argmax over channels would misread (independent sigmoid channels)."""
        transforms = self.parser.get("postprocessing::transforms", [])
        for index, transform in enumerate(transforms if isinstance(transforms, list) else []):
            target = str(transform.get("_target_", "")) if isinstance(transform, dict) else ""
            sigmoid = f"postprocessing::transforms::{index}::sigmoid"
            if target.endswith("Activationsd") and self.value(sigmoid):
                raise self.error("postprocessing applies a sigmoid (multi-label output); radnode segments "
                                 "with one label per voxel (softmax/argmax)")


def _class_names(name: str, path: Path, metadata: dict[str, Any]) -> dict[int, str]:
    """Foreground channel names from metadata.json ``network_data_format.outputs.pred.channel_def``."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    output: Any = outputs.get("pred") or next(iter(outputs.values()), {})
    channels = output.get("channel_def", {}) if isinstance(output, dict) else {}
    try:
        return {int(value): str(label) for value, label in channels.items() if int(value) != 0}
    except ValueError as exc:
        raise ModelFormatError(f"model {name!r}: {path} channel_def keys must be channel numbers: {exc}"
                               ) from exc


def _weights_loader(name: str, folder: Path, bundle: _Bundle) -> Callable[[], torch.nn.Module]:
    """``models/model.ts`` (TorchScript) or ``network_def`` + ``models/model.pt`` (state dict)."""
    scripted, state = folder / "models" / "model.ts", folder / "models" / "model.pt"
    if not state.is_file() and scripted.is_file():
        def load_scripted() -> torch.nn.Module:
            try:
                module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(scripted), map_location="cpu")
                return module.eval()
            except RuntimeError as exc:
                raise ModelFormatError(f"model {name!r}: {scripted} is not a TorchScript file: "
                                       f"{str(exc).splitlines()[0]}") from exc
        return load_scripted
    if not state.is_file():
        raise ModelFormatError(f"model {name!r}: {state} does not exist (nor models/model.ts); the bundle "
                               "has no weights")

    def build() -> torch.nn.Module:
        network = bundle.network()
        weights = load_weights_file(name, state, "PyTorch state dict")
        if isinstance(weights, dict) and set(weights) == {"model"}:  # saved by MONAI's CheckpointSaver
            weights = weights["model"]
        try:
            network.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelFormatError(f"model {name!r}: {state} does not fit the network network_def describes: "
                                   f"{str(exc).splitlines()[0]}") from exc
        return network.eval()

    return build
