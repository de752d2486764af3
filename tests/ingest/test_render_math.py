"""Vectorised per-tile statistics and the 2x2 reduce against plain per-tile references."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.render import _downsample2_numpy, downsample2, tile_coverage, tile_stats


def _reference_downsample(a: np.ndarray) -> np.ndarray:
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


@pytest.mark.parametrize("shape", [(8, 8, 4), (16, 6, 2), (512, 512, 4)])
def test_downsample2_is_the_rounded_2x2_mean(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(downsample2(a), _reference_downsample(a))
    assert np.array_equal(downsample2(a, rows=3), _reference_downsample(a))  # uneven bands
    assert downsample2(np.full((4, 4, 2), 255, np.uint8)).tolist() == [[[255, 255]] * 2] * 2


@pytest.mark.parametrize("shape", [(8, 8, 4), (16, 6, 2), (512, 512, 4), (10, 6, 3)])
def test_numpy_downsample2_matches_and_is_the_fallback(shape: tuple[int, ...]) -> None:
    """The numpy path (uneven bands, odd sizes, 3 channels, non-contiguous input) gives the
    same pixels as the reference, and so does downsample2 on inputs Pillow cannot take."""
    a = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(_downsample2_numpy(a, rows=3), _reference_downsample(a))
    assert np.array_equal(_downsample2_numpy(a), _reference_downsample(a))
    assert np.array_equal(downsample2(a), _reference_downsample(a))
    strided = np.random.default_rng(4).integers(0, 256, (8, 16, 4), dtype=np.uint8)[:, ::2]
    assert np.array_equal(downsample2(strided), _reference_downsample(strided))
    odd = np.random.default_rng(5).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    assert np.array_equal(downsample2(odd), _reference_downsample(odd[:6, :8]))


def test_downsample2_of_premultiplied_rgba_does_not_touch_the_colour() -> None:
    """Pillow's reduce() (un)premultiplies RGBA itself; the input is premultiplied already,
    so the colour must be the plain mean (an RGBA-mode reduce would give 199, not 50)."""
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (200, 0, 0, 255)
    assert downsample2(a).tolist() == [[[50, 0, 0, 64]]]
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (200, 255)
    assert downsample2(la).tolist() == [[[50, 64]]]


def test_tile_stats_match_per_tile_reductions() -> None:
    rng = np.random.default_rng(2)
    ts = 32
    alpha = np.zeros((3 * ts, 3 * ts), np.uint8)
    alpha[:ts, :ts] = 255                                    # opaque
    alpha[ts:2 * ts, :] = rng.integers(0, 256, (ts, 3 * ts))  # mixed
    alpha[2 * ts + 5, 2 * ts + 7] = 1                         # one faint pixel
    mx, mn, sm = tile_stats(alpha, ts, with_sum=True)
    for j in range(3):
        for i in range(3):
            t = alpha[j * ts:(j + 1) * ts, i * ts:(i + 1) * ts]
            assert (mx[j, i], mn[j, i]) == (t.max(), t.min())
            assert sm[j, i] == int(t.sum(dtype=np.uint64))
    assert (mx[0, 0], mn[0, 0], mx[0, 1]) == (255, 255, 0)
    assert tile_coverage(alpha[2 * ts:, 2 * ts:]) == 0.001
    assert len(tile_stats(alpha, ts, with_sum=False)) == 2
