"""Tile math agrees with mercantile and morecantile."""

from __future__ import annotations

import math

import mercantile
import morecantile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiles.errors import InvalidTileError
from tiles.grid import (check_tile, children, ground_resolution, morton, parent, tile_bounds,
                        tile_xy_bounds, tiles_in_bounds, zoom_for_resolution)

TMS = morecantile.tms.get("WebMercatorQuad")


@settings(max_examples=60, deadline=None)
@given(z=st.integers(0, 22), fx=st.floats(0, 1, exclude_max=True),
       fy=st.floats(0, 1, exclude_max=True))
def test_bounds_match_mercantile_and_morecantile(z, fx, fy):
    x, y = int(fx * (1 << z)), int(fy * (1 << z))
    w, s, e, n = tile_bounds(z, x, y)
    mb = TMS.bounds(morecantile.Tile(x, y, z))
    assert (w, s, e, n) == pytest.approx((mb.left, mb.bottom, mb.right, mb.top), abs=1e-9)
    xb = TMS.xy_bounds(morecantile.Tile(x, y, z))
    assert tile_xy_bounds(z, x, y) == pytest.approx((xb.left, xb.bottom, xb.right, xb.top),
                                                    abs=1e-6)


@pytest.mark.parametrize("res,lat,size,expected", [
    (0.6, 37.07, 256, 18),    # Joplin: z18 as in gdal2tiles
    (0.5, 13.4, 256, 19),     # synthetic Darfur scene
    (0.5, 13.4, 512, 18),     # 512 px tiles: one zoom less
    (300.0, 24.5, 256, 9),    # Landsat
    (0.15, 39.7, 256, 20),    # Colorado aerial
])
def test_zoom_for_resolution(res, lat, size, expected):
    z = zoom_for_resolution(res, lat, size)
    assert z == expected
    assert ground_resolution(z, lat, size) <= res < ground_resolution(z - 1, lat, size)


def test_zoom_for_resolution_exact_zoom_is_not_bumped():
    res = ground_resolution(18, 0.0)
    assert zoom_for_resolution(res, 0.0) == 18
    with pytest.raises(InvalidTileError):
        zoom_for_resolution(0, 0.0)


def test_tiles_in_bounds_matches_mercantile_and_excludes_edge_neighbours():
    b = (-94.5003, 37.0663, -94.4862, 37.0776)
    got = set(tiles_in_bounds(b, 18))
    want = {(t.x, t.y) for t in mercantile.tiles(*b, [18])}
    assert got == want
    # bounds exactly equal to one tile: only that tile
    assert list(tiles_in_bounds(tile_bounds(18, 100, 200), 18)) == [(100, 200)]


def test_parent_children_morton():
    assert parent(18, 101, 203) == (17, 50, 101)
    kids = children(17, 50, 101)
    assert kids == [(18, 100, 202), (18, 101, 202), (18, 100, 203), (18, 101, 203)]
    assert all(parent(*k) == (17, 50, 101) for k in kids)
    assert [mercantile.parent(mercantile.Tile(k[1], k[2], k[0])) for k in kids] == \
        [mercantile.Tile(50, 101, 17)] * 4
    assert sorted([(1, 1), (0, 0), (1, 0), (0, 1)], key=lambda t: morton(*t)) == \
        [(0, 0), (1, 0), (0, 1), (1, 1)]


@pytest.mark.parametrize("zxy", [(-1, 0, 0), (25, 0, 0), (2, 4, 0), (2, 0, -1), (1.5, 0, 0)])
def test_check_tile_rejects(zxy):
    with pytest.raises(InvalidTileError):
        check_tile(*zxy)


def test_ground_resolution_equator():
    assert ground_resolution(0, 0.0) == pytest.approx(2 * math.pi * 6378137 / 256)


def test_lonlat_from_mercator_inverts_mercantile_and_proj():
    import numpy as np
    from rasterio.warp import transform

    from tiles.grid import lonlat_from_mercator

    lon = np.array([-179.9, -94.5, 0.0, 24.3, 179.9])
    lat = np.array([-85.0, 37.1, 0.0, 13.4, 84.9])
    x, y = transform("EPSG:4326", "EPSG:3857", lon, lat)
    got_lon, got_lat = lonlat_from_mercator(np.array(x), np.array(y))
    assert np.allclose(got_lon, lon, atol=1e-9) and np.allclose(got_lat, lat, atol=1e-9)
    for (gx, gy), (lo, la) in zip(zip(x, y), zip(got_lon, got_lat)):
        ref = mercantile.lnglat(gx, gy)
        assert abs(ref.lng - lo) < 1e-9 and abs(ref.lat - la) < 1e-9
    nan_lon, nan_lat = lonlat_from_mercator(np.array([np.inf]), np.array([np.nan]))
    assert not np.isfinite(nan_lon).any() and not np.isfinite(nan_lat).any()
