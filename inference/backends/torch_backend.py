"""PyTorch: any network torch can run, on the CPU or CUDA; fp16 autocast and torch.compile on request."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.backends.base import BackendPlugin
from inference.errors import BackendUnavailable
from inference.formats.base import ModelSource

__all__ = ["PLUGIN", "TorchBackend"]


class TorchBackend:
    """Runs an ``nn.Module`` (TorchScript included) eagerly, or compiled by ``torch.compile``.

    fp16 applies on CUDA only (autocast: convolutions in half precision, reductions in fp32);
    the CPU always runs fp32, where half precision is slower rather than faster.
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 compile_module: bool = False) -> None:
        if compile_module and isinstance(module, torch.jit.ScriptModule):
            raise BackendUnavailable(
                "torch_compile needs a Python network; this model is TorchScript, which torch.compile "
                "cannot compile (set torch_compile: false)"
            )
        self.device = device
        self._half = device.type == "cuda" and precision == "fp16"
        self._compiled = compile_module
        module = module.to(device).eval()
        self._module = torch.compile(module) if compile_module else module

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, z, y, x) float32 on :attr:`device`."""
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self._half):
            logits: torch.Tensor = self._module(batch.to(self.device, torch.float32))
        return logits.float()

    def describe(self) -> str:
        """E.g. ``torch on cuda:0 (fp16 autocast, torch.compile)``."""
        modes = ["fp16 autocast" if self._half else "fp32"] + (["torch.compile"] if self._compiled else [])
        return f"torch on {self.device} ({', '.join(modes)})"


def _why_unavailable(source: ModelSource, device: torch.device) -> str | None:
    return "the model is an ONNX file, which torch cannot run" if source.build_module is None else None


def _construct(source: ModelSource, device: torch.device, precision: str, cache_dir: Path,
               torch_compile: bool) -> TorchBackend:
    if source.build_module is None:
        raise BackendUnavailable(
            f"model {source.name!r} is an ONNX file, which the torch backend cannot run "
            "(use backend: onnxruntime or tensorrt)"
        )
    return TorchBackend(source.build_module(), device, precision, torch_compile)


PLUGIN = BackendPlugin(_why_unavailable, _construct)
"""Runs anything torch can load: last in ``auto``, the fallback that always applies to a torch model."""
