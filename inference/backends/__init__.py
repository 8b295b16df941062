"""Choosing the backend that runs a model: TensorRT, ONNX Runtime or PyTorch.

An explicit choice (``backend: tensorrt`` …) either works or raises BackendUnavailable with the
reason. ``auto`` tries, best first, TensorRT (on CUDA, when installed), ONNX Runtime, then torch;
a backend that cannot apply here is skipped (logged with why), and one that should apply but
fails to load or to run a probe batch is logged as a WARNING naming the failure before the next
is tried, so a slower backend is never chosen silently.

Each backend is a :class:`~inference.backends.base.BackendPlugin` of its own module, registered
in :data:`BACKENDS` in ``auto``'s order; the modules (and torch.onnx, ONNX Runtime, TensorRT) are
imported only when a backend is checked or opened.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from inference.backends.base import Backend, BackendPlugin
from inference.errors import BackendUnavailable
from inference.formats.base import ModelSource
from inference.model_config import ImageInputSpec, Task
from inference.plugins import PluginRegistry

__all__ = ["BACKENDS", "Backend", "BackendPlugin", "open_backend"]

log = logging.getLogger("radnode.inference")

BACKENDS: PluginRegistry[BackendPlugin] = PluginRegistry("backend", {
    "tensorrt": "inference.backends.tensorrt_backend:PLUGIN",
    "onnxruntime": "inference.backends.onnxruntime_backend:PLUGIN",
    "torch": "inference.backends.torch_backend:PLUGIN",
})
"""Every backend by the name ``backend:`` takes, best first: the order ``auto`` tries them in."""


def open_backend(source: ModelSource, choice: str, device: torch.device, precision: str,
                 cache_dir: Path, torch_compile: bool = False) -> Backend:
    """A backend for ``source`` on ``device`` that has run one probe batch correctly."""
    if choice != "auto":
        backend = _open(choice, source, device, precision, cache_dir, torch_compile)
        log.info("model %s runs on %s (configured)", source.name, backend.describe())
        return backend
    reasons: list[str] = []
    for candidate in BACKENDS.names():
        skip = BACKENDS.get(candidate).why_unavailable(source, device)
        if skip is not None:
            reasons.append(f"{candidate} skipped: {skip}")
            continue
        try:
            backend = _open(candidate, source, device, precision, cache_dir, torch_compile)
        except BackendUnavailable as exc:
            log.warning("model %s: backend %s failed, falling back: %s", source.name, candidate, exc)
            reasons.append(f"{candidate} failed: {exc}")
            continue
        why = f" ({'; '.join(reasons)})" if reasons else ""
        log.info("model %s runs on %s (auto%s)", source.name, backend.describe(), why)
        return backend
    raise BackendUnavailable(f"model {source.name!r}: no backend can run it here: {'; '.join(reasons)}")


def _open(choice: str, source: ModelSource, device: torch.device, precision: str, cache_dir: Path,
          torch_compile: bool) -> Backend:
    try:
        plugin = BACKENDS.get(choice)
    except KeyError:
        raise BackendUnavailable(
            f"unknown backend {choice!r}; known: auto, {', '.join(BACKENDS.names())}"
        ) from None
    try:
        backend = plugin.construct(source, device, precision, cache_dir, torch_compile)
    except RuntimeError as exc:  # e.g. CUDA out of memory while moving the weights
        raise BackendUnavailable(f"{choice} cannot load model {source.name!r}: {exc}") from exc
    _probe(backend, source)
    return backend


def _probe(backend: Backend, source: ModelSource) -> None:
    """Run one input of zeros: the output must be finite, (1, K, patch) logits covering every label
    for a segmentation network, (1, K) for a radiograph network (one value per output), candidate
    rows (N, 8) or (1, N, 8) for a detector and at most (1, K) values for a regressor."""
    spec = source.input
    shape_in = spec.batch_shape(1)
    batch = torch.zeros(shape_in, dtype=torch.float32)
    try:
        logits = backend(batch)
    except RuntimeError as exc:
        raise BackendUnavailable(f"{backend.name} failed on a probe batch: {exc}") from exc
    shape = tuple(logits.shape)
    if isinstance(spec, ImageInputSpec):
        expected, wrong = "(1, K)", logits.ndim != 2 or shape[0] != 1
    elif source.task == Task.DETECTION:
        expected, wrong = "(N, 8) or (1, N, 8)", logits.ndim not in (2, 3) or shape[-1] != 8
    elif source.task == Task.REGRESSION:
        expected, wrong = "(1, K), (K,) or a scalar", logits.ndim > 2 or logits.numel() == 0
    else:
        # softmax: channel 0 is the background, label i channel i; sigmoid: label i is channel i - 1
        needed = max(source.labels, default=0) + (spec.activation == "softmax")
        expected = f"(1, K, {', '.join(map(str, spec.patch_size))}) with K >= {needed}"
        wrong = (logits.ndim != 5 or shape[0] != 1 or shape[2:] != tuple(spec.patch_size)
                 or shape[1] < needed)
    if wrong:
        raise BackendUnavailable(f"{backend.name} returned logits of shape {shape} on a probe batch; "
                                 f"expected {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise BackendUnavailable(f"{backend.name} returned non-finite logits on a probe batch")
