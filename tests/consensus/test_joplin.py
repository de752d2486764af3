"""Points and villages on the real Joplin footprints (skips without ../shared)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from consensus import Votes, aggregate, cluster_points, group_villages, tile_bounds
from consensus.geo import LocalProjection

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def footprints(imagery_dir):
    path = imagery_dir / "joplin_tornado" / "vectors" / "joplin_building_footprints.geojson"
    if not path.exists():
        pytest.skip(f"{path} missing")
    feats = json.loads(path.read_text())["features"]
    geoms = shapely.from_geojson([json.dumps(f["geometry"]) for f in feats])
    c = shapely.get_coordinates(shapely.centroid(geoms))
    # buildings inside the imagery block
    m = (c[:, 0] > -94.5003) & (c[:, 0] < -94.4862) & (c[:, 1] > 37.0663) & (c[:, 1] < 37.0776)
    return c[m]


def test_structures_from_simulated_clicks_on_real_buildings(footprints):
    rng = np.random.default_rng(0)
    bld = footprints[:300]
    proj = LocalProjection.around(bld[:, 0], bld[:, 1])
    xy = proj.forward(bld[:, 0], bld[:, 1])
    pts, workers = [], []
    for w in range(5):
        hit = rng.random(len(bld)) < 0.9
        clicks = xy[hit] + rng.normal(0, 1.0, (hit.sum(), 2))
        pts.append(clicks)
        workers += [f"w{w}"] * len(clicks)
    pts = np.vstack(pts)
    lon, lat = proj.inverse(pts)
    s = cluster_points(np.column_stack([lon, lat]), workers, ["t"] * len(pts), {"t": 5},
                       eps_m=3.0, min_samples=3)
    found = proj.forward(s.lon, s.lat)
    d = np.hypot(*(xy[:, None, :] - found[None, :, :]).transpose(2, 0, 1)).min(1)
    assert (d < 2.0).mean() > 0.9                 # >90 % of buildings recovered within 2 m
    assert len(s) <= len(bld)                     # no spurious duplicates
    assert (s.n_support <= 5).all() and (s.support <= 1).all()


def test_villages_from_joplin_tiles(footprints):
    import mercantile

    tiles = list(mercantile.tiles(-94.5003, 37.0663, -94.4862, 37.0776, zooms=[18]))
    xyz = np.array([(t.z, t.x, t.y) for t in tiles])
    b = tile_bounds(xyz)
    # "damaged" where the tile holds many buildings: a stand-in answer pattern on the real grid
    counts = np.array([((footprints[:, 0] >= w) & (footprints[:, 0] < e) & (footprints[:, 1] >= s)
                        & (footprints[:, 1] < n)).sum() for w, s, e, n in b])
    rows = [(f"{z}-{x}-{y}", f"w{k}", "yes" if c > np.median(counts) else "no")
            for (z, x, y), c in zip(xyz, counts) for k in range(3)]
    v = Votes.from_arrays(*zip(*rows))
    r = aggregate(v)
    vil = group_villages(tile_bounds(v.tile_xyz), r.answer_labels(), r.confidence, eps_m=200,
                         votes=v)
    assert len(vil) >= 1
    assert vil.n_damaged_tiles.sum() == (r.answer_labels() == "yes").sum()
    assert all(g.is_valid and g.exterior.is_ccw for g in vil.outline)
    assert (vil.n_volunteers == 3).all()
