"""Models kept loaded between jobs: a worker opens each model once and reuses it (warm).

Opening a model means hashing its file, loading the network and building or loading a backend
(a TensorRT engine may take minutes the first time), so the registry keeps what it opened. It is
bounded: on the CPU by a count of models, on CUDA by free GPU memory; the least recently used
model is dropped first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.backends import Backend, open_backend
from inference.errors import ModelError
from inference.formats import ModelSource, open_model
from inference.model_config import ModelConfig

__all__ = ["DEFAULT_MAX_LOADED", "DEFAULT_MIN_FREE_GPU_FRACTION", "LoadedModel", "ModelRegistry"]

log = logging.getLogger("radnode.inference")

DEFAULT_MAX_LOADED = 4
"""Models kept loaded on a CPU worker (their weights live in host memory)."""
DEFAULT_MIN_FREE_GPU_FRACTION = 0.25
"""Before loading another model on CUDA, drop old ones until this fraction of GPU memory is free."""


@dataclass(frozen=True)
class LoadedModel:
    """One opened model and the backend that runs it."""

    name: str
    source: ModelSource
    backend: Backend
    load_seconds: float


class ModelRegistry:
    """The models of the YAML's ``models:`` section, opened on first use and kept warm (LRU)."""

    def __init__(self, configs: Mapping[str, ModelConfig], device: torch.device, cache_dir: Path,
                 max_loaded: int = DEFAULT_MAX_LOADED,
                 min_free_gpu_fraction: float = DEFAULT_MIN_FREE_GPU_FRACTION) -> None:
        self.configs = dict(configs)
        self.device = device
        self.cache_dir = cache_dir
        self.max_loaded = max_loaded
        self.min_free_gpu_fraction = min_free_gpu_fraction
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def config(self, name: str) -> ModelConfig:
        """The YAML's entry for model ``name``; ModelError naming the known models otherwise."""
        try:
            return self.configs[name]
        except KeyError:
            known = ", ".join(sorted(self.configs)) or "none configured"
            raise ModelError(f"unknown model {name!r} (models: {known})") from None

    def loaded(self) -> list[str]:
        """Names of the models loaded now, least recently used first."""
        return list(self._loaded)

    def get(self, name: str) -> LoadedModel:
        """Model ``name``, loaded if it is not already; ModelError if it cannot be."""
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                self._loaded.move_to_end(name)
                return model
            config = self.config(name)
            self._make_room()
            start = time.perf_counter()
            source = open_model(name, config)
            backend = open_backend(source, config.backend, self.device, config.precision, self.cache_dir,
                                   config.torch_compile)
            model = LoadedModel(name, source, backend, time.perf_counter() - start)
            log.info("model %s loaded in %.2f s on %s (sha256 %s…)", name, model.load_seconds,
                     backend.describe(), source.sha256[:12])
            self._loaded[name] = model
            return model

    def _make_room(self) -> None:
        """Drop least recently used models until one more fits."""
        while self._loaded and not self._room_for_one_more():
            name, _ = self._loaded.popitem(last=False)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("model %s unloaded (least recently used) to make room", name)

    def _room_for_one_more(self) -> bool:
        if self.device.type != "cuda":
            return len(self._loaded) < self.max_loaded
        free, total = torch.cuda.mem_get_info(self.device)
        return free >= self.min_free_gpu_fraction * total
