"""Render one block of task-zoom tiles (and the pyramid levels inside it).

A *block* is ``B x B`` task-zoom tiles aligned on multiples of ``B`` (8 x 256 px = 2048 px by
default). For each source file of the layer that intersects the block, the matching source
window is read once (decimated when the source is much finer than the block), converted to
8-bit (percentile stretch for 16-bit/float data), stacked with the source's validity mask
(nodata, alpha band or internal mask: GDAL's ``dataset_mask``) and warped into the block's
Web-Mercator grid with the mask as alpha. Tiles are sliced from the block, empty ones skipped,
and the block is reduced 2x2 -> 1 (alpha-weighted) for the pyramid levels inside it. Memory is
bounded by the block size, never by the image size.

:func:`render_block` is a plain top-level function over picklable dataclasses, so the same
work runs in-process, in a multiprocessing pool or on a dask.distributed cluster.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ingest.errors import ReadError, StoreNotWritableError
from ingest.sources import SourceInfo, _short
from tiles.encode import ALPHA_FORMATS, encode, load_plugin
from tiles.errors import StoreError
from tiles.grid import tile_xy_bounds
from tiles.store import TileStore, atomic_write

WORK_DIR = ".crowdsight"  # {store}/{project}/.crowdsight/{layer}: fingerprint, finished blocks
GDAL_ENV = {"GDAL_CACHEMAX": 32, "GDAL_NUM_THREADS": 1,
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


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
    """Import what :func:`render_block` needs and load the tile encoder, e.g. once in the
    parent before forking workers (they then start working at once instead of each paying
    for the same imports)."""
    import rasterio.warp  # noqa: F401
    from PIL import PngImagePlugin  # noqa: F401  (block tops are stored as PNG)

    load_plugin(ext)


def block_dir(store_root: str | Path, project: str, layer: str) -> Path:
    return work_dir(store_root, project, layer) / "blocks"


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


def unpremultiply(a: np.ndarray) -> np.ndarray:
    """A copy with colour / (alpha / 255) for partly transparent pixels (for PNG/WebP)."""
    a = a.copy()
    alpha = a[..., -1]
    partial = (alpha > 0) & (alpha < 255)
    if partial.any():
        col = a[partial]
        al = col[:, -1:].astype(np.uint32)
        col[:, :-1] = np.minimum(255, (col[:, :-1].astype(np.uint32) * 255 + al // 2) // al)
        a[partial] = col
    return a


#: Pillow modes whose pixels are already premultiplied, by channel count (alpha last)
_PREMULTIPLIED_MODES = {2: "La", 4: "RGBa"}


def downsample2(a: np.ndarray, rows: int = 128) -> np.ndarray:
    """Halve a premultiplied ``(H, W, C+1)`` uint8 array with a 2x2 box filter.

    Each output value is ``(sum of the 4 inputs + 2) >> 2``. Even-sized C-contiguous 2- and
    4-channel arrays go through Pillow's ``reduce(2)`` in the premultiplied modes ``La`` /
    ``RGBa`` (its 2x2 box computes exactly that rounded mean and, in those modes, converts
    nothing; ~2x faster than numpy); anything else through :func:`_downsample2_numpy`.
    """
    h, w = a.shape[:2]
    mode = _PREMULTIPLIED_MODES.get(a.shape[2]) if a.ndim == 3 else None
    if mode and h % 2 == 0 and w % 2 == 0 and h and w and a.dtype == np.uint8 \
            and a.flags.c_contiguous:
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
    return encode(unpremultiply(arr), spec.ext, spec.quality)


def tile_stats(alpha: np.ndarray, ts: int, with_sum: bool) -> tuple[np.ndarray, ...]:
    """Per-tile (max, min[, sum]) of an ``(n*ts, n*ts)`` alpha plane, each ``(n, n)`` [row, col].

    One vectorised pass per statistic instead of several small reductions per tile.
    """
    n_r, n_c = alpha.shape[0] // ts, alpha.shape[1] // ts
    a4 = alpha.reshape(n_r, ts, n_c, ts)
    out = (a4.max(axis=(1, 3)), a4.min(axis=(1, 3)))
    if with_sum:
        out += (a4.sum(axis=(1, 3), dtype=np.uint64),)
    return out


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


def _read_source(ds, src: SourceInfo, spec: LayerSpec, dst_bounds: tuple[float, ...],
                 dst_w: int, dst_h: int):
    """Read the part of ``src`` under the block; return (stack uint8 (C+1,h,w), Affine) or None."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import transform as warp_transform
    from rasterio.windows import Window

    left, bottom, right, top = dst_bounds
    n = 21
    xs = np.concatenate([np.linspace(left, right, n), np.full(n, right),
                         np.linspace(right, left, n), np.full(n, left)])
    ys = np.concatenate([np.full(n, top), np.linspace(top, bottom, n),
                         np.full(n, bottom), np.linspace(bottom, top, n)])
    sx, sy = warp_transform("EPSG:3857", ds.crs, xs, ys)
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
    k = max(1, int(ratio)) if ratio >= 2 else 1
    out_h, out_w = max(1, math.ceil(h / k)), max(1, math.ceil(w / k))
    window = Window(col0, row0, w, h)
    nb = spec.channels
    stack = np.empty((nb + 1, out_h, out_w), np.uint8)
    try:
        if k == 1:
            data = ds.read(list(spec.bands), window=window)
            mask = ds.dataset_mask(window=window)
        else:
            data = ds.read(list(spec.bands), window=window, out_shape=(nb, out_h, out_w),
                           resampling=Resampling.average)
            mask = ds.dataset_mask(window=window, out_shape=(out_h, out_w))
    except Exception as exc:  # rasterio/GDAL raise several types for I/O failures
        raise ReadError(f"{src.path}: read failed (truncated or corrupt file?): {_short(exc)}",
                        src.path) from exc
    if spec.stretch_low is not None:
        valid = mask > 0
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
            mask = np.where(valid, mask, 0).astype(np.uint8)
        for b in range(nb):
            lo, hi = spec.stretch_low[b], spec.stretch_high[b]  # type: ignore[index]
            v = data[b].astype(np.float32)
            v -= np.float32(lo)
            v *= np.float32(255.0 / (hi - lo))
            np.clip(v, 0, 255, out=v)
            np.nan_to_num(v, copy=False)
            stack[b] = (v + 0.5).astype(np.uint8)
    else:
        stack[:nb] = data
    if int(mask.max()) == 0:
        return None
    if int(mask.min()) == 255:
        stack = stack[:nb]  # all valid: GDAL's faster warp kernels (destination alpha only)
    else:
        stack[nb] = mask
    a, b, c, d, e, f = src.transform
    sa, se = w / out_w, h / out_h
    win_tf = Affine(a * sa, b * se, a * col0 + b * row0 + c,
                    d * sa, e * se, d * col0 + e * row0 + f)
    # where the window lands in the block: warp only that part of the destination grid
    uc = np.concatenate([np.linspace(col0, col1, n), np.full(n, col1),
                         np.linspace(col1, col0, n), np.full(n, col0)])
    ur = np.concatenate([np.full(n, row0), np.linspace(row0, row1, n),
                         np.full(n, row1), np.linspace(row1, row0, n)])
    mx, my = warp_transform(ds.crs, "EPSG:3857", a * uc + b * ur + c, d * uc + e * ur + f)
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
    return stack, win_tf, (dc0, dr0, dc1, dr1)


def _render_canvas(job: BlockJob, size_px: int) -> np.ndarray | None:
    """Warp every intersecting source into the block; (H, W, C+1) uint8 or None if empty.

    The colour is *not* premultiplied yet: :func:`render_block` does that per tile, only
    where the alpha is partial."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.warp import reproject

    from tiles.grid import tile_bounds

    spec = job.layer
    z, B = spec.task_zoom, job.size
    x0, y0 = job.bx * B, job.by * B
    left, _, _, top = tile_xy_bounds(z, x0, y0)
    _, bottom, right, _ = tile_xy_bounds(z, x0 + B - 1, y0 + B - 1)
    bw, _, _, bn = tile_bounds(z, x0, y0)
    _, bs, be, _ = tile_bounds(z, x0 + B - 1, y0 + B - 1)
    px, py = (right - left) / size_px, (top - bottom) / size_px
    nb = spec.channels
    resampling = Resampling[spec.resampling]
    canvas: np.ndarray | None = None
    have_data = False  # some source put alpha > 0 into the canvas
    with rasterio.Env(**GDAL_ENV):
        for src in spec.sources:
            sw, ss, se_, sn = src.bounds_lonlat  # cheap reject on lon/lat footprints
            if sw > be or se_ < bw or ss > bn or sn < bs:
                continue
            try:
                ds = rasterio.open(src.path, driver="GTiff")
            except RasterioError as exc:
                raise ReadError(f"{src.path}: cannot open ({_short(exc)})", src.path) from exc
            with ds:
                got = _read_source(ds, src, spec, (left, bottom, right, top), size_px, size_px)
            if got is None:
                continue
            stack, src_tf, (c0, r0, c1, r1) = got
            if canvas is None:
                canvas = np.zeros((size_px, size_px, nb + 1), np.uint8)
            region = canvas[r0:r1, c0:c1]
            # the first source with data is warped straight into the (zeroed) pixel-interleaved
            # canvas through a band-first view (GDAL writes it with strides: no temporary, no
            # transposing copy); later ones into a temporary, then mosaicked
            out = (region.transpose(2, 0, 1) if not have_data
                   else np.zeros((nb + 1, r1 - r0, c1 - c0), np.uint8))
            sub_tf = Affine(px, 0.0, left + c0 * px, 0.0, -py, top - r0 * py)
            try:
                # rasterio may warn NotGeoreferencedWarning while wrapping the arrays in MEM
                # datasets (seen in dask worker threads) although both transforms are given
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    reproject(stack, out, src_transform=src_tf, src_crs=src.crs_wkt,
                              dst_transform=sub_tf, dst_crs="EPSG:3857", resampling=resampling,
                              src_alpha=nb + 1 if len(stack) > nb else 0, dst_alpha=nb + 1,
                              num_threads=1, init_dest_nodata=False)
            except RasterioError as exc:
                raise ReadError(f"{src.path}: cannot warp to Web Mercator ({_short(exc)})",
                                src.path) from exc
            if int(out[nb].max()) == 0:
                if not have_data:
                    region[...] = 0  # nothing from this source: leave the canvas all zero
                continue
            if not have_data:
                have_data = True
                continue
            # mosaic: take the new source where it is more opaque than what is there
            new = out.transpose(1, 2, 0)
            np.copyto(region, new, where=(new[..., nb] > region[..., nb])[..., None])
    return canvas if have_data else None


def render_block(job: BlockJob) -> BlockResult:
    """Render (or resume) one block; write its tiles; return what was written."""
    spec = job.layer
    ts, B, z = spec.tile_size, job.size, spec.task_zoom
    x0, y0 = job.bx * B, job.by * B
    res = BlockResult(layer=spec.name, bx=job.bx, by=job.by)
    cand = [(x0 + i, y0 + j) for j in range(B) for i in range(B)
            if job.allowed is None or (x0 + i, y0 + j) in job.allowed]
    res.candidates = len(cand)
    levels = block_levels(job)
    res.top_zoom = z - levels
    store = TileStore(spec.store_root)
    bdir = block_dir(spec.store_root, spec.project, spec.name)
    record = bdir / f"{job.bx}-{job.by}.json"

    if job.skip_existing and record.is_file():
        done = _load_record(record, store, spec)
        if done is not None:
            res.tiles, res.top, res.coverage = done
            res.skipped = sum(len(v) for v in res.tiles.values())
            res.resumed = True
            return res

    canvas = _render_canvas(job, B * ts)
    if canvas is not None and job.allowed is not None:
        for j in range(B):
            for i in range(B):
                if (x0 + i, y0 + j) not in job.allowed:
                    canvas[j * ts:(j + 1) * ts, i * ts:(i + 1) * ts] = 0
    level = canvas
    try:
        for lv in range(levels + 1):
            zz, n = z - lv, B >> lv
            if level is None:
                break
            if lv:
                level = downsample2(level)
            stats = tile_stats(level[..., -1], ts, with_sum=lv == 0)
            amax, amin = stats[0].tolist(), stats[1].tolist()
            asum = stats[2].tolist() if lv == 0 else None
            if lv == 0:
                # premultiply (see premultiply()) only the tiles that can hold partly
                # transparent pixels: not the opaque ones, not the empty ones
                for j in range(n):
                    for i in range(n):
                        if amax[j][i] > 0 and amin[j][i] < 255:
                            premultiply(tile_array(level, i, j, ts))
            for j in range(n):
                for i in range(n):
                    if amax[j][i] == 0:
                        continue
                    x, y = (x0 >> lv) + i, (y0 >> lv) + j
                    res.tiles.setdefault(zz, []).append((x, y))
                    if asum is not None:
                        res.coverage[(x, y)] = coverage_from_sum(asum[j][i], ts * ts)
                    if job.skip_existing and store.exists(spec.project, spec.name, zz, x, y,
                                                          spec.ext):
                        res.skipped += 1
                        continue
                    data = encode_tile(tile_array(level, i, j, ts), spec,
                                       opaque=amin[j][i] == 255)
                    store.write(spec.project, spec.name, zz, x, y, spec.ext, data)
                    res.written += 1
        if level is not None and res.top_zoom > spec.min_zoom:
            res.top = level
        _save_record(record, res)
    except StoreError as exc:
        raise StoreNotWritableError(str(exc)) from exc
    return res


def _save_record(record: Path, res: BlockResult) -> None:
    """Mark the block finished: tile list + lossless top tile, written last and atomically."""
    from PIL import Image

    record.parent.mkdir(parents=True, exist_ok=True)
    top_name = None
    if res.top is not None:
        top_name = record.with_suffix(".png").name
        buf = io.BytesIO()
        Image.fromarray(res.top).save(buf, "PNG", compress_level=1)
        atomic_write(record.with_suffix(".png"), buf.getvalue())
    body = {"tiles": {str(z): [list(t) for t in v] for z, v in res.tiles.items()},
            "top": top_name, "top_zoom": res.top_zoom,
            "coverage": [[x, y, c] for (x, y), c in res.coverage.items()]}
    atomic_write(record, json.dumps(body).encode())


def _load_record(record: Path, store: TileStore, spec: LayerSpec):
    """The finished block's (tiles, top, coverage) if every listed tile is still on disk, else
    None (also for records written before coverage existed: the block is then re-rendered,
    existing tiles are kept)."""
    from PIL import Image

    try:
        body = json.loads(record.read_text())
        tiles = {int(z): [tuple(t) for t in v] for z, v in body["tiles"].items()}
        coverage = {(int(x), int(y)): float(c) for x, y, c in body["coverage"]}
        top = None
        if body.get("top"):
            with Image.open(record.with_name(body["top"])) as im:
                top = np.asarray(im).copy()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for z, xy in tiles.items():
        for x, y in xy:
            if not os.path.exists(store.path_for(spec.project, spec.name, z, x, y, spec.ext)):
                return None
    return tiles, top, coverage
