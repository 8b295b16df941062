"""Sliding-window inference against MONAI's reference, and the resampling between source and model grids."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from inference.model_config import Normalization
from inference.preprocess import normalize, resampled_shape, to_source_grid
from inference.sliding_window import gaussian_weight, sliding_window, window_starts
from tests.tiny_models import tiny_segmenter

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "batch_size"),
    [
        ((37, 41, 29), (16, 16, 16), 0.5, 3),  # several windows per axis, the last flush with the end
        ((24, 70, 33), (16, 32, 16), 0.25, 4),  # anisotropic patch, other overlap, partial last batch
        ((10, 40, 12), (16, 24, 16), 0.5, 2),  # smaller than the patch along two axes: padded
        ((16, 32, 16), (16, 32, 16), 0.5, 1),  # exactly one patch
    ],
)
def test_blended_logits_match_monai_gaussian_sliding_window(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float, batch_size: int
) -> None:
    net = tiny_segmenter(seed=1)
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        reference = sliding_window_inference(image[None], patch, batch_size, net, overlap=overlap,
                                             mode="gaussian", sigma_scale=0.125)[0]
        ours = sliding_window(image, net, patch, overlap, batch_size, CPU)

    assert ours.shape == (3, *shape)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_windows_are_batched_as_configured() -> None:
    batches: list[int] = []
    net = tiny_segmenter()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        batches.append(batch.shape[0])
        return net(batch)

    with torch.no_grad():
        sliding_window(torch.zeros(1, 41, 41, 41), predict, (16, 16, 16), 0.5, 4, CPU)

    assert batches == [4] * 31 + [1]  # 5 starts per axis: 125 windows, 4 at a time


def test_windows_cover_the_axis_and_the_last_ends_flush() -> None:
    assert window_starts(37, 16, 0.5) == [0, 8, 16, 21]
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(10, 16, 0.5) == [0]  # padded to the patch by the caller


def test_gaussian_weight_peaks_at_the_centre_with_sigma_an_eighth_of_the_patch() -> None:
    weight = gaussian_weight((17, 33, 9), CPU)

    assert weight.shape == (17, 33, 9)
    assert float(weight[8, 16, 4]) == pytest.approx(1.0)
    # one sigma (33 / 8 voxels) from the centre along the row axis
    sigma = 33 * 0.125
    x = torch.arange(33, dtype=torch.float32) - 16
    torch.testing.assert_close(weight[8, :, 4], torch.exp(-(x**2) / (2 * sigma**2)).clamp(min=1e-3))
    assert float(weight.min()) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("spec", "hu", "expected"),
    [
        (Normalization(kind="window", low=-1000, high=400), [-2000.0, -1000.0, -300.0, 1000.0],
         [0.0, 0.0, 0.5, 1.0]),
        (Normalization(kind="fixed", low=-1000, high=1000, mean=100, std=50), [-3000.0, 100.0, 150.0],
         [-22.0, 0.0, 1.0]),
        (Normalization(kind="none"), [-1000.0, 0.0], [-1000.0, 0.0]),
    ],
)
def test_normalization_maps_hu_as_the_yaml_says(spec: Normalization, hu: list[float],
                                                expected: list[float]) -> None:
    torch.testing.assert_close(normalize(torch.tensor(hu), spec), torch.tensor(expected))


def test_zscore_normalization_gives_zero_mean_unit_variance() -> None:
    out = normalize(torch.randn(1000) * 300 - 500, Normalization(kind="zscore"))

    assert float(out.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(out.std()) == pytest.approx(1.0, abs=1e-5)


def test_labels_return_to_the_source_grid_by_nearest_neighbour() -> None:
    source_shape = (64, 100, 90)
    model_shape = resampled_shape(source_shape, (1.0, 0.7, 0.7), (2.0, 1.4, 1.4))
    labels = torch.randint(0, 4, model_shape, generator=torch.Generator().manual_seed(3))

    back = to_source_grid(labels, source_shape)

    assert model_shape == (32, 50, 45)
    assert back.shape == source_shape and back.dtype == labels.dtype
    # an exact factor of 2: every model voxel becomes a 2×2×2 block of source voxels
    torch.testing.assert_close(back, labels.repeat_interleave(2, 0).repeat_interleave(2, 1)
                               .repeat_interleave(2, 2))


@pytest.mark.parametrize(("size", "patch"), [((41, 97, 130), (16, 64, 48)), ((64, 64, 64), (64, 32, 20))])
def test_nnunet_scheme_places_and_weighs_windows_as_nnunet_predictor(size, patch) -> None:
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    steps = compute_steps_for_sliding_window(size, patch, 0.5)
    assert [window_starts(s, p, 0.5, "nnunet") for s, p in zip(size, patch, strict=True)] == steps
    reference = compute_gaussian(patch, sigma_scale=1.0 / 8, dtype=torch.float32, device=CPU)
    ours = gaussian_weight(patch, CPU, "nnunet")
    torch.testing.assert_close(ours / ours.max(), reference / reference.max(), rtol=1e-5, atol=1e-7)
