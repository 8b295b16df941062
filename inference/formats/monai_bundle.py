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
``NormalizeIntensityd``    ``zscore`` normalisation (per channel; over nonzero voxels with ``nonzero``)
``SlidingWindowInferer``   ``patch_size`` (roi_size), ``overlap``, ``batch_size`` (sw_batch_size)
=========================  ===================================================================

Loading, channel and type transforms need nothing from radnode; any other transform changes what
the network sees in a way radnode does not reproduce and is refused by name. A sigmoid output
(``Activationsd`` sigmoid, BraTS) is read as overlapping regions at ``AsDiscreted``'s threshold.

Parsing a bundle's configuration evaluates the Python expressions in it (MONAI's design), which is
why the folder is pinned by SHA-256 in the YAML before it is opened.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import torch
import yaml

from inference.errors import ModelFormatError
from inference.formats.base import ModelSource
from inference.formats.checkpoint import load_weights_file
from inference.formats.vista3d import EverythingSegmenter, is_vista3d
from inference.model_config import InputSpec, ModelConfig, Normalization

__all__ = ["open_source"]

log = logging.getLogger("radnode.inference")

_NO_EFFECT = frozenset({
    "LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd", "AddChanneld", "AsChannelFirstd",
    "EnsureType", "EnsureTyped", "ToTensor", "ToTensord", "CastToType", "CastToTyped", "ToDevice",
    "ToDeviced", "Identity", "Identityd",
    "VistaPreTransformd",  # VISTA3D: maps label prompts only
})
"""Preprocessing transforms that leave the voxels the network sees as radnode gives them."""
_APPROXIMATED = {
    "CropForegroundd": "crops the image to the box of voxels above 0 before the windows are placed; radnode "
                       "places them over the whole volume, so results differ slightly near the box's edges",
}
"""Preprocessing transforms radnode does not reproduce exactly but accepts, logging how results differ."""
_INFERERS = ("SlidingWindowInferer", "Vista3dInferer")
"""Inferers that blend Gaussian-weighted sliding windows (VISTA3D's does so for class prompts)."""
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
    spec = config.input or bundle.input_spec(metadata)
    class_names = _class_names(name, metadata_file, metadata, spec.activation)
    for value in config.labels:
        if class_names and value not in class_names:  # a bundle need not name its channels
            raise ModelFormatError(f"model {name!r}: models.{name}.labels names value {value}, but "
                                   f"{metadata_file} names only channels {sorted(class_names)}")
    build = _weights_loader(name, folder, bundle, class_names)
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

    def input_spec(self, metadata: dict[str, Any]) -> InputSpec:
        """InputSpec from ``preprocessing``, ``inferer`` and ``postprocessing`` (see the module docstring)."""
        inputs = metadata.get("network_data_format", {}).get("inputs", {})
        image: object = inputs.get("image") or next(iter(inputs.values()), {})
        channels = int(image.get("num_channels", 1)) if isinstance(image, dict) else 1
        spec: dict[str, Any] = {"channels": channels}
        base, spacing_first = "preprocessing::transforms", False
        transforms = self.parser.get(base)
        if isinstance(transforms, str) and re.fullmatch(r"\$?@[\w:]+\s*", transforms):  # "$@a_list": VISTA3D
            base = transforms.strip().lstrip("$@")
            transforms = self.parser.get(base)
        if not isinstance(transforms, list):
            raise self.error("preprocessing must be a Compose with a list of transforms (or a reference to "
                             "one)")
        for index, transform in enumerate(transforms):
            target = str(transform.get("_target_", "")) if isinstance(transform, dict) else ""
            kind = target.rsplit(".", 1)[-1]
            key = f"{base}::{index}"
            if kind in _NO_EFFECT:
                continue
            if kind in _APPROXIMATED:
                log.warning("model %s: the bundle's %s %s", self.name, kind, _APPROXIMATED[kind])
            elif kind == "Orientationd":
                spec["orientation"] = str(self.value(f"{key}::axcodes"))
            elif kind == "Spacingd":
                spec["spacing_mm"] = tuple(float(v) for v in self.value(f"{key}::pixdim"))
                spacing_first = "orientation" not in spec
            elif kind == "ScaleIntensityRanged":
                spec["normalization"] = self._window(key)
            elif kind == "NormalizeIntensityd":
                if self.value(f"{key}::subtrahend") is not None or self.value(f"{key}::divisor") is not None:
                    raise self.error("NormalizeIntensityd with a subtrahend or divisor is not supported")
                if spec["channels"] > 1 and not self.value(f"{key}::channel_wise", False):
                    raise self.error("NormalizeIntensityd over all channels together is not supported "
                                     "(radnode normalises each channel on its own: channel_wise)")
                spec["normalization"] = Normalization(kind="zscore",
                                                      nonzero=bool(self.value(f"{key}::nonzero", False)))
            else:
                raise self.error(f"preprocessing transform {target or transform!r} (number {index}) is not "
                                 "supported by radnode; supported: Orientationd, Spacingd, "
                                 "ScaleIntensityRanged, NormalizeIntensityd, "
                                 f"{', '.join(sorted({*_NO_EFFECT, *_APPROXIMATED}))}")
        if "orientation" not in spec:
            raise self.error("preprocessing has no Orientationd, so the axes the network expects are unknown")
        if spacing_first and len(set(spec["spacing_mm"])) > 1:
            raise self.error("Spacingd before Orientationd resamples the file's own axes, which radnode does "
                             "not know; radnode supports that order for an isotropic pixdim only")
        spec.update(self._output())
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
        if target not in _INFERERS:
            raise self.error(f"inferer is {target or 'missing'!r}; radnode needs a {' or '.join(_INFERERS)}")
        roi = self.value("inferer::roi_size")
        mode = "gaussian" if target == "Vista3dInferer" else str(self.value("inferer::mode", "constant"))
        if mode != "gaussian":
            log.warning("model %s: the bundle's inferer blends windows with mode %r; radnode blends them "
                        "with a Gaussian, so results differ slightly where windows overlap", self.name, mode)
        return {"patch_size": tuple(int(v) for v in roi),
                "overlap": float(self.value("inferer::overlap", 0.25)),
                "batch_size": int(self.value("inferer::sw_batch_size", 1))}

    def _output(self) -> dict[str, Any]:
        """How the output channels are read: a sigmoid (multi-label, BraTS) with AsDiscreted's threshold."""
        transforms = self.parser.get("postprocessing::transforms", [])
        targets = [(index, str(t.get("_target_", "") if isinstance(t, dict) else "").rsplit(".", 1)[-1])
                   for index, t in enumerate(transforms if isinstance(transforms, list) else [])]
        key = "postprocessing::transforms::{}::{}".format
        if not any(kind == "Activationsd" and self.value(key(i, "sigmoid"), False) for i, kind in targets):
            return {}
        thresholds = [self.value(key(i, "threshold")) for i, kind in targets if kind == "AsDiscreted"]
        threshold = next((float(t) for t in thresholds if t is not None), 0.5)
        return {"activation": "sigmoid", "threshold": threshold}


def _class_names(name: str, path: Path, metadata: dict[str, Any], activation: str) -> dict[int, str]:
    """Foreground label names from metadata.json ``network_data_format.outputs.pred.channel_def``.

    Softmax channel 0 is the background and channel i label i; sigmoid channel i is label i + 1.
    """
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    output: Any = outputs.get("pred") or next(iter(outputs.values()), {})
    channels = output.get("channel_def", {}) if isinstance(output, dict) else {}
    try:
        if activation == "sigmoid":
            return {int(value) + 1: str(label) for value, label in channels.items()}
        return {int(value): str(label) for value, label in channels.items() if int(value) != 0}
    except ValueError as exc:
        raise ModelFormatError(f"model {name!r}: {path} channel_def keys must be channel numbers: {exc}"
                               ) from exc


def _weights_loader(name: str, folder: Path, bundle: _Bundle,
                    class_names: dict[int, str]) -> Callable[[], torch.nn.Module]:
    """``models/model.ts`` (TorchScript) or ``network_def`` + ``models/model.pt`` (state dict); VISTA3D
    (prompted) becomes its automatic mode over the classes ``class_names`` numbers."""
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
        if is_vista3d(network):
            network = _everything(bundle, network, class_names)
        return network.eval()

    return build


def _everything(bundle: _Bundle, network: torch.nn.Module, class_names: dict[int, str]) -> torch.nn.Module:
    """VISTA3D asked for the bundle's ``everything_labels`` (else every class metadata.json names)."""
    labels = bundle.value("everything_labels") or list(class_names)
    try:
        return EverythingSegmenter(network, [int(v) for v in labels], max(class_names, default=0) + 1)
    except (TypeError, ValueError) as exc:
        raise bundle.error(f"everything_labels {labels!r} do not fit the channels metadata.json names: {exc}"
                           ) from exc
