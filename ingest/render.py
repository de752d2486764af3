"""Render one block of task-zoom tiles (and the pyramid levels inside it).

A *block* is ``B x B`` task-zoom tiles aligned on multiples of ``B`` (8 x 256 px = 2048 px by
default). For each source file of the layer that intersects the block, the matching source
window is read once (decimated when the source is finer than the block), converted to 8-bit
(percentile stretch for 16-bit/float data), stacked with the source's validity mask (nodata,
alpha band or internal mask: GDAL's ``dataset_mask``) as alpha, premultiplied, and warped into
the block's Web-Mercator grid with ``cv2.remap`` over an exact coarse coordinate grid
(:func:`plan_grid`, :func:`remap_into`; GDAL's warper for ``average`` resampling or where the
grid cannot be used). Tiles are sliced from the (premultiplied) block, empty ones skipped, and
the block is reduced 2x2 -> 1 for the pyramid levels inside it. Memory is bounded by the block
size, never by the image size (see docs/ingest.md).

:func:`render_block` is a plain top-level function over picklable dataclasses, so the same
work runs in-process, in a multiprocessing pool or on a dask.distributed cluster.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Self

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from ingest.errors import IngestError, ReadError, store_writes
from ingest.sources import GDAL_ENV, SourceInfo, _short
from tiles.encode import ALPHA_FORMATS, encode, load_plugin

# Pillow's encoders for every tile format (and PNG, JPEG... via preinit), imported with this
# module like rasterio and cv2 above, not on the first tile: the plugins cost ~20 ms of
# imports in a fresh process (the encode-only bound loads them before timing too)
for _fmt in ("png", "jpg", "webp"):
    load_plugin(_fmt)
from tiles.grid import tile_bounds, tile_xy_bounds
from tiles.store import TileStore, atomic_write

WORK_DIR = ".crowdsight"  # {store}/{project}/.crowdsight/{layer}: fingerprint, finished blocks


@dataclass(frozen=True)
class LayerSpec:
    """Everything a worker needs to render tiles of one layer (picklable)."""

    name: str
    sources: tuple[SourceInfo, ...]
    bands: tuple[int, ...]
    stretch_low: tuple[float, ...] | None
    stretch_high: tuple[float, ...] | None
    ext: str
    quality: int | None
    tile_size: int
    task_zoom: int
    min_zoom: int
    resampling: str
    store_root: str
    project: str

    @property
    def channels(self) -> int:
        return len(self.bands)


@dataclass(frozen=True)
class BlockJob:
    layer: LayerSpec
    bx: int
    by: int
    size: int  # B: tiles per block side
    allowed: frozenset[tuple[int, int]] | None = None  # task tiles to keep (AOI); None = all
    skip_existing: bool = False


@dataclass
class BlockResult:
    layer: str
    bx: int
    by: int
    tiles: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # zoom -> (x, y)
    written: int = 0
    skipped: int = 0
    top: np.ndarray | None = None  # (T, T, C+1) RGBA-like array of the block's top tile
    top_zoom: int = 0
    candidates: int = 0  # task tiles considered (for progress)
    resumed: bool = False
    # task-zoom tile (x, y) -> fraction of its pixels with data (alpha-weighted, 3 decimals)
    coverage: dict[tuple[int, int], float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
def preload(ext: str) -> None:
    """Load the tile encoder and the Pillow plugins :func:`render_block` needs, e.g. once in
    the parent before forking workers (they then start working at once instead of each
    paying for the same imports); rasterio and cv2 are imported with this module."""
    from PIL import PngImagePlugin  # noqa: F401  (block tops are stored as PNG)

    load_plugin(ext)


@contextmanager
def cv2_single_threaded() -> Iterator[None]:
    """cv2 without its worker threads while a process pool forks from this process.

    A worker forked while cv2's thread pool is alive inherits the pool's state without its
    threads (calling ``cv2.setNumThreads(1)`` *in* such a worker deadlocks at once). Setting
    one thread here, before forking, stops the pool's threads; forked workers inherit that
    (one process per core needs no more); the previous setting is restored afterwards.
    """
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


#: per thread: (pid, {path: open dataset}, SharedSources | None) while :func:`open_sources`
#: is active
_open = threading.local()
#: most source files kept open at once by :func:`open_sources` (least recently used closed)
#: and by :class:`SharedSources`
MAX_OPEN_SOURCES = 32


class SharedSources:
    """Source datasets opened once (when the ingest describes them) and lent to the render
    threads of this process, one thread at a time.

    A thread's first GeoTIFF open builds its PROJ context (reading the CRS): ~10-20 ms
    holding the GIL, which stalls every other thread of the run. With the datasets
    describe opened and the blocks planned in the same thread (:func:`plan_block`), the
    render threads never touch PROJ with the cv2 warp (GDAL's warper, for ``average``
    resampling or a source the coordinate grid cannot serve, transforms in the thread that
    warps). A dataset that another thread is reading is not waited for: the borrower opens
    its own (:func:`open_sources`). Keeps at most ``limit`` files open; :meth:`close` closes
    them. Useless in another process (a forked worker must never share its parent's file
    offsets): it lends nothing there.
    """

    def __init__(self, limit: int = MAX_OPEN_SOURCES) -> None:
        self.limit = limit
        self._pid = os.getpid()
        self._items: dict[str, list] = {}  # path -> [dataset, lent]
        self._closing: dict[str, object] = {}  # path -> dataset lent when close() ran
        self._lock = threading.Lock()

    def keep(self, path: str, ds) -> bool:  # type: ignore[no-untyped-def]
        """Take ``ds`` (an open dataset of ``path``) into the pool; False if it is full (the
        caller then closes it)."""
        with self._lock:
            if len(self._items) >= self.limit or path in self._items:
                return False
            self._items[path] = [ds, False]
            return True

    def crs(self) -> dict[str, object]:
        """Path -> the open dataset's CRS (for :func:`plan_block`)."""
        return {path: item[0].crs for path, item in self._items.items()}

    def borrow(self, path: str):  # type: ignore[no-untyped-def]
        """The dataset of ``path``, now lent to the caller, or None (not kept, lent to
        another thread, or another process); give it back with :meth:`give_back`."""
        if os.getpid() != self._pid:
            return None
        with self._lock:
            item = self._items.get(path)
            if item is None or item[1]:
                return None
            item[1] = True
            return item[0]

    def give_back(self, path: str) -> None:
        with self._lock:
            item = self._items.get(path)
            if item is not None:
                item[1] = False
                return
            ds = self._closing.pop(path, None)
        if ds is not None:  # lent when the pool was closed (see close)
            ds.close()

    def close(self) -> None:
        """Close the datasets; one that is lent at this moment (a thread still reading after
        an interrupt) is closed when it is given back."""
        with self._lock:
            items, self._items = self._items, {}
            if os.getpid() == self._pid:
                self._closing.update((path, ds) for path, (ds, lent) in items.items() if lent)
        if os.getpid() == self._pid:
            for ds, lent in items.values():
                if not lent:
                    ds.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_sources(shared: SharedSources | None = None) -> Iterator[None]:
    """Keep the source files that :func:`render_block` opens open until the block loop ends.

    A file of a mosaic is read by several blocks; opening a GeoTIFF (header, CRS as WKT) costs
    ~1-3 ms. For this thread and process only (a forked worker never uses its parent's
    handles: they share file offsets), at most :data:`MAX_OPEN_SOURCES` at a time; all are
    closed on exit. Without it (dask workers) every block opens and closes its files.
    ``shared``: datasets to borrow first (see :class:`SharedSources`).
    """
    prev = getattr(_open, "cache", None)
    cache: dict[str, object] = {}
    _open.cache = (os.getpid(), cache, shared)
    try:
        yield
    finally:
        _open.cache = prev
        for ds in cache.values():
            ds.close()  # type: ignore[attr-defined]


def _thread_sources() -> tuple[dict[str, object] | None, SharedSources | None]:
    """This thread's :func:`open_sources` cache and shared datasets (None, None outside it
    or in another process)."""
    entry = getattr(_open, "cache", None)
    if entry is None or entry[0] != os.getpid():
        return None, None
    return entry[1], entry[2]


@contextmanager
def _source_dataset(src: SourceInfo) -> Iterator:
    """An open dataset of ``src`` for one read: borrowed from the run's
    :class:`SharedSources`, else this thread's (see :func:`open_sources`), else opened for
    this use."""
    shared = _thread_sources()[1]
    ds = shared.borrow(src.path) if shared is not None else None
    if ds is not None:
        try:
            yield ds
        finally:
            shared.give_back(src.path)  # type: ignore[union-attr]
        return
    ds, close = _open_source(src)
    try:
        yield ds
    finally:
        if close:
            ds.close()


def _open_source(src: SourceInfo):
    """``(dataset, close_after_use)`` for ``src`` (kept open inside :func:`open_sources`)."""
    cache = _thread_sources()[0]
    if cache is not None:
        ds = cache.pop(src.path, None)
        if ds is not None:
            cache[src.path] = ds  # most recently used last
            return ds, False
    try:
        ds = rasterio.open(src.path, driver="GTiff")
    except RasterioError as exc:
        raise ReadError(f"{src.path}: cannot open ({_short(exc)})", src.path) from exc
    if cache is None:
        return ds, True
    while len(cache) >= MAX_OPEN_SOURCES:
        cache.pop(next(iter(cache))).close()  # type: ignore[attr-defined]
    cache[src.path] = ds
    return ds, False


def block_dir(store_root: str | Path, project: str, layer: str) -> Path:
    return work_dir(store_root, project, layer) / "blocks"


def record_path(job: BlockJob) -> Path:
    """The record of a finished block (what a resumed run reads instead of rendering it)."""
    spec = job.layer
    return block_dir(spec.store_root, spec.project, spec.name) / f"{job.bx}-{job.by}.json"


def work_dir(store_root: str | Path, project: str, layer: str) -> Path:
    """Per-layer bookkeeping, kept outside the layer's tile tree."""
    return Path(store_root) / project / WORK_DIR / layer


def block_levels(job: BlockJob) -> int:
    """Number of pyramid levels rendered inside the block (0 = only the task zoom)."""
    spec = job.layer
    return min(int(math.log2(job.size)), max(0, spec.task_zoom - spec.min_zoom))


def premultiply(a: np.ndarray) -> np.ndarray:
    """In place: colour *= alpha / 255 for partly transparent pixels (last channel = alpha).

    Blocks, block tops and pyramid levels are kept premultiplied: a plain box filter is then
    the correct alpha-weighted average, and the colour is already "composited over black",
    which is exactly what a JPEG tile shows.
    """
    alpha = a[..., -1]
    partial = (alpha > 0) & (alpha < 255)
    if partial.any():
        col = a[partial]
        al = col[:, -1:].astype(np.uint16)
        col[:, :-1] = ((col[:, :-1].astype(np.uint16) * al + 127) // 255).astype(np.uint8)
        a[partial] = col
    return a


def _unpremultiply_lut() -> np.ndarray:
    """``lut[alpha, colour]``: the colour of a partly transparent pixel, unpremultiplied
    (``min(255, (colour * 255 + alpha // 2) // alpha)``; rows 0 and 255 are never used)."""
    c = np.arange(256, dtype=np.uint32)[None, :]
    al = np.maximum(np.arange(256, dtype=np.uint32)[:, None], 1)
    return np.minimum(255, (c * 255 + al // 2) // al).astype(np.uint8)


_UNPREMULTIPLY = _unpremultiply_lut()


def unpremultiply(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy with colour / (alpha / 255) for partly transparent pixels (for
    PNG/WebP); alpha 0 and 255 pixels are copied as they are."""
    a = a.copy()
    alpha = cv2.extractChannel(a, a.shape[2] - 1)
    partial = cv2.inRange(alpha, 1, 254)  # only the few pixels at the data's edge
    if cv2.countNonZero(partial):
        # (x, y) of the partial pixels: cv2.findNonZero is ~2x faster than np.nonzero on a
        # 0/255 mask, which takes numpy's slow path for non-boolean arrays
        xs, ys = cv2.findNonZero(partial).reshape(-1, 2).T
        px = a[ys, xs]
        px[:, :-1] = _UNPREMULTIPLY[px[:, -1:], px[:, :-1]]
        a[ys, xs] = px
    return a


#: Pillow modes whose pixels are already premultiplied, by channel count (alpha last)
_PREMULTIPLIED_MODES = {2: "La", 4: "RGBa"}


def downsample2(a: np.ndarray, rows: int = 128) -> np.ndarray:
    """Halve a premultiplied ``(H, W, C+1)`` uint8 array with a 2x2 box filter.

    Each output value is ``(sum of the 4 inputs + 2) >> 2``. Even-sized 4-channel arrays go
    through ``cv2.resize(INTER_AREA)`` (its exact-2x path computes that rounded mean), even
    C-contiguous 2-channel ones through Pillow's ``reduce(2)`` in the premultiplied mode
    ``La`` (the same mean, converting nothing; ~2x faster than numpy), anything else through
    :func:`_downsample2_numpy`.
    """
    h, w = a.shape[:2]
    even = h % 2 == 0 and w % 2 == 0 and h and w and a.dtype == np.uint8 and a.ndim == 3
    if even and a.shape[2] == 4:
        # cv2's INTER_AREA fast path for an exact 2x shrink: the same rounded mean per
        # channel, ~10x faster than Pillow (not for 2 channels: it rounds those differently)
        return cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    mode = _PREMULTIPLIED_MODES.get(a.shape[2]) if a.ndim == 3 else None
    if mode and even and a.flags.c_contiguous:
        from PIL import Image

        img = Image.frombuffer(mode, (w, h), a, "raw", mode, 0, 1)
        return np.asarray(img.reduce(2))
    return _downsample2_numpy(a, rows)


def _downsample2_numpy(a: np.ndarray, rows: int = 128) -> np.ndarray:
    """:func:`downsample2` in numpy, on bands of ``rows`` output rows (cache-sized uint16
    temporaries): the row pairs are summed first on a reshaped view, then the column pairs."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    r = a[:2 * h, :2 * w].reshape(h, 2, w, 2, *a.shape[2:])
    out = np.empty((h, w, *a.shape[2:]), np.uint8)
    for r0 in range(0, h, rows):
        band = r[r0:r0 + rows]
        s = band[:, 0].astype(np.uint16)
        s += band[:, 1]
        t = s[:, :, 0] + s[:, :, 1]
        t += 2
        t >>= 2
        out[r0:r0 + rows] = t
    return out


def tile_array(level: np.ndarray, i: int, j: int, ts: int) -> np.ndarray:
    """Tile (column i, row j) of an ``(H, W, C+1)`` level (a view)."""
    return level[j * ts:(j + 1) * ts, i * ts:(i + 1) * ts]


def tile_coverage(alpha: np.ndarray) -> float:
    """Fraction of a tile's pixels with data: mean alpha / 255, rounded to 3 decimals.

    With a binary mask this is the valid-pixel fraction; warped edge pixels count partly.
    A tile with any data never rounds to 0 (it reports at least 0.001).
    """
    return coverage_from_sum(int(alpha.sum(dtype=np.uint64)), alpha.size)


def encode_tile(arr: np.ndarray, spec: LayerSpec, opaque: bool | None = None) -> bytes:
    """Encode a premultiplied ``(ts, ts, C+1)`` tile (alpha last).

    ``opaque`` (every alpha is 255) is computed when not given.
    """
    if opaque is None:
        opaque = int(arr[..., -1].min()) == 255
    if opaque or spec.ext not in ALPHA_FORMATS:
        # opaque, or JPEG: premultiplied colour is the tile composited over black
        # (a view: tiles.encode hands RGB-of-RGBA rows to Pillow without copying them)
        return encode(arr[..., :-1], spec.ext, spec.quality)
    return encode(unpremultiply(arr), spec.ext, spec.quality, opaque=False)


def tile_alpha_sums(level: np.ndarray, ts: int) -> list[list[int]]:
    """Exact alpha sum of every ``ts x ts`` tile of an ``(n*ts, m*ts, C+1)`` level (alpha
    last), as ``n`` rows of ``m`` ints.

    A tile is empty when its sum is 0 and opaque when it is ``255 * ts * ts``.
    ``cv2.sumElems`` sums every channel of a tile in one pass over the level's own rows (a
    view: no alpha plane is extracted; ~3x faster than ``cv2.extractChannel`` then
    ``minMaxLoc`` and ``sumElems`` on the plane); float64 sums of at most 512 * 512 * 255
    are exact.
    """
    c = level.shape[2] - 1
    rows = []
    for j in range(level.shape[0] // ts):
        band = level[j * ts:(j + 1) * ts]
        rows.append([int(cv2.sumElems(band[:, i * ts:(i + 1) * ts])[c])
                     for i in range(level.shape[1] // ts)])
    return rows


def coverage_from_sum(alpha_sum: int, pixels: int) -> float:
    """:func:`tile_coverage` from a tile's exact alpha sum and pixel count."""
    frac = (alpha_sum / pixels) / 255.0
    return max(0.001, round(frac, 3)) if frac > 0 else 0.0


# ---------------------------------------------------------------------------------------
def _inv(t: tuple[float, ...]) -> tuple[float, float, float, float, float, float]:
    a, b, c, d, e, f = t
    det = a * e - b * d
    return (e / det, -b / det, (b * f - c * e) / det, -d / det, a / det, (c * d - a * f) / det)


def _source_window(src: SourceInfo, bounds_src: np.ndarray) -> tuple[float, float, float, float]:
    """Fractional pixel bounds (col0, row0, col1, row1) of points ``bounds_src`` (2, N)."""
    ia, ib, ic, id_, ie, if_ = _inv(src.transform)
    cols = ia * bounds_src[0] + ib * bounds_src[1] + ic
    rows = id_ * bounds_src[0] + ie * bounds_src[1] + if_
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def plan_source(src: SourceInfo, spec: LayerSpec, dst_bounds: tuple[float, ...], dst_w: int,
                dst_h: int, crs=None) -> SourcePlan | None:
    """The geometry of reading and warping ``src`` into a block (no pixels read), or None
    when the source does not reach the block.

    ``dst_bounds`` (left, bottom, right, top) in Web-Mercator metres, ``dst_w x dst_h`` pixels;
    ``crs``: the source's CRS (a ``rasterio`` CRS; parsed from ``src.crs_wkt`` when not
    given). Everything here goes through PROJ: a thread's first use of PROJ builds its
    context (~10-20 ms holding the GIL), so a threaded run plans every block in the thread
    that described the sources (see :func:`plan_block`).

    The window is decimated with ``Resampling.average`` when the source is finer than the
    block: to ~1 source pixel per block pixel for the cv2 warp (which, unlike GDAL's warper,
    does not widen its kernel when shrinking), by an integer factor >= 2 for GDAL's
    ``average`` resampling.
    """
    crs = src.crs_wkt if crs is None else crs
    left, bottom, right, top = dst_bounds
    n = 21
    xs = np.concatenate([np.linspace(left, right, n), np.full(n, right),
                         np.linspace(right, left, n), np.full(n, left)])
    ys = np.concatenate([np.full(n, top), np.linspace(top, bottom, n),
                         np.full(n, bottom), np.linspace(bottom, top, n)])
    sx, sy = warp_transform("EPSG:3857", crs, xs, ys)
    pts = np.array([sx, sy], dtype=np.float64)
    if not np.isfinite(pts).all():
        pts = pts[:, np.isfinite(pts).all(axis=0)]
        if pts.size == 0:
            return None
    c0, r0, c1, r1 = _source_window(src, pts)
    # source pixels per destination pixel (before clipping), to decide on decimation
    ratio = max((c1 - c0) / dst_w, (r1 - r0) / dst_h)
    pad = 2 + max(1.0, ratio)
    col0 = max(0, math.floor(c0 - pad))
    row0 = max(0, math.floor(r0 - pad))
    col1 = min(src.width, math.ceil(c1 + pad))
    row1 = min(src.height, math.ceil(r1 + pad))
    if col1 <= col0 or row1 <= row0:
        return None
    w, h = col1 - col0, row1 - row0
    if spec.resampling in CV2_INTERPOLATION:
        k = ratio if ratio > DECIMATE_ABOVE else 1.0
    else:
        k = float(max(1, int(ratio))) if ratio >= 2 else 1.0
    out_h, out_w = max(1, math.ceil(h / k)), max(1, math.ceil(w / k))
    a, b, c, d, e, f = src.transform
    sa, se = w / out_w, h / out_h
    win_tf = Affine(a * sa, b * se, a * col0 + b * row0 + c,
                    d * sa, e * se, d * col0 + e * row0 + f)
    # where the window lands in the block: warp only that part of the destination grid
    uc = np.concatenate([np.linspace(col0, col1, n), np.full(n, col1),
                         np.linspace(col1, col0, n), np.full(n, col0)])
    ur = np.concatenate([np.full(n, row0), np.linspace(row0, row1, n),
                         np.full(n, row1), np.linspace(row1, row0, n)])
    mx, my = warp_transform(crs, "EPSG:3857", a * uc + b * ur + c, d * uc + e * ur + f)
    mx, my = np.asarray(mx), np.asarray(my)
    ok = np.isfinite(mx) & np.isfinite(my)
    px, py = (right - left) / dst_w, (top - bottom) / dst_h
    if ok.all():
        dc0 = max(0, math.floor((mx.min() - left) / px) - 2)
        dc1 = min(dst_w, math.ceil((mx.max() - left) / px) + 2)
        dr0 = max(0, math.floor((top - my.max()) / py) - 2)
        dr1 = min(dst_h, math.ceil((top - my.min()) / py) + 2)
    else:
        dc0, dr0, dc1, dr1 = 0, 0, dst_w, dst_h
    if dc1 <= dc0 or dr1 <= dr0:
        return None
    grid = None
    if spec.resampling in CV2_INTERPOLATION:
        grid = plan_grid(crs, win_tf, (left + dc0 * px, top - dr0 * py), (px, py),
                         (dc1 - dc0, dr1 - dr0))
    return SourcePlan(Window(col0, row0, w, h), (out_h, out_w), win_tf, (dc0, dr0, dc1, dr1),
                      grid)


@dataclass
class SourcePlan:
    """Where one source meets one block (see :func:`plan_source`): geometry only."""

    window: Window  # source pixels to read
    out_shape: tuple[int, int]  # (rows, cols) they are read into (decimated when finer)
    transform: Affine  # georeferencing of the window as read
    region: tuple[int, int, int, int]  # destination pixels it can reach: c0, r0, c1, r1
    grid: tuple[np.ndarray, int] | None  # plan_grid() for the cv2 warp; None: GDAL's warper


def _read_window(ds, src: SourceInfo, spec: LayerSpec, plan: SourcePlan) -> _SourceWindow | None:
    """Read the window of :func:`plan_source` (None when every pixel of it is masked)."""
    out_h, out_w = plan.out_shape
    window = plan.window
    nb = spec.channels
    try:
        data = ds.read(list(spec.bands), window=window, out_shape=(nb, out_h, out_w),
                       resampling=Resampling.average)
        # one list of flags per band; [all_valid] everywhere: no mask to read
        if all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums):
            mask = None
        else:
            mask = ds.dataset_mask(window=window, out_shape=(out_h, out_w))
    except Exception as exc:  # rasterio/GDAL raise several types for I/O failures
        raise ReadError(f"{src.path}: read failed (truncated or corrupt file?): {_short(exc)}",
                        src.path) from exc
    if spec.stretch_low is None:
        channels = list(data)
    else:
        valid = np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else None
        if valid is not None and not valid.all():
            mask = np.where(valid & (mask > 0 if mask is not None else True),
                            mask if mask is not None else 255, 0).astype(np.uint8)
        channels = []
        for b in range(nb):
            lo, hi = spec.stretch_low[b], spec.stretch_high[b]  # type: ignore[index]
            v = data[b].astype(np.float32)
            v -= np.float32(lo)
            v *= np.float32(255.0 / (hi - lo))
            np.clip(v, 0, 255, out=v)
            np.nan_to_num(v, copy=False)
            channels.append((v + 0.5).astype(np.uint8))
    opaque = mask is None or int(mask.min()) == 255
    if not opaque and int(mask.max()) == 0:
        return None
    alpha = np.full((out_h, out_w), 255, np.uint8) if opaque else mask
    # pixel-interleaved (h, w, C+1), alpha last, as cv2.remap and the block want it (a
    # band-sequential read plus cv2.merge is ~5x faster than GDAL reading into an
    # interleaved buffer)
    stack = cv2.merge([*channels, alpha])
    return _SourceWindow(stack, plan.transform, plan.region, opaque)


@dataclass
class _SourceWindow:
    """A source window read for one block (see :func:`_read_window`)."""

    stack: np.ndarray  # (h, w, C+1) uint8, alpha last (all 255 when opaque), not premultiplied
    transform: Affine  # georeferencing of ``stack`` (decimated window)
    region: tuple[int, int, int, int]  # destination pixels it can reach: c0, r0, c1, r1
    opaque: bool


# --- the cv2 warp ----------------------------------------------------------------------
#: ``resampling`` -> cv2 interpolation; anything else (``average``) goes through GDAL
CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
                     "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
#: a source finer than this many pixels per block pixel is read decimated (average) to ~1:1
DECIMATE_ABOVE = 1.2
#: destination pixels between exactly transformed grid nodes (halved while the estimated
#: linear-interpolation error exceeds GRID_TOLERANCE source pixels)
GRID_STEP = 256
GRID_TOLERANCE = 0.02
#: a strip of :func:`remap_into` whose grid nodes all lie within this many source pixels of
#: one affine map is warped with ``cv2.warpAffine`` (no coordinate maps; see _strip_affine)
AFFINE_TOLERANCE = GRID_TOLERANCE
#: rows per group in :func:`_clip_affine`
CLIP_ROWS = 64
#: tolerance (source pixels) of the window-extent test in :func:`remap_into`
EDGE_EPS = 1e-3
#: output rows per cv2.remap call (bounds the float32 coordinate maps to ~8 MB per strip; the
#: maps of a strip are made with one grid step of margin above and below, so taller strips
#: waste less)
STRIP_ROWS = 512


def coordinate_grid(crs_wkt: str, win_tf: Affine, origin: tuple[float, float],
                    pixel: tuple[float, float], size: tuple[int, int],
                    step: int) -> np.ndarray | None:
    """Exact source pixel coordinates of a coarse grid of destination pixel centres.

    The destination is a north-up Web-Mercator grid: pixel (col, row) covers
    ``x = origin_x + (col + [0, 1]) * pixel_x``, ``y = origin_y - (row + [0, 1]) * pixel_y``.
    Node ``k`` sits at destination pixel index ``k * step + (step - 1) / 2`` for
    ``k = -1 .. ceil(size / step)`` in both directions, so that ``cv2.resize`` by ``step``
    (INTER_LINEAR: output pixel ``i`` samples input ``(i + 0.5) / step - 0.5``) interpolates
    the nodes linearly onto pixel indices ``i - step``: see :func:`_maps_for_rows`.

    Returns ``(ny + 2, nx + 2, 2)`` float64 (x, y) in cv2's convention (source pixel
    *centres* are integers: GDAL's pixel coordinates minus 0.5), or None if any node does
    not project (poles, outside the source CRS's domain).
    """
    w, h = size
    nx, ny = -(-w // step), -(-h // step)
    kx = (np.arange(-1, nx + 1) * step + (step - 1) / 2 + 0.5)
    ky = (np.arange(-1, ny + 1) * step + (step - 1) / 2 + 0.5)
    xs = origin[0] + kx * pixel[0]
    ys = origin[1] - ky * pixel[1]
    gx, gy = np.meshgrid(xs, ys)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sx, sy = warp_transform("EPSG:3857", crs_wkt, gx.ravel(), gy.ravel())
    except Exception:  # noqa: BLE001 - GDAL's CPLE_* errors (no public base class) when
        return None    # PROJ cannot transform the points: GDAL's warper gets to decide
    sx, sy = np.asarray(sx), np.asarray(sy)
    if not (np.isfinite(sx).all() and np.isfinite(sy).all()):
        return None
    inv = ~win_tf
    grid = np.empty((ny + 2, nx + 2, 2), np.float64)
    grid[..., 0] = (inv.a * sx + inv.b * sy + inv.c).reshape(ny + 2, nx + 2) - 0.5
    grid[..., 1] = (inv.d * sx + inv.e * sy + inv.f).reshape(ny + 2, nx + 2) - 0.5
    return grid


def grid_error(grid: np.ndarray) -> float:
    """Estimated largest error (source pixels) of interpolating ``grid`` bilinearly.

    The nodes at odd positions are compared with the bilinear interpolation of their even
    neighbours, i.e. the error of a grid twice as coarse; bilinear interpolation's error
    grows with the square of the spacing, so the grid's own error is about a quarter of it.
    """
    if grid.shape[0] < 3 or grid.shape[1] < 3:
        return 0.0
    even = grid[::2, ::2]
    ny, nx = (grid.shape[0] - 1) // 2, (grid.shape[1] - 1) // 2
    centre = 0.25 * (even[:ny, :nx] + even[1:ny + 1, :nx] + even[:ny, 1:nx + 1]
                     + even[1:ny + 1, 1:nx + 1])
    errs = [np.abs(grid[1:2 * ny:2, 1:2 * nx:2] - centre).max()]
    # mid-edge nodes: 1-D interpolation along rows and along columns
    errs.append(np.abs(grid[::2, 1:2 * nx:2] - 0.5 * (even[:, :nx] + even[:, 1:nx + 1])).max())
    errs.append(np.abs(grid[1:2 * ny:2, ::2] - 0.5 * (even[:ny] + even[1:ny + 1])).max())
    return float(max(errs)) / 4.0


def _maps_for_rows(grid32: np.ndarray, step: int, r0: int, r1: int, w: int) -> np.ndarray:
    """Full-resolution (r1 - r0, w, 2) float32 source coordinates of destination rows
    ``r0 .. r1 - 1`` (``r0`` a multiple of ``step``), from the nodes of :func:`coordinate_grid`."""
    k0 = r0 // step
    k1 = k0 + -(-(r1 - r0) // step) + 2
    sub = grid32[k0:k1]
    big = cv2.resize(sub, (sub.shape[1] * step, sub.shape[0] * step),
                     interpolation=cv2.INTER_LINEAR)
    return big[step:step + r1 - r0, step:step + w]


def plan_grid(crs_wkt: str, win_tf: Affine, origin: tuple[float, float],
              pixel: tuple[float, float], size: tuple[int, int]
              ) -> tuple[np.ndarray, int] | None:
    """The coordinate grid (and its step) for :func:`remap_into`, or None when it cannot be
    used (some node does not project, or the mapping is too curved even on a 2-pixel grid):
    the caller then falls back to GDAL's warper."""
    step = GRID_STEP
    while True:
        grid = coordinate_grid(crs_wkt, win_tf, origin, pixel, size, step)
        if grid is None:
            return None
        if grid_error(grid) <= GRID_TOLERANCE:
            return grid, step
        if step <= 2:
            return None
        step //= 2


def remap_into(stack: np.ndarray, plan: tuple[np.ndarray, int], out: np.ndarray,
               interpolation: int) -> None:
    """Warp a premultiplied ``(h, w, C+1)`` source window into ``out`` (``(H, W, C+1)``,
    every pixel written) with ``cv2.remap``, in strips of :data:`STRIP_ROWS` rows.

    Destination pixels whose source point lies outside the window (GDAL's pixel extent
    ``[0, w) x [0, h)``) get 0 in every channel; inside, the window's edge pixels are
    replicated for the interpolation kernel, so a file's edge is as hard as GDAL makes it
    and the files of a mosaic meet without a seam. Nodata/masked pixels carry alpha 0 and
    colour 0 (premultiplied), so interpolation never bleeds their colour.
    """
    grid, step = plan
    H, W = out.shape[:2]
    sh, sw = stack.shape[:2]
    grid32 = None
    strip = max(step, STRIP_ROWS // step * step)
    for r0 in range(0, H, strip):
        r1 = min(H, r0 + strip)
        dst = out[r0:r1]
        k0 = r0 // step
        nodes = grid[k0:k0 + -(-(r1 - r0) // step) + 2]
        fit = _strip_affine(nodes, step, k0 * step - r0)
        if fit is not None:
            # near-affine strip: no coordinate maps at all (see _strip_affine)
            matrix, residual = fit
            cv2.warpAffine(stack, matrix, (W, r1 - r0), dst=dst,
                           flags=interpolation | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
            _clip_affine(dst, matrix, sw, sh, EDGE_EPS + residual)
            continue
        if grid32 is None:
            grid32 = grid.astype(np.float32)
        maps = _maps_for_rows(grid32, step, r0, r1, W)
        cv2.remap(stack, maps, None, interpolation, dst=dst, borderMode=cv2.BORDER_REPLICATE)
        for c0, c1 in _columns_to_clip(nodes, step, W, sw, sh):
            part = dst[:, c0:c1]
            inside = _inside(maps[:, c0:c1], sw, sh)
            # zero every channel outside (cv2 writes into the view; ~10x faster than
            # numpy's boolean-mask assignment on the strided block)
            cv2.bitwise_and(part, cv2.merge([inside] * part.shape[2]), dst=part)


def _strip_affine(nodes: np.ndarray, step: int, offset: int
                  ) -> tuple[np.ndarray, float] | None:
    """The least-squares affine map of a strip's grid nodes, ``(2 x 3 matrix, largest
    residual in source pixels)``, or None when some node is further than
    :data:`AFFINE_TOLERANCE` from it (or the strip has too few nodes to tell).

    ``nodes`` are the :func:`coordinate_grid` rows of the strip (one row of margin on each
    side); node ``(a, b)`` sits at destination column ``(b - 1) * step + (step - 1) / 2`` and
    strip row ``offset + (a - 1) * step + (step - 1) / 2``. The matrix maps destination
    ``(col, row, 1)`` of the strip to cv2 source coordinates, as ``cv2.warpAffine`` wants
    with ``WARP_INVERSE_MAP``: over a 2048-px block a projected CRS is affine to a few
    hundredths of a pixel, and ``warpAffine`` needs no per-pixel coordinate maps (making and
    reading them cost as much as the interpolation itself).
    """
    ny, nx = nodes.shape[:2]
    if ny < 3 or nx < 3:
        return None
    cols = (np.arange(nx) - 1) * step + (step - 1) / 2
    rows = offset + (np.arange(ny) - 1) * step + (step - 1) / 2
    # on a full rectangular lattice the centred column and row coordinates are orthogonal,
    # so the least-squares fit is three means and two slopes per coordinate (no LAPACK)
    dc, dr = cols - cols.mean(), rows - rows.mean()
    mean = nodes.mean(axis=(0, 1))  # (x, y)
    slope_c = np.einsum("j,ijk->k", dc, nodes) / (ny * float(dc @ dc))
    slope_r = np.einsum("i,ijk->k", dr, nodes) / (nx * float(dr @ dr))
    matrix = np.empty((2, 3), np.float64)
    matrix[:, 0], matrix[:, 1] = slope_c, slope_r
    matrix[:, 2] = mean - slope_c * cols.mean() - slope_r * rows.mean()
    fitted = (matrix[:, 0] * cols[None, :, None] + matrix[:, 1] * rows[:, None, None]
              + matrix[:, 2])
    residual = float(np.abs(fitted - nodes).max())
    if not residual <= AFFINE_TOLERANCE:
        return None
    return matrix, residual


def _clip_affine(dst: np.ndarray, matrix: np.ndarray, sw: int, sh: int, eps: float) -> None:
    """In place: zero the pixels of ``dst`` whose source point under ``matrix`` (see
    :func:`_strip_affine`) lies outside the ``sw x sh`` window's pixel extent
    ``[-0.5, sw - 0.5) x [-0.5, sh - 0.5)``, give or take ``eps``.

    Under an affine map the inside pixels of a row are one run of columns, found from the
    row's two linear equations: rows with none are zeroed whole, the others, in groups of
    :data:`CLIP_ROWS`, only in the bands of columns left of the group's rightmost run start
    and right of its leftmost run end (narrow except where an edge crosses the group).
    """
    h, w = dst.shape[:2]
    (a, b, c), (d, e, f) = matrix
    r = np.arange(h, dtype=np.float64)
    lo = np.zeros(h)
    hi = np.full(h, float(w))  # inside columns: lo <= col < hi
    for slope, start, top in ((a, b * r + c, sw), (d, e * r + f, sh)):
        low, high = -0.5 - eps - start, top - 0.5 + eps - start  # low <= slope * col < high
        if abs(slope) < 1e-12:
            hit = (low <= 0) & (0 < high)
            hi = np.where(hit, hi, 0.0)
            continue
        if slope > 0:  # low / slope <= col < high / slope
            first, end = np.ceil(low / slope), np.ceil(high / slope)
        else:  # high / slope < col <= low / slope
            first, end = np.floor(high / slope) + 1, np.floor(low / slope) + 1
        lo = np.maximum(lo, first)
        hi = np.minimum(hi, end)
    lo = np.clip(lo, 0, w).astype(np.intp)
    hi = np.clip(hi, 0, w).astype(np.intp)
    empty = lo >= hi
    if empty.all():
        dst[...] = 0
        return
    if empty.any():
        dst[empty] = 0
        lo[empty], hi[empty] = 0, w  # nothing left to clip in those rows
    cols = np.arange(w, dtype=np.intp)
    for r0 in range(0, h, CLIP_ROWS):  # row groups: a slanted edge widens only its own band
        r1 = min(h, r0 + CLIP_ROWS)
        lo_g, hi_g = lo[r0:r1, None], hi[r0:r1, None]
        left, right = int(lo_g.max()), int(hi_g.min())
        for c0, c1, keep in ((0, left, cols[None, :left] >= lo_g),
                             (right, w, cols[None, right:] < hi_g)):
            if c1 > c0:
                part = dst[r0:r1, c0:c1]
                mask = keep.view(np.uint8) * np.uint8(255)
                cv2.bitwise_and(part, cv2.merge([mask] * part.shape[2]), dst=part)


def _inside(maps: np.ndarray, sw: int, sh: int) -> np.ndarray:
    """255 where a float32 ``(h, w, 2)`` map points inside the window, 0 where
    :func:`_outside` holds: the same float32 comparisons through ``cv2.inRange`` (whose upper
    bound is inclusive, hence the next float below :func:`_outside`'s exclusive one)."""
    lo = float(np.float32(-0.5 - EDGE_EPS))
    below = np.float32(-np.inf)
    hx = float(np.nextafter(np.float32(sw - 0.5 + EDGE_EPS), below))
    hy = float(np.nextafter(np.float32(sh - 0.5 + EDGE_EPS), below))
    return cv2.inRange(maps, (lo, lo), (hx, hy))


def _outside(x: np.ndarray, y: np.ndarray, sw: int, sh: int) -> np.ndarray:
    """Source points (cv2 pixel coordinates) outside the ``sw x sh`` window's pixel extent
    ``[-0.5, sw - 0.5) x [-0.5, sh - 0.5)``, give or take :data:`EDGE_EPS` (so that a point
    on the seam of two files of a mosaic, up to float rounding, is inside both)."""
    lo = -0.5 - EDGE_EPS
    return (x < lo) | (x >= sw - 0.5 + EDGE_EPS) | (y < lo) | (y >= sh - 0.5 + EDGE_EPS)


def _columns_to_clip(nodes: np.ndarray, step: int, width: int, sw: int,
                     sh: int) -> list[tuple[int, int]]:
    """Runs ``[c0, c1)`` of destination columns of a strip that may map outside the
    ``sw x sh`` window. The maps interpolate the nodes bilinearly, so they stay within the
    range of the (at most 2 x 2) nodes around each pixel: a pixel column can only leave the
    window if one of its two node columns has a node outside."""
    bad = _outside(nodes[..., 0], nodes[..., 1], sw, sh).any(axis=0)
    if not bad.any():
        return []
    # pixel column c samples node columns floor(u), floor(u) + 1 with u = (c + 0.5) / step
    # + 0.5 (see coordinate_grid / _maps_for_rows)
    j = ((np.arange(width) + 0.5) / step + 0.5).astype(np.intp)
    hit = bad[j] | bad[np.minimum(j + 1, bad.size - 1)]
    edges = np.flatnonzero(np.diff(np.concatenate(([False], hit, [False])).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def premultiply_source(stack: np.ndarray) -> None:
    """In place: colour 0 where alpha is 0, colour * alpha / 255 where it is partial."""
    alpha = stack[..., -1]
    np.copyto(stack[..., :-1], 0, where=(alpha == 0)[..., None])
    premultiply(stack)


def _warp_gdal(win: _SourceWindow, src: SourceInfo, spec: LayerSpec, out: np.ndarray,
               sub_tf: Affine) -> None:
    """GDAL's warper (``average`` resampling, or where the cv2 grid cannot be used): the
    not-premultiplied window into the band-first view of ``out`` (zeroed), then premultiplied."""
    nb = spec.channels
    stack = win.stack.transpose(2, 0, 1)
    if win.opaque:
        stack = stack[:nb]  # GDAL's faster warp kernels (destination alpha only)
    try:
        # rasterio may warn NotGeoreferencedWarning while wrapping the arrays in MEM
        # datasets (seen in dask worker threads) although both transforms are given
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            reproject(stack, out.transpose(2, 0, 1), src_transform=win.transform,
                      src_crs=src.crs_wkt, dst_transform=sub_tf, dst_crs="EPSG:3857",
                      resampling=Resampling[spec.resampling],
                      src_alpha=0 if win.opaque else nb + 1, dst_alpha=nb + 1,
                      num_threads=1, init_dest_nodata=False)
    except RasterioError as exc:
        raise ReadError(f"{src.path}: cannot warp to Web Mercator ({_short(exc)})",
                        src.path) from exc
    premultiply(out)


def _block_bounds(job: BlockJob) -> tuple[tuple[float, float, float, float],
                                          tuple[float, float, float, float]]:
    """The block's (left, bottom, right, top) in Web-Mercator metres and (w, s, e, n) in
    lon/lat."""
    z, B = job.layer.task_zoom, job.size
    x0, y0 = job.bx * B, job.by * B
    left, _, _, top = tile_xy_bounds(z, x0, y0)
    _, bottom, right, _ = tile_xy_bounds(z, x0 + B - 1, y0 + B - 1)
    bw, _, _, bn = tile_bounds(z, x0, y0)
    _, bs, be, _ = tile_bounds(z, x0 + B - 1, y0 + B - 1)
    return (left, bottom, right, top), (bw, bs, be, bn)


def plan_block(job: BlockJob, crs: dict[str, object] | None = None
               ) -> tuple[SourcePlan | None, ...]:
    """:func:`plan_source` of every source of the layer for this block (None where a source
    does not reach it), in ``job.layer.sources`` order. ``crs`` maps a source path to its
    parsed CRS, e.g. the open dataset's ``crs`` (parsed from the WKT otherwise)."""
    spec = job.layer
    size_px = job.size * spec.tile_size
    merc, (bw, bs, be, bn) = _block_bounds(job)
    plans: list[SourcePlan | None] = []
    for src in spec.sources:
        sw, ss, se_, sn = src.bounds_lonlat  # cheap reject on lon/lat footprints
        if sw > be or se_ < bw or ss > bn or sn < bs:
            plans.append(None)
            continue
        plans.append(plan_source(src, spec, merc, size_px, size_px,
                                 None if crs is None else crs.get(src.path)))
    return tuple(plans)


def _render_canvas(job: BlockJob, size_px: int,
                   drawn: list[tuple[int, int, int, int]] | None = None,
                   plans: tuple[SourcePlan | None, ...] | None = None) -> np.ndarray | None:
    """Warp every intersecting source into the block; (H, W, C+1) uint8 or None if empty.

    The colour is premultiplied by alpha (see :func:`premultiply`). ``drawn``, if given,
    receives the (c0, r0, c1, r1) pixel regions written to: the rest of their tiles' box,
    grown to whole 2 x 2-tile groups, is zero; tiles outside it are left uninitialised
    (see :class:`_CanvasTiles`).
    ``plans``: the block's :func:`plan_block`, when made beforehand (else made here)."""
    spec = job.layer
    (left, bottom, right, top), _ = _block_bounds(job)
    px, py = (right - left) / size_px, (top - bottom) / size_px
    nb = spec.channels
    interpolation = CV2_INTERPOLATION.get(spec.resampling)
    canvas: np.ndarray | None = None
    tiles = _CanvasTiles(size_px, spec.tile_size)
    regions = drawn if drawn is not None else []
    have_data = False  # some source put alpha > 0 into the canvas
    with rasterio.Env(**GDAL_ENV):
        if plans is None:
            plans = plan_block(job)
        for src, plan in zip(spec.sources, plans):
            if plan is None:
                continue
            with _source_dataset(src) as ds:
                win = _read_window(ds, src, spec, plan)
            if win is None:
                continue
            c0, r0, c1, r1 = win.region
            regions.append(win.region)
            if canvas is None:
                # uninitialised: only the tiles that sources draw into are zeroed (before
                # they are drawn, and only outside what the warp writes); see _CanvasTiles
                canvas = np.empty((size_px, size_px, nb + 1), np.uint8)
            grid = plan.grid
            tiles.zero(canvas, win.region, written=not have_data and grid is not None)
            region = canvas[r0:r1, c0:c1]
            origin = (left + c0 * px, top - r0 * py)
            # the first source with data is warped straight into the (zeroed) canvas; later
            # ones into a temporary, then mosaicked: uninitialised for cv2's warp, which
            # writes every pixel (remap_into), zeroed for GDAL's, which may leave some alone
            if not have_data:
                out = region
            elif grid is not None:
                out = np.empty((r1 - r0, c1 - c0, nb + 1), np.uint8)
            else:
                out = np.zeros((r1 - r0, c1 - c0, nb + 1), np.uint8)
            if grid is not None:
                if not win.opaque:
                    premultiply_source(win.stack)
                remap_into(win.stack, grid, out, interpolation)  # type: ignore[arg-type]
            else:
                _warp_gdal(win, src, spec, out,
                           Affine(px, 0.0, origin[0], 0.0, -py, origin[1]))
            if not have_data:
                # premultiplied: a pixel with alpha 0 is 0 in every channel, so any non-zero
                # byte means some alpha > 0 (cv2.hasNonZero on the rows as one 2-D plane stops
                # at the first one; no alpha plane is extracted)
                have_data = cv2.hasNonZero(out.reshape(out.shape[0], -1))
                continue
            alpha = cv2.extractChannel(out, nb)
            if not cv2.hasNonZero(alpha):
                continue
            # mosaic: take the new source where it is more opaque than what is there (cv2:
            # one 8-bit mask and a masked copy, ~3x faster than numpy's broadcast `where`)
            more = cv2.compare(alpha, cv2.extractChannel(region, nb), cv2.CMP_GT)
            cv2.copyTo(out, more, region)
    if not have_data:
        return None
    # the rest of the drawn tiles' box, grown to whole 2 x 2-tile groups (what the block's
    # statistics and reductions read: see _drawn_tiles, _reduce_drawn)
    ts = spec.tile_size
    groups = _pair_groups(_drawn_tiles(regions, ts, tiles.n), tiles.n, tiles.n)
    tiles.zero(canvas, tuple(v * ts for v in groups), written=False)  # type: ignore[arg-type]
    return canvas


class _CanvasTiles:
    """Which tiles of an uninitialised block canvas hold defined pixels yet.

    ``np.zeros`` for the 2048 x 2048 x 4 canvas of every block cost a 16 MB memset in a
    process that has rendered before (calloc reuses freed memory), yet sources draw into
    ~40 % of a Joplin block and the first one writes every pixel of its region anyway.
    Before pixels are drawn, :meth:`zero` zeroes each tile they touch for the first time:
    whole, or, when the caller will write every pixel of the region (cv2's warp of the
    first source), only the tile's part outside it. The tiles nothing touched stay
    undefined; nothing reads them (see :func:`_render_canvas`).
    """

    def __init__(self, size_px: int, ts: int) -> None:
        self.ts, self.n = ts, size_px // ts
        self._done = np.zeros((self.n, self.n), bool)

    def zero(self, canvas: np.ndarray, rect: tuple[int, int, int, int], written: bool) -> None:
        """Make the tiles meeting pixel ``rect`` (c0, r0, c1, r1) defined (see the class)."""
        ts = self.ts
        c0, r0, c1, r1 = rect
        for j in range(r0 // ts, min(self.n, -(-r1 // ts))):
            for i in range(c0 // ts, min(self.n, -(-c1 // ts))):
                if self._done[j, i]:
                    continue
                self._done[j, i] = True
                tile = (i * ts, j * ts, (i + 1) * ts, (j + 1) * ts)
                _zero_outside(canvas, tile, rect if written else (0, 0, 0, 0))


def _zero_outside(a: np.ndarray, outer: tuple[int, int, int, int],
                  inner: tuple[int, int, int, int]) -> None:
    """Zero the pixels of ``a`` in the rectangle ``outer`` but not in ``inner`` (both
    ``(c0, r0, c1, r1)``; ``inner`` is clipped to ``outer``, and an empty one zeroes all of
    it): bands above and below ``inner``, then left and right of it."""
    x0, y0, x1, y1 = outer
    xa, xb = max(x0, inner[0]), min(x1, inner[2])
    ya, yb = max(y0, inner[1]), min(y1, inner[3])
    if xa >= xb or ya >= yb:
        a[y0:y1, x0:x1] = 0
        return
    a[y0:ya, x0:x1] = 0
    a[yb:y1, x0:x1] = 0
    a[ya:yb, x0:xa] = 0
    a[ya:yb, xb:x1] = 0


def _pair_groups(box: tuple[int, int, int, int], n_x: int,
                 n_y: int) -> tuple[int, int, int, int]:
    """The tiles ``box`` grown to whole 2 x 2-tile groups (what :func:`_reduce_drawn` reads),
    clipped to ``n_x x n_y`` tiles."""
    tx0, ty0, tx1, ty1 = box
    return (tx0 // 2 * 2, ty0 // 2 * 2, min(n_x, -(-tx1 // 2) * 2), min(n_y, -(-ty1 // 2) * 2))


def _drawn_tiles(drawn: list[tuple[int, int, int, int]], ts: int,
                 n: int) -> tuple[int, int, int, int]:
    """``(tx0, ty0, tx1, ty1)``: the tiles ``[tx0, tx1) x [ty0, ty1)`` of an ``n x n``-tile
    canvas that cover every ``(c0, r0, c1, r1)`` pixel region of ``drawn``."""
    c0 = min(d[0] for d in drawn)
    r0 = min(d[1] for d in drawn)
    c1 = max(d[2] for d in drawn)
    r1 = max(d[3] for d in drawn)
    return (max(0, c0 // ts), max(0, r0 // ts), min(n, -(-c1 // ts)), min(n, -(-r1 // ts)))


def _reduce_drawn(level: np.ndarray, box: tuple[int, int, int, int], ts: int,
                  last: bool = False) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`downsample2` of a level that is empty outside the tiles ``box`` (see
    :func:`_drawn_tiles`), reducing only the 2 x 2-tile groups that meet ``box``; the next
    level and its own box. Identical to reducing the whole level (zeros reduce to zeros) where
    the result is defined: in the 2 x 2-tile groups that meet the new box (what the next
    reduction reads), or everywhere when ``last`` (the block's top level); the rest of the
    next level stays uninitialised (see _CanvasTiles)."""
    tx0, ty0, tx1, ty1 = box
    h, w, c = level.shape
    nx0, ny0, nx1, ny1 = tx0 // 2, ty0 // 2, -(-tx1 // 2), -(-ty1 // 2)
    if (nx0, ny0) == (0, 0) and (2 * nx1 * ts, 2 * ny1 * ts) == (w, h):
        return downsample2(level), (nx0, ny0, nx1, ny1)
    part = level[2 * ny0 * ts:2 * ny1 * ts, 2 * nx0 * ts:2 * nx1 * ts]
    if c != 4:
        part = np.ascontiguousarray(part)  # Pillow's reduce wants contiguous rows
    out = np.empty((h // 2, w // 2, c), np.uint8)
    out[ny0 * ts:ny1 * ts, nx0 * ts:nx1 * ts] = downsample2(part)
    nbox = (nx0, ny0, nx1, ny1)
    n_x, n_y = w // 2 // ts, h // 2 // ts
    groups = (0, 0, n_x, n_y) if last else _pair_groups(nbox, n_x, n_y)
    _zero_outside(out, tuple(v * ts for v in groups),  # type: ignore[arg-type]
                  tuple(v * ts for v in nbox))  # type: ignore[arg-type]
    return out, nbox


def render_block(job: BlockJob) -> BlockResult:
    """Render (or resume) one block; write its tiles; return what was written."""
    work = BlockWork(job)
    for task in work.tasks:
        work.write_tile(task)
    return work.finish()


class BlockWork:
    """One block in three steps, so that several threads can share its tiles:

    1. ``BlockWork(job, plans)``: resume from the block's record, or warp the canvas (with
       the block's :func:`plan_block`, made here when not given), reduce the pyramid levels
       inside the block and list the tiles to encode (:attr:`tasks`);
    2. :meth:`write_tile` for each task, in any order and from any thread (each encodes and
       writes one tile; Pillow's encoders, cv2 and file I/O release the GIL);
    3. :meth:`finish` once every task is done: the block record, then the result.

    :func:`render_block` runs the three steps in a row.
    """

    def __init__(self, job: BlockJob,
                 plans: tuple[SourcePlan | None, ...] | None = None) -> None:
        spec = self.spec = job.layer
        ts, B, z = spec.tile_size, job.size, spec.task_zoom
        x0, y0 = job.bx * B, job.by * B
        self.tasks: list[tuple[np.ndarray, int, int, int, int, int, bool]] = []
        self.done = False  # resumed from the record: nothing to encode, no record to write
        res = self.res = BlockResult(layer=spec.name, bx=job.bx, by=job.by)
        res.candidates = sum(1 for j in range(B) for i in range(B)
                             if job.allowed is None or (x0 + i, y0 + j) in job.allowed)
        levels = block_levels(job)
        res.top_zoom = z - levels
        store = TileStore(spec.store_root)
        self.record = record_path(job)
        if job.skip_existing and self.record.is_file():
            loaded = _load_record(self.record, store, spec)
            if loaded is not None:
                res.tiles, res.top, res.coverage = loaded
                res.skipped = sum(len(v) for v in res.tiles.values())
                res.resumed = self.done = True
                return

        drawn: list[tuple[int, int, int, int]] = []
        canvas = _render_canvas(job, B * ts, drawn, plans)
        if canvas is not None and job.allowed is not None:
            for j in range(B):
                for i in range(B):
                    # only tiles a source drew into (writing zeros into the rest would
                    # only make the memory of a still untouched zero block resident)
                    if (x0 + i, y0 + j) not in job.allowed and any(
                            c0 < (i + 1) * ts and i * ts < c1 and r0 < (j + 1) * ts
                            and j * ts < r1 for c0, r0, c1, r1 in drawn):
                        canvas[j * ts:(j + 1) * ts, i * ts:(i + 1) * ts] = 0
        level = canvas
        # the tiles a source drew into: everything else is empty (zero where it is defined) at
        # every level, so the tile statistics and the 2x2 reductions skip it (Joplin: ~40 %
        # of each block is drawn)
        box = _drawn_tiles(drawn, ts, B) if canvas is not None else (0, 0, 0, 0)
        self.out = store.layer_writer(spec.project, spec.name, spec.ext)
        opaque_sum = 255 * ts * ts
        with store_writes():
            for lv in range(levels + 1):
                zz = z - lv
                if level is None:
                    break
                if lv:
                    level, box = _reduce_drawn(level, box, ts, last=lv == levels)
                tx0, ty0, tx1, ty1 = box
                sums = tile_alpha_sums(level[ty0 * ts:ty1 * ts, tx0 * ts:tx1 * ts], ts)
                for j in range(ty1 - ty0):
                    for i in range(tx1 - tx0):
                        if not sums[j][i]:
                            continue
                        x, y = (x0 >> lv) + tx0 + i, (y0 >> lv) + ty0 + j
                        res.tiles.setdefault(zz, []).append((x, y))
                        if not lv:
                            res.coverage[(x, y)] = coverage_from_sum(sums[j][i], ts * ts)
                        if job.skip_existing and self.out.exists(zz, x, y):
                            res.skipped += 1
                            continue
                        self.tasks.append((level, tx0 + i, ty0 + j, zz, x, y,
                                           sums[j][i] == opaque_sum))
        if level is not None and res.top_zoom > spec.min_zoom:
            res.top = level

    def write_tile(self, task: tuple[np.ndarray, int, int, int, int, int, bool]) -> None:
        """Encode and write one tile of :attr:`tasks`."""
        level, i, j, zz, x, y, opaque = task
        data = encode_tile(tile_array(level, i, j, self.spec.tile_size), self.spec,
                           opaque=opaque)
        with store_writes():
            self.out.write(zz, x, y, data)

    def finish(self) -> BlockResult:
        """After every :meth:`write_tile`: record the block as finished; its result."""
        if not self.done:
            self.res.written = len(self.tasks)
            self.tasks = []  # the levels are no longer needed (the top stays in the result)
            with store_writes():
                _save_record(self.record, self.res)
        return self.res


def render_block_in_worker(job: BlockJob) -> BlockResult:
    """:func:`render_block` for a pool or dask worker: an :class:`IngestError` leaves it
    without its chained exceptions (``__cause__``/``__context__``).

    Once ``distributed`` is imported (``--scheduler``, or any earlier dask use in the process)
    tblib's pickling support is installed for every exception class, so an error pickled in a
    worker carries its cause, e.g. rasterio's ``CPLE_AppDefinedError``, which tblib cannot
    unpickle (``property 'args' ... has no setter``). In a multiprocessing pool that kills the
    parent's result-handler thread and the ingest waits forever (seen under ``pytest -n 2``:
    test_dask then a truncated file with ``jobs=2``). The message already names the file and
    the problem.
    """
    try:
        return render_block(job)
    except IngestError as exc:
        error = exc
    error.__cause__ = None
    error.__context__ = None
    raise error


def _save_record(record: Path, res: BlockResult) -> None:
    """Mark the block finished: tile list + lossless top tile (raw ``.npy``: no encoding),
    written last and atomically."""
    record.parent.mkdir(parents=True, exist_ok=True)
    top_name = None
    if res.top is not None:
        top_name = record.with_suffix(".npy").name
        buf = io.BytesIO()
        np.save(buf, res.top, allow_pickle=False)
        atomic_write(record.with_suffix(".npy"), buf.getvalue())
    body = {"tiles": {str(z): [list(t) for t in v] for z, v in res.tiles.items()},
            "top": top_name, "top_zoom": res.top_zoom,
            "coverage": [[x, y, c] for (x, y), c in res.coverage.items()]}
    atomic_write(record, json.dumps(body).encode())


def _load_record(record: Path, store: TileStore, spec: LayerSpec):
    """The finished block's (tiles, top, coverage) if every listed tile is still on disk, else
    None (also for records written before coverage existed: the block is then re-rendered,
    existing tiles are kept). Tops written as PNG by older versions are read too."""
    try:
        body = json.loads(record.read_text())
        tiles = {int(z): [tuple(t) for t in v] for z, v in body["tiles"].items()}
        coverage = {(int(x), int(y)): float(c) for x, y, c in body["coverage"]}
        top = None
        if body.get("top"):
            top_path = record.with_name(body["top"])
            if top_path.suffix == ".npy":
                top = np.load(top_path, allow_pickle=False)
                if top.dtype != np.uint8 or top.ndim != 3:
                    return None
            else:
                from PIL import Image

                with Image.open(top_path) as im:
                    top = np.asarray(im).copy()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    layer = store.layer_writer(spec.project, spec.name, spec.ext)
    for z, xy in tiles.items():
        for x, y in xy:
            if not layer.exists(z, x, y):
                return None
    return tiles, top, coverage
