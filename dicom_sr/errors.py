"""The root of radnode's exception tree, and the error :mod:`dicom_sr` raises.

The root lives here, in the lowest package, because imports go node → inference → dicom_sr:
:mod:`inference.errors` and :mod:`node.errors` subclass (and re-export) it. The whole tree is
drawn in :mod:`node.errors`.
"""

from __future__ import annotations

__all__ = ["EncodingError", "RadnodeError"]


class RadnodeError(Exception):
    """Base class of every error radnode raises on purpose."""


class EncodingError(RadnodeError, ValueError):
    """Findings plus source headers cannot be encoded as a valid DICOM object.

    Also a ValueError, as it always was: the inputs' values are what is wrong.
    """
