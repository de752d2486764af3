"""Tiles + structures -> villages (settlements), one feature each.

Damaged tiles (answer in ``damaged``) and structures are clustered with DBSCAN at settlement
scale in metres. Each cluster becomes a village whose outline is the convex hull of its member
tiles and of its structures buffered by ``structure_buffer_m``. Every tile whose centre falls
inside the outline (damaged or not, bad imagery excluded) counts towards the share of damaged
tiles, so a village is not 100 % damaged just because only damaged tiles seeded it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import shapely

from .errors import VotesError
from .geo import LocalProjection
from .points import Structures
from .votes import Votes

#: Structure damage labels counted per village (others count as ``n_structures`` only).
DAMAGE_LEVELS: tuple[str, ...] = ("intact", "damaged", "destroyed")


@dataclass(eq=False)
class Villages:
    """One row per village. ``outline`` holds shapely Polygons in lon/lat; ``tile_village``
    and ``structure_village`` map members to villages (-1: none)."""

    outline: np.ndarray
    n_tiles: np.ndarray
    n_damaged_tiles: np.ndarray
    share_damaged: np.ndarray
    n_structures: np.ndarray
    n_intact: np.ndarray
    n_damaged: np.ndarray
    n_destroyed: np.ndarray
    confidence: np.ndarray
    n_volunteers: np.ndarray
    tile_village: np.ndarray
    structure_village: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.outline.shape[0])


def group_villages(bounds: np.ndarray, answer: Sequence[str], confidence: np.ndarray,
                   structures: Structures | None = None, *, damaged: Sequence[str] = ("yes",),
                   ignore: Sequence[str] = ("bad_imagery",), eps_m: float = 250.0,
                   min_samples: int = 1, structure_buffer_m: float = 15.0,
                   votes: Votes | None = None) -> Villages:
    """Group damaged tiles and structures into villages.

    Args:
        bounds: (n_tiles, 4) lon/lat ``west, south, east, north`` per tile
            (``consensus.geo.tile_bounds(result.tile_xyz)``).
        answer, confidence: per tile answer name and its posterior
            (``result.answer_labels()``, ``result.confidence``).
        structures: clustered structures (optional); their ``damage`` labels are counted.
        damaged: answers that mean "damaged" (seed villages, count in the share).
        ignore: answers excluded from the share of damaged tiles (bad imagery).
        eps_m, min_samples: DBSCAN on tile centres and structures, in metres.
        votes: the tiles' votes (task i = tile i) to count distinct volunteers per village;
            without it ``n_volunteers`` is -1.
    """
    from sklearn.cluster import DBSCAN

    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    ans = np.asarray(answer, dtype=object)
    conf = np.asarray(confidence, dtype=np.float64)
    T = b.shape[0]
    if ans.shape[0] != T or conf.shape[0] != T:
        raise VotesError("bounds, answer and confidence must have one entry per tile")
    if votes is not None and votes.n_tasks != T:
        raise VotesError("votes must have one task per tile (same order)")
    params = {"eps_m": eps_m, "min_samples": min_samples, "damaged": list(damaged),
              "structure_buffer_m": structure_buffer_m}
    S = len(structures) if structures is not None else 0
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    s_lon = structures.lon if structures is not None else np.empty(0)
    s_lat = structures.lat if structures is not None else np.empty(0)
    is_dam = np.isin(ans.astype(str), list(damaged))
    dam_idx = np.flatnonzero(is_dam)
    proj = LocalProjection.around(np.r_[cx[dam_idx], s_lon], np.r_[cy[dam_idx], s_lat])
    pts = proj.forward(np.r_[cx[dam_idx], s_lon], np.r_[cy[dam_idx], s_lat])
    tile_village = np.full(T, -1, dtype=np.int64)
    structure_village = np.full(S, -1, dtype=np.int64)
    empty = Villages(np.empty(0, dtype=object), *(np.empty(0, np.int64) for _ in range(2)),
                     np.empty(0), *(np.empty(0, np.int64) for _ in range(4)), np.empty(0),
                     np.empty(0, np.int64), tile_village, structure_village, params)
    if pts.shape[0] == 0:
        return empty
    lab = DBSCAN(eps=eps_m, min_samples=min_samples).fit(pts).labels_
    n_d = dam_idx.size
    # tile polygons in local metres
    bl = proj.forward(b[:, 0], b[:, 1])
    tr = proj.forward(b[:, 2], b[:, 3])
    tile_boxes = shapely.box(bl[:, 0], bl[:, 1], tr[:, 0], tr[:, 1])
    centres = shapely.points(proj.forward(cx, cy))
    usable = ~np.isin(ans.astype(str), list(ignore))
    clusters = [c for c in np.unique(lab) if c >= 0]
    geoms, rows = [], []
    for c in clusters:
        mem = np.flatnonzero(lab == c)
        t_mem = dam_idx[mem[mem < n_d]]
        s_mem = mem[mem >= n_d] - n_d
        parts = list(tile_boxes[t_mem])
        if s_mem.size:
            parts += list(shapely.buffer(shapely.points(pts[n_d + s_mem]), structure_buffer_m))
        hull = shapely.convex_hull(shapely.union_all(parts))
        if not isinstance(hull, shapely.Polygon) or hull.area <= 0:
            hull = shapely.buffer(hull, structure_buffer_m)
        inside = np.flatnonzero(shapely.contains(hull, centres) & usable)
        inside = np.union1d(inside, t_mem)
        geoms.append(hull)
        rows.append((c, inside, t_mem, s_mem))
    # deterministic village order: west to east
    order = sorted(range(len(rows)), key=lambda i: (round(geoms[i].centroid.x, 3),
                                                    round(geoms[i].centroid.y, 3)))
    V = len(order)
    out = {k: np.zeros(V, dtype=np.int64) for k in ("n_tiles", "n_damaged_tiles", "n_structures",
                                                     "n_intact", "n_damaged", "n_destroyed",
                                                     "n_volunteers")}
    share = np.zeros(V)
    vconf = np.zeros(V)
    outlines = np.empty(V, dtype=object)
    dmg_labels = (structures.damage if structures is not None and structures.damage is not None
                  else None)
    for j, i in enumerate(order):
        _, inside, t_mem, s_mem = rows[i]
        tile_village[inside] = j
        structure_village[s_mem] = j
        n_in = inside.size
        n_dam = int(is_dam[inside].sum())
        out["n_tiles"][j] = n_in
        out["n_damaged_tiles"][j] = n_dam
        share[j] = n_dam / n_in if n_in else 0.0
        out["n_structures"][j] = s_mem.size
        if dmg_labels is not None and s_mem.size:
            d = np.asarray(dmg_labels[s_mem]).astype(str)
            out["n_intact"][j] = int((d == "intact").sum())
            out["n_damaged"][j] = int((d == "damaged").sum())
            out["n_destroyed"][j] = int((d == "destroyed").sum())
        cs = list(conf[t_mem]) + (list(structures.confidence[s_mem]) if s_mem.size else [])
        vconf[j] = float(np.mean(cs)) if cs else 0.0
        if votes is not None:
            sel = np.isin(votes.task, inside)
            out["n_volunteers"][j] = int(np.unique(votes.worker[sel]).size)
        else:
            out["n_volunteers"][j] = -1
        g = geoms[i]
        lon, lat = proj.inverse(np.asarray(g.exterior.coords))
        outlines[j] = shapely.orient_polygons(shapely.Polygon(np.column_stack([lon, lat])))
    return Villages(outlines, out["n_tiles"], out["n_damaged_tiles"], share,
                    out["n_structures"], out["n_intact"], out["n_damaged"], out["n_destroyed"],
                    vconf, out["n_volunteers"], tile_village, structure_village, params)
