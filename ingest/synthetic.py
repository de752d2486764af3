"""A synthetic, georeferenced before/after scene for demos and tests (offline, deterministic).

The scene imitates Darfur-style village imagery at ~0.5 m: sandy terrain with soil noise,
a few tracks and a wadi, and several villages of round thatched huts (*tukuls*) inside
fenced compounds. The "after" image shows a known subset of the huts burned (dark scorched
circles with ash) and a few damaged (partly scorched roofs); the ground truth lists every
hut as a GeoJSON Point with its state.

To exercise layer alignment, the "before" image is written on a UTM grid (EPSG:32635,
0.5 m) and the "after" image on a different grid in a different CRS (EPSG:4326, ~0.5 m,
slightly shifted, so a thin strip along its eastern edge is nodata).

Everything is drawn with numpy + Pillow; a 2048 x 2048 pair takes a few seconds.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ProgressFn = Callable[[int, int, str], None]

#: Default scene centre: near 13.4 N, 24.3 E (West Darfur), UTM zone 35N.
CENTER_LONLAT = (24.3, 13.4)
CRS_BEFORE = "EPSG:32635"
CRS_AFTER = "EPSG:4326"
RESOLUTION_M = 0.5

STATES = ("intact", "damaged", "destroyed")


@dataclass(frozen=True)
class Scene:
    """Paths and georeferencing of a generated scene."""

    before: Path
    after: Path
    truth: Path
    crs: str
    bounds_lonlat: tuple[float, float, float, float]
    after_crs: str = CRS_AFTER
    resolution: float = RESOLUTION_M
    size: int = 0
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Hut:
    id: str
    village: str
    x: float  # pixel column (centre) in the before grid
    y: float  # pixel row
    r: float  # roof radius in pixels
    state: str = "intact"


def _noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth value noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    n = max(2, size // cell + 2)
    coarse = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
    img = Image.fromarray(coarse).resize((n * cell, n * cell), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)[:size, :size]


def _terrain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand and soil: RGB float32 array (size, size, 3)."""
    field_ = (
        0.55 * _noise(rng, size, 256)
        + 0.30 * _noise(rng, size, 64)
        + 0.15 * _noise(rng, size, 16)
    )
    sand = np.array([196, 168, 122], np.float32)
    soil = np.array([150, 112, 78], np.float32)
    t = np.clip(0.5 + 0.6 * field_, 0.0, 1.0)[..., None]
    rgb = sand * (1 - t) + soil * t
    grain = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)
    return rgb + grain


def _polyline(rng: np.random.Generator, size: int, steps: int = 12) -> list[tuple[float, float]]:
    """A wandering line crossing the scene from one edge to the opposite one."""
    if rng.random() < 0.5:
        xs = np.linspace(-0.05 * size, 1.05 * size, steps)
        ys = rng.uniform(0.1, 0.9) * size + np.cumsum(rng.normal(0, size * 0.04, steps))
    else:
        ys = np.linspace(-0.05 * size, 1.05 * size, steps)
        xs = rng.uniform(0.1, 0.9) * size + np.cumsum(rng.normal(0, size * 0.04, steps))
    return list(zip(xs.tolist(), ys.tolist()))


def _layout(rng: np.random.Generator, size: int) -> tuple[list[_Hut], list[tuple], list[str]]:
    """Villages -> compounds -> huts, in before-grid pixel coordinates."""
    res = RESOLUTION_M
    n_villages = max(1, round((size / 900.0) ** 2 * 1.2))
    radius_px = min(90.0 / res, size * 0.35)
    margin = min(radius_px * 0.8, size * 0.2)
    huts: list[_Hut] = []
    compounds: list[tuple] = []  # (cx, cy, half_w, half_h, angle)
    villages: list[str] = []
    centres: list[tuple[float, float]] = []
    for v in range(n_villages):
        for _ in range(50):
            cx, cy = rng.uniform(margin, size - margin, 2)
            if all(math.hypot(cx - a, cy - b) > 300 for a, b in centres) or size < 700:
                break
        centres.append((cx, cy))
        vid = f"v{v + 1}"
        villages.append(vid)
        n_comp = int(rng.integers(4, 10)) if size >= 700 else int(rng.integers(2, 4))
        placed: list[tuple[float, float, float]] = []
        for _ in range(n_comp * 6):
            if len(placed) >= n_comp:
                break
            ang = rng.uniform(0, 2 * math.pi)
            dist = radius_px * math.sqrt(rng.uniform(0.0, 1.0))
            px, py = cx + dist * math.cos(ang), cy + dist * math.sin(ang)
            half = rng.uniform(9.0, 14.0) / res  # compounds 18-28 m across
            if not (half + 4 < px < size - half - 4 and half + 4 < py < size - half - 4):
                continue
            if any(math.hypot(px - a, py - b) < half + h + 4 for a, b, h in placed):
                continue
            placed.append((px, py, half))
            compounds.append((px, py, half, half * rng.uniform(0.8, 1.0), rng.uniform(0, 90)))
            n_huts = int(rng.integers(1, 5))
            spots: list[tuple[float, float, float]] = []
            for _ in range(n_huts * 8):
                if len(spots) >= n_huts:
                    break
                r = rng.uniform(2.0, 3.0) / res  # roof diameter 4-6 m
                hx = px + rng.uniform(-half + r + 3, half - r - 3)
                hy = py + rng.uniform(-half + r + 3, half - r - 3)
                if any(math.hypot(hx - a, hy - b) < r + rr + 2 for a, b, rr in spots):
                    continue
                spots.append((hx, hy, r))
                huts.append(_Hut(f"s{len(huts) + 1}", vid, hx, hy, r))
    return huts, compounds, villages


def _assign_states(rng: np.random.Generator, huts: list[_Hut], villages: list[str]) -> None:
    """Villages are attacked as a whole: some burned heavily, some partly, some untouched."""
    for i, vid in enumerate(villages):
        mine = [h for h in huts if h.village == vid]
        # first village always hit, so even the tiny scene has destroyed structures
        p_destroyed = [0.7, 0.35, 0.0][(i + int(rng.integers(0, 3))) % 3] if i else 0.6
        for h in mine:
            u = rng.random()
            if u < p_destroyed:
                h.state = "destroyed"
            elif u < p_destroyed + 0.12:
                h.state = "damaged"


def _draw_ground(img: Image.Image, rng: np.random.Generator, size: int) -> None:
    d = ImageDraw.Draw(img)
    res = RESOLUTION_M
    wadi = _polyline(rng, size)
    d.line(wadi, fill=(170, 140, 100), width=max(3, int(14 / res)))
    d.line(wadi, fill=(182, 156, 116), width=max(2, int(6 / res)))
    for _ in range(int(rng.integers(1, 4))):
        d.line(_polyline(rng, size), fill=(214, 192, 150), width=max(2, int(3 / res)))
    # shrubs and trees, clustered along the wadi
    pts = np.array(wadi)
    n_trees = int(size * size / 20000)
    for _ in range(n_trees):
        if rng.random() < 0.6:
            i = int(rng.integers(0, len(pts) - 1))
            a, b = pts[i], pts[i + 1]
            t = rng.random()
            x, y = a + t * (b - a) + rng.normal(0, 10 / res, 2)
        else:
            x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.8, 3.0) / res
        d.ellipse((x + r * 0.4, y + r * 0.4, x + r * 1.4, y + r * 1.4), fill=(110, 88, 64))
        d.ellipse((x - r, y - r, x + r, y + r), fill=(78, 92, 48))


def _draw_village(img: Image.Image, huts: list[_Hut], compounds: list[tuple], after: bool,
                  rng: np.random.Generator) -> None:
    d = ImageDraw.Draw(img)
    for cx, cy, hw, hh, ang in compounds:
        # compound floor (swept earth) and fence (millet-stalk, a thin dark outline)
        c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
        corners = [(cx + dx * c - dy * s, cy + dx * s + dy * c)
                   for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]
        d.polygon(corners, fill=(206, 182, 140))
        d.line(corners + [corners[0]], fill=(120, 96, 64), width=2)
    for h in huts:
        x, y, r = h.x, h.y, h.r
        # shadow to the north-west (sun from the south-east, mid-morning)
        d.ellipse((x - r - 0.35 * r, y - r - 0.35 * r, x + r - 0.35 * r, y + r - 0.35 * r),
                  fill=(92, 76, 58))
        if not after or h.state == "intact":
            d.ellipse((x - r, y - r, x + r, y + r), fill=(188, 150, 84))
            d.ellipse((x - 0.6 * r, y - 0.6 * r, x + 0.6 * r, y + 0.6 * r), fill=(172, 134, 72))
            d.ellipse((x - 0.15 * r, y - 0.15 * r, x + 0.15 * r, y + 0.15 * r), fill=(120, 92, 52))
        elif h.state == "damaged":
            d.ellipse((x - r, y - r, x + r, y + r), fill=(188, 150, 84))
            start = float(rng.uniform(0, 360))
            d.pieslice((x - r, y - r, x + r, y + r), start, start + 150, fill=(48, 40, 34))
        else:  # destroyed: roof gone, scorched ring of mud wall, ash around
            ash = 1.8 * r
            d.ellipse((x - ash, y - ash, x + ash, y + ash), fill=(74, 66, 58))
            d.ellipse((x - r, y - r, x + r, y + r), fill=(26, 22, 20))
            d.ellipse((x - r, y - r, x + r, y + r), outline=(96, 70, 52), width=2)


def _to_lonlat(xs: np.ndarray, ys: np.ndarray, crs: str) -> tuple[list[float], list[float]]:
    from rasterio.warp import transform

    return transform(crs, "EPSG:4326", xs.tolist(), ys.tolist())


def _write_geotiff(path: Path, rgb: np.ndarray, crs: str, transform, nodata: int | None) -> None:
    import rasterio

    tmp = path.with_name(path.name + ".tmp")
    profile = dict(driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3,
                   dtype="uint8", crs=crs, transform=transform, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", predictor=2, interleave="pixel",
                   photometric="rgb")
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    os.replace(tmp, path)


def generate_scene(out_dir: Path, *, size: int = 2048, seed: int = 0,
                   progress: ProgressFn | None = None) -> Scene:
    """Draw a before/after pair plus ground truth into ``out_dir``; return the :class:`Scene`.

    ``size`` is the edge of the square "before" image in pixels (0.5 m each, so 2048 px is
    ~1 km); ``size=256`` gives a tiny scene (one village) cheap enough for unit tests.
    Deterministic for a given ``(size, seed)``. ``progress(done, total, stage)`` is called
    after each stage.
    """
    import rasterio.warp
    from rasterio.enums import Resampling
    from affine import Affine

    if size < 64:
        raise ValueError(f"size={size}: a scene needs at least 64 pixels per side")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 5
    report = progress or (lambda done, total, stage: None)
    rng = np.random.default_rng(seed)

    # Grid of the "before" image: UTM 35N, north-up, centred near CENTER_LONLAT.
    (ex,), (ny,) = rasterio.warp.transform("EPSG:4326", CRS_BEFORE, [CENTER_LONLAT[0]],
                                           [CENTER_LONLAT[1]])
    shift = rng.uniform(-2000, 2000, 2)  # seeds land in slightly different places
    half = size * RESOLUTION_M / 2
    west = math.floor(ex + shift[0] - half)
    north = math.floor(ny + shift[1] + half)
    before_tf = Affine(RESOLUTION_M, 0.0, west, 0.0, -RESOLUTION_M, north)

    huts, compounds, villages = _layout(rng, size)
    _assign_states(rng, huts, villages)
    report(1, total, "layout")

    ground = np.clip(_terrain(rng, size), 0, 255).astype(np.uint8)
    base = Image.fromarray(ground)
    _draw_ground(base, rng, size)
    report(2, total, "terrain")

    before_img = base.copy()
    _draw_village(before_img, huts, compounds, after=False, rng=rng)
    before_img = before_img.filter(ImageFilter.GaussianBlur(0.6))
    before = np.asarray(before_img)

    # "after": another date -> slightly different illumination and sensor noise
    after_img = base.copy()
    _draw_village(after_img, huts, compounds, after=True, rng=rng)
    after_img = after_img.filter(ImageFilter.GaussianBlur(0.7))
    after = np.asarray(after_img).astype(np.float32) * np.float32(0.93) + np.float32(8)
    after += rng.normal(0.0, 3.0, after.shape).astype(np.float32)
    after = np.clip(after, 1, 255).astype(np.uint8)  # 0 is reserved for nodata
    report(3, total, "draw")

    before_path = out_dir / "before.tif"
    after_path = out_dir / "after.tif"
    _write_geotiff(before_path, before, CRS_BEFORE, before_tf, nodata=None)

    # Reproject "after" onto a geographic grid, shifted east by ~3% of the width.
    east = west + size * RESOLUTION_M
    south = north - size * RESOLUTION_M
    bw, bs, be, bn = rasterio.warp.transform_bounds(CRS_BEFORE, "EPSG:4326", west, south,
                                                    east, north)
    dlon = (be - bw) * 0.03
    lat_res = RESOLUTION_M / 111_320.0
    lon_res = lat_res / math.cos(math.radians((bs + bn) / 2))
    a_w, a_n = bw + dlon, bn
    a_width = int(round((be - bw) / lon_res))
    a_height = int(round((bn - bs) / lat_res))
    after_tf = Affine(lon_res, 0.0, a_w, 0.0, -lat_res, a_n)
    dst = np.zeros((3, a_height, a_width), np.uint8)
    rasterio.warp.reproject(np.moveaxis(after, -1, 0), dst, src_transform=before_tf,
                            src_crs=CRS_BEFORE, dst_transform=after_tf, dst_crs=CRS_AFTER,
                            src_nodata=0, dst_nodata=0, resampling=Resampling.bilinear)
    _write_geotiff(after_path, np.moveaxis(dst, 0, -1), CRS_AFTER, after_tf, nodata=0)
    report(4, total, "write")

    xs = np.array([before_tf.c + (h.x) * RESOLUTION_M for h in huts])
    ys = np.array([before_tf.f - (h.y) * RESOLUTION_M for h in huts])
    lons, lats = _to_lonlat(xs, ys, CRS_BEFORE) if huts else ([], [])
    features = [
        {"type": "Feature", "id": h.id,
         "geometry": {"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]},
         "properties": {"id": h.id, "state": h.state, "village": h.village, "kind": "tukul",
                        "diameter_m": round(2 * h.r * RESOLUTION_M, 2)}}
        for h, lon, lat in zip(huts, lons, lats)
    ]
    truth_path = out_dir / "truth.geojson"
    tmp = truth_path.with_name(truth_path.name + ".tmp")
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    os.replace(tmp, truth_path)
    report(5, total, "truth")

    counts = {s: sum(1 for h in huts if h.state == s) for s in STATES}
    return Scene(before=before_path, after=after_path, truth=truth_path, crs=CRS_BEFORE,
                 bounds_lonlat=(round(bw, 7), round(bs, 7), round(be, 7), round(bn, 7)),
                 after_crs=CRS_AFTER, resolution=RESOLUTION_M, size=size, seed=seed,
                 counts=counts)
