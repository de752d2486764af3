"""Mark-project points -> structures.

Volunteers click on buildings; clicks on the same building scatter by a few metres. We cluster
in metres (not pixels: tiles at different zooms and latitudes have different pixel sizes) with
scikit-learn's DBSCAN, keep at most one point per volunteer per cluster, and report for each
structure its median location, how many volunteers support it out of how many saw its tile,
and a confidence that uses the volunteers' skills.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import VotesError
from .geo import LocalProjection

Progress = Callable[[int, int], None]


@dataclass(eq=False)
class Structures:
    """Clustered structures (one entry per structure) and the point -> structure assignment.

    ``task`` holds the task id (as given) of the tile most of the structure's points came from;
    ``damage`` the majority of the points' damage labels when labels were given, else None.
    ``point_structure`` maps each input point to its structure (-1: noise or a volunteer's
    second click on the same structure).
    """

    lon: np.ndarray
    lat: np.ndarray
    task: np.ndarray
    n_support: np.ndarray
    n_seen: np.ndarray
    support: np.ndarray
    confidence: np.ndarray
    damage: np.ndarray | None
    point_structure: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.lon.shape[0])


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def structure_confidence(supporter_skills: np.ndarray, n_seen: int,
                         default_skill: float = 0.7) -> float:
    """P(structure is real) from naive-Bayes evidence, prior odds 1:1.

    Each supporting volunteer w adds logit(s_w); each volunteer who saw the tile but did not
    mark it subtracts logit(default_skill) (their identities are not needed). Skills are
    clipped to [0.5, 0.99]: a volunteer worse than chance carries no evidence.
    """
    s = np.clip(np.asarray(supporter_skills, dtype=np.float64), 0.5, 0.99)
    d = float(np.clip(default_skill, 0.5, 0.99))
    n_against = max(int(n_seen) - len(s), 0)
    lo = float(_logit(s).sum()) - n_against * float(_logit(np.array(d)))
    return float(1.0 / (1.0 + np.exp(-lo)))


def _split_by_volunteer(idx: np.ndarray, xy: np.ndarray, w_idx: np.ndarray,
                        min_sep: float) -> list[np.ndarray]:
    """A DBSCAN cluster in which some volunteer clicked k times may chain k neighbouring
    buildings: split it into k groups with k-means (deterministic seed) when the group centres
    lie at least ``min_sep`` metres apart (else it is one building clicked twice)."""
    k = int(np.bincount(w_idx[idx]).max())
    if k <= 1 or idx.size <= k:
        return [idx]
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=4, random_state=0).fit(xy[idx])
    c = km.cluster_centers_
    d = np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1))
    if d[np.triu_indices(k, 1)].min() < min_sep:
        return [idx]
    lab = km.labels_
    return [idx[lab == j] for j in range(k) if (lab == j).any()]


def cluster_points(points_lonlat: np.ndarray, worker: Sequence, task: Sequence,
                   seen_by: Mapping[Any, int], skills: Mapping[Any, float] | None = None, *,
                   eps_m: float = 5.0, min_samples: int = 2, default_skill: float = 0.7,
                   labels: Sequence[str] | None = None, max_passes: int = 3,
                   progress: Progress | None = None) -> Structures:
    """Cluster marked points into structures.

    Args:
        points_lonlat: (n, 2) lon/lat of every click.
        worker, task: per point, the volunteer id and the task (tile) id it was made on.
        seen_by: task id -> number of volunteers who saw that tile (marked or not).
        skills: volunteer id -> skill in [0, 1] (e.g. ``TileResult.accuracy`` by worker id);
            missing volunteers get ``default_skill``.
        eps_m: DBSCAN neighbourhood radius in metres (clicks on one building).
        min_samples: minimum number of distinct volunteers for a structure.
        labels: optional per-point damage label (``intact``/``damaged``/``destroyed``).
        max_passes: a cluster where a volunteer clicked k times is split into k groups by
            k-means; clicks still left over are re-clustered in up to this many passes.
    """
    from sklearn.cluster import DBSCAN

    pts = np.asarray(points_lonlat, dtype=np.float64).reshape(-1, 2)
    n = pts.shape[0]
    worker_a = np.asarray(worker)
    task_a = np.asarray(task)
    if worker_a.shape[0] != n or task_a.shape[0] != n:
        raise VotesError("points, worker and task must have the same length")
    if labels is not None and len(labels) != n:
        raise VotesError("labels must have one entry per point")
    if eps_m <= 0 or min_samples < 1:
        raise VotesError("eps_m must be > 0 and min_samples >= 1")
    if n and (np.abs(pts[:, 1]) > 90).any():
        raise VotesError("points must be lon/lat (latitude beyond +-90 found)")
    params = {"eps_m": eps_m, "min_samples": min_samples, "default_skill": default_skill,
              "max_passes": max_passes}
    _, w_idx = np.unique(worker_a, return_inverse=True) if n else (None, np.empty(0, int))
    w_idx = np.asarray(w_idx).reshape(-1)
    proj = LocalProjection.around(pts[:, 0], pts[:, 1])
    xy = proj.forward(pts[:, 0], pts[:, 1])
    point_structure = np.full(n, -1, dtype=np.int64)
    members: list[np.ndarray] = []
    remaining = np.arange(n)
    for p in range(max_passes):
        if remaining.size < min_samples or remaining.size == 0:
            break
        lab = DBSCAN(eps=eps_m, min_samples=min_samples).fit(xy[remaining]).labels_
        leftovers: list[np.ndarray] = []
        order = np.argsort(lab, kind="stable")
        lab_s = lab[order]
        bounds = np.flatnonzero(np.diff(lab_s)) + 1
        for grp in np.split(order, bounds):
            if grp.size == 0 or lab[grp[0]] < 0:
                continue
            for idx in _split_by_volunteer(remaining[grp], xy, w_idx, eps_m):
                med = np.median(xy[idx], axis=0)
                dist = np.hypot(*(xy[idx] - med).T)
                # one point per volunteer: the one nearest the cluster median
                o = np.lexsort((idx, dist, w_idx[idx]))
                ws = w_idx[idx][o]
                first = np.r_[True, ws[1:] != ws[:-1]]
                keep = idx[o][first]
                extra = idx[o][~first]
                if extra.size:
                    leftovers.append(extra)
                if keep.size >= min_samples:
                    members.append(np.sort(keep))
                else:
                    leftovers.append(keep)
        if progress:
            progress(p + 1, max_passes)
        if not leftovers:
            break
        remaining = np.sort(np.concatenate(leftovers))
    S = len(members)
    lon = np.empty(S)
    lat = np.empty(S)
    task_out = np.empty(S, dtype=object)
    n_sup = np.empty(S, dtype=np.int64)
    n_seen = np.empty(S, dtype=np.int64)
    conf = np.empty(S)
    damage = np.empty(S, dtype=object) if labels is not None else None
    skills = skills or {}
    lab_arr = np.asarray(labels, dtype=object) if labels is not None else None
    # deterministic structure order: west to east, then south to north
    meds = [np.median(xy[m], axis=0) for m in members]
    order_s = sorted(range(S), key=lambda i: (round(meds[i][0], 6), round(meds[i][1], 6)))
    for j, i in enumerate(order_s):
        m = members[i]
        point_structure[m] = j
        lo, la = proj.inverse(meds[i][None, :])
        lon[j], lat[j] = lo[0], la[0]
        tvals, tcounts = np.unique(task_a[m], return_counts=True)
        t = tvals[np.argmax(tcounts)]
        task_out[j] = t.item() if hasattr(t, "item") else t
        n_sup[j] = len(m)
        seen = seen_by.get(task_out[j], seen_by.get(str(task_out[j]), 0))
        n_seen[j] = max(int(seen), len(m))
        sk = np.array([float(skills.get(w.item() if hasattr(w, "item") else w, default_skill))
                       for w in worker_a[m]])
        conf[j] = structure_confidence(sk, int(n_seen[j]), default_skill)
        if damage is not None and lab_arr is not None:
            dv, dc = np.unique(lab_arr[m].astype(str), return_counts=True)
            damage[j] = str(dv[np.argmax(dc)])
    support = n_sup / np.maximum(n_seen, 1)
    return Structures(lon, lat, task_out, n_sup, n_seen, support, conf, damage,
                      point_structure, params)
