"""Integration tests on every folder of ../shared/data/imagery (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from scipy import ndimage

from ingest import ingest
from tiles.encode import decode

pytestmark = pytest.mark.shared


def _tile(store: Path, project: str, layer: str, z: int, x: int, y: int, ext: str):
    p = store / project / layer / str(z) / str(x) / f"{y}.{ext}"
    return decode(p.read_bytes()) if p.exists() else None


def _check_mask_honoured(src: Path, m: dict, store: Path, n: int = 400,
                         expect_masked: bool = True) -> None:
    """Source pixels that are valid (resp. masked) well inside their region come out opaque
    (resp. transparent or absent) in the task tiles."""
    z, project = m["task_zoom"], m["project"]
    rng = np.random.default_rng(0)
    with rasterio.open(src) as ds:
        valid = ds.dataset_mask() > 0
        t = ds.transform
        crs = ds.crs
    for want, region in ((255, ndimage.binary_erosion(valid, iterations=4)),
                         (0, ndimage.binary_erosion(~valid, iterations=4))):
        rows, cols = np.nonzero(region)
        if want == 0 and not expect_masked:
            assert rows.size == 0
            continue
        assert rows.size, "fixture should have both valid and masked pixels"
        pick = rng.choice(rows.size, size=min(n, rows.size), replace=False)
        r, c = rows[pick] + 0.5, cols[pick] + 0.5
        xs, ys = t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f
        lon, lat = warp_transform(crs, "EPSG:4326", xs, ys)
        tiles: dict = {}
        seen = []
        for lo, la in zip(lon, lat):
            tl = mercantile.tile(lo, la, z)
            key = (tl.x, tl.y)
            if key not in tiles:
                tiles[key] = _tile(store, project, "image", z, tl.x, tl.y, "png")
            arr = tiles[key]
            if arr is None:
                seen.append(0)
                continue
            mx, my = mercantile.xy(lo, la)
            b = mercantile.xy_bounds(tl)
            col = int((mx - b.left) / (b.right - b.left) * 256)
            row = int((b.top - my) / (b.top - b.bottom) * 256)
            seen.append(int(arr[min(row, 255), min(col, 255), 3]))
        seen_arr = np.array(seen)
        assert (seen_arr == want).mean() > 0.99, (want, np.unique(seen_arr, return_counts=True))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-store")


def test_landsat_collar_skipped_nodata_transparent(imagery_dir, store):
    src = imagery_dir / "landsat7_bahamas" / "RGB.byte.tif"
    m = ingest({"image": [src]}, store, "landsat", fmt="png", jobs=2)
    layer = m["layers"]["image"]
    assert m["task_zoom"] == 9  # 300 m pixels
    w, s, e, n = layer["bounds"]
    candidates = {(t.x, t.y) for t in mercantile.tiles(w, s, e, n, [9])}
    written = {(t["x"], t["y"]) for t in m["tasks"]}
    assert written < candidates, "tiles entirely in the black collar must be skipped"
    assert len(written) >= 10
    assert layer["bounds"] == pytest.approx([-78.96, 23.56, -76.57, 25.55], abs=0.02)
    for t in m["tasks"]:
        assert _tile(store, "landsat", "image", 9, t["x"], t["y"], "png")[..., 3].max() == 255
    _check_mask_honoured(src, m, store)


def test_spacenet_uint16_stretch_uses_the_range(imagery_dir, store):
    src = imagery_dir / "spacenet_atlanta" / "sample_geotiff.tif"
    m = ingest({"image": [src]}, store, "spacenet", fmt="png", jobs=1)
    layer = m["layers"]["image"]
    st = layer["stretch"]
    with rasterio.open(src) as ds:
        data = ds.read(1)
    valid = data[data > 0]
    assert st["method"] == "percentile" and len(st["low"]) == 1
    assert valid.min() <= st["low"][0] < st["high"][0] <= valid.max()
    assert st["low"][0] == pytest.approx(np.percentile(valid, 2), rel=0.1)
    assert st["high"][0] == pytest.approx(np.percentile(valid, 98), rel=0.1)
    px = np.concatenate([a[..., 0][a[..., 3] == 255] for a in
                         (_tile(store, "spacenet", "image", t["z"], t["x"], t["y"], "png")
                          for t in m["tasks"])])
    assert np.percentile(px, 1) < 25 and np.percentile(px, 99) > 230  # uses the range
    assert 40 < px.mean() < 200 and px.std() > 30                      # not all black/white
    _check_mask_honoured(src, m, store, expect_masked=False)


def test_colorado_internal_mask(imagery_dir, store):
    masked = imagery_dir / "usgs_hro_colorado" / "cog_rgb_mask.tif"
    plain = imagery_dir / "usgs_hro_colorado" / "201404_13SED190110_201404_0x1500m_CL_1.tif"
    mm = ingest({"image": [masked]}, store, "colorado-mask", fmt="png", jobs=1)
    mp = ingest({"image": [plain]}, store, "colorado-plain", fmt="png", jobs=1)
    assert mm["task_zoom"] == 20  # 0.15 m pixels

    def transparent(m):
        tiles = [_tile(store, m["project"], "image", t["z"], t["x"], t["y"], "png")
                 for t in m["tasks"]]
        return sum(int((a[..., 3] == 0).sum()) for a in tiles)

    # same footprint, but the internal mask (3 % of the image) adds transparent pixels
    assert [t["x"] for t in mm["tasks"]] == [t["x"] for t in mp["tasks"]]
    with rasterio.open(masked) as ds:
        masked_px = int((ds.dataset_mask() == 0).sum())
    # one 0.15 m source pixel covers ~1 z20 tile pixel (0.119 m) -> ~1.5 tile pixels
    assert transparent(mm) - transparent(mp) > 0.5 * masked_px
    _check_mask_honoured(masked, mm, store)


def test_bali_alpha_band_southern_hemisphere(imagery_dir, store):
    src = imagery_dir / "drone_bali" / "pix4d_alpha_nodata.tif"
    m = ingest({"image": [src]}, store, "bali", fmt="png", jobs=1)
    layer = m["layers"]["image"]
    assert layer["bands"] == [1, 2, 3]  # alpha is a mask, not a colour
    assert layer["bounds"][1] < 0 and layer["bounds"][3] < 0
    _check_mask_honoured(src, m, store)


def test_korea_cog_in_web_mercator_is_pixel_exact(imagery_dir, store):
    src = imagery_dir / "cog_korea" / "cogeo.tif"
    m = ingest({"image": [src]}, store, "korea", fmt="png", jobs=1, resampling="nearest")
    assert m["task_zoom"] == 18 and m["layers"]["image"]["sources"][0]["crs"] == "EPSG:3857"
    with rasterio.open(src) as ds:
        data = ds.read()
        inv = ~ds.transform
        for t in m["tasks"]:
            b = mercantile.xy_bounds(t["x"], t["y"], t["z"])
            c0, r0 = inv.a * b.left + inv.c, inv.e * b.top + inv.f
            tile = _tile(store, "korea", "image", t["z"], t["x"], t["y"], "png")
            ci, ri = int(round(c0)), int(round(r0))
            assert abs(c0 - ci) < 0.01 and abs(r0 - ri) < 0.01  # the COG sits on the tile grid
            win = data[:, max(ri, 0):ri + 256, max(ci, 0):ci + 256].transpose(1, 2, 0)
            sub = tile[max(-ri, 0):max(-ri, 0) + win.shape[0],
                       max(-ci, 0):max(-ci, 0) + win.shape[1]]
            assert np.array_equal(sub[..., :3], win)
    assert len(m["tasks"]) == 16


@pytest.fixture(scope="module")
def joplin(imagery_dir, store):
    jt = imagery_dir / "joplin_tornado"
    m = ingest({"before": sorted((jt / "pre").glob("*.tif")),
                "after": sorted((jt / "post").glob("*.tif"))}, store, "joplin", jobs=2)
    return m


def test_joplin_pair_manifest(joplin, store):
    m = joplin
    assert m["task_zoom"] == 18 and m["min_zoom"] == 14
    assert len(m["layers"]["before"]["sources"]) == 4
    assert m["layers"]["before"]["sources"][0]["crs"] == "EPSG:26915"
    assert m["layers"]["after"]["sources"][0]["crs"] == "EPSG:4326"
    assert m["layers"]["before"]["bounds"] == pytest.approx([-94.5003, 37.0663, -94.4862,
                                                             37.0776], abs=2e-4)
    both = [t for t in m["tasks"] if t["layers"] == ["after", "before"]]
    assert len(both) == m["complete_task_count"] > 40
    for z in range(14, 19):
        assert m["layers"]["before"]["tile_counts"][str(z)] >= 1
    assert json.loads((store / "joplin" / "manifest.json").read_text())["tasks"] == m["tasks"]


def _edges(rgba: np.ndarray) -> np.ndarray:
    g = rgba[..., :3].astype(np.float64).mean(-1)
    return np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_joplin_before_after_tiles_show_the_same_ground(joplin, store):
    """Edges (roads, lots) of a before tile match its after tile, not a shifted one, and the
    correlation peak summed over all pairs sits within 2 px of zero shift."""
    same, shifted, acc, used = [], [], np.zeros((256, 256)), 0
    for t in joplin["tasks"]:
        if t["layers"] != ["after", "before"]:
            continue
        b = _tile(store, "joplin", "before", t["z"], t["x"], t["y"], "jpg")
        a = _tile(store, "joplin", "after", t["z"], t["x"], t["y"], "jpg")
        if (b[..., :3].max(-1) < 5).mean() > 0.02 or (a[..., :3].max(-1) < 5).mean() > 0.02:
            continue  # only tiles fully covered by both layers
        eb, ea = _edges(b), _edges(a)
        same.append(_ncc(eb, ea))
        shifted.append(np.mean([_ncc(eb, np.roll(ea, s, axis=ax)) for s in (-12, 12)
                                for ax in (0, 1)]))
        fb, fa = eb - eb.mean(), ea - ea.mean()
        acc += np.fft.ifft2(np.fft.fft2(fb) * np.conj(np.fft.fft2(fa))).real / \
            (np.linalg.norm(fb) * np.linalg.norm(fa))
        used += 1
    assert used >= 30
    assert np.mean(same) > 1.5 * np.mean(shifted)
    dy, dx = (int(v) if v < 128 else int(v) - 256
              for v in np.unravel_index(acc.argmax(), acc.shape))
    assert abs(dy) <= 2 and abs(dx) <= 2, (dy, dx)
