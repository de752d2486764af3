"""encode() of strided views (tiles sliced from a block, colour of RGBA) == of copies."""

from __future__ import annotations

import numpy as np
import pytest

from tiles.encode import decode, encode


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
@pytest.mark.parametrize("ij", [(0, 0), (2, 1), (3, 3)])  # (3, 3): ends at the block's end
def test_rgb_of_rgba_view_encodes_like_a_copy(fmt: str, ij: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    block = rng.integers(0, 256, (4 * 64, 4 * 64, 4), dtype=np.uint8)
    i, j = ij
    view = block[j * 64:(j + 1) * 64, i * 64:(i + 1) * 64, :3]
    assert not view.flags.c_contiguous
    copy = np.ascontiguousarray(view)
    assert encode(view, fmt) == encode(copy, fmt)
    if fmt == "png":  # lossless: the very pixels of the view, not a neighbour's
        assert np.array_equal(decode(encode(view, fmt))[..., :3], copy)


def test_other_strided_views_still_encode() -> None:
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (64, 64, 5), dtype=np.uint8)
    view = a[::2, ::2, 1:4]  # pixel stride 10, not an RGBX layout
    assert np.array_equal(decode(encode(view, "png"))[..., :3], view)
    b = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    shifted = b[:, :, 1:4]  # pixel stride 4 but not channels 0-2: must not read past b
    assert np.array_equal(decode(encode(shifted, "png"))[..., :3], shifted)
    assert np.array_equal(decode(encode(b[2:5, 3:9, :3], "png"))[..., :3], b[2:5, 3:9, :3])
