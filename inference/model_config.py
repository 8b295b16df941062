"""The ``models:`` section of the YAML: which model files a node may run, and how.

These are plain typed values (no torch), so ``radnode config check`` validates them on a host
without torch; :mod:`node.config` embeds :class:`ModelConfig` and resolves relative ``file`` paths
against the configuration file's folder. A ``file`` that starts with ``radnode:`` names a file
shipped inside radnode itself (``radnode:lung_unet.ts`` is ``inference/weights/lung_unet.ts``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from inference.label_spec import CodeText, FindingSpec, LabelSpec, Meaning, Section, Threshold, ValueSpec
from inference.labels import load_finding_table, load_label_table

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_PRESET_PREFIX",
    "SHIPPED_PREFIX",
    "UNPINNED_SHA256",
    "FindingSpec",
    "ImageInputSpec",
    "ImageOutputSpec",
    "InputSpec",
    "LabelSpec",
    "ModelConfig",
    "Normalization",
    "ReportSpec",
    "Task",
    "ValueSpec",
    "shipped_weights_dir",
]

SHIPPED_PREFIX = "radnode:"
UNPINNED_SHA256 = "0" * 64
"""The presets' placeholder digest: valid syntax, refused with its own message when the model loads."""
LABEL_PRESET_PREFIX = "preset:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PATIENT_AXIS = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}

Triple = tuple[float, float, float]
PositiveTriple = tuple[
    Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]
]
PatchSize = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
ImageSide = Annotated[int, Field(ge=16, le=4096)]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel (R, G, B) mean of ImageNet, which torchvision-trained 2-D networks normalise by."""
IMAGENET_STD = (0.229, 0.224, 0.225)


def shipped_weights_dir() -> Path:
    """The folder holding the weights radnode ships (``radnode:`` file names resolve here)."""
    return Path(__file__).resolve().parent / "weights"


class Normalization(Section):
    """How voxel values become model input.

    ``window``: clip to [low, high] then scale to [0, 1]. ``zscore``: subtract the volume's mean and
    divide by its standard deviation. ``fixed``: clip to [low, high] (when given) then
    (x - mean) / std with the given numbers (nnU-Net's CT normalisation). ``mean``: divide by the
    volume's mean (SFCN's brain-age input). ``none``: as loaded (HU).
    """

    kind: Literal["none", "window", "zscore", "fixed", "mean"] = "none"
    # zscore over the nonzero voxels only, zeros kept (MONAI's nonzero: skull-stripped brain MR)
    nonzero: bool = False
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


def _one_letter_per_axis_pair(value: str) -> str:
    value = value.upper()
    axes = sorted(_PATIENT_AXIS.get(letter, letter) for letter in value)
    if axes != ["AP", "LR", "SI"]:
        raise ValueError(f"orientation {value!r} must name one of L/R, A/P and S/I each (e.g. RAS)")
    return value


Orientation = Annotated[str, AfterValidator(_one_letter_per_axis_pair)]
"""Patient directions of the array axes, one letter each (nibabel/ITK letters: ``RAS``, ``SAR``)."""


class InputSpec(Section):
    """What the network expects.

    Axes are (slice, row, column) like :class:`inference.volume.Volume` unless ``orientation`` is
    given: then preprocessing first flips and permutes the volume (no interpolation) so that array
    axis *i* points toward patient direction ``orientation[i]`` (nibabel/ITK letters: ``"RAS"`` is
    a MONAI bundle's x toward Right, y Anterior, z Superior), ``spacing_mm`` and ``patch_size``
    are in that axis order, and the labels are turned back the same way. This is the one place
    where a model's RAS or LPS convention is stated; :mod:`inference.orientation` applies it.
    """

    channels: Annotated[int, Field(ge=1)] = 1
    orientation: Orientation | None = None
    # resample to this voxel size first (and the labels back to the source grid); None: source grid
    spacing_mm: PositiveTriple | None = None
    normalization: Normalization = Field(default_factory=Normalization)
    patch_size: PatchSize
    # sliding window: fraction of a patch two neighbouring windows share, and windows per forward pass
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.5
    batch_size: Annotated[int, Field(ge=1)] = 2
    # how windows are placed and blended: as MONAI's sliding_window_inference or nnU-Net's predictor
    window_scheme: Literal["monai", "nnunet"] = "monai"
    # how the output channels are read: softmax (one label per voxel, the argmax; channel i is label i)
    # or sigmoid (independent regions that may overlap, BraTS-style; channel i is label i + 1, present
    # where its probability exceeds threshold)
    activation: Literal["softmax", "sigmoid"] = "softmax"
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """(batch, channels, *patch_size) of the network's input."""
        return (batch, self.channels, *self.patch_size)


def _sha256_hex(value: str) -> str:
    value = value.strip().lower()
    if not _SHA256.match(value):
        raise ValueError("sha256 must be 64 hexadecimal digits (radnode model hash PATH prints it)")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256_hex)]


class ImageInputSpec(Section):
    """What a 2-D radiograph network expects (``task: classification`` or ``report``).

    The radiograph as displayed (values in [0, 1], 1 = white; :mod:`inference.xray`) is fitted into
    ``size`` (rows, columns): ``letterbox`` scales it to fit and pads the rest with black, keeping
    its aspect; ``stretch`` scales rows and columns separately (what training on square PNGs did).
    It is then repeated into ``channels`` and normalised per channel as (x - mean) / std; mean and
    std default to ImageNet's for 3 channels (torchvision-trained networks, CheXNet); a 1-channel
    network must state its own.
    """

    size: tuple[ImageSide, ImageSide]
    channels: Literal[1, 3] = 3
    resize: Literal["letterbox", "stretch"] = "letterbox"
    # images per forward pass (the frontal images of a series)
    batch_size: Annotated[int, Field(ge=1)] = 4
    mean: tuple[float, ...] | None = None
    std: tuple[Annotated[float, Field(gt=0)], ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _imagenet_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("channels", 3) == 3 and not {"mean", "std"} & data.keys():
            return {**data, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        return data

    @model_validator(mode="after")
    def _one_mean_and_std_per_channel(self) -> ImageInputSpec:
        if self.mean is None or self.std is None or not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean and std need one value per channel ({self.channels}); only 3-channel "
                             "networks default to ImageNet's")
        return self

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        """(batch, channels, rows, columns) of the network's input."""
        return (batch, self.channels, *self.size)


class ReportSpec(Section):
    """How a report generator's output becomes text (``task: report``).

    ``adapter`` names the :mod:`inference.report_generators` adapter: ``token-ids`` runs a network
    that maps the image to token ids (its own decoding loop inside) and reads them with
    ``vocabulary``, one token per line (line *n*, from 0, is token *n*), a file beside the model
    file (or an absolute path) pinned by ``vocabulary_sha256``. Generation stops at ``end_token``;
    the words after ``impression_token`` are the Impression, the words before it the Findings;
    ``skip_tokens`` (padding, start) are dropped.
    """

    adapter: Literal["token-ids"] = "token-ids"
    vocabulary: Path
    vocabulary_sha256: Sha256
    end_token: str = "<eos>"
    impression_token: str | None = "<impression>"
    skip_tokens: tuple[str, ...] = ("<pad>", "<bos>")


class ImageOutputSpec(Section):
    """What an image-to-image network's one output channel is (``task: image``): a derived series.

    Its value becomes ``scale * output + offset`` in ``unit`` (UCUM, with ``unit_meaning``; HU by
    default), clipped to [``low``, ``high``] where given (the range the network was trained to
    produce), and is brought back to the source grid (trilinear). ``derivation`` codes how the image
    is derived from its source (CID 7203, e.g. ``DCM:113087`` Smoothing), ``description`` says it in
    words (the images' Derivation Description).
    """

    description: Annotated[str, Field(min_length=1, max_length=1024)]
    derivation: CodeText
    derivation_meaning: Meaning
    unit: Annotated[str, Field(min_length=1, max_length=16)] = "[hnsf'U]"
    unit_meaning: Meaning = "Hounsfield unit"
    scale: float = 1.0
    offset: float = 0.0
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _range(self) -> ImageOutputSpec:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"output low ({self.low:g}) must be below high ({self.high:g})")
        return self


class Task(StrEnum):
    """What a model does (``models.NAME.task``); it picks the pipeline that runs it."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"
    REPORT = "report"
    DETECTION = "detection"  # 3-D boxes with scores (inference.pipelines.detection)
    REGRESSION = "regression"  # numbers about the series, e.g. brain age (inference.pipelines.regression)
    IMAGE = "image"  # image-to-image: a derived series of the source (inference.pipelines.image)


class ModelConfig(Section):
    """One model file (or folder) the node may load, pinned by its SHA-256.

    ``sha256`` of a folder (MONAI bundle, nnU-Net v2 results folder) is taken over every file in it
    (``radnode model hash PATH`` prints it). ``task`` says what the network does: ``segmentation``
    (3-D; ``input`` and ``labels`` are required for TorchScript and ONNX files, bundle and nnU-Net
    folders carry their own and the YAML may override them), or, on 2-D radiographs (``image``),
    ``classification`` (``findings``: one coded finding per output) and ``report`` (``report``: how
    its output becomes text); or 3-D again, ``detection`` (``input`` and ``findings``: one coded
    finding per class, its threshold the lowest score reported) and ``regression`` (``input`` and
    ``values``: one coded quantity per output, with its unit), and ``image`` (``input`` and ``output``:
    what its one output image is; a derived series). All but segmentation models are TorchScript or
    ONNX files.
    """

    file: Path
    format: Literal["torchscript", "onnx", "monai_bundle", "nnunetv2"]
    sha256: Sha256
    task: Task = Task.SEGMENTATION
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
    folds: list[Annotated[int, Field(ge=0)] | Literal["all"]] = [0]  # noqa: RUF012 (pydantic copies it)
    checkpoint: str = "checkpoint_final.pth"
    # how labels find the model's outputs: by value (the keys of labels are output values) or by name
    # (each class the model names, in nnU-Net's dataset.json or a bundle's metadata, takes the label
    # of that name: a part model of TotalSegmentator's 1.5 mm task with the whole task's table)
    labels_by: Literal["value", "name"] = "value"
    # nnU-Net v2: the axes the training images had when nnU-Net read them, where the plans' reader
    # does not fix them (TotalSegmentator reorients to RAS before nnU-Net reads, so its networks see
    # SAR); None: NibabelIOWithReorient's SAR, or the volume's own (slice, row, column) axes
    orientation: Orientation | None = None
    # classification and report: the 2-D input
    image: ImageInputSpec | None = None
    # classification: output index (from 0) → FindingSpec, or "preset:NAME" (preset:chestxray14)
    findings: dict[Annotated[int, Field(ge=0, le=4095)], FindingSpec] = Field(default_factory=dict)
    # classification: the network outputs logits (radnode applies the sigmoid) or probabilities
    outputs: Literal["logits", "probabilities"] = "logits"
    # classification: finding name → threshold, replacing the one ``findings`` gives (a site's calibration)
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
    report: ReportSpec | None = None
    # regression: output index (from 0) → the quantity it estimates, coded, with its unit
    values: dict[Annotated[int, Field(ge=0, le=255)], ValueSpec] = Field(default_factory=dict)
    # image: what the network's output image is
    output: ImageOutputSpec | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _preset_table(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.startswith(LABEL_PRESET_PREFIX):
                raise ValueError(f"labels must be a mapping or {LABEL_PRESET_PREFIX}NAME, got {value!r}")
            return load_label_table(value.removeprefix(LABEL_PRESET_PREFIX))
        return value

    @field_validator("findings", mode="before")
    @classmethod
    def _finding_preset(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.startswith(LABEL_PRESET_PREFIX):
                raise ValueError(f"findings must be a mapping or {LABEL_PRESET_PREFIX}NAME, got {value!r}")
            return load_finding_table(value.removeprefix(LABEL_PRESET_PREFIX))
        return value

    @model_validator(mode="after")
    def _self_describing_or_described(self) -> ModelConfig:
        rules = {
            Task.SEGMENTATION: ModelConfig._segmentation_model,
            Task.CLASSIFICATION: ModelConfig._radiograph_model,
            Task.REPORT: ModelConfig._radiograph_model,
            Task.DETECTION: ModelConfig._detection_model,
            Task.REGRESSION: ModelConfig._regression_model,
            Task.IMAGE: ModelConfig._image_model,
        }
        return rules[self.task](self)

    def _segmentation_model(self) -> ModelConfig:
        """The rules of a 3-D segmentation model."""
        # by value, not by the keys given: a dumped-and-reloaded segmentation config gives every key
        misplaced = [key for key in ("image", "findings", "thresholds", "report", "values", "output")
                     if getattr(self, key)]
        misplaced += ["outputs"] if self.outputs != "logits" else []
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} apply to task classification or report (values: "
                             "regression); this model's task is segmentation (set task)")
        if self.format in ("torchscript", "onnx"):
            if self.input is None:
                raise ValueError(f"a {self.format} model needs input (patch_size, normalization, …)")
            if not self.labels:
                raise ValueError(f"a {self.format} model needs labels (value: name, code, colour)")
        return self

    def _volume_network(self, *allowed: str) -> None:
        """What a 3-D detector and regressor share: a TorchScript or ONNX file with ``input``, and
        none of the other tasks' sections but ``allowed``."""
        task = self.task
        if self.format not in ("torchscript", "onnx"):
            raise ValueError(f"a {task} model is a torchscript or onnx file, not {self.format}")
        if self.input is None:
            raise ValueError(f"a {task} model needs input (patch_size: the network's input size, "
                             "spacing_mm, normalization, …)")
        sections = ("labels", "image", "report", "findings", "thresholds", "values", "output")
        misplaced = [key for key in sections if getattr(self, key) and key not in allowed]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} do not apply to a {task} model (it takes input and "
                             f"{' and '.join(allowed)})")

    def _detection_model(self) -> ModelConfig:
        """The rules of a 3-D detector: ``input``, and ``findings``, one coded finding per class."""
        self._volume_network("findings", "thresholds")
        if not self.findings:
            raise ValueError("a detection model needs findings (class: name, code, meaning, threshold: the "
                             "lowest score reported, site), e.g. findings: {0: {name: Nodule, code: "
                             "SCT:27925004, meaning: Nodule, threshold: 0.5}}")
        _numbered_from_zero("findings", sorted(self.findings))
        self._known_thresholds()
        return self

    def _regression_model(self) -> ModelConfig:
        """The rules of a 3-D regressor: ``input``, and ``values``, one coded quantity per output."""
        self._volume_network("values")
        if not self.values:
            raise ValueError("a regression model needs values (output: name, code, meaning, unit, "
                             "unit_meaning, finding, finding_meaning, scale, offset)")
        _numbered_from_zero("values", sorted(self.values))
        return self

    def _image_model(self) -> ModelConfig:
        """The rules of an image-to-image model: ``input`` (its 3-D patches) and ``output``, what it makes."""
        self._volume_network("output")
        if self.output is None:
            raise ValueError("an image model needs output (description, derivation, derivation_meaning; "
                             "unit, scale, offset, low, high), e.g. output: {description: CT denoised, "
                             "derivation: DCM:113087, derivation_meaning: Smoothing}")
        return self

    def _known_thresholds(self) -> None:
        names = [spec.name for spec in self.findings.values()]
        unknown = sorted(set(self.thresholds) - set(names))
        if unknown:
            raise ValueError(f"thresholds names unknown finding(s) {', '.join(unknown)}; the findings are "
                             f"{', '.join(names)}")

    def _radiograph_model(self) -> ModelConfig:
        """The rules of a 2-D classifier or report generator."""
        task = self.task
        if self.format not in ("torchscript", "onnx"):
            raise ValueError(f"a {task} model is a torchscript or onnx file, not {self.format}")
        if self.input is not None or self.labels:
            raise ValueError(f"input and labels are for segmentation models; a {task} model takes image "
                             "(size, channels, mean, std)")
        if self.image is None:
            raise ValueError(f"a {task} model needs image (size, channels, resize, mean, std)")
        if task == Task.REPORT:
            if self.report is None:
                raise ValueError("a report model needs report (adapter, vocabulary, vocabulary_sha256)")
            if self.findings or self.thresholds:
                raise ValueError("findings and thresholds are for classification models, not report models")
            return self
        if self.report is not None:
            raise ValueError("report is for report models; this model's task is classification")
        if not self.findings:
            raise ValueError("a classification model needs findings (output: name, code, meaning, "
                             "threshold), e.g. findings: preset:chestxray14")
        _numbered_from_zero("findings", sorted(self.findings))
        self._known_thresholds()
        return self

    def classifier_findings(self) -> dict[int, FindingSpec]:
        """Output index → finding, with the thresholds of ``thresholds`` in place of the table's."""
        return {index: spec.model_copy(update={"threshold": self.thresholds[spec.name]})
                if spec.name in self.thresholds else spec for index, spec in sorted(self.findings.items())}

    @property
    def network_input(self) -> InputSpec | ImageInputSpec | None:
        """What the network takes: the 2-D ``image`` of a radiograph model, else the 3-D ``input``."""
        return self.image if self.task in (Task.CLASSIFICATION, Task.REPORT) else self.input


def _numbered_from_zero(section: str, outputs: list[int]) -> None:
    if outputs != list(range(len(outputs))):
        raise ValueError(f"{section} must number the outputs 0…{len(outputs) - 1} without gaps; got "
                         f"{', '.join(map(str, outputs))}")
