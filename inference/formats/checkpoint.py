"""Reading pickled PyTorch weight files (``.pth``/``.pt``) without running code from them."""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inference.errors import ModelFormatError

__all__ = ["load_weights_file"]


def load_weights_file(name: str, path: Path, what: str, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, plus ``allowed_globals``.

    A file that names any other Python object (which unpickling would call) is refused with a
    ModelFormatError naming it; ``what`` says what the file should have been.
    """
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        reason = (f"it refers to {unsafe.group(1)}, which loading would run (weights need no code)"
                  if unsafe else (str(exc).splitlines() or [type(exc).__name__])[0])
        raise ModelFormatError(f"model {name!r}: {path} is not a readable {what}: {reason}") from exc
