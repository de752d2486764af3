"""Helpers for bench/consensus.py: realistic simulated volunteers and the Joplin tile truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from consensus import aggregate
from consensus.simulate import simulate_votes, volunteer_confusions

from ._crowd import crowd_root, datasets, load

BINARY = ("snow2008_rte", "snow2008_temp", "welinder2010_bluebirds", "zheng2017_d_jn-product")


def skill_pool(min_labels: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, n_labels) of every volunteer with >= min_labels answers, as estimated by our
    Dawid-Skene on the shared binary crowd datasets."""
    accs, ns = [], []
    for name in datasets():
        if name not in BINARY:
            continue
        v, _, _ = load(name)
        r = aggregate(v, "ds")
        m = r.worker_n_labels >= min_labels
        accs.append(r.accuracy[m])
        ns.append(r.worker_n_labels[m])
    if not accs:
        raise FileNotFoundError(f"no shared crowd datasets under {crowd_root()}")
    return np.concatenate(accs), np.concatenate(ns)


def volunteers(n: int, seed: int, pool: tuple[np.ndarray, np.ndarray], *, n_classes: int = 2,
               maybe_rate: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """n simulated volunteers drawn from the pool: confusions (n, K, K+1 with 'maybe') and an
    activity weight (their answer counts in the source data: a heavy-tailed crowd)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pool[0]), n)
    acc = np.clip(pool[0][idx], 0.5, 0.995)
    conf = volunteer_confusions(acc, n_classes, n_labels=n_classes + 1, maybe_rate=maybe_rate)
    return conf, pool[1][idx].astype(np.float64)


def joplin_truth(shared: Path, zoom: int = 19, damaged_from: int = 3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Tiles at ``zoom`` over the Joplin scene and their pseudo-truth: 1 ("yes", damaged) when a
    building footprint in the tile is covered by an xView2 damage polygon with dmg >=
    ``damaged_from`` (3 = major, 4 = destroyed), else 0. Returns (xyz (n, 3), truth (n,))."""
    import mercantile
    import shapely
    vec = shared / "imagery" / "joplin_tornado" / "vectors"
    dmg = json.loads((vec / "xview2_model_damage.geojson").read_text())["features"]
    fp = json.loads((vec / "joplin_building_footprints.geojson").read_text())["features"]
    dgeom = shapely.from_geojson([json.dumps(f["geometry"]) for f in dmg])
    dval = np.array([f["properties"]["dmg"] for f in dmg])
    fgeom = shapely.from_geojson([json.dumps(f["geometry"]) for f in fp])
    damaged = dgeom[dval >= damaged_from]
    # footprints hit by a damaged polygon, plus damaged polygons themselves (2011 buildings
    # that were gone by 2020)
    tree = shapely.STRtree(damaged)
    hit = np.unique(tree.query(fgeom, predicate="intersects")[0])
    dam_geoms = np.concatenate([fgeom[hit], damaged])
    w, s, e, n = -94.5003, 37.0663, -94.4862, 37.0776
    tiles = list(mercantile.tiles(w, s, e, n, zooms=[zoom]))
    xyz = np.array([(t.z, t.x, t.y) for t in tiles], dtype=np.int64)
    boxes = shapely.box(*np.array([list(mercantile.bounds(t)) for t in tiles]).T)
    t2 = shapely.STRtree(boxes)
    ti = np.unique(t2.query(dam_geoms, predicate="intersects")[1])
    truth = np.zeros(len(tiles), dtype=np.int64)
    truth[ti] = 1
    return xyz, truth


def simulate(truth: np.ndarray, conf: np.ndarray, activity: np.ndarray, per_task: int,
             seed: int, xyz: np.ndarray | None = None):
    return simulate_votes(truth, conf, per_task, seed=seed, classes=("no", "yes"),
                          labels=("no", "yes", "maybe"), tile_xyz=xyz, activity=activity)
