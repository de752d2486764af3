"""The cv2 warp (ingest.render): coordinate grid, pixel-centre convention, edges, masks,
and agreement with GDAL's warper (which it replaces, and which stays the fallback)."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from scipy import ndimage

from ingest import ingest
from ingest.render import (_maps_for_rows, coordinate_grid, grid_error, plan_grid,
                           remap_into)


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (features a few pixels wide), 3 bands uint8."""
    rng = np.random.default_rng(seed)
    bands = [ndimage.gaussian_filter(rng.normal(size=(h, w)), 2.0) for _ in range(3)]
    out = np.stack([(b - b.min()) / (b.max() - b.min()) * 200 + 30 for b in bands])
    return out.astype(np.uint8)


def _exact_source_coords(crs, win_tf: Affine, origin, pixel, cols, rows):
    """cv2 source coordinates of destination pixel centres, transformed point by point."""
    x = origin[0] + (cols + 0.5) * pixel[0]
    y = origin[1] - (rows + 0.5) * pixel[1]
    sx, sy = warp_transform("EPSG:3857", crs, x.ravel(), y.ravel())
    inv = ~win_tf
    sx, sy = np.asarray(sx), np.asarray(sy)
    return (inv.a * sx + inv.b * sy + inv.c - 0.5).reshape(x.shape), \
        (inv.d * sx + inv.e * sy + inv.f - 0.5).reshape(x.shape)


@pytest.mark.parametrize("crs,lonlat,res,pixel", [
    ("EPSG:32635", (24.3, 13.4), 0.5, 0.6),        # UTM -> z18-ish
    ("EPSG:4326", (24.3, 13.4), 0.01, 2400.0),     # geographic, ~z6: curved in y
    ("EPSG:32750", (115.2, -8.6), 30.0, 38.0),     # southern UTM, Landsat-like
])
def test_interpolated_maps_match_the_exact_transform(crs, lonlat, res, pixel):
    (cx,), (cy,) = warp_transform("EPSG:4326", crs, [lonlat[0]], [lonlat[1]])
    win_tf = Affine(res, 0, cx - 1000 * res, 0, -res, cy + 1000 * res)
    (mx,), (my,) = warp_transform("EPSG:4326", "EPSG:3857", [lonlat[0]], [lonlat[1]])
    origin, size = (mx - 600 * pixel, my + 600 * pixel), (1200, 1000)
    plan = plan_grid(rasterio.CRS.from_user_input(crs).to_wkt(), win_tf, origin,
                     (pixel, pixel), size)
    assert plan is not None
    grid, step = plan
    rows, cols = np.mgrid[0:size[1], 0:size[0]]
    ex, ey = _exact_source_coords(crs, win_tf, origin, (pixel, pixel), cols, rows)
    got = np.concatenate([_maps_for_rows(grid.astype(np.float32), step, r0,
                                         min(size[1], r0 + 256), size[0])
                          for r0 in range(0, size[1], 256)])
    assert got.shape == (size[1], size[0], 2)
    err = np.maximum(np.abs(got[..., 0] - ex), np.abs(got[..., 1] - ey))
    assert err.max() < 0.03, (step, err.max())


def test_grid_follows_the_pixel_centre_convention():
    """A source on exactly the destination grid maps pixel (i, j) to (i, j): cv2 indexes
    pixel centres, GDAL pixel corners; a missing or doubled 0.5 shows up here."""
    tf = Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0)
    grid = coordinate_grid(rasterio.CRS.from_epsg(3857).to_wkt(), tf, (1000.0 + 20, 5000.0 - 10),
                           (2.0, 2.0), (64, 48), 16)
    maps = _maps_for_rows(grid.astype(np.float32), 16, 0, 48, 64)
    rows, cols = np.mgrid[0:48, 0:64]
    assert np.abs(maps[..., 0] - (cols + 10)).max() < 1e-3
    assert np.abs(maps[..., 1] - (rows + 5)).max() < 1e-3


def test_grid_error_estimates_the_interpolation_error():
    """For a quadratic mapping the estimate is exact: a * step^2 / 4 at a cell's middle."""
    step, a = 16, 1e-4
    k = (np.arange(-1, 12) * step).astype(float)
    gx, gy = np.meshgrid(k, k)
    grid = np.stack([gx + a * gx ** 2, gy], axis=-1)
    assert grid_error(grid) == pytest.approx(a * step ** 2 / 4, rel=1e-6)
    assert grid_error(np.stack([gx * 0.7 + 3, gy * 1.1 - gx * 0.2], axis=-1)) < 1e-9


def test_plan_refines_curved_mappings_and_refuses_unprojectable_ones():
    crs = rasterio.CRS.from_epsg(4326).to_wkt()
    tf = Affine(0.05, 0, 0.0, 0, -0.05, 80.0)  # lon 0..100, lat 80..-20 at 0.05 deg
    (_, y80), = zip(*warp_transform("EPSG:4326", "EPSG:3857", [0.0], [80.0]))
    coarse = plan_grid(crs, tf, (0.0, y80), (40000.0, 40000.0), (256, 256))
    assert coarse is not None and coarse[1] < 16  # Mercator's y is curved at that scale
    ortho = rasterio.CRS.from_proj4("+proj=ortho +lat_0=0 +lon_0=0 +datum=WGS84").to_wkt()
    (far_x,), (far_y,) = warp_transform("EPSG:4326", "EPSG:3857", [150.0], [0.0])
    assert plan_grid(ortho, Affine(10, 0, 0, 0, -10, 0), (far_x, far_y), (10.0, 10.0),
                     (64, 64)) is None


def _gdal_reference(src: np.ndarray, src_tf: Affine, crs: str, dst_tf: Affine,
                    shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros((4, *shape), np.uint8)
    reproject(src, out, src_transform=src_tf, src_crs=crs, dst_transform=dst_tf,
              dst_crs="EPSG:3857", resampling=Resampling.bilinear, dst_alpha=4,
              init_dest_nodata=False)
    return out.transpose(1, 2, 0)


def test_remap_agrees_with_gdal_bilinear_to_a_fraction_of_a_pixel():
    """Same source, same destination grid: cv2 and GDAL differ by little (mean < 1 grey
    level) and their images are not shifted (< 0.1 px; a half-pixel slip in either the
    source or the destination convention would shift by 0.5 px)."""
    import cv2

    crs = "EPSG:32635"
    (cx,), (cy,) = warp_transform("EPSG:4326", crs, [24.3], [13.4])
    src = _textured(600, 600)
    src_tf = Affine(0.5, 0, cx - 150, 0, -0.5, cy + 150)
    (mx,), (my,) = warp_transform("EPSG:4326", "EPSG:3857", [24.3], [13.4])
    pix = 0.37
    origin = (mx - 200 * pix, my + 200 * pix)
    dst_tf = Affine(pix, 0, origin[0], 0, -pix, origin[1])
    ref = _gdal_reference(src, src_tf, crs, dst_tf, (400, 400))
    stack = np.concatenate([src, np.full((1, 600, 600), 255, np.uint8)]).transpose(1, 2, 0).copy()
    out = np.zeros((400, 400, 4), np.uint8)
    plan = plan_grid(rasterio.CRS.from_user_input(crs).to_wkt(), src_tf, origin, (pix, pix),
                     (400, 400))
    remap_into(stack, plan, out, cv2.INTER_LINEAR)
    assert (out[..., 3] == 255).all() and (ref[..., 3] == 255).all()
    diff = np.abs(out[..., :3].astype(int) - ref[..., :3])
    assert diff.mean() < 1.0 and diff.max() <= 4
    a, b = (x[..., :3].astype(np.float64).mean(-1) for x in (out, ref))
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert abs(dx) < 0.1 and abs(dy) < 0.1, (dx, dy)


def test_ingest_tiles_agree_with_gdal_on_the_tile_grid(tmp_path, make_tif, tile_reader):
    """End to end (window read, decimation off, maps, tile slicing): a bilinear task tile
    equals GDAL's bilinear warp of the source onto that tile's exact grid."""
    import cv2

    data = _textured(700, 700, seed=3)
    src = make_tif(data)
    m = ingest({"image": [src]}, tmp_path, "p", fmt="png", jobs=1)
    with rasterio.open(src) as ds:
        src_tf, crs = ds.transform, ds.crs
    compared = 0
    for t in m["tasks"]:
        tile = tile_reader(tmp_path, "p", "image", t["z"], t["x"], t["y"])
        b = mercantile.xy_bounds(t["x"], t["y"], t["z"])
        dst_tf = Affine((b.right - b.left) / 256, 0, b.left, 0, -(b.top - b.bottom) / 256, b.top)
        ref = _gdal_reference(data, src_tf, crs, dst_tf, (256, 256))
        both = (tile[..., 3] == 255) & (ref[..., 3] == 255)
        # the footprints agree up to the edge pixels
        assert ((tile[..., 3] > 0) != (ref[..., 3] > 0)).sum() <= 2 * 256
        if both.all():
            diff = np.abs(tile[..., :3].astype(int) - ref[..., :3])
            assert diff.mean() < 1.0
            a, r = (x[..., :3].astype(np.float64).mean(-1) for x in (tile, ref))
            (dx, dy), _ = cv2.phaseCorrelate(a, r)
            assert abs(dx) < 0.1 and abs(dy) < 0.1, (t, dx, dy)
            compared += 1
    assert compared >= 2


def test_masked_pixels_do_not_bleed_into_valid_ones(tmp_path, make_tif, tile_reader):
    """Interpolation is done on premultiplied colour: where a uniform valid area meets
    masked pixels (white under an internal mask), edge pixels are more transparent, not
    lighter."""
    data = np.empty((3, 256, 256), np.uint8)
    data[0], data[1], data[2] = 100, 150, 200
    rows, cols = np.mgrid[0:256, 0:256]
    hole = (rows - 128) ** 2 + (cols - 128) ** 2 < 60 ** 2
    data[:, hole] = 255
    m = ingest({"image": [make_tif(data, mask=~hole)]}, tmp_path, "p", fmt="png", jobs=1)
    partial = 0
    for t in m["tasks"]:
        tile = tile_reader(tmp_path, "p", "image", t["z"], t["x"], t["y"]).astype(int)
        a = tile[..., 3]
        partial += int(((a > 0) & (a < 255)).sum())
        solid = tile[a >= 128][:, :3]
        assert np.abs(solid - (100, 150, 200)).max() <= 3
    assert partial > 100  # the hole's edge is anti-aliased, not hard


def test_bilinear_mosaic_has_no_seam(tmp_path, two_file_mosaic, tile_reader):
    """Two files side by side, bilinear: every pixel well inside their union is opaque (a
    seam of half-transparent pixels would appear if each file's edge faded out) and the
    colours match the single-file rendering."""
    data = _textured(256, 512, seed=5)
    a, b, whole = two_file_mosaic(data)
    mm = ingest({"image": [a, b]}, tmp_path / "m", "p", fmt="png", jobs=1)
    ingest({"image": [whole]}, tmp_path / "w", "p", fmt="png", jobs=1)
    inner = 0
    for t in mm["tasks"]:
        ta = tile_reader(tmp_path / "m", "p", "image", t["z"], t["x"], t["y"])
        tw = tile_reader(tmp_path / "w", "p", "image", t["z"], t["x"], t["y"])
        core = ndimage.binary_erosion(tw[..., 3] == 255, iterations=2)
        assert (ta[..., 3][core] == 255).all()
        diff = np.abs(ta[..., :3].astype(int) - tw[..., :3])[core]
        assert np.percentile(diff, 99) <= 8  # the seam column is resampled from one side
        inner += int(core.sum())
    assert inner > 10_000


@pytest.mark.parametrize("resampling", ["nearest", "cubic", "lanczos", "average"])
def test_other_resamplings_render_the_same_picture(tmp_path, make_tif, tile_reader,
                                                   resampling):
    """cv2's nearest/cubic/lanczos and GDAL's average (the fallback path) all give tiles
    close to the bilinear ones."""
    data = _textured(300, 300, seed=7)
    src = make_tif(data)
    ref = ingest({"image": [src]}, tmp_path / "b", "p", fmt="png", jobs=1)
    m = ingest({"image": [src]}, tmp_path / resampling, "p", fmt="png", jobs=1,
               resampling=resampling)
    assert [t["x"] for t in m["tasks"]] == [t["x"] for t in ref["tasks"]]
    for t in m["tasks"]:
        got = tile_reader(tmp_path / resampling, "p", "image", t["z"], t["x"], t["y"])
        want = tile_reader(tmp_path / "b", "p", "image", t["z"], t["x"], t["y"])
        both = (got[..., 3] == 255) & (want[..., 3] == 255)
        if both.sum() > 1000:
            assert np.abs(got[..., :3].astype(int) - want[..., :3])[both].mean() < 6


def _cv2_threads(_: int) -> int:
    import cv2

    return cv2.getNumThreads()


def test_pool_workers_fork_from_a_single_threaded_cv2_and_the_setting_is_restored():
    """Forking while cv2's thread pool is alive can hang cv2 calls in the child: the ingest's
    pool is created under cv2_single_threaded, its workers run with one cv2 thread, and
    the caller's setting comes back afterwards."""
    import multiprocessing

    import cv2

    from ingest.render import cv2_single_threaded

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        cv2.resize(np.zeros((512, 512, 4), np.uint8), (256, 256))  # the pool is running
        with cv2_single_threaded():
            assert cv2.getNumThreads() == 1
            with multiprocessing.get_context("fork").Pool(2) as pool:
                assert pool.map(_cv2_threads, range(4)) == [1, 1, 1, 1]
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def _utm_window_and_plan(size=(700, 600)):
    crs = "EPSG:32635"
    (cx,), (cy,) = warp_transform("EPSG:4326", crs, [24.3], [13.4])
    src = _textured(600, 600, seed=3)
    src_tf = Affine(0.5, 0, cx - 150, 0, -0.5, cy + 150)
    (mx,), (my,) = warp_transform("EPSG:4326", "EPSG:3857", [24.3], [13.4])
    pix = 0.55  # 385 x 330 m of destination over a 300 x 300 m window
    # the destination reaches beyond the window on every side: edges are clipped
    origin = (mx - 0.5 * size[0] * pix, my + 0.5 * size[1] * pix)
    stack = np.concatenate([src, np.full((1, 600, 600), 255, np.uint8)]).transpose(1, 2, 0).copy()
    plan = plan_grid(rasterio.CRS.from_user_input(crs).to_wkt(), src_tf, origin, (pix, pix),
                     size)
    return stack, plan


def test_affine_strips_render_what_the_coordinate_maps_render(monkeypatch):
    """A UTM window is warped with cv2.warpAffine per strip (no coordinate maps); forcing
    the map path must give the same picture (fixed-point rounding: a grey level or two) and
    the same edge clip up to the fit's tolerance (a one-pixel slip of either convention or
    edge would differ by hundreds of pixels)."""
    import cv2

    import ingest.render as render

    stack, plan = _utm_window_and_plan()
    grid, step = plan
    assert render._strip_affine(grid[:10], step, 0) is not None  # the affine path is taken
    fast = np.zeros((600, 700, 4), np.uint8)
    remap_into(stack, plan, fast, cv2.INTER_LINEAR)
    monkeypatch.setattr(render, "AFFINE_TOLERANCE", -1.0)
    assert render._strip_affine(grid[:10], step, 0) is None
    maps = np.zeros_like(fast)
    remap_into(stack, plan, maps, cv2.INTER_LINEAR)
    inside = (fast[..., 3] == 255) & (maps[..., 3] == 255)
    assert 0.3 < inside.mean() < 0.9  # both have data and an edge
    assert int((fast[..., 3] != maps[..., 3]).sum()) <= 20
    diff = np.abs(fast[inside].astype(int) - maps[inside])
    assert diff.max() <= 2 and diff.mean() < 0.2


def test_strip_affine_fits_projected_crs_and_refuses_curved_ones():
    """UTM at ~z18: one affine map per strip within a hundredth of a pixel; geographic
    coordinates over ~1000 km (z6) are too curved and keep the coordinate maps."""
    from ingest.render import AFFINE_TOLERANCE, _strip_affine

    _, (grid, step) = _utm_window_and_plan()
    nodes = grid[:10]
    fit = _strip_affine(nodes, step, 0)
    assert fit is not None and fit[1] < AFFINE_TOLERANCE
    matrix, _ = fit
    cols = (np.arange(grid.shape[1]) - 1) * step + (step - 1) / 2
    rows = (np.arange(len(nodes)) - 1) * step + (step - 1) / 2
    x = matrix[0, 0] * cols[None, :] + matrix[0, 1] * rows[:, None] + matrix[0, 2]
    assert np.abs(x - nodes[..., 0]).max() <= fit[1] + 1e-9
    res, pixel = 0.01, 2400.0
    win_tf = Affine(res, 0, 20.0, 0, -res, 20.0)
    (mx,), (my,) = warp_transform("EPSG:4326", "EPSG:3857", [25.0], [15.0])
    curved = plan_grid(rasterio.CRS.from_user_input("EPSG:4326").to_wkt(), win_tf,
                       (mx - 300 * pixel, my + 300 * pixel), (pixel, pixel), (600, 600))
    assert curved is not None
    assert _strip_affine(curved[0][:10], curved[1], 0) is None
