"""Encoding tiles: formats, alpha handling, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tiles.encode import check_format, decode, encode, flatten_alpha, media_type
from tiles.errors import EncodeError


def rgba(alpha: int | np.ndarray) -> np.ndarray:
    a = np.zeros((256, 256, 4), np.uint8)
    a[..., 0] = 200
    a[..., 1] = np.arange(256)[None, :]
    a[..., 2] = 50
    a[..., 3] = alpha
    return a


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_formats_roundtrip(fmt, pil):
    data = encode(rgba(255), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == pil and im.size == (256, 256)
        assert im.mode == "RGB"  # opaque alpha dropped
    back = decode(data)
    assert back.shape == (256, 256, 4)
    assert np.abs(back[..., 0].astype(int) - 200).max() <= 10  # lossy: JPEG/WebP chroma


def test_png_keeps_partial_alpha_jpeg_fills_black():
    alpha = np.zeros((256, 256), np.uint8)
    alpha[:, :128] = 255
    png = decode(encode(rgba(alpha), "png"))
    assert (png[:, 128:, 3] == 0).all() and (png[:, :128, 3] == 255).all()
    assert (png[:, :128, 0] == 200).all()
    jpg = decode(encode(rgba(alpha), "jpg"))
    assert (jpg[..., 3] == 255).all()
    assert jpg[:, 140:, :3].max() < 12      # transparent half is black
    assert jpg[:, :110, 0].min() > 185      # data half kept


def test_grey_and_grey_alpha():
    g = np.full((256, 256), 77, np.uint8)
    with Image.open(io.BytesIO(encode(g, "png"))) as im:
        assert im.mode == "L"
    la = np.stack([g, np.full_like(g, 255)], axis=-1)
    la[:10, :, 1] = 0
    with Image.open(io.BytesIO(encode(la, "png"))) as im:
        assert im.mode == "LA"


def test_flatten_alpha_premultiplies():
    a = rgba(128)
    out = flatten_alpha(a)
    assert out.shape == (256, 256, 3)
    assert out[0, 0, 0] == round(200 * 128 / 255)


def test_errors_and_media_types():
    assert check_format("JPEG") == "jpg" and media_type("webp") == "image/webp"
    with pytest.raises(EncodeError, match="choose one of"):
        encode(rgba(255), "gif")
    with pytest.raises(EncodeError, match="uint8"):
        encode(np.zeros((4, 4, 3), np.uint16), "png")
    with pytest.raises(EncodeError, match="shape"):
        encode(np.zeros((4, 4, 5), np.uint8), "png")


@pytest.mark.parametrize("fmt", ["png", "webp", "jpg"])
def test_opaque_hint_gives_the_same_bytes(fmt):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    a[..., 3] = 255
    assert encode(a, fmt, opaque=True) == encode(a, fmt)
    a[0, 0, 3] = 7
    assert encode(a, fmt, opaque=False) == encode(a, fmt)
