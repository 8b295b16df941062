"""TensorRT: an engine built from the model's ONNX form for this GPU, cached on disk.

Building an engine takes minutes, so the serialized engine is kept in ``cache_dir/tensorrt``
under a name derived from everything it depends on: the model's SHA-256, the TensorRT version,
the GPU name, the precision and the optimisation profile (channels, patch size, batch sizes).
A restart, or a second worker on the same kind of GPU, loads it instead of rebuilding; any
change to one of those builds a new one.

Needs TensorRT 10 (``pip install radnode[tensorrt]``): FP16 uses its ``BuilderFlag.FP16`` (weak
typing), which TensorRT 11 removed in favour of strongly typed fp16 ONNX graphs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from inference.backends.base import BackendPlugin
from inference.backends.export import onnx_for
from inference.errors import BackendUnavailable
from inference.formats.base import ModelSource
from inference.model_config import ImageInputSpec, InputSpec

__all__ = ["PLUGIN", "WORKSPACE_BYTES", "TensorRTBackend", "engine_key"]

log = logging.getLogger("radnode.inference")

WORKSPACE_BYTES = 4 << 30
"""Scratch memory TensorRT may use while choosing kernels (the built engine needs far less)."""


def engine_key(sha256: str, tensorrt_version: str, gpu_name: str, precision: str,
               spec: InputSpec | ImageInputSpec) -> str:
    """Everything a serialized engine depends on, as one line (hashed into its file name)."""
    patch = "x".join(map(str, spec.batch_shape(1)[2:]))
    return (f"model={sha256} tensorrt={tensorrt_version} gpu={gpu_name} precision={precision} "
            f"profile=channels{spec.channels}:patch{patch}:batch1-{spec.batch_size}")


class TensorRTBackend:
    """Runs a TensorRT engine with a dynamic batch of 1…``batch_size`` patches of ``patch_size``.

    :attr:`built` says whether this instance built its engine (True) or loaded it from the cache.
    """

    name = "tensorrt"

    def __init__(self, onnx_path: Path, sha256: str, spec: InputSpec | ImageInputSpec, device: torch.device,
                 precision: str, cache_dir: Path) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs a CUDA device; this worker runs on the CPU")
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable("TensorRT is not installed (pip install 'radnode[tensorrt]')") from exc
        self.device = device
        self._trt = trt
        self._precision = precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        gpu = torch.cuda.get_device_name(device)
        key = engine_key(sha256, trt.__version__, gpu, precision, spec)
        digest = hashlib.sha256(key.encode()).hexdigest()
        path = cache_dir / "tensorrt" / f"{sha256[:16]}-{digest[:16]}.engine"
        self.built = not path.exists()
        if self.built:
            start = time.perf_counter()
            _write_atomically(path, self._build(onnx_path, spec))
            log.info("TensorRT engine built in %.1f s: %s (%s)", time.perf_counter() - start, path, key)
        else:
            log.info("TensorRT engine loaded from cache: %s (%s)", path, key)
        with torch.cuda.device(device):
            self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise BackendUnavailable(f"TensorRT cannot load the cached engine {path}; delete it "
                                         "to rebuild")
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._input, self._output = inputs[0], outputs[0]
        self._output_dtype = torch.float16 if self._engine.get_tensor_dtype(self._output) == trt.float16 \
            else torch.float32

    def _build(self, onnx_path: Path, spec: InputSpec | ImageInputSpec) -> Any:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if self._precision == "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise BackendUnavailable(
                    f"TensorRT {trt.__version__} has no FP16 builder flag (TensorRT 11 dropped it); "
                    "install tensorrt 10 (pip install 'radnode[tensorrt]') or set precision: fp32"
                )
            with warnings.catch_warnings():  # deprecated since 10.12, and the one fp16 path in 10.x
                warnings.simplefilter("ignore", DeprecationWarning)
                config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        patch = spec.batch_shape(1)[1:]
        profile.set_shape(network.get_input(0).name, (1, *patch), (spec.batch_size, *patch),
                          (spec.batch_size, *patch))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable(f"TensorRT failed to build an engine from {onnx_path} "
                                     "(see the log above)")
        return serialized

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, z, y, x) float32 on :attr:`device`; N may be 1…batch_size."""
        batch = batch.to(self.device, torch.float32).contiguous()
        self._context.set_input_shape(self._input, tuple(batch.shape))
        logits = torch.empty(tuple(self._context.get_tensor_shape(self._output)), dtype=self._output_dtype,
                             device=self.device)
        self._context.set_tensor_address(self._input, batch.data_ptr())
        self._context.set_tensor_address(self._output, logits.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailable(f"TensorRT failed on a batch of shape {tuple(batch.shape)}")
        stream.synchronize()
        return logits.float()

    def describe(self) -> str:
        """E.g. ``tensorrt 10.7.0 on NVIDIA H100 (fp16, engine from cache)``."""
        origin = "engine built" if self.built else "engine from cache"
        return (f"tensorrt {self._trt.__version__} on {torch.cuda.get_device_name(self.device)} "
                f"({self._precision}, {origin})")


def _why_unavailable(source: ModelSource, device: torch.device) -> str | None:
    if device.type != "cuda":
        return "no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "not installed (pip install 'radnode[tensorrt]')"
    return None


def _construct(source: ModelSource, device: torch.device, precision: str, cache_dir: Path,
               torch_compile: bool) -> TensorRTBackend:
    if device.type != "cuda":  # before exporting anything: the reason an admin needs first
        raise BackendUnavailable("TensorRT needs a CUDA device; this worker runs on the CPU")
    return TensorRTBackend(onnx_for(source, cache_dir), source.sha256, source.input, device, precision,
                           cache_dir)


PLUGIN = BackendPlugin(_why_unavailable, _construct)
"""Builds (or loads from ``cache_dir``) an engine of the model's ONNX form: first in ``auto``, on CUDA."""


def _write_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(memoryview(data))
    os.replace(partial, path)
