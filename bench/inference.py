"""Inference speed of the shipped lung U-Net through every backend, on the real chest CT.

    .venv/bin/python -m bench.inference [--repeats 5] [--device auto|cpu|cuda]

The model is ``lung-unet`` of config/radnode.yaml (inference/weights/lung_unet.ts, and its ONNX twin
lung_unet.onnx written by the same training run); the series is tests/data/ct_chest_lungdx_a0001
(64 × 512 × 512, 5 mm slices). The volume is normalised and resampled once
(:func:`inference.preprocess.model_input`, timed on its own); each row then times the network over the
whole volume as the pipeline runs it — Gaussian-blended sliding window with the model's patch size,
overlap and batch size, then argmax — through one backend of :mod:`inference.backends`:

    torch eager       the TorchScript file's weights as Python code (UNet3D.from_state_dict), fp32
    torchscript       the TorchScript file itself, TorchBackend (what ``backend: torch`` runs), fp32
    torch.compile     the Python network, TorchBackend with torch.compile, fp32
    onnxruntime       the ONNX file, OnnxRuntimeBackend (CUDA provider on a GPU), fp32
    tensorrt fp16     the ONNX file, TensorRTBackend, fp16 engine (CUDA + tensorrt only)

Times are the median (and best) of ``--repeats`` runs after one warm-up run (the warm-up, which
includes torch.compile's compilation, is printed separately); the backends take turns, run by run.
Ratios are torch eager's time over the row's (above 1 is faster); Dice is per lung, against torch
eager's labels on the source grid. A row that cannot run here is printed as ``not measured: <reason>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.backends import Backend, open_backend
from inference.backends.torch_backend import TorchBackend
from inference.errors import BackendUnavailable
from inference.formats import ModelSource, file_sha256, open_model
from inference.model_config import ModelConfig
from inference.networks.unet3d import UNet3D
from inference.preprocess import model_input, to_source_grid
from inference.sliding_window import sliding_window
from inference.volume import Volume, load_series
from node.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "radnode.yaml"
CHEST_CT = ROOT / "tests" / "data" / "ct_chest_lungdx_a0001"
MODEL = "lung-unet"


@dataclass(frozen=True)
class Row:
    """One backend's result: median seconds per volume, warm-up seconds, Dice per label vs eager."""

    name: str
    describe: str
    seconds: float
    best_seconds: float
    warmup_seconds: float
    labels: torch.Tensor


def main(argv: list[str] | None = None) -> int:
    """Run every backend row and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per backend (median; default 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    config = load_config(CONFIG).models[MODEL]
    onnx_file = config.file.with_suffix(".onnx")
    onnx_config = config.model_copy(update={"file": onnx_file, "format": "onnx",
                                            "sha256": file_sha256(onnx_file)})
    torchscript = open_model(MODEL, config)
    onnx = open_model(MODEL, onnx_config)
    volume = load_series(sorted(CHEST_CT.glob("*.dcm")))
    start = time.perf_counter()
    image = model_input(volume, config.input, device)
    preprocess_s = time.perf_counter() - start
    spec = config.input
    print(f"model {MODEL}: {config.file.name} (sha256 {torchscript.sha256[:12]}…), "
          f"input {tuple(image.shape)} "
          f"at {spec.spacing_mm} mm, patch {spec.patch_size}, batch {spec.batch_size}")
    print(f"series {CHEST_CT.name}: {volume.shape} at {tuple(round(s, 3) for s in volume.spacing)} mm; "
          f"normalise + resample {preprocess_s * 1000:.0f} ms on {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; median of {args.repeats} after 1 warm-up")

    with tempfile.TemporaryDirectory(prefix="radnode-bench-") as cache:
        opened: dict[str, Backend | str] = {}
        for name, factory in _backends(torchscript, onnx, device, Path(cache)):
            try:
                opened[name] = factory()
            except BackendUnavailable as exc:
                opened[name] = str(exc)
        running = {name: backend for name, backend in opened.items() if not isinstance(backend, str)}
        measured = _measure(running, image, volume, config, args.repeats)
    rows = [(name, measured.get(name, str(backend))) for name, backend in opened.items()]
    _print(rows, {value: label.name for value, label in config.labels.items()})
    return 0


def _backends(torchscript: ModelSource, onnx: ModelSource, device: torch.device,
              cache: Path) -> list[tuple[str, Callable[[], Backend]]]:
    def python(compile_module: bool) -> Backend:
        assert torchscript.build_module is not None  # a TorchScript source always has a module
        network = UNet3D.from_state_dict(torchscript.build_module().state_dict())
        return TorchBackend(network, device, "fp32", compile_module=compile_module)

    def tensorrt() -> Backend:
        if device.type != "cuda":
            raise BackendUnavailable(f"no CUDA device on this host ({device}); TensorRT needs an NVIDIA GPU")
        return open_backend(onnx, "tensorrt", device, "fp16", cache)

    return [
        ("torch eager", lambda: python(False)),
        ("torchscript", lambda: open_backend(torchscript, "torch", device, "fp32", cache)),
        ("torch.compile", lambda: python(True)),
        ("onnxruntime", lambda: open_backend(onnx, "onnxruntime", device, "fp32", cache)),
        ("tensorrt fp16", tensorrt),
    ]


def _segment(backend: Backend, image: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    spec = config.input
    assert spec is not None  # a TorchScript/ONNX ModelConfig always has input
    logits = sliding_window(image, backend, spec.patch_size, spec.overlap, spec.batch_size, backend.device)
    labels = logits.argmax(0)
    if labels.device.type == "cuda":
        torch.cuda.synchronize(labels.device)
    return labels


def _measure(backends: dict[str, Backend], image: torch.Tensor, volume: Volume, config: ModelConfig,
             repeats: int) -> dict[str, Row]:
    """Warm every backend up, then time them in turns, so a change of load on a shared host
    (other processes) falls on every backend alike rather than on whichever ran last."""
    warmup: dict[str, float] = {}
    labels: dict[str, torch.Tensor] = {}
    for name, backend in backends.items():
        start = time.perf_counter()
        labels[name] = _segment(backend, image, config)
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            labels[name] = _segment(backend, image, config)
            times[name].append(time.perf_counter() - start)
    return {name: Row(name, backend.describe(), statistics.median(times[name]), min(times[name]),
                      warmup[name], to_source_grid(labels[name].cpu(), volume.shape))
            for name, backend in backends.items()}


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _print(rows: list[tuple[str, Row | str]], labels: dict[int, str]) -> None:
    """One line per backend: a measured Row, or the reason it was not measured."""
    reference = next((row for _, row in rows if isinstance(row, Row) and row.name == "torch eager"), None)
    print(f"\nDice per label vs torch eager: {', '.join(labels.values())}")
    width = 7 * len(labels)
    print(f"{'backend':<15}{'median s':>9}{'best s':>8}{'× eager':>8}{'warm-up s':>10}  "
          f"{'Dice':<{width}}runs on")
    for name, row in rows:
        if not isinstance(row, Row):
            print(f"{name:<15}not measured: {row}")
            continue
        ratio, dice = "-", "-"
        if reference is not None:
            ratio = f"{reference.seconds / row.seconds:.2f}"
            dice = " ".join(f"{_dice(row.labels == v, reference.labels == v):.4f}" for v in labels)
        print(f"{name:<15}{row.seconds:>9.3f}{row.best_seconds:>8.3f}{ratio:>8}{row.warmup_seconds:>10.2f}  "
              f"{dice:<{width}}{row.describe}")

if __name__ == "__main__":
    raise SystemExit(main())
