from __future__ import annotations

import numpy as np
import pytest

from consensus import VotesError, cluster_points, group_villages, tile_bounds
from consensus.geo import LocalProjection
from consensus.points import structure_confidence


def _offset(lon, lat, dx_m, dy_m):
    p = LocalProjection(lon, lat)
    lo, la = p.inverse(np.array([[dx_m, dy_m]]))
    return lo[0], la[0]


def test_local_projection_round_trip_and_scale():
    p = LocalProjection(-94.49, 37.07)
    lo, la = p.inverse(np.array([[100.0, -50.0]]))
    assert np.allclose(p.forward(lo, la), [[100.0, -50.0]])
    # 1 degree of latitude ~ 111.2 km
    assert p.forward(np.array([-94.49]), np.array([38.07]))[0, 1] == pytest.approx(111_195, rel=1e-3)


def test_tile_bounds_match_web_mercator():
    b = tile_bounds(np.array([[1, 0, 0], [19, 124850, 203152]]))
    assert b[0].tolist() == pytest.approx([-180.0, 0.0, 0.0, 85.0511287798066])
    assert b[1] == pytest.approx([-94.27230834960938, 37.50046568237061,
                                  -94.27162170410156, 37.50101042949326])


def _clicks(centres_m, per=5, sd=1.2, seed=0, lon0=-94.49, lat0=37.07):
    rng = np.random.default_rng(seed)
    pts, workers, tasks = [], [], []
    for c in centres_m:
        for v in range(per):
            pts.append(_offset(lon0, lat0, c[0] + rng.normal(0, sd), c[1] + rng.normal(0, sd)))
            workers.append(f"v{v}")
            tasks.append("19-1-2")
    return np.array(pts), workers, tasks


def test_clusters_buildings_in_metres():
    pts, w, t = _clicks([(0, 0), (30, 0), (0, 30)])
    s = cluster_points(pts, w, t, {"19-1-2": 6}, eps_m=5, min_samples=2)
    assert len(s) == 3
    assert s.n_support.tolist() == [5, 5, 5] and s.n_seen.tolist() == [6, 6, 6]
    assert s.support == pytest.approx([5 / 6] * 3)
    # median location within a couple of metres of the true building
    p = LocalProjection(-94.49, 37.07)
    xy = p.forward(s.lon, s.lat)
    truth = np.array([(0, 0), (0, 30), (30, 0)], float)
    d = np.min(np.hypot(*(xy[:, None, :] - truth[None]).transpose(2, 0, 1)), axis=1)
    assert (d < 2.0).all()


def test_eps_is_metres_not_degrees_at_high_latitude():
    # two clicks 4 m apart east-west at 70 N are 0.0001 deg apart (11 m "in degrees")
    lon0, lat0 = 20.0, 70.0
    a = (lon0, lat0)
    b = _offset(lon0, lat0, 4.0, 0.0)
    s = cluster_points(np.array([a, b]), ["x", "y"], ["t", "t"], {"t": 2}, eps_m=5)
    assert len(s) == 1
    s = cluster_points(np.array([a, b]), ["x", "y"], ["t", "t"], {"t": 2}, eps_m=3)
    assert len(s) == 0


def test_one_point_per_volunteer_per_structure():
    pts, w, t = _clicks([(0, 0)], per=3)
    extra = _offset(-94.49, 37.07, 0.5, 0.5)
    pts = np.vstack([pts, [extra]])
    w = w + ["v0"]                     # v0 clicked twice on the same building
    t = t + ["19-1-2"]
    s = cluster_points(pts, w, t, {"19-1-2": 3}, eps_m=5)
    assert len(s) == 1 and s.n_support.tolist() == [3] and s.support.tolist() == [1.0]
    assert (s.point_structure == -1).sum() == 1


def test_two_close_buildings_merged_by_dbscan_are_split_again():
    # 6 m apart with eps 5 m and sloppy clicks: one DBSCAN cluster holding two clicks per
    # volunteer; the second pass recovers the second building
    pts, w, t = _clicks([(0, 0), (6, 0)], per=4, sd=0.3)
    s = cluster_points(pts, w, t, {"19-1-2": 4}, eps_m=5)
    assert len(s) == 2 and s.n_support.tolist() == [4, 4]


def test_confidence_uses_skills_and_non_markers():
    assert structure_confidence([0.9, 0.9], n_seen=2) > structure_confidence([0.6, 0.6], 2)
    assert structure_confidence([0.9, 0.9], n_seen=10) < 0.5      # 8 of 10 saw nothing
    pts, w, t = _clicks([(0, 0)], per=3)
    hi = cluster_points(pts, w, t, {"19-1-2": 3}, {"v0": .95, "v1": .95, "v2": .95})
    lo = cluster_points(pts, w, t, {"19-1-2": 3}, {"v0": .55, "v1": .55, "v2": .55})
    assert hi.confidence[0] > lo.confidence[0]


def test_points_validation():
    with pytest.raises(VotesError, match="same length"):
        cluster_points(np.zeros((2, 2)), ["a"], ["t", "t"], {})
    with pytest.raises(VotesError, match="lon/lat"):
        cluster_points(np.array([[37.0, 500000.0]]), ["a"], ["t"], {})


def test_damage_labels_majority():
    pts, w, t = _clicks([(0, 0)], per=3)
    s = cluster_points(pts, w, t, {"19-1-2": 3}, labels=["destroyed", "destroyed", "damaged"])
    assert s.damage.tolist() == ["destroyed"]


def _grid(z=18, x0=61000, y0=101000, n=12):
    xyz = np.array([(z, x0 + i, y0 + j) for j in range(n) for i in range(n)])
    return xyz, tile_bounds(xyz)


def test_villages_group_damaged_tiles_and_count_share():
    xyz, b = _grid()
    ans = np.array(["no"] * len(xyz), dtype=object)
    # an L-shaped damaged patch (convex hull also covers one intact tile) far from a second one
    for (i, j) in [(1, 1), (2, 1), (1, 2)]:
        ans[j * 12 + i] = "yes"
    for (i, j) in [(9, 9), (10, 9)]:
        ans[j * 12 + i] = "yes"
    ans[0] = "bad_imagery"
    conf = np.full(len(xyz), 0.9)
    v = group_villages(b, ans, conf, eps_m=250)
    assert len(v) == 2
    assert v.n_damaged_tiles.tolist() == [3, 2]
    assert v.n_tiles[0] >= 3 and v.n_tiles[1] == 2
    assert v.share_damaged[1] == 1.0
    for g in v.outline:
        assert g.is_valid and g.exterior.is_ccw
    # members point back to their village
    assert v.tile_village[1 * 12 + 1] == 0 and v.tile_village[9 * 12 + 10] == 1


def test_villages_with_structures_and_counts():
    xyz, b = _grid()
    ans = np.array(["no"] * len(xyz), dtype=object)
    ans[5 * 12 + 5] = "yes"
    cx, cy = (b[5 * 12 + 5, 0] + b[5 * 12 + 5, 2]) / 2, (b[5 * 12 + 5, 1] + b[5 * 12 + 5, 3]) / 2
    pts, w, t = _clicks([(0, 0), (40, 0), (0, 40)], per=3, lon0=cx, lat0=cy)
    s = cluster_points(pts, w, t, {"19-1-2": 3},
                       labels=["destroyed"] * 3 + ["intact"] * 3 + ["damaged"] * 3)
    v = group_villages(b, ans, np.full(len(xyz), 0.8), s, eps_m=200)
    assert len(v) == 1
    assert (v.n_structures[0], v.n_intact[0], v.n_damaged[0], v.n_destroyed[0]) == (3, 1, 1, 1)
    assert (v.structure_village == 0).all()
    assert v.n_volunteers.tolist() == [-1]


def test_villages_none_and_validation():
    xyz, b = _grid(n=2)
    v = group_villages(b, ["no"] * 4, np.ones(4))
    assert len(v) == 0
    with pytest.raises(VotesError):
        group_villages(b, ["no"] * 3, np.ones(4))
