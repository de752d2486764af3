"""The synthetic scene generator: georeferenced, deterministic, honest ground truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from ingest.synthetic import generate_scene


def _digest(path: Path) -> str:
    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("scene"), size=256, seed=3)


def test_tiny_scene_files_and_georeferencing(tiny):
    with rasterio.open(tiny.before) as b, rasterio.open(tiny.after) as a:
        assert b.crs.to_epsg() == 32635 and a.crs.to_epsg() == 4326
        assert (b.width, b.height, b.count, b.dtypes[0]) == (256, 256, 3, "uint8")
        assert b.res == (0.5, 0.5)
        assert a.nodata == 0
        # both layers cover the same ground (the after grid is shifted, not elsewhere)
        from rasterio.warp import transform_bounds
        bw, bs, be, bn = transform_bounds(b.crs, "EPSG:4326", *b.bounds)
        aw, as_, ae, an = a.bounds
        overlap = (min(be, ae) - max(bw, aw)) * (min(bn, an) - max(bs, as_))
        assert overlap > 0.9 * (be - bw) * (bn - bs)
    w, s, e, n = tiny.bounds_lonlat
    assert 24.0 < w < e < 24.6 and 13.1 < s < n < 13.7


def test_truth_is_rfc7946_points_with_states(tiny):
    fc = json.loads(tiny.truth.read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    feats = fc["features"]
    assert feats, "the tiny scene must still have structures"
    states = {f["properties"]["state"] for f in feats}
    assert states <= {"intact", "damaged", "destroyed"} and "destroyed" in states
    w, s, e, n = tiny.bounds_lonlat
    for f in feats:
        lon, lat = f["geometry"]["coordinates"]
        assert f["geometry"]["type"] == "Point"
        assert w <= lon <= e and s <= lat <= n
        assert f["properties"]["village"].startswith("v")
    assert len({f["properties"]["id"] for f in feats}) == len(feats)


def test_destroyed_huts_are_dark_in_after_and_not_before(tiny):
    """The truth points land on roofs in 'before' and on scorch marks in 'after'."""
    fc = json.loads(tiny.truth.read_text())
    with rasterio.open(tiny.before) as b, rasterio.open(tiny.after) as a:
        bimg, aimg = b.read().mean(axis=0), a.read().mean(axis=0)
        from rasterio.warp import transform
        for f in fc["features"]:
            lon, lat = f["geometry"]["coordinates"]
            (x,), (y,) = transform("EPSG:4326", b.crs, [lon], [lat])
            br, bc = b.index(x, y)
            ar, ac = a.index(lon, lat)
            before_v = bimg[br - 1:br + 2, bc - 1:bc + 2].mean()
            after_v = aimg[ar - 1:ar + 2, ac - 1:ac + 2].mean()
            assert before_v > 100  # a thatch roof
            if f["properties"]["state"] == "destroyed":
                assert after_v < 60
            elif f["properties"]["state"] == "intact":
                assert after_v > 100


def test_deterministic_per_seed(tmp_path):
    a = generate_scene(tmp_path / "a", size=128, seed=7)
    b = generate_scene(tmp_path / "b", size=128, seed=7)
    c = generate_scene(tmp_path / "c", size=128, seed=8)
    assert _digest(a.before) == _digest(b.before) and _digest(a.after) == _digest(b.after)
    assert a.truth.read_text() == b.truth.read_text()
    assert _digest(a.before) != _digest(c.before)


def test_progress_callback_and_size_guard(tmp_path):
    seen = []
    generate_scene(tmp_path, size=96, progress=lambda d, t, s: seen.append((d, t, s)))
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    with pytest.raises(ValueError, match="at least 64"):
        generate_scene(tmp_path, size=10)


def test_cli_scene_generate(tmp_path):
    from crowdsight.cli import main

    res = CliRunner().invoke(main, ["scene", "generate", str(tmp_path / "s"), "--size", "128",
                                    "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "before.tif" in res.output
    assert (tmp_path / "s" / "truth.geojson").exists()
    with rasterio.open(tmp_path / "s" / "before.tif") as ds:
        assert ds.width == 128 and np.any(ds.read(1) > 0)
