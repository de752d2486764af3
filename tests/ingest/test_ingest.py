"""ingest() on tiny synthetic rasters: CRSs, dtypes, masks, bounds, pyramid, manifest."""

from __future__ import annotations

import json

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from ingest import ingest
from tiles.grid import tile_bounds


def _sample_check(store, manifest, layer, src_path, tile_reader, min_match=0.97):
    """Tile pixels (nearest resampling) equal the source pixel under their centre."""
    z = manifest["task_zoom"]
    with rasterio.open(src_path) as ds:
        src = ds.read()
        inv = ~ds.transform
        checked = matched = 0
        for t in manifest["tasks"][:6]:
            tile = tile_reader(store, manifest["project"], layer, z, t["x"], t["y"])
            xb = mercantile.xy_bounds(t["x"], t["y"], z)
            ij = np.arange(8, 256, 31)
            cols, rows = np.meshgrid(ij, ij)
            mx = xb.left + (cols + 0.5) * (xb.right - xb.left) / 256
            my = xb.top - (rows + 0.5) * (xb.top - xb.bottom) / 256
            sx, sy = warp_transform("EPSG:3857", ds.crs, mx.ravel(), my.ravel())
            sc = inv.a * np.array(sx) + inv.b * np.array(sy) + inv.c
            sr = inv.d * np.array(sx) + inv.e * np.array(sy) + inv.f
            for (r, c), (tr, tc) in zip(zip(sr, sc), zip(rows.ravel(), cols.ravel())):
                if not (0.5 < r < ds.height - 0.5 and 0.5 < c < ds.width - 0.5):
                    continue
                checked += 1
                want = src[:3, int(r), int(c)]
                got = tile[tr, tc, :3]
                matched += int(np.abs(want.astype(int) - got).max() <= 1)
    assert checked > 30
    assert matched / checked >= min_match


def test_rgb_utm_exact_alignment_and_manifest(tmp_path, make_tif, tile_reader):
    src = make_tif()
    store = tmp_path / "store"
    m = ingest({"image": [src]}, store, "demo", fmt="png", resampling="nearest", jobs=1)
    assert m["format"] == "crowdsight-manifest/1" and m["project"] == "demo"
    assert m["task_zoom"] == 19 and m["tile_size"] == 256
    layer = m["layers"]["image"]
    assert layer["ext"] == "png" and layer["media_type"] == "image/png"
    assert layer["path_template"] == "image/{z}/{x}/{y}.png"
    assert layer["sources"][0]["crs"] == "EPSG:32635" and len(layer["sources"][0]["sha256"]) == 64
    assert layer["bands"] == [1, 2, 3] and layer["stretch"] is None
    assert layer["tile_count"] == sum(layer["tile_counts"].values())
    assert m["task_count"] == layer["tile_counts"][str(m["task_zoom"])] == len(m["tasks"])
    on_disk = {p.relative_to(store / "demo" / "image").as_posix()
               for p in (store / "demo" / "image").glob("*/*/*.png")}
    assert len(on_disk) == layer["tile_count"]
    for t in m["tasks"]:
        b = mercantile.bounds(t["x"], t["y"], t["z"])
        assert t["bounds"] == [round(v, 7) for v in (b.west, b.south, b.east, b.north)]
        assert t["layers"] == ["image"]
        assert f"{t['z']}/{t['x']}/{t['y']}.png" in on_disk
    # the task tiles are exactly those intersecting the raster footprint
    w, s, e, n = layer["bounds"]
    assert {(t["x"], t["y"]) for t in m["tasks"]} == \
        {(t.x, t.y) for t in mercantile.tiles(w, s, e, n, [19])}
    assert json.loads((store / "demo" / "manifest.json").read_text())["tasks"] == m["tasks"]
    _sample_check(store, m, "image", src, tile_reader)


@pytest.mark.parametrize("crs,center", [("EPSG:4326", (24.3, 13.4)),
                                        ("EPSG:3857", (24.3, 13.4)),
                                        ("EPSG:32750", (115.2, -8.6))])
def test_other_crs_alignment(tmp_path, make_tif, tile_reader, crs, center):
    res = {"EPSG:4326": 5e-6, "EPSG:3857": 0.6, "EPSG:32750": 0.5}[crs]
    src = make_tif(crs=crs, center_lonlat=center, res=res)
    store = tmp_path / "store"
    m = ingest({"image": [src]}, store, "demo", fmt="png", resampling="nearest", jobs=1)
    assert m["layers"]["image"]["sources"][0]["crs"] == crs
    _sample_check(store, m, "image", src, tile_reader)


def test_nodata_skips_empty_tiles_and_png_keeps_transparency(tmp_path, make_tif, pattern_fn,
                                                             tile_reader):
    data = pattern_fn(512, 512, 3)
    data[:, :, :300] = 0  # left part is nodata
    src = make_tif(data, nodata=0)
    store = tmp_path / "store"
    full = ingest({"image": [make_tif(pattern_fn(512, 512, 3))]}, tmp_path / "full", "demo",
                  jobs=1, fmt="png")
    m = ingest({"image": [src]}, store, "demo", fmt="png", jobs=1)
    assert 0 < m["task_count"] < full["task_count"]
    alphas = [tile_reader(store, "demo", "image", 19, t["x"], t["y"])[..., 3] for t in m["tasks"]]
    assert all(a.max() == 255 for a in alphas)          # no written tile is empty
    assert any(a.min() == 0 for a in alphas)            # partly covered ones are transparent


def test_jpeg_partial_tiles_black_outside(tmp_path, make_tif, pattern_fn, tile_reader):
    data = pattern_fn(512, 512, 3)
    data[:, :, :300] = 0
    m = ingest({"image": [make_tif(data, nodata=0)]}, tmp_path, "demo", jobs=1)
    assert m["layers"]["image"]["ext"] == "jpg"
    partial = 0
    for t in m["tasks"]:
        tile = tile_reader(tmp_path, "demo", "image", 19, t["x"], t["y"], "jpg")
        assert (tile[..., 3] == 255).all()
        if tile[..., :3].max(axis=-1).min() < 10:
            partial += 1
    assert partial > 0


def test_alpha_band_and_internal_mask(tmp_path, make_tif, pattern_fn, tile_reader):
    data = pattern_fn(256, 256, 3)
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[:, 128:] = 0
    a_src = make_tif(data, alpha=alpha)
    mask = np.ones((256, 256), bool)
    mask[:, 128:] = False
    m_src = make_tif(data, mask=mask)
    for src in (a_src, m_src):
        with rasterio.open(src) as ds:
            assert ds.dataset_mask()[:, 200].max() == 0
        store = tmp_path / src.stem
        m = ingest({"image": [src]}, store, "demo", fmt="png", jobs=1)
        assert m["layers"]["image"]["bands"] == [1, 2, 3]
        east = max(t["x"] for t in m["tasks"])
        full = ingest({"image": [make_tif(data)]}, tmp_path / (src.stem + "f"), "demo",
                      fmt="png", jobs=1)
        assert m["task_count"] < full["task_count"]
        for t in m["tasks"]:
            tile = tile_reader(store, "demo", "image", 19, t["x"], t["y"])
            if t["x"] == east:
                assert tile[..., 3].min() == 0


def test_uint16_percentile_stretch(tmp_path, make_tif, pattern_fn, tile_reader):
    data = pattern_fn(256, 256, 1, "uint16")
    data[0, :20, :20] = 0
    src = make_tif(data, nodata=0)
    m = ingest({"image": [src]}, tmp_path, "demo", fmt="png", jobs=1)
    st = m["layers"]["image"]["stretch"]
    assert st["method"] == "percentile" and st["percentiles"] == [2.0, 98.0]
    valid = data[data > 0]
    assert st["low"][0] == pytest.approx(np.percentile(valid, 2), rel=0.05)
    assert st["high"][0] == pytest.approx(np.percentile(valid, 98), rel=0.05)
    grey = np.concatenate([tile_reader(tmp_path, "demo", "image", 19, t["x"], t["y"])[..., 0]
                           [tile_reader(tmp_path, "demo", "image", 19, t["x"], t["y"])[..., 3] > 0]
                           for t in m["tasks"]])
    assert grey.min() < 20 and grey.max() > 235 and 60 < grey.mean() < 200


def test_stretch_sample_reads_no_sidecar_mask(tmp_path, make_tif):
    """The contrast stretch samples a source as the render reads it (GDAL_ENV: no sidecar
    files), also when called on its own: a .msk next to the file changes nothing."""
    from ingest.sources import describe, percentile_stretch

    ramp = np.linspace(1000, 60000, 256).astype(np.uint16)  # brighter to the east
    src = make_tif(np.broadcast_to(ramp, (1, 256, 256)).copy())
    info = describe(src, 10**9)
    before = percentile_stretch([info], (1,))
    mask = np.zeros((256, 256), np.uint8)
    mask[:, :64] = 255  # a sidecar mask that would keep only the darkest quarter
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(src, "r+") as ds:
        ds.write_mask(mask)
    assert src.with_name(src.name + ".msk").is_file()
    with rasterio.open(src) as ds:  # GDAL itself would use it
        assert not ds.dataset_mask()[:, 64:].any()
    assert percentile_stretch([info], (1,)) == before


def test_float_nan_masked_and_stretched(tmp_path, make_tif, pattern_fn, tile_reader):
    data = pattern_fn(256, 256, 3, "float32")
    data[:, :, 180:] = np.nan
    src = make_tif(data, nodata=float("nan"))
    m = ingest({"image": [src]}, tmp_path, "demo", fmt="png", jobs=1)
    assert m["layers"]["image"]["stretch"]["method"] == "percentile"
    east = max(t["x"] for t in m["tasks"])
    tiles = {t["x"]: tile_reader(tmp_path, "demo", "image", 19, t["x"], t["y"])
             for t in m["tasks"]}
    assert tiles[east][..., 3].min() == 0
    opaque = np.concatenate([t[..., :3][t[..., 3] == 255] for t in tiles.values()])
    assert opaque.max() > 200 and opaque.min() < 50


def test_one_band_grey_and_band_selection(tmp_path, make_tif, pattern_fn, tile_reader):
    grey = make_tif(pattern_fn(256, 256, 1))
    m = ingest({"image": [grey]}, tmp_path / "g", "demo", fmt="png", jobs=1)
    assert m["layers"]["image"]["bands"] == [1]
    t = m["tasks"][0]
    tile = tile_reader(tmp_path / "g", "demo", "image", 19, t["x"], t["y"])
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()

    four = make_tif(pattern_fn(256, 256, 4), photometric="minisblack")
    m4 = ingest({"image": [four]}, tmp_path / "f", "demo", fmt="png", jobs=1)
    assert m4["layers"]["image"]["bands"] == [1, 2, 3]
    ms = ingest({"image": [four]}, tmp_path / "s", "demo", fmt="png", bands=[3, 2, 1], jobs=1)
    assert ms["layers"]["image"]["bands"] == [3, 2, 1]
    mid = m4["tasks"][len(m4["tasks"]) // 2]
    a = tile_reader(tmp_path / "f", "demo", "image", 19, mid["x"], mid["y"])
    b = tile_reader(tmp_path / "s", "demo", "image", 19, mid["x"], mid["y"])
    opaque = a[..., 3] == 255
    assert np.array_equal(a[..., 0][opaque], b[..., 2][opaque])
    assert np.array_equal(a[..., 2][opaque], b[..., 0][opaque])


def test_pyramid_built_from_children(tmp_path, make_tif, pattern_fn, tile_reader):
    src = make_tif(pattern_fn(1024, 1024, 3))
    m = ingest({"image": [src]}, tmp_path, "demo", fmt="png", jobs=1, block=2)
    z, zmin = m["task_zoom"], m["min_zoom"]
    counts = m["layers"]["image"]["tile_counts"]
    assert set(counts) == {str(v) for v in range(zmin, z + 1)}
    assert counts[str(zmin)] <= 4
    # every tile's parent exists; a parent is the 2x2-average of its children
    for zz in range(z, zmin, -1):
        for d in (tmp_path / "demo" / "image" / str(zz)).glob("*/*.png"):
            x, y = int(d.parent.name), int(d.stem)
            assert (tmp_path / "demo" / "image" / str(zz - 1) / str(x // 2) /
                    f"{y // 2}.png").exists()
    # built across block borders (block=2): check one parent above the blocks numerically
    pz = z - 2
    px, py = next((int(p.parent.name), int(p.stem))
                  for p in (tmp_path / "demo" / "image" / str(pz)).glob("*/*.png"))
    big = np.zeros((512, 512, 4), np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            f = tmp_path / "demo" / "image" / str(pz + 1) / str(2 * px + dx) / f"{2 * py + dy}.png"
            if f.exists():
                big[dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256] = \
                    tile_reader(tmp_path, "demo", "image", pz + 1, 2 * px + dx, 2 * py + dy)
    a = big[..., 3:4] / 255
    sums = (big[..., :3] * a).reshape(256, 2, 256, 2, 3).sum((1, 3))
    asum = a.reshape(256, 2, 256, 2, 1).sum((1, 3))
    expect = np.where(asum > 0, sums / np.maximum(asum, 1e-9), 0)
    got = tile_reader(tmp_path, "demo", "image", pz, px, py).astype(np.float64)
    full = asum[..., 0] == 4
    assert np.abs(got[..., :3][full] - expect[full]).max() <= 2


def test_mosaic_of_two_files_is_seamless(tmp_path, two_file_mosaic, tile_reader):
    rows, cols = np.mgrid[0:256, 0:512]
    data = np.stack([20 + cols * 0.4, 20 + rows * 0.8, 200 - cols * 0.3]).astype(np.uint8)
    a, b, whole = two_file_mosaic(data)
    # nearest: every output pixel comes from exactly one source pixel, so the mosaic must equal
    # the single-file rendering (bilinear differs within 1 px of the seam, as files are
    # resampled separately)
    m = ingest({"image": [a, b]}, tmp_path / "m", "demo", fmt="png", jobs=1,
               resampling="nearest")
    w = ingest({"image": [whole]}, tmp_path / "w", "demo", fmt="png", jobs=1,
               resampling="nearest")
    assert [(t["x"], t["y"]) for t in m["tasks"]] == [(t["x"], t["y"]) for t in w["tasks"]]
    assert len(m["layers"]["image"]["sources"]) == 2
    for t in m["tasks"]:
        ta = tile_reader(tmp_path / "m", "demo", "image", t["z"], t["x"], t["y"])
        tw = tile_reader(tmp_path / "w", "demo", "image", t["z"], t["x"], t["y"])
        # same footprint (up to a pixel where a file corner meets the tile grid)
        assert ((ta[..., 3] > 0) != (tw[..., 3] > 0)).sum() <= 2
        inside = (tw[..., 3] == 255) & (ta[..., 3] == 255)
        diff = np.abs(ta[..., :3].astype(int) - tw[..., :3])[inside].max(axis=-1)
        # identical up to float rounding picking the neighbouring source pixel
        assert diff.max() <= 1


def test_uninitialised_block_memory_never_reaches_a_tile(tmp_path, two_file_mosaic,
                                                       pattern_fn, monkeypatch):
    """The block canvas is np.empty and only the tiles sources draw into are zeroed: with
    every np.empty filled with garbage, a mosaic (two files, partial tiles, a pyramid inside
    the block) must come out byte for byte as with np.empty giving zeros."""
    a, b, _ = two_file_mosaic(pattern_fn(256, 512, 3))
    real_empty = np.empty
    out = {}
    for name, fill in (("zeros", 0), ("garbage", 0xA5)):
        def filled(*args, __fill=fill, **kw):
            arr = real_empty(*args, **kw)
            arr.fill(__fill)
            return arr

        monkeypatch.setattr(np, "empty", filled)
        m = ingest({"image": [a, b]}, tmp_path / name, "p", fmt="png", jobs=1, zoom=19,
                   min_zoom=15, block=8)
        monkeypatch.setattr(np, "empty", real_empty)
        tiles = sorted((tmp_path / name / "p" / "image").rglob("*.png"))
        out[name] = (m["layers"]["image"]["tile_count"],
                     {p.relative_to(tmp_path / name).as_posix(): p.read_bytes() for p in tiles})
    assert out["zeros"][0] > 4 and out["zeros"] == out["garbage"]


def test_mosaic_first_file_wins_where_files_overlap(tmp_path, make_tif, tile_reader):
    """Two opaque files overlapping by 100 px: wherever the first file has full data, the
    mosaic shows the first file's pixels (a later file fills only what is less opaque)."""
    from affine import Affine
    from rasterio.warp import transform as warp_transform

    (cx,), (cy,) = warp_transform("EPSG:4326", "EPSG:32635", [24.3], [13.4])
    red = np.zeros((3, 256, 300), np.uint8)
    red[0] = 200
    blue = np.zeros((3, 256, 300), np.uint8)
    blue[2] = 200
    a = make_tif(red, transform=Affine(0.5, 0, cx - 128, 0, -0.5, cy + 64))
    b = make_tif(blue, transform=Affine(0.5, 0, cx - 28, 0, -0.5, cy + 64))  # 100 px overlap

    def tiles(files: list, name: str) -> dict:
        m = ingest({"image": files}, tmp_path / name, "demo", fmt="png", jobs=1)
        return {(t["z"], t["x"], t["y"]): tile_reader(tmp_path / name, "demo", "image",
                                                       t["z"], t["x"], t["y"])
                for t in m["tasks"]}

    alone = {"a": tiles([a], "a"), "b": tiles([b], "b")}
    for first, second in (("a", "b"), ("b", "a")):
        mosaic = tiles([a, b] if first == "a" else [b, a], first + second)
        overlap = 0
        for key, want in alone[first].items():
            full = want[..., 3] == 255
            assert np.array_equal(mosaic[key][full], want[full])
            if key in alone[second]:
                overlap += int((full & (alone[second][key][..., 3] == 255)).sum())
        assert overlap > 10_000  # both files have full data there: the first one is shown


def test_aoi_limits_tiles(tmp_path, make_tif):
    src = make_tif()
    full = ingest({"image": [src]}, tmp_path / "a", "demo", jobs=1)
    t = full["tasks"][0]
    w, s, e, n = tile_bounds(t["z"], t["x"], t["y"])
    cx, cy = (w + e) / 2, (s + n) / 2
    d = (e - w) / 10
    aoi = {"type": "Feature", "properties": {},
           "geometry": {"type": "Polygon", "coordinates": [[[cx - d, cy - d], [cx + d, cy - d],
                                                            [cx + d, cy + d], [cx - d, cy + d],
                                                            [cx - d, cy - d]]]}}
    m = ingest({"image": [src]}, tmp_path / "b", "demo", jobs=1, aoi=aoi)
    assert [(x["x"], x["y"]) for x in m["tasks"]] == [(t["x"], t["y"])]
    assert m["aoi"] == aoi
    assert sorted(int(k) for k in m["layers"]["image"]["tile_counts"]) == \
        list(range(m["min_zoom"], m["task_zoom"] + 1))


def test_before_after_pair_records_complete_tasks(tmp_path):
    from ingest import generate_scene

    sc = generate_scene(tmp_path / "scene", size=256, seed=1)
    m = ingest({"before": [sc.before], "after": [sc.after]}, tmp_path / "s", "pair", jobs=1)
    assert set(m["layers"]) == {"before", "after"}
    both = [t for t in m["tasks"] if t["layers"] == ["after", "before"]]
    assert both and m["complete_task_count"] == len(both)
    assert m["layers"]["after"]["sources"][0]["crs"] == "EPSG:4326"
    assert m["layers"]["before"]["zooms"] == m["layers"]["after"]["zooms"]


def test_tile_size_512_and_webp(tmp_path, make_tif, tile_reader):
    m = ingest({"image": [make_tif()]}, tmp_path, "demo", tile_size=512, fmt="webp", jobs=1)
    assert m["tile_size"] == 512 and m["task_zoom"] == 18
    t = m["tasks"][0]
    tile = tile_reader(tmp_path, "demo", "image", t["z"], t["x"], t["y"], "webp")
    assert tile.shape == (512, 512, 4)


def test_parallel_pool_gives_identical_tiles(tmp_path, make_tif, pattern_fn):
    src = make_tif(pattern_fn(700, 700, 3))
    a = ingest({"image": [src]}, tmp_path / "a", "demo", fmt="png", jobs=1, block=2)
    b = ingest({"image": [src]}, tmp_path / "b", "demo", fmt="png", jobs=2, block=2)
    assert a["tasks"] == b["tasks"] and a["layers"]["image"]["tile_counts"] == \
        b["layers"]["image"]["tile_counts"]
    fa = sorted((tmp_path / "a").glob("demo/image/*/*/*.png"))
    fb = sorted((tmp_path / "b").glob("demo/image/*/*/*.png"))
    assert [p.relative_to(tmp_path / "a") for p in fa] == [p.relative_to(tmp_path / "b")
                                                          for p in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    assert b["ingest_stats"]["jobs"] == 2


def test_progress_callback(tmp_path, make_tif):
    seen = []
    ingest({"image": [make_tif()]}, tmp_path, "demo", jobs=1,
           progress=lambda d, t, s: seen.append((d, t, s)))
    rendering = [x for x in seen if x[1] > 0]
    assert rendering[-1][0] == rendering[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(rendering, rendering[1:]))


def test_low_zoom_override_uses_decimated_reads(tmp_path, make_tif, pattern_fn, tile_reader):
    """--zoom far below native resolution reads decimated windows; the result matches the
    pyramid built from the native-zoom tiles."""
    rows, cols = np.mgrid[0:1024, 0:1024]
    data = np.stack([20 + cols * 0.2, 20 + rows * 0.2, 200 - cols * 0.15]).astype(np.uint8)
    src = make_tif(data)
    native = ingest({"image": [src]}, tmp_path / "n", "p", fmt="png", jobs=1)
    z = native["task_zoom"] - 3
    low = ingest({"image": [src]}, tmp_path / "l", "p", fmt="png", jobs=1, zoom=z, min_zoom=z)
    assert low["task_zoom"] == z and native["min_zoom"] <= z
    assert {(t["x"], t["y"]) for t in low["tasks"]} == \
        set(map(tuple, ((int(p.parent.name), int(p.stem))
                        for p in (tmp_path / "n" / "p" / "image" / str(z)).glob("*/*.png"))))
    for t in low["tasks"]:
        a = tile_reader(tmp_path / "l", "p", "image", z, t["x"], t["y"]).astype(int)
        b = tile_reader(tmp_path / "n", "p", "image", z, t["x"], t["y"]).astype(int)
        inside = (a[..., 3] == 255) & (b[..., 3] == 255)
        assert inside.sum() > 1000
        assert np.abs(a - b)[inside][:, :3].mean() < 2.0


def test_rotated_geotransform(tmp_path, make_tif, pattern_fn, tile_reader):
    from affine import Affine

    (cx,), (cy,) = warp_transform("EPSG:4326", "EPSG:32635", [24.3], [13.4])
    rot = Affine(0.5, 0, cx, 0, -0.5, cy) @ Affine.rotation(20)
    src = make_tif(pattern_fn(256, 256, 3), transform=rot)
    m = ingest({"image": [src]}, tmp_path, "p", fmt="png", resampling="nearest", jobs=1)
    assert m["task_count"] > 0
    _sample_check(tmp_path, m, "image", src, tile_reader, min_match=0.95)


def test_half_transparent_source_keeps_its_colour(tmp_path, make_tif, tile_reader):
    """A uniformly half-transparent source: PNG tiles (task zoom and pyramid) keep the colour
    and alpha 128 (premultiplied inside, unpremultiplied on output); JPEG tiles show it
    composited over black. Catches a block whose partial alpha is not premultiplied."""
    data = np.empty((3, 256, 256), np.uint8)
    data[0], data[1], data[2] = 100, 150, 200
    src = make_tif(data, alpha=np.full((256, 256), 128, np.uint8))
    for fmt, want in (("png", (100, 150, 200)), ("jpg", (50, 75, 100))):
        m = ingest({"image": [src]}, tmp_path / fmt, "demo", fmt=fmt, jobs=1)
        z = m["task_zoom"]
        assert m["min_zoom"] < z
        task_xy = {(t["x"], t["y"]) for t in m["tasks"]}
        checked = 0
        for zz, xys in ((z, task_xy), (z - 1, {(x // 2, y // 2) for x, y in task_xy})):
            for x, y in xys:
                tile = tile_reader(tmp_path / fmt, "demo", "image", zz, x, y, fmt)
                if fmt == "png":
                    inner = tile[tile[..., 3] == 128]
                else:  # JPEG has no alpha: the pixels with data (black elsewhere)
                    inner = tile[tile[..., :3].astype(int).sum(axis=-1) > 150]
                if len(inner) < 100:
                    continue
                colour = np.median(inner[:, :3], axis=0)
                assert np.abs(colour - want).max() <= 2, (fmt, zz, colour)
                checked += 1
        assert checked >= 2, fmt
