"""The ``models:`` section of the YAML: which model files a node may run, and how.

These are plain typed values (no torch), so ``radnode config check`` validates them on a host
without torch; :mod:`node.config` embeds :class:`ModelConfig` and resolves relative ``file`` paths
against the configuration file's folder. A ``file`` that starts with ``radnode:`` names a file
shipped inside radnode itself (``radnode:lung_unet.ts`` is ``inference/weights/lung_unet.ts``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "LABEL_PRESET_PREFIX",
    "SHIPPED_PREFIX",
    "InputSpec",
    "LabelSpec",
    "ModelConfig",
    "Normalization",
    "shipped_weights_dir",
]

SHIPPED_PREFIX = "radnode:"
LABEL_PRESET_PREFIX = "preset:"
_CODE = re.compile(r"^(?P<scheme>[A-Za-z0-9_.-]{1,16}):(?P<value>[^:\s]{1,64})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PATIENT_AXIS = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}

Triple = tuple[float, float, float]
PositiveTriple = tuple[
    Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]
]
Channel = Annotated[int, Field(ge=0, le=255)]
PatchSize = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


def shipped_weights_dir() -> Path:
    """The folder holding the weights radnode ships (``radnode:`` file names resolve here)."""
    return Path(__file__).resolve().parent / "weights"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Section):
    """How voxel values become model input.

    ``window``: clip to [low, high] then scale to [0, 1]. ``zscore``: subtract the volume's mean and
    divide by its standard deviation. ``fixed``: clip to [low, high] (when given) then
    (x - mean) / std with the given numbers (nnU-Net's CT normalisation). ``none``: as loaded (HU).
    """

    kind: Literal["none", "window", "zscore", "fixed"] = "none"
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    std: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Normalization:
        if self.kind == "window" and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError("window normalization needs low < high")
        if self.kind == "fixed" and (self.mean is None or self.std is None):
            raise ValueError("fixed normalization needs mean and std")
        return self


class InputSpec(_Section):
    """What the network expects.

    Axes are (slice, row, column) like :class:`inference.volume.Volume` unless ``orientation`` is
    given: then preprocessing first flips and permutes the volume (no interpolation) so that array
    axis *i* points toward patient direction ``orientation[i]`` (nibabel/ITK letters: ``"RAS"`` is
    a MONAI bundle's x toward Right, y Anterior, z Superior), ``spacing_mm`` and ``patch_size``
    are in that axis order, and the labels are turned back the same way. This is the one place
    where a model's RAS or LPS convention is stated; :mod:`inference.orientation` applies it.
    """

    channels: Annotated[int, Field(ge=1)] = 1
    orientation: str | None = None
    # resample to this voxel size first (and the labels back to the source grid); None: source grid
    spacing_mm: PositiveTriple | None = None
    normalization: Normalization = Field(default_factory=Normalization)
    patch_size: PatchSize
    # sliding window: fraction of a patch two neighbouring windows share, and windows per forward pass
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.5
    batch_size: Annotated[int, Field(ge=1)] = 2
    # how windows are placed and blended: as MONAI's sliding_window_inference or nnU-Net's predictor
    window_scheme: Literal["monai", "nnunet"] = "monai"

    @field_validator("orientation")
    @classmethod
    def _one_letter_per_axis_pair(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.upper()
        axes = sorted(_PATIENT_AXIS.get(letter, letter) for letter in value)
        if axes != ["AP", "LR", "SI"]:
            raise ValueError(f"orientation {value!r} must name one of L/R, A/P and S/I each (e.g. RAS)")
        return value


class LabelSpec(_Section):
    """One output class: its name and the coded concept a SEG segment carries for it.

    ``code`` is ``SCHEME:VALUE`` (``SCT:39607008``), ``meaning`` its code meaning; ``category``
    defaults to Anatomical Structure (CID 7150). Published mappings (TotalSegmentator's) code a
    left/right structure as one concept plus a laterality ``modifier`` (Segmented Property Type
    Modifier, CID 244), and a lesion as a morphology plus the ``region`` it lies in (Anatomic Region,
    with its own ``region_modifier``); each optional code comes with its meaning.
    """

    name: Annotated[str, Field(min_length=1, max_length=64)]
    code: str
    meaning: Annotated[str, Field(min_length=1, max_length=64)]
    category: str = "SCT:91723000"
    category_meaning: str = "Anatomical Structure"
    colour: tuple[Channel, Channel, Channel]
    modifier: str | None = None
    modifier_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    region: str | None = None
    region_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    region_modifier: str | None = None
    region_modifier_meaning: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @field_validator("code", "category", "modifier", "region", "region_modifier")
    @classmethod
    def _scheme_and_value(cls, value: str | None) -> str | None:
        if value is not None and not _CODE.match(value):
            raise ValueError(f"{value!r} is not SCHEME:VALUE (e.g. SCT:39607008)")
        return value

    @model_validator(mode="after")
    def _codes_have_meanings(self) -> LabelSpec:
        for key in ("modifier", "region", "region_modifier"):
            if (getattr(self, key) is None) != (getattr(self, f"{key}_meaning") is None):
                raise ValueError(f"{key} and {key}_meaning go together: give both or neither")
        if self.region_modifier is not None and self.region is None:
            raise ValueError("region_modifier needs a region")
        return self


class ModelConfig(_Section):
    """One model file (or folder) the node may load, pinned by its SHA-256.

    ``sha256`` of a folder (MONAI bundle, nnU-Net v2 results folder) is taken over every file in it
    (``radnode model hash PATH`` prints it). ``input`` and ``labels`` are required for TorchScript
    and ONNX files; bundle and nnU-Net folders carry their own and the YAML may override them.
    """

    file: Path
    format: Literal["torchscript", "onnx", "monai_bundle", "nnunetv2"]
    sha256: str
    backend: Literal["auto", "tensorrt", "onnxruntime", "torch"] = "auto"
    # GPU only: CPUs always run fp32
    precision: Literal["fp32", "fp16"] = "fp16"
    torch_compile: bool = False
    input: InputSpec | None = None
    # value: LabelSpec, or "preset:NAME" for a table shipped in inference/labels (preset:totalsegmentator-ct)
    labels: dict[Annotated[int, Field(ge=1, le=65535)], LabelSpec] = Field(default_factory=dict)
    # nnU-Net v2: which trained configuration and folds (an ensemble when several; "all" is the
    # fold_all model trained on every case) and checkpoint
    configuration: str = "3d_fullres"
    folds: list[Annotated[int, Field(ge=0)] | Literal["all"]] = [0]  # pydantic copies the default
    checkpoint: str = "checkpoint_final.pth"

    @field_validator("labels", mode="before")
    @classmethod
    def _preset_table(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.startswith(LABEL_PRESET_PREFIX):
                raise ValueError(f"labels must be a mapping or {LABEL_PRESET_PREFIX}NAME, got {value!r}")
            from inference.labels import load_label_table  # here: inference.labels imports this module

            return load_label_table(value.removeprefix(LABEL_PRESET_PREFIX))
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("sha256 must be 64 hexadecimal digits (radnode model hash PATH prints it)")
        return value

    @model_validator(mode="after")
    def _self_describing_or_described(self) -> ModelConfig:
        if self.format in ("torchscript", "onnx"):
            if self.input is None:
                raise ValueError(f"a {self.format} model needs input (patch_size, normalization, …)")
            if not self.labels:
                raise ValueError(f"a {self.format} model needs labels (value: name, code, colour)")
        return self
