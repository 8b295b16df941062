"""Opening the model files the YAML declares: existence, SHA-256 pin, then the format's opener.

Every format has one module with an ``open_source(name, config, sha256) -> ModelSource`` function,
listed in :data:`OPENERS` and imported only when a model of that format is opened (nnU-Net and
MONAI bring heavy dependencies a TorchScript-only node does not need).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from pathlib import Path

from inference.errors import ModelChecksumMismatch, ModelFileMissing, ModelFormatError
from inference.formats.base import ModelSource
from inference.model_config import UNPINNED_SHA256, LabelSpec, ModelConfig

__all__ = [
    "OPENERS", "ModelSource", "check_pinned", "file_sha256", "model_sha256", "open_model", "tree_sha256",
]

HASH_CHUNK_BYTES = 1 << 20
"""Files are hashed in chunks of this size, so a multi-GB checkpoint never sits in memory whole."""

#: format (ModelConfig.format) → module providing ``open_source(name, config, sha256) -> ModelSource``
OPENERS: dict[str, str] = {
    "torchscript": "inference.formats.torchscript",
    "onnx": "inference.formats.onnx",
    "nnunetv2": "inference.formats.nnunet",
    "monai_bundle": "inference.formats.monai_bundle",
}


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str:
    """SHA-256 of a folder: over sorted (relative posix path, NUL, file sha256 hex, newline) lines.

    Every regular file counts (symbolic links to files are followed), so renaming, adding or
    changing any file in a bundle or nnU-Net results folder changes the digest.
    """
    digest = hashlib.sha256()
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    for relative, file in files:
        digest.update(f"{relative}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def model_sha256(path: Path) -> str:
    """The digest the YAML pins for ``path``: :func:`file_sha256` or, for a folder, :func:`tree_sha256`."""
    return tree_sha256(path) if path.is_dir() else file_sha256(path)


def check_pinned(name: str, path: Path, expected: str, key: str) -> None:
    """Raise ModelChecksumMismatch unless ``path`` (a file or folder) has the SHA-256 ``key`` pins.

    A preset's placeholder digest gets its own message: the model was installed but not pinned yet.
    """
    if expected == UNPINNED_SHA256:
        raise ModelChecksumMismatch(
            f"model {name!r}: {key} is still the preset's placeholder (64 zeros); pin what you installed: "
            f"put the digest `radnode model hash {path}` prints there"
        )
    actual = model_sha256(path)
    if actual != expected:
        raise ModelChecksumMismatch(
            f"model {name!r}: {path} has SHA-256 {actual}, but {key} expects {expected}; the file was "
            f"replaced or corrupted (if the new file is intended, put the digest `radnode model hash "
            f"{path}` prints into the configuration)"
        )


def open_model(name: str, config: ModelConfig) -> ModelSource:
    """Check that the model ``name`` is where the YAML says and is the pinned file, then open it.

    Raises ModelFileMissing, ModelChecksumMismatch, or ModelFormatError (also for a format this
    installation has no opener for); each message names the file and the YAML key to fix.
    """
    path = config.file
    if not path.exists():
        raise ModelFileMissing(
            f"model {name!r}: {path} does not exist; fix models.{name}.file in the configuration "
            "or copy the model there"
        )
    check_pinned(name, path, config.sha256, f"models.{name}.sha256")
    module_name = OPENERS.get(config.format)
    if module_name is None:
        raise ModelFormatError(
            f"model {name!r}: format {config.format!r} (models.{name}.format) is not supported by "
            f"this installation; supported: {', '.join(sorted(OPENERS))}"
        )
    try:
        opener = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFormatError(
            f"model {name!r}: opening {config.format} models needs the Python package "
            f"{exc.name!r}, which is not installed"
        ) from exc
    if config.labels_by == "value":
        source: ModelSource = opener.open_source(name, config, config.sha256)  # checked above
        return source
    named: ModelSource = opener.open_source(name, config.model_copy(update={"labels": {}}), config.sha256)
    return dataclasses.replace(named, labels=_labels_by_name(name, config, named.class_names))


def _labels_by_name(name: str, config: ModelConfig, class_names: dict[int, str]) -> dict[int, LabelSpec]:
    """The coded label of each class the model names (``labels_by: name``), by output value."""
    if not class_names:
        raise ModelFormatError(f"model {name!r}: labels_by: name needs a model that names its classes "
                               f"(nnunetv2, monai_bundle); {config.format} does not")
    by_name = {label.name: label for label in config.labels.values()}
    unknown = [class_name for class_name in class_names.values() if class_name not in by_name]
    if unknown:
        raise ModelFormatError(f"model {name!r}: models.{name}.labels has no label named "
                               f"{', '.join(unknown)}, which the model outputs")
    return {value: by_name[class_name] for value, class_name in class_names.items()}
