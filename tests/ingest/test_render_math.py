"""Vectorised per-tile statistics and the 2x2 reduce against plain per-tile references."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.render import _downsample2_numpy, downsample2, tile_alpha_sums, tile_coverage


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


def test_tile_alpha_sums_match_per_tile_sums() -> None:
    rng = np.random.default_rng(2)
    ts = 32
    for channels in (2, 4):
        level = rng.integers(0, 256, (3 * ts, 4 * ts, channels), dtype=np.uint8)
        alpha = level[..., -1]
        alpha[:ts, :ts] = 255                                  # opaque
        alpha[2 * ts:, 2 * ts:] = 0
        alpha[2 * ts + 5, 2 * ts + 7] = 1                      # one faint pixel
        alpha[2 * ts:, 3 * ts:] = 0                            # empty
        view = np.zeros((3 * ts, 5 * ts, channels), np.uint8)[:, ts:]  # strided rows
        view[...] = level
        for lv in (level, view):
            sums = tile_alpha_sums(lv, ts)
            assert sums == [[int(alpha[j * ts:(j + 1) * ts, i * ts:(i + 1) * ts]
                                 .sum(dtype=np.uint64)) for i in range(4)] for j in range(3)]
        assert sums[0][0] == 255 * ts * ts and sums[2][3] == 0 and sums[2][2] == 1
    assert tile_coverage(alpha[2 * ts:, 2 * ts:3 * ts]) == 0.001


def test_unpremultiply_matches_the_rounded_division() -> None:
    from ingest.render import unpremultiply

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    a[..., 3] = np.arange(64 * 64).reshape(64, 64) % 256  # every alpha value, 0 and 255 too
    a[a[..., 3] == 0, :3] = 0  # premultiplied: no colour without alpha
    a[..., :3] = np.minimum(a[..., :3], a[..., 3:])  # premultiplied colour <= alpha
    view = a[:, :32]  # a strided view, as a tile of a block
    got = unpremultiply(view)
    al = view[..., 3:].astype(np.uint32)
    want = view.copy()
    partial = (view[..., 3] > 0) & (view[..., 3] < 255)
    calc = np.minimum(255, (view[..., :3].astype(np.uint32) * 255 + al // 2) // np.maximum(al, 1))
    want[partial, :3] = calc[partial]
    assert got.flags.c_contiguous and np.array_equal(got, want)
    assert np.array_equal(view, a[:, :32])  # the input is left alone


def test_inside_is_the_complement_of_outside_at_the_float32_bounds() -> None:
    from ingest.render import EDGE_EPS, _inside, _outside

    sw, sh = 300, 200
    rng = np.random.default_rng(6)
    maps = rng.uniform(-3, 303, (40, 50, 2)).astype(np.float32)
    edges = [np.float32(-0.5 - EDGE_EPS), np.float32(sw - 0.5 + EDGE_EPS),
             np.float32(sh - 0.5 + EDGE_EPS)]
    k = 0
    for e in edges:  # each bound and its float32 neighbours, in x and in y
        for v in (np.nextafter(e, np.float32(-1e9)), e, np.nextafter(e, np.float32(1e9))):
            maps[k, 0] = (v, 10.0)
            maps[k, 1] = (10.0, v)
            k += 1
    want = ~_outside(maps[..., 0], maps[..., 1], sw, sh)
    assert np.array_equal(_inside(maps, sw, sh) > 0, want)
    assert not want.all() and want.any()


@pytest.mark.parametrize("seed", range(4))
def test_clip_affine_zeroes_exactly_the_pixels_mapped_outside(seed: int) -> None:
    """Rows' inside runs from the affine equations match a per-pixel test (pixels within
    1e-6 px of an edge excepted), for rotated and mirrored maps too."""
    from ingest.render import _clip_affine

    rng = np.random.default_rng(seed)
    h, w, sw, sh = 90, 120, 70, 50
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.6, 1.4)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = rot @ np.array([w / 2, h / 2])
    matrix = np.column_stack([rot, np.array([sw / 2, sh / 2]) - centre])
    if seed == 3:
        matrix[0, 1] = 0.0  # an axis-aligned map (slope 0 in y along a row)
        matrix[1, 0] = 0.0
    dst = np.full((h, w, 4), 200, np.uint8)
    eps = 1e-3
    _clip_affine(dst, matrix, sw, sh, eps)
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    x = matrix[0, 0] * cc + matrix[0, 1] * rr + matrix[0, 2]
    y = matrix[1, 0] * cc + matrix[1, 1] * rr + matrix[1, 2]
    inside = (x >= -0.5 - eps) & (x < sw - 0.5 + eps) & (y >= -0.5 - eps) & (y < sh - 0.5 + eps)
    near = np.minimum.reduce([np.abs(x + 0.5 + eps), np.abs(x - sw + 0.5 - eps),
                              np.abs(y + 0.5 + eps), np.abs(y - sh + 0.5 - eps)]) < 1e-6
    kept = (dst == 200).all(axis=2)
    assert ((dst == 0).all(axis=2) | kept).all()
    assert np.array_equal(kept[~near], inside[~near])
    assert inside.any() and not inside.all()


@pytest.mark.parametrize("channels", [4, 2])
@pytest.mark.parametrize("box", [(0, 0, 4, 4), (1, 1, 3, 2), (3, 0, 4, 1), (0, 2, 1, 4),
                                 (1, 1, 2, 2), (5, 2, 7, 7), (2, 4, 3, 5)])
def test_reducing_only_the_drawn_tiles_equals_reducing_the_level(channels, box,
                                                                  monkeypatch) -> None:
    """A level that is zero outside the tiles ``box`` reduces to the same next level (and
    the box of the tiles that can be non-zero there) as the whole level: everywhere for the
    last level, else in the 2 x 2-tile groups that meet the new box (what the next reduction
    reads; the rest is left uninitialised, here filled with garbage)."""
    from ingest.render import _drawn_tiles, _reduce_drawn

    real_empty = np.empty

    def garbage(*args, **kw):
        arr = real_empty(*args, **kw)
        arr.fill(0x5A)
        return arr

    ts, n = 8, 8
    rng = np.random.default_rng(7)
    level = np.zeros((n * ts, n * ts, channels), np.uint8)
    tx0, ty0, tx1, ty1 = box
    level[ty0 * ts:ty1 * ts, tx0 * ts:tx1 * ts] = rng.integers(
        1, 256, ((ty1 - ty0) * ts, (tx1 - tx0) * ts, channels), dtype=np.uint8)
    monkeypatch.setattr(np, "empty", garbage)
    out, nbox = _reduce_drawn(level, box, ts, last=True)
    part, pbox = _reduce_drawn(level, box, ts)
    monkeypatch.setattr(np, "empty", real_empty)
    assert np.array_equal(out, downsample2(level)) and pbox == nbox
    nx0, ny0, nx1, ny1 = nbox
    gx0, gy0 = nx0 // 2 * 2 * ts, ny0 // 2 * 2 * ts
    gx1, gy1 = min(n // 2, -(-nx1 // 2) * 2) * ts, min(n // 2, -(-ny1 // 2) * 2) * ts
    assert np.array_equal(part[gy0:gy1, gx0:gx1], out[gy0:gy1, gx0:gx1])
    inside = np.zeros(out.shape[:2], bool)
    inside[ny0 * ts:ny1 * ts, nx0 * ts:nx1 * ts] = True
    assert not out[~inside].any() and out[inside].any(axis=-1).reshape(-1).any()
    assert nbox == (tx0 // 2, ty0 // 2, -(-tx1 // 2), -(-ty1 // 2))
    # regions in pixels -> the tiles they touch (ends exclusive), clipped to the canvas
    assert _drawn_tiles([(ts * tx0 + 1, ts * ty0, ts * tx1 - 1, ts * ty1 - 3)], ts, n) == box
    assert _drawn_tiles([(3, 9, 5, 10), (20, 30, 40, 33)], ts, 4) == (0, 1, 4, 4)
