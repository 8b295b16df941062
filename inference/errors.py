"""Errors raised by :mod:`inference`.

    InferenceError
    ├── VolumeError        the series cannot be turned into a Volume (the message names why)
    └── NotApplicable      the pipeline does not apply to this series (e.g. no lungs in it)

A job that ends with either is a *clear* outcome recorded on the job, not a crash.
"""

from __future__ import annotations

__all__ = ["InferenceError", "NotApplicable", "VolumeError"]


class InferenceError(Exception):
    """Base class of every error :mod:`inference` raises on purpose."""


class VolumeError(InferenceError):
    """The stored series cannot be stacked into one volume."""


class NotApplicable(InferenceError):
    """The series is valid, but this pipeline has nothing to say about it."""
