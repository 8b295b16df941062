"""Train the shipped lung U-Net by distilling radnode's classical ``lung-qct`` masks; export it.

    .venv/bin/python scripts/train_lung_unet.py            # writes inference/weights/lung_unet.{ts,onnx}

The teacher is :class:`inference.pipelines.lung_qct.LungQCT` run on the real chest CT in
``tests/data/ct_chest_lungdx_a0001`` (TCIA Lung-PET-CT-Dx, CC BY 4.0): its right/left lung masks
become the labels (0 background, 1 right lung, 2 left lung). Image and labels are brought to the model
grid with :func:`inference.preprocess.model_input` (the resampling the pipeline uses at inference), and
the student is a small :class:`inference.networks.unet3d.UNet3D` trained on random patches with
augmentation: random in-plane shift, rotation and zoom, intensity scale/shift and noise. There is no
left-right mirroring: a mirrored chest has its heart on the wrong side, so the network could not use
anatomy to tell the right lung from the left (a first run with mirroring and swapped labels never learnt
the left lung).

There is only one thorax in the repository, so training and evaluation use the same patient. To give
one honest number, the slices :data:`HELD_OUT_SLICES` are never shown to the network (no patch touches
them); the script reports Dice against ``lung-qct`` on those slices and on the whole volume.

Seeded and CPU-only: the same torch version and thread count give the same weights. It runs for a fixed
number of steps (about 17 minutes on one busy shared CPU core) and prints its progress.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from inference.model_config import InputSpec, Normalization  # noqa: E402
from inference.networks.unet3d import UNet3D  # noqa: E402
from inference.pipelines.lung_qct import LungQCT  # noqa: E402
from inference.preprocess import model_input, to_source_grid  # noqa: E402
from inference.sliding_window import sliding_window  # noqa: E402
from inference.volume import Volume, load_series  # noqa: E402

CT_DIR = ROOT / "tests" / "data" / "ct_chest_lungdx_a0001"
WEIGHTS_DIR = ROOT / "inference" / "weights"
INPUT = InputSpec(
    channels=1,
    # model axes grow toward Superior, Posterior, patient's Left: how the training series lies (so it is
    # not reoriented), and how any other axial series is laid before the network sees it
    orientation="SPL",
    spacing_mm=(5.0, 4.0, 4.0),
    normalization=Normalization(kind="window", low=-1000.0, high=500.0),
    patch_size=(16, 80, 80),
    overlap=0.5,
    batch_size=2,
)
"""What the model expects; config/radnode.yaml's ``models.lung-unet.input`` must say the same."""
CLASSES = ("background", "right lung", "left lung")
FEATURES = (8, 16, 32, 64)
"""Channels per U-Net level (1.4 MB of fp32 weights); a (4, 8, 16, 32) variant never learnt the left lung."""
HELD_OUT_SLICES = range(24, 32)
"""Source slices (5 mm, lower-middle lungs) never used for training: the held-out Dice is taken there."""
SEED = 20261123
OPSET = 18


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate against lung-qct, export TorchScript and ONNX, print their SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write lung_unet.{ts,onnx}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy shared host more threads spin idle)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _seed(SEED)
    started = time.monotonic()

    volume = load_series(sorted(CT_DIR.glob("*.dcm")))
    teacher = _teacher_labels(volume)
    image, labels = _model_grid(volume, teacher)
    print(f"[{_clock(started)}] data: {volume.shape} at {volume.spacing} mm → model grid "
          f"{tuple(image.shape[1:])} at {INPUT.spacing_mm} mm; lung-qct voxels per class "
          f"{torch.bincount(teacher.flatten(), minlength=3).tolist()}", flush=True)

    model = UNet3D(in_channels=1, classes=len(CLASSES), features=FEATURES)
    _train(model, image, labels, args.steps, args.lr, started)
    model.eval()

    dice = _evaluate(model, volume, teacher)
    for region, (right, left) in dice.items():
        print(f"Dice vs lung-qct ({region}): right lung {right:.4f}, left lung {left:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    for path in _export(model, args.out):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{path.stat().st_size / 1e6:.2f} MB sha256 {digest}")
    print(f"[{_clock(started)}] done")
    return 0


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clock(started: float) -> str:
    elapsed = int(time.monotonic() - started)
    return f"{elapsed // 60:02d}:{elapsed % 60:02d}"


def _teacher_labels(volume: Volume) -> torch.Tensor:
    """lung-qct's masks as one label map on the source grid (uint8: 0, 1 right, 2 left)."""
    findings = LungQCT().run(volume, torch.device("cpu"))
    labels = torch.zeros(volume.shape, dtype=torch.uint8)
    for value, meaning in ((1, "Right lung"), (2, "Left lung")):
        (segment,) = (s for s in findings.segments if s.label == meaning)
        labels[torch.from_numpy(segment.mask)] = value
    return labels


def _model_grid(volume: Volume, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, z, y, x) as the pipeline feeds it, and the teacher's labels on the same grid.

    Labels are resampled as one-hot channels (trilinear, like the image) and arg-maxed, so a model
    voxel takes the class that covers most of it. Held-out slices are marked -1: no patch includes them.
    """
    image = model_input(volume, INPUT, torch.device("cpu"))
    size = tuple(image.shape[1:])
    one_hot = F.one_hot(teacher.long(), len(CLASSES)).permute(3, 0, 1, 2)[None].float()
    labels = F.interpolate(one_hot, size=size, mode="trilinear", align_corners=False)[0].argmax(0)
    held_out = torch.zeros(volume.shape[0], dtype=torch.bool)
    held_out[list(HELD_OUT_SLICES)] = True
    held_out = to_source_grid(held_out[:, None, None], (size[0], 1, 1))[:, 0, 0]
    labels[held_out] = -1
    return image, labels


def _train(model: UNet3D, image: torch.Tensor, labels: torch.Tensor, steps: int, peak_lr: float,
           started: float) -> None:
    """AdamW with a one-cycle schedule on cross-entropy + soft Dice over the lung classes."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=steps,
                                                   pct_start=0.1)
    starts = _training_starts(labels)
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        batch, target = zip(*(_sample(image, labels, starts) for _ in range(INPUT.batch_size)),
                            strict=True)
        logits = model(torch.stack(batch))
        loss = _loss(logits, torch.stack(target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == steps:
            print(f"[{_clock(started)}] step {step}/{steps} loss {running:.4f} "
                  f"lr {schedule.get_last_lr()[0]:.2e}", flush=True)


def _training_starts(labels: torch.Tensor) -> list[int]:
    """First slices of the patches that contain no held-out slice."""
    depth = INPUT.patch_size[0]
    held_out = (labels == -1).flatten(1).all(1)
    return [z for z in range(labels.shape[0] - depth + 1) if not bool(held_out[z:z + depth].any())]


def _sample(image: torch.Tensor, labels: torch.Tensor,
            starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training patch (1, *patch) and its labels (*patch)."""
    depth, rows, cols = INPUT.patch_size
    z0 = random.choice(starts)
    slab = image[:, z0:z0 + depth]
    slab_labels = labels[z0:z0 + depth]
    # in-plane: random centre, rotation (±12°) and zoom (0.8–1.25) by one affine resampling
    _, _, height, width = slab.shape
    angle = math.radians(random.uniform(-12.0, 12.0))
    zoom = math.exp(random.uniform(math.log(0.8), math.log(1.25)))
    scale_y, scale_x = rows / height / zoom, cols / width / zoom
    centre_y = random.uniform(-0.3, 0.3)
    centre_x = random.uniform(-0.3, 0.3)
    theta = torch.tensor([[
        [math.cos(angle) * scale_x, -math.sin(angle) * scale_y, 0.0, centre_x],
        [math.sin(angle) * scale_x, math.cos(angle) * scale_y, 0.0, centre_y],
        [0.0, 0.0, 1.0, 0.0],
    ]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, depth, rows, cols], align_corners=False)
    patch = F.grid_sample(slab[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    target = F.grid_sample(slab_labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[0, 0].long()
    patch = patch * random.uniform(0.9, 1.1) + random.uniform(-0.05, 0.05)
    patch = patch + torch.randn_like(patch) * random.uniform(0.0, 0.03)
    return patch, target


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    cross_entropy = F.cross_entropy(logits, target, ignore_index=-1)
    valid = (target >= 0).unsqueeze(1)
    probabilities = logits.softmax(1)[:, 1:] * valid
    one_hot = F.one_hot(target.clamp(min=0), len(CLASSES)).permute(0, 4, 1, 2, 3)[:, 1:] * valid
    overlap = (probabilities * one_hot).sum((0, 2, 3, 4))
    total = probabilities.sum((0, 2, 3, 4)) + one_hot.sum((0, 2, 3, 4))
    dice = (2 * overlap + 1.0) / (total + 1.0)
    return cross_entropy + (1 - dice).mean()


@torch.no_grad()
def _predict(model: torch.nn.Module, volume: Volume) -> torch.Tensor:
    """Label map on the source grid, computed exactly as the lung-unet pipeline does (CPU)."""
    device = torch.device("cpu")
    image = model_input(volume, INPUT, device)
    logits = sliding_window(image, model, INPUT.patch_size, INPUT.overlap, INPUT.batch_size, device)
    return to_source_grid(logits.argmax(0), volume.shape)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sørensen–Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _evaluate(model: torch.nn.Module, volume: Volume,
              teacher: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Dice per lung vs lung-qct on the whole volume and on the held-out slices."""
    labels = _predict(model, volume)
    held_out = list(HELD_OUT_SLICES)
    regions = {"whole volume": (labels, teacher), "held-out slices": (labels[held_out], teacher[held_out])}
    return {name: (_dice(p == 1, t == 1), _dice(p == 2, t == 2)) for name, (p, t) in regions.items()}


def _export(model: UNet3D, out: Path) -> tuple[Path, Path]:
    """TorchScript (scripted, so padding to the size multiple stays shape-generic) and ONNX with
    dynamic batch and spatial axes."""
    example = torch.zeros((1, 1, *INPUT.patch_size))
    torchscript = out / "lung_unet.ts"
    torch.jit.save(torch.jit.script(model), str(torchscript))
    onnx = out / "lung_unet.onnx"
    batch, depth, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "z", "y", "x"))
    torch.onnx.export(model, (example,), str(onnx), input_names=["image"], output_names=["logits"],
                      opset_version=OPSET, dynamo=True, external_data=False,
                      dynamic_shapes={"x": {0: batch, 2: depth, 3: height, 4: width}})
    return torchscript, onnx


if __name__ == "__main__":
    sys.exit(main())
