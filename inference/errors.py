"""Errors raised by :mod:`inference`: the InferenceError branch of radnode's tree (:mod:`node.errors`).

    InferenceError (RadnodeError)
    ├── VolumeError        the series cannot be turned into a Volume (the message names why)
    │   └── RegistrationError   another series cannot be put on the reference grid (inference.registration)
    ├── RadiographError    the CR/DX image cannot be used as a 2-D radiograph (the message names why)
    ├── NotApplicable      the pipeline does not apply to this series (e.g. no lungs in it)
    ├── UnknownPipeline    a route names a pipeline radnode does not have (inference.pipelines; also
    │                      a LookupError)
    └── ModelError         a configured model cannot be used (the message names the file or key)
        ├── ModelFileMissing       the file or folder is not where the YAML says
        ├── ModelChecksumMismatch  its SHA-256 differs from the YAML's
        ├── ModelFormatError       it is not a valid file of its declared format
        └── BackendUnavailable     the requested backend is not installed or does not work here

A job that ends with either is a *clear* outcome recorded on the job, not a crash.
"""

from __future__ import annotations

from dicom_sr.errors import RadnodeError

__all__ = [
    "BackendUnavailable",
    "InferenceError",
    "ModelChecksumMismatch",
    "ModelError",
    "ModelFileMissing",
    "ModelFormatError",
    "NotApplicable",
    "RadiographError",
    "VolumeError",
]


class InferenceError(RadnodeError):
    """Base class of every error :mod:`inference` raises on purpose."""


class VolumeError(InferenceError):
    """The stored series cannot be stacked into one volume."""


class RadiographError(InferenceError):
    """The CR/DX image cannot be read as one grey-scale radiograph (colour, multi-frame, raw data…)."""


class NotApplicable(InferenceError):
    """The series is valid, but this pipeline has nothing to say about it."""


class ModelError(InferenceError):
    """A model named in the YAML cannot be used; the job fails with this message."""


class ModelFileMissing(ModelError):
    """The model's file or folder does not exist where the YAML says it is."""


class ModelChecksumMismatch(ModelError):
    """The model file's SHA-256 is not the one the YAML pins: it was replaced or corrupted."""


class ModelFormatError(ModelError):
    """The file is not a valid model of its declared format (the message says what is wrong)."""


class BackendUnavailable(ModelError):
    """The requested inference backend is not installed or cannot run on this host."""
