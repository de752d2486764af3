"""Vectorised per-tile statistics and the 2x2 reduce against plain per-tile references."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.render import downsample2, tile_coverage, tile_stats


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
