"""ONNX Runtime: the CPU fast path (``onnxruntime``), and CUDA with ``onnxruntime-gpu``.

Runs fp32 on both (the ONNX graph is the exported fp32 network); TensorRT is the fp16 GPU path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from inference.backends.base import BackendPlugin
from inference.backends.export import onnx_for
from inference.errors import BackendUnavailable
from inference.formats.base import ModelSource

__all__ = ["PLUGIN", "OnnxRuntimeBackend"]


class OnnxRuntimeBackend:
    """One ONNX Runtime session; CUDAExecutionProvider on a CUDA device, CPUExecutionProvider otherwise."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: torch.device) -> None:
        try:
            import onnxruntime as ort
            from onnxruntime.capi import onnxruntime_pybind11_state as state
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        self._errors: tuple[type[Exception], ...] = (
            state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile,
            state.NotImplemented, state.RuntimeException, RuntimeError,
        )
        self.device = device
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the onnxruntime-gpu "
                    "package provides it)"
                )
            cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
            providers: list[str | tuple[str, dict[str, int]]] = [cuda, "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings would bypass radnode's logging
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except self._errors as exc:
            raise BackendUnavailable(f"onnxruntime cannot load {onnx_path}: {_first_line(exc)}") from exc
        if device.type == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise BackendUnavailable("onnxruntime could not start CUDA (CUDA or cuDNN libraries missing)")
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self._version = ort.__version__

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, z, y, x) float32 on :attr:`device`."""
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            (logits,) = self._session.run([self._output], {self._input: array})
        except self._errors as exc:
            raise BackendUnavailable(
                f"onnxruntime failed on a batch of shape {tuple(batch.shape)}: {_first_line(exc)}"
            ) from exc
        return torch.from_numpy(logits).to(self.device, torch.float32)

    def describe(self) -> str:
        """E.g. ``onnxruntime 1.32.0 (CPUExecutionProvider, fp32)``."""
        return f"onnxruntime {self._version} ({self._session.get_providers()[0]}, fp32)"


def _why_unavailable(source: ModelSource, device: torch.device) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "not installed"
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "no CUDAExecutionProvider (onnxruntime-gpu provides it)"
    return None


def _construct(source: ModelSource, device: torch.device, precision: str, cache_dir: Path,
               torch_compile: bool) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(onnx_for(source, cache_dir), device)


PLUGIN = BackendPlugin(_why_unavailable, _construct)
"""Runs the model's ONNX form (exported into ``cache_dir`` if need be), fp32, on the CPU or CUDA."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
