"""Tile image encoding: numpy ``(H, W, C)`` uint8 arrays to JPEG / WebP / PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tiles.errors import EncodeError

#: extension -> (Pillow format, media type)
FORMATS: dict[str, tuple[str, str]] = {
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "png": ("PNG", "image/png"),
}
DEFAULT_QUALITY = {"jpg": 85, "webp": 80, "png": 0}
#: zlib level for PNG tiles: on aerial imagery level 3 is ~4x faster than Pillow's default 6
#: for ~5 % more bytes (measured on the Joplin tiles); PNG is lossless, so no quality knob.
PNG_COMPRESS_LEVEL = 3
#: libwebp effort (0-6): method 2 is ~2x faster than the default 4 for ~6 % more bytes.
WEBP_METHOD = 2
#: formats that keep an alpha channel
ALPHA_FORMATS = frozenset({"webp", "png"})
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def media_type(fmt: str) -> str:
    return FORMATS[check_format(fmt)][1]


def check_format(fmt: str) -> str:
    f = fmt.lower().lstrip(".")
    if f == "jpeg":
        f = "jpg"
    if f not in FORMATS:
        raise EncodeError(f"tile format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return f


def flatten_alpha(array: np.ndarray) -> np.ndarray:
    """Composite an LA/RGBA array over black and drop the alpha channel."""
    colour, alpha = array[..., :-1], array[..., -1:]
    if alpha.min() == 255:
        return np.ascontiguousarray(colour)
    out = colour.astype(np.uint16) * alpha.astype(np.uint16)
    out += 127
    out //= 255
    return out.astype(np.uint8)


def load_plugin(fmt: str) -> None:
    """Load Pillow's encoder for ``fmt`` now, e.g. once before forking worker processes.

    Pillow otherwise loads its common plugins on the first save and *every* plugin (~50
    modules) on the first WebP save; done in a parent process, the workers inherit them.
    """
    Image.preinit()
    if check_format(fmt) == "webp" and "WEBP" not in Image.SAVE:
        from PIL import WebPImagePlugin  # noqa: F401  (registers the WEBP encoder)


def encode(array: np.ndarray, fmt: str = "jpg", quality: int | None = None, *,
           opaque: bool | None = None) -> bytes:
    """Encode an ``(H, W)`` or ``(H, W, C)`` uint8 array (C = 1, 2, 3 or 4; 2/4 carry alpha).

    JPEG cannot store alpha: transparent pixels are composited over black. PNG and WebP keep
    alpha; a fully opaque alpha channel is dropped to save bytes. ``quality`` applies to JPEG
    and WebP (defaults 85 / 80); PNG is lossless. ``opaque`` (every alpha is 255) spares the
    check when the caller already knows it; it must be true to the array.
    """
    fmt = check_format(fmt)
    if array.dtype != np.uint8:
        raise EncodeError(f"tile array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in _MODES:
        raise EncodeError(f"tile array must be (H, W, 1..4), got shape {array.shape}")
    channels = array.shape[2]
    if opaque is None and channels in (2, 4):
        opaque = bool(array[..., -1].min() == 255)
    if channels in (2, 4) and (fmt not in ALPHA_FORMATS or opaque):
        array = flatten_alpha(array)
        channels -= 1
    if channels == 1:
        array = array[..., 0]
    img = _image(array)
    q = DEFAULT_QUALITY[fmt] if quality is None else int(quality)
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=q)
    elif fmt == "webp":
        if "WEBP" not in Image.SAVE:
            load_plugin(fmt)
        img.save(buf, "WEBP", quality=q, method=WEBP_METHOD)
    else:
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _image(array: np.ndarray) -> Image.Image:
    """A Pillow image of an ``(H, W)`` / ``(H, W, C)`` uint8 array (mode L, LA, RGB, RGBA)."""
    if array.ndim == 3 and array.shape[2] == 3 and array.strides[1:] == (4, 1):
        span = _rgbx_span(array)
        if span:
            # the colour of an RGBA block (``block[rows, cols, :3]``, e.g. a tile sliced from
            # it): Pillow reads the rows in place (raw mode RGBX with a row stride), skipping
            # a numpy copy
            flat = np.lib.stride_tricks.as_strided(array, shape=(span,), strides=(1,))
            h, w = array.shape[:2]
            return Image.frombytes("RGB", (w, h), flat, "raw", "RGBX", array.strides[0], 1)
    return Image.fromarray(np.ascontiguousarray(array))  # mode inferred: L, LA, RGB, RGBA


def _rgbx_span(array: np.ndarray) -> int:
    """Bytes from the first pixel to the last pixel's 4th byte when ``array`` is channels
    0-2 of a C-contiguous ``(H, W, 4)`` uint8 array and that span lies inside it; else 0."""
    owner = array.base
    if not (isinstance(owner, np.ndarray) and owner.dtype == np.uint8 and owner.ndim == 3
            and owner.shape[2] == 4 and owner.flags.c_contiguous):
        return 0
    h, w = array.shape[:2]
    stride = array.strides[0]
    offset = array.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    span = (h - 1) * stride + 4 * w
    ok = stride == owner.strides[0] and offset >= 0 and offset % 4 == 0 \
        and offset + span <= owner.nbytes
    return span if ok else 0


def decode(data: bytes) -> np.ndarray:
    """Decode tile bytes into an ``(H, W, 4)`` RGBA uint8 array (opaque when no alpha)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"))
