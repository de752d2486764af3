"""Project results: the ONE place that reads votes, tiles and expert reviews from the database,
runs :mod:`consensus` and produces tile / structure / village / volunteer results.

Used by the analyst dashboard (map, charts, tables, downloads), ``crowdsight export`` and the
researcher pages (promote confident tiles to gold, the quality-control sample), so every view of
a project's results agrees.

Flow::

    load_project_data(conn, slug)        -> ProjectData   (plain rows, one read transaction)
    compute_results(data, method=...)    -> ProjectResults (tiles, structures, villages, volunteers)
    write_export(results, layer, fmt, fp)                  (via consensus' export writers)
    progress_stats(data, results)        -> dict           (time series for the charts)

Rules that every output follows:

* an expert decision (``review_decisions``) overrides the crowd: ``answer`` = the decision,
  ``confidence`` = 1.0, ``source`` = ``"expert"``, the crowd's answer kept as ``crowd_answer``;
* volunteers appear only as keyed pseudonyms (HMAC with the server secret), and only in the
  volunteer table and a tile's vote list — never in tile / structure / village exports.
"""

from __future__ import annotations

import functools
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa

from labeler.errors import NotFound, ValidationError

Progress = Callable[[int, int], None]

LAYERS = ("tiles", "structures", "villages", "volunteers")
FORMATS = ("geojson", "csv", "gpkg")
SHEET_FORMATS = ("png", "pdf")
MEDIA_TYPES = {
    "geojson": "application/geo+json",
    "csv": "text/csv; charset=utf-8",
    "gpkg": "application/geopackage+sqlite3",
    "png": "image/png",
    "pdf": "application/pdf",
}


class ResultsError(ValidationError):
    """A results/export request cannot be served as asked (bad layer, format or method)."""

    code = "results_error"


# --------------------------------------------------------------------------------------------
# Raw data


@dataclass(frozen=True)
class ProjectData:
    """Everything results need, read in one transaction (plain Python values)."""

    project: dict[str, Any]
    tiles: list[dict[str, Any]]  # id, z, x, y, west..north, state, gold_answer, retired_at, ...
    labels: list[dict[str, Any]]  # tile_id, volunteer (public id), answer, points, skipped, ...
    reviews: dict[int, dict[str, Any]]  # tile_id -> decision row
    audit: list[dict[str, Any]] = field(default_factory=list)  # review/gold actions on tiles
    exports_restricted: bool = False

    @property
    def answer_values(self) -> list[str]:
        return [a["value"] for a in (self.project.get("answers") or [])]


def _tables() -> dict[str, sa.Table]:
    from labeler.dashboard.models import ProjectAccess, ReviewDecision
    from labeler.models import AuditLog, Label, Project, Tile, Volunteer

    return {
        "projects": Project.__table__, "tiles": Tile.__table__, "labels": Label.__table__,
        "volunteers": Volunteer.__table__, "reviews": ReviewDecision.__table__,
        "access": ProjectAccess.__table__, "audit": AuditLog.__table__,
    }


def find_project(conn: sa.Connection, slug: str) -> dict[str, Any]:
    t = _tables()["projects"]
    row = conn.execute(sa.select(t).where(t.c.slug == slug)).mappings().first()
    if row is None:
        raise NotFound(f"no project {slug!r}; list projects with GET /api/analyst/projects",
                       field="project")
    return _norm(row)


def load_project_data(conn: sa.Connection, slug: str, *, with_audit: bool = True) -> ProjectData:
    """Read a project's tiles, labels, expert decisions (and tile audit entries)."""
    t = _tables()
    project = find_project(conn, slug)
    pid = project["id"]
    tc = t["tiles"].c
    tiles = [_norm(r) for r in conn.execute(
        sa.select(tc.id, tc.z, tc.x, tc.y, tc.west, tc.south, tc.east, tc.north, tc.state,
                  tc.gold_answer, tc.tutorial, tc.retired_at, tc.layers, tc.label_count)
        .where(tc.project_id == pid).order_by(tc.id)
    ).mappings()]
    lc, vc = t["labels"].c, t["volunteers"].c
    labels = [_norm(r) for r in conn.execute(
        sa.select(lc.id, lc.tile_id, vc.public_id.label("volunteer"), lc.answer, lc.points,
                  lc.skipped, lc.flag_note, lc.is_gold, lc.correct, lc.time_spent_ms,
                  lc.created_at)
        .select_from(t["labels"].join(t["volunteers"], vc.id == lc.volunteer_id))
        .where(lc.project_id == pid).order_by(lc.id)
    ).mappings()]
    rc = t["reviews"].c
    reviews = {r["tile_id"]: _norm(r) for r in conn.execute(
        sa.select(rc.tile_id, rc.answer, rc.note, rc.source, rc.crowd_answer, rc.crowd_confidence,
                  rc.decided_by, rc.decided_at).where(rc.project_id == pid)
    ).mappings()}
    ac = t["access"].c
    acc = conn.execute(sa.select(ac.exports_restricted).where(ac.project_id == pid)).first()
    audit: list[dict[str, Any]] = []
    if with_audit:
        au = t["audit"].c
        audit = [_norm(r) for r in conn.execute(
            sa.select(au.at, au.action, au.target, au.details)
            .where(au.target.like("tile:%"), au.action.like("review.%") | au.action.like("gold%")
                   | au.action.like("tile.%"))
            .order_by(au.at)
        ).mappings()]
        tile_ids = {tt["id"] for tt in tiles}
        audit = [a for a in audit if _audit_tile(a) in tile_ids]
    return ProjectData(project=project, tiles=tiles, labels=labels, reviews=reviews, audit=audit,
                       exports_restricted=bool(acc.exports_restricted) if acc else False)


def _naive(d: Any) -> Any:
    """Naive UTC datetimes everywhere (backends differ in what they hand back)."""
    if isinstance(d, datetime) and d.tzinfo is not None:
        return d.astimezone(UTC).replace(tzinfo=None)
    return d


_TIME_KEYS = ("created_at", "updated_at", "retired_at", "decided_at", "at")


def _norm(row: Any) -> dict[str, Any]:
    d = dict(row)
    for k in _TIME_KEYS:
        v = d.get(k)
        if v is not None and v.tzinfo is not None:
            d[k] = v.astimezone(UTC).replace(tzinfo=None)
    return d


def _audit_tile(entry: Mapping[str, Any]) -> int | None:
    try:
        return int(str(entry["target"]).split(":", 1)[1])
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class TileOut:
    tile_id: int
    z: int
    x: int
    y: int
    bounds: tuple[float, float, float, float]
    state: str
    answer: str | None  # final answer (expert decision when there is one)
    confidence: float | None
    posteriors: dict[str, float]
    n_votes: int
    agreement: float | None
    counts: dict[str, int]
    source: str | None  # "crowd" | "expert" | None (no votes)
    crowd_answer: str | None
    crowd_confidence: float | None
    gold_answer: str | None
    review: dict[str, Any] | None
    retired_at: datetime | None

    def properties(self) -> dict[str, Any]:
        """Flat, volunteer-free properties for the tile layer (GeoJSON/CSV/GPKG); names follow
        ``consensus.tile_layer`` (MapSwipe style) plus the labeler's state and reviews."""
        p: dict[str, Any] = {
            "tile_id": self.tile_id, "z": self.z, "x": self.x, "y": self.y,
            "answer": self.answer, "confidence": _r(self.confidence), "source": self.source,
        }
        for k, v in self.posteriors.items():
            p[_snake(f"p_{k}")] = _r(v)
        p["total_count"] = self.n_votes
        for k, v in self.counts.items():
            p[_snake(f"{k}_count")] = v
            p[_snake(f"{k}_share")] = _r(v / self.n_votes) if self.n_votes else 0.0
        p.update({
            "agreement": _r(self.agreement), "state": self.state,
            "retired_at": _iso(self.retired_at), "crowd_answer": self.crowd_answer,
            "crowd_confidence": _r(self.crowd_confidence), "gold_answer": self.gold_answer,
            "review_answer": self.review["answer"] if self.review else None,
        })
        return p


@functools.lru_cache(maxsize=4096)
def _snake(name: str) -> str:
    from consensus.export import snake

    return snake(name)


@dataclass
class VolunteerOut:
    volunteer: str  # keyed pseudonym
    n_votes: int
    n_skipped: int
    skill: float | None
    agreement: float | None  # share of the volunteer's answers equal to the final answer
    gold_seen: int
    gold_correct: int
    first_active: datetime | None
    last_active: datetime | None

    def row(self) -> dict[str, Any]:
        return {"volunteer": self.volunteer, "n_votes": self.n_votes, "n_skipped": self.n_skipped,
                "skill": _r(self.skill), "agreement": _r(self.agreement),
                "gold_seen": self.gold_seen, "gold_correct": self.gold_correct,
                "first_active": _iso(self.first_active), "last_active": _iso(self.last_active)}


@dataclass
class ProjectResults:
    project: dict[str, Any]
    method: str
    params: dict[str, Any]
    classes: tuple[str, ...]
    tiles: list[TileOut]
    structures: list[dict[str, Any]]  # {"geometry": shapely Point, "properties": {...}}
    villages: list[dict[str, Any]]  # {"geometry": shapely (Multi)Polygon, "properties": {...}}
    volunteers: list[VolunteerOut]
    computed_at: datetime
    software_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def tile(self, tile_id: int) -> TileOut:
        for t in self.tiles:
            if t.tile_id == tile_id:
                return t
        raise NotFound(f"no tile {tile_id} in project {self.project['slug']!r}", field="tile_id")

    def metadata(self, layer: str | None = None) -> dict[str, Any]:
        """Provenance stamped into every export (``consensus.export_metadata``)."""
        from consensus.export import export_metadata

        return export_metadata(self.project["slug"], layer=layer,
                               result=self.extra.get("result"), method=self.method,
                               parameters=self.params, generated=self.computed_at.replace(
                                   tzinfo=UTC),
                               project_name=self.project["name"],
                               project_type=self.project["type"],
                               expert_overrides=sum(1 for t in self.tiles
                                                    if t.source == "expert"))


def _r(v: float | None, nd: int = 4) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else round(f, nd)


def _iso(d: datetime | None) -> str | None:
    if d is None:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(UTC).replace(tzinfo=None)
    return d.isoformat(timespec="seconds") + "Z"


def methods() -> list[str]:
    from consensus.aggregate import METHODS

    return list(METHODS)


def default_method() -> str:
    from consensus.aggregate import DEFAULT_METHOD

    return DEFAULT_METHOD


def pseudonymizer(secret: str) -> Callable[[str], str]:
    """Keyed pseudonyms for volunteer ids (``consensus.pseudonym``: HMAC-SHA256, server secret)."""
    from consensus.export import pseudonym

    return lambda vid: pseudonym(vid, secret)


def _classes_for(data: ProjectData) -> tuple[list[str], list[str]]:
    """(classes, response-only labels) for the project's answers."""
    from consensus.votes import RESPONSE_ONLY

    values = data.answer_values
    if data.project["type"] == "mark":
        return ["none", "marked", "bad_imagery"], []
    ro = [v for v in values if v in RESPONSE_ONLY]
    cls = [v for v in values if v not in RESPONSE_ONLY]
    return cls, ro


def _vote_answer(project_type: str, label: Mapping[str, Any]) -> str | None:
    """The answer a label contributes to the tile vote (None: not a vote)."""
    if label["skipped"] or label["answer"] is None:
        return None
    if project_type == "mark" and label["answer"] == "marked":
        return "marked" if label.get("points") else "none"
    return str(label["answer"])


def compute_results(
    data: ProjectData,
    method: str | None = None,
    *,
    secret: str,
    progress: Progress | None = None,
    params: Mapping[str, Any] | None = None,
) -> ProjectResults:
    """Run consensus on the project's votes and build every result layer."""
    from consensus.aggregate import METHODS, aggregate
    from consensus.errors import ConsensusError
    from consensus.votes import Votes

    from crowdsight import __version__

    method = method or default_method()
    if method not in METHODS:
        raise ResultsError(f"unknown consensus method {method!r}; choose one of {sorted(METHODS)}",
                           field="method")
    ptype = data.project["type"]
    classes, response_only = _classes_for(data)
    allowed = set(classes) | set(response_only)
    tiles_by_id = {t["id"]: t for t in data.tiles}

    task, worker, label = [], [], []
    for lab in data.labels:
        a = _vote_answer(ptype, lab)
        if a is None or a not in allowed or lab["tile_id"] not in tiles_by_id:
            continue  # skips, answers no longer offered, tiles gone
        task.append(int(lab["tile_id"]))
        worker.append(str(lab["volunteer"]))
        label.append(a)

    result = None
    if task:
        ids = np.unique(np.asarray(task, dtype=np.int64))
        xyz = np.asarray([[tiles_by_id[i]["z"], tiles_by_id[i]["x"], tiles_by_id[i]["y"]]
                          for i in ids.tolist()], dtype=np.int64)
        voted = set(ids.tolist())
        gold = {t["id"]: t["gold_answer"] for t in data.tiles
                if t["gold_answer"] in classes and t["id"] in voted}
        try:
            votes = Votes.from_arrays(np.asarray(task, dtype=np.int64), np.asarray(worker),
                                      np.asarray(label), classes=classes,
                                      response_only=response_only, tile_xyz=xyz,
                                      gold=gold or None)
            result = aggregate(votes, method, progress=progress, **dict(params or {}))
        except ConsensusError as exc:
            raise ResultsError(f"consensus failed on this project's votes: {exc}",
                               field="method") from exc

    per_tile: dict[int, int] = {}
    if result is not None:
        per_tile = {int(tid): i for i, tid in enumerate(result.task_ids.tolist())}

    tiles_out: list[TileOut] = []
    for t in data.tiles:
        i = per_tile.get(t["id"])
        review = data.reviews.get(t["id"])
        if i is not None and result is not None:
            post = {c: float(result.posterior[i, k]) for k, c in enumerate(result.classes)}
            crowd_answer: str | None = result.classes[int(result.answer[i])]
            crowd_conf: float | None = float(result.posterior[i, int(result.answer[i])])
            n_votes = int(result.n_votes[i])
            ag = float(result.agreement[i])
            agreement = None if math.isnan(ag) else ag
            counts = {lab_: int(result.counts[i, k]) for k, lab_ in enumerate(result.labels)}
        else:
            post, crowd_answer, crowd_conf, n_votes, agreement = {}, None, None, 0, None
            counts = {lab_: 0 for lab_ in (classes + response_only)}
        answer, conf, source = crowd_answer, crowd_conf, ("crowd" if crowd_answer else None)
        if review is not None:
            answer, conf, source = review["answer"], 1.0, "expert"
        tiles_out.append(TileOut(
            tile_id=t["id"], z=t["z"], x=t["x"], y=t["y"],
            bounds=(t["west"], t["south"], t["east"], t["north"]), state=t["state"],
            answer=answer, confidence=conf, posteriors=post, n_votes=n_votes,
            agreement=agreement, counts=counts, source=source, crowd_answer=crowd_answer,
            crowd_confidence=crowd_conf, gold_answer=t["gold_answer"],
            review={k: (_iso(v) if isinstance(v, datetime) else v) for k, v in review.items()
                    if k != "tile_id"} if review else None,
            retired_at=t["retired_at"]))

    volunteers = _volunteers(data, tiles_out, result, secret)
    from consensus.export import structure_layer, village_layer

    cs_structures = _structures(data, result)
    cs_villages = _villages(data, tiles_out, cs_structures, classes)
    structures = _layer_features(structure_layer(cs_structures)) if cs_structures else []
    villages = _layer_features(village_layer(cs_villages)) if cs_villages else []
    for v in villages:
        v["properties"]["name"] = f"Village {v['properties']['village_id'] + 1}"
    return ProjectResults(
        project={k: data.project[k] for k in ("id", "slug", "name", "type", "status")},
        method=method, params=dict(result.params) if result is not None else {},
        classes=tuple(classes), tiles=tiles_out, structures=structures, villages=villages,
        volunteers=volunteers, computed_at=datetime.now(UTC).replace(tzinfo=None),
        software_version=__version__,
        extra={"layers": list(data.project.get("layers") or []), "result": result,
               "damaged_answers": _damaged_answers(data, classes)})


def _volunteers(data: ProjectData, tiles: Sequence[TileOut], result: Any,
                secret: str) -> list[VolunteerOut]:
    ps = pseudonymizer(secret)
    final = {t.tile_id: t.answer for t in tiles}
    skill: dict[str, float] = {}
    if result is not None:
        for i, w in enumerate(result.worker_ids.tolist()):
            a = float(result.accuracy[i])
            if not math.isnan(a):
                skill[str(w)] = a
    agg: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "n": 0, "skipped": 0, "agree": 0, "judged": 0, "gold_seen": 0, "gold_correct": 0,
        "first": None, "last": None})
    for lab in data.labels:
        v = agg[str(lab["volunteer"])]
        at = lab["created_at"]
        v["first"] = at if v["first"] is None or (at and at < v["first"]) else v["first"]
        v["last"] = at if v["last"] is None or (at and at > v["last"]) else v["last"]
        if lab["skipped"]:
            v["skipped"] += 1
            continue
        v["n"] += 1
        if lab["is_gold"] and lab["correct"] is not None:
            v["gold_seen"] += 1
            v["gold_correct"] += int(bool(lab["correct"]))
        a = _vote_answer(data.project["type"], lab)
        fa = final.get(lab["tile_id"])
        if a is not None and fa is not None:
            v["judged"] += 1
            v["agree"] += int(a == fa)
    out = [VolunteerOut(
        volunteer=ps(vid), n_votes=v["n"], n_skipped=v["skipped"], skill=skill.get(vid),
        agreement=(v["agree"] / v["judged"]) if v["judged"] else None,
        gold_seen=v["gold_seen"], gold_correct=v["gold_correct"],
        first_active=v["first"], last_active=v["last"]) for vid, v in agg.items()]
    out.sort(key=lambda r: (-r.n_votes, r.volunteer))
    return out


def _skills(result: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if result is not None:
        for i, w in enumerate(result.worker_ids.tolist()):
            a = float(result.accuracy[i])
            if not math.isnan(a):
                out[str(w)] = a
    return out


def _structures(data: ProjectData, result: Any) -> Any:
    """Mark projects: volunteers' points clustered into structures
    (``consensus.cluster_points``)."""
    if data.project["type"] != "mark":
        return None
    from consensus.points import cluster_points

    pts, worker, task = [], [], []
    seen: dict[int, set[str]] = defaultdict(set)
    for lab in data.labels:
        if lab["skipped"] or lab["answer"] in (None, "bad_imagery"):
            continue
        seen[lab["tile_id"]].add(str(lab["volunteer"]))
        for p in lab.get("points") or []:
            try:
                lon, lat = float(p[0]), float(p[1])
            except (TypeError, ValueError, IndexError):
                continue
            pts.append((lon, lat))
            worker.append(str(lab["volunteer"]))
            task.append(int(lab["tile_id"]))
    if not pts:
        return None
    return cluster_points(np.asarray(pts), worker, task, {k: len(v) for k, v in seen.items()},
                          _skills(result))


def _damaged_answers(data: ProjectData, classes: Sequence[str]) -> tuple[str, ...]:
    if data.project["type"] == "mark":
        return ("marked",)
    known = tuple(a for a in ("yes", "damaged", "destroyed") if a in classes)
    return known or (classes[0],)


def _villages(data: ProjectData, tiles: Sequence[TileOut], structures: Any,
              classes: Sequence[str]) -> Any:
    """Damaged tiles + structures -> villages (``consensus.group_villages``)."""
    from consensus.villages import group_villages
    from consensus.votes import Votes

    if not tiles:
        return None
    bounds = np.asarray([t.bounds for t in tiles], dtype=np.float64)
    answer = [t.answer if t.answer is not None else "" for t in tiles]
    conf = np.asarray([t.confidence if t.confidence is not None else 0.0 for t in tiles])
    index = {t.tile_id: i for i, t in enumerate(tiles)}
    workers: dict[str, int] = {}
    ti, wi = [], []
    for lab in data.labels:
        if lab["skipped"] or lab["tile_id"] not in index:
            continue
        ti.append(index[lab["tile_id"]])
        wi.append(workers.setdefault(str(lab["volunteer"]), len(workers)))
    votes = Votes.from_indices(np.asarray(ti, dtype=np.int64), np.asarray(wi, dtype=np.int64),
                               np.zeros(len(ti), dtype=np.int64), n_tasks=len(tiles),
                               n_workers=max(len(workers), 1), classes=1)
    return group_villages(bounds, answer, conf, structures,
                          damaged=_damaged_answers(data, classes),
                          ignore=("bad_imagery", ""), votes=votes)


def _layer_features(layer: Any) -> list[dict[str, Any]]:
    """A consensus ``Layer`` as ``[{"geometry": shapely, "properties": {...}}]``."""
    from consensus import num as _num

    names = list(layer.properties)
    return [{"geometry": g, "properties": {k: _num(layer.properties[k][i]) for k in names}}
            for i, g in enumerate(layer.geometry)]


# --------------------------------------------------------------------------------------------
# Progress statistics


def _bucket_key(d: datetime, bucket: str) -> datetime:
    if bucket == "hour":
        return d.replace(minute=0, second=0, microsecond=0)
    return d.replace(hour=0, minute=0, second=0, microsecond=0)


def _bucket_range(start: datetime, end: datetime, bucket: str, limit: int = 400) -> list[datetime]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    out, cur = [], _bucket_key(start, bucket)
    end = _bucket_key(end, bucket)
    while cur <= end and len(out) < limit:
        out.append(cur)
        cur += step
    return out


def progress_stats(data: ProjectData, results: ProjectResults | None = None, *,
                   bucket: str = "auto") -> dict[str, Any]:
    """Time series for the progress charts (UTC buckets), plus the agreement histogram.

    ``bucket``: ``day``, ``hour`` or ``auto`` (hours when all activity fits in two days).
    """
    if bucket not in ("day", "hour", "auto"):
        raise ResultsError("bucket must be day, hour or auto", field="bucket")
    stamps = [lab["created_at"] for lab in data.labels if lab["created_at"] is not None]
    stamps += [t["retired_at"] for t in data.tiles if t["retired_at"] is not None]
    if bucket == "auto":
        bucket = "hour" if stamps and (max(stamps) - min(stamps)) <= timedelta(days=2) else "day"
    keys = _bucket_range(min(stamps), max(stamps), bucket) if stamps else []
    index = {k: i for i, k in enumerate(keys)}
    n = len(keys)
    votes = [0] * n
    active: list[set[str]] = [set() for _ in range(n)]
    first_label: dict[int, datetime] = {}
    for lab in data.labels:
        at = lab["created_at"]
        if at is None:
            continue
        i = index.get(_bucket_key(at, bucket))
        if i is None:
            continue
        active[i].add(str(lab["volunteer"]))
        if lab["skipped"]:
            continue
        votes[i] += 1
        tid = lab["tile_id"]
        if tid not in first_label or at < first_label[tid]:
            first_label[tid] = at
    labelled_new = [0] * n
    for at in first_label.values():
        i = index.get(_bucket_key(at, bucket))
        if i is not None:
            labelled_new[i] += 1
    retired_new = [0] * n
    for t in data.tiles:
        if t["retired_at"] is not None:
            i = index.get(_bucket_key(t["retired_at"], bucket))
            if i is not None:
                retired_new[i] += 1
    bins = [i / 10 for i in range(11)]
    hist = [0] * 10
    if results is not None:
        for t in results.tiles:
            if t.agreement is not None:
                hist[min(int(t.agreement * 10), 9)] += 1
    fmt = "%Y-%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d"
    return {
        "bucket": bucket,
        "labels": [k.strftime(fmt) for k in keys],
        "votes": votes,
        "active_volunteers": [len(s) for s in active],
        "tiles_labelled": list(np.cumsum(labelled_new).tolist()) if n else [],
        "tiles_retired": list(np.cumsum(retired_new).tolist()) if n else [],
        "agreement_bins": bins,
        "agreement_hist": hist,
        "totals": {"tiles": len(data.tiles), "labelled": len(first_label),
                   "retired": sum(1 for t in data.tiles if t["state"] == "retired"),
                   "unresolved": sum(1 for t in data.tiles if t["state"] == "unresolved"),
                   "votes": sum(1 for lab in data.labels if not lab["skipped"]),
                   "volunteers": len({str(lab["volunteer"]) for lab in data.labels})},
    }


# --------------------------------------------------------------------------------------------
# Project list, summary and cache fingerprint


def fingerprint(conn: sa.Connection, slug: str) -> tuple:
    """Cheap summary that changes whenever results could change (votes, retirements, reviews,
    gold answers, tiles). Used as a cache key by the dashboard."""
    t = _tables()
    project = find_project(conn, slug)
    pid = project["id"]
    lc, tc, rc = t["labels"].c, t["tiles"].c, t["reviews"].c
    lab = conn.execute(sa.select(sa.func.count(), sa.func.max(lc.id))
                       .where(lc.project_id == pid)).one()
    til = conn.execute(sa.select(sa.func.count(), sa.func.max(tc.id), sa.func.max(tc.retired_at),
                                 sa.func.count(tc.gold_answer),
                                 sa.func.sum(sa.case((tc.state == "retired", 1), else_=0)))
                       .where(tc.project_id == pid)).one()
    rev = conn.execute(sa.select(sa.func.count(), sa.func.max(rc.decided_at))
                       .where(rc.project_id == pid)).one()
    return (pid, project["updated_at"], tuple(lab), tuple(til), tuple(rev))


def project_list(conn: sa.Connection) -> list[dict[str, Any]]:
    t = _tables()
    pc, tc, lc = t["projects"].c, t["tiles"].c, t["labels"].c
    tiles = (sa.select(tc.project_id, sa.func.count().label("tiles"),
                       sa.func.sum(sa.case((tc.state == "retired", 1), else_=0)).label("retired"))
             .group_by(tc.project_id).subquery())
    labels = (sa.select(lc.project_id, sa.func.count().label("labels"))
              .where(lc.skipped.is_(False)).group_by(lc.project_id).subquery())
    rows = conn.execute(
        sa.select(pc.slug, pc.name, pc.type, pc.status, tiles.c.tiles, tiles.c.retired,
                  labels.c.labels)
        .select_from(t["projects"].outerjoin(tiles, tiles.c.project_id == pc.id)
                     .outerjoin(labels, labels.c.project_id == pc.id))
        .order_by(pc.created_at.desc(), pc.id.desc())
    ).all()
    return [{"slug": r.slug, "name": r.name, "type": r.type, "status": r.status,
             "tiles": int(r.tiles or 0), "retired": int(r.retired or 0),
             "labels": int(r.labels or 0)} for r in rows]


def exports_allowed(conn: sa.Connection, project_id: int, role: str | None) -> bool:
    """Whether ``role`` may download this project's exports (private projects can restrict
    them to researchers)."""
    from labeler.dashboard.researcher_access import exports_allowed as _allowed

    return _allowed(conn, project_id, role)


def _manifest_layers(project: Mapping[str, Any], tile_store: Any) -> dict[str, dict[str, Any]]:
    """Zoom range and bounds per imagery layer, from the ingest manifest when it is readable."""
    import json
    from pathlib import Path

    path = project.get("manifest_path")
    candidates = []
    if path:
        candidates.append(Path(path))
    for layer in project.get("layers") or []:
        if tile_store is not None and layer.get("root"):
            candidates.append(Path(tile_store) / layer["root"] / "manifest.json")
    for p in candidates:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        out = {}
        for name, info in (data.get("layers") or {}).items():
            zooms = info.get("zooms") or [data.get("min_zoom"), data.get("task_zoom")]
            out[name] = {"minzoom": zooms[0], "maxzoom": zooms[-1], "bounds": info.get("bounds")}
        return out
    return {}


def project_summary(conn: sa.Connection, slug: str, *, tile_store: Any = None) -> dict[str, Any]:
    """Project facts for the dashboard header: imagery layers, answers, bounds, totals."""
    t = _tables()
    project = find_project(conn, slug)
    pid = project["id"]
    tc, lc = t["tiles"].c, t["labels"].c
    b = conn.execute(sa.select(sa.func.min(tc.west), sa.func.min(tc.south), sa.func.max(tc.east),
                               sa.func.max(tc.north), sa.func.count(),
                               sa.func.sum(sa.case((tc.state == "retired", 1), else_=0)),
                               sa.func.sum(sa.case((tc.state == "unresolved", 1), else_=0)),
                               sa.func.sum(sa.case((tc.label_count > 0, 1), else_=0)))
                     .where(tc.project_id == pid)).one()
    votes = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(lc.volunteer_id)))
                         .where(lc.project_id == pid, lc.skipped.is_(False))).one()
    zooms = _manifest_layers(project, tile_store)
    task_zoom = project.get("task_zoom")
    layers = []
    for layer in project.get("layers") or []:
        name, root, ext = layer["name"], layer.get("root", slug), layer.get("ext", "jpg")
        z = zooms.get(name, {})
        layers.append({
            "name": name,
            "tiles": f"/tiles/{root}/{name}/{{z}}/{{x}}/{{y}}.{ext}",
            "tilejson": f"/tiles/{root}/{name}/tilejson.json",
            "minzoom": z.get("minzoom") if z.get("minzoom") is not None else task_zoom,
            "maxzoom": z.get("maxzoom") if z.get("maxzoom") is not None else task_zoom,
            "bounds": z.get("bounds"),
        })
    from labeler.projects import DEFAULT_ANSWERS
    from crowdsight import __version__

    answers = project.get("answers") or DEFAULT_ANSWERS.get(project["type"], [])
    return {
        "project": {k: project.get(k) for k in ("id", "slug", "name", "type", "status",
                                                "question", "redundancy", "task_zoom")},
        "answers": [{"value": a["value"], "label": a.get("label", a["value"])} for a in answers],
        "layers": layers,
        "bounds": [b[0], b[1], b[2], b[3]] if b[4] else None,
        "stats": {"tiles": int(b[4] or 0), "retired": int(b[5] or 0),
                  "unresolved": int(b[6] or 0), "labelled": int(b[7] or 0),
                  "votes": int(votes[0] or 0), "volunteers": int(votes[1] or 0)},
        "software_version": __version__,
    }


# --------------------------------------------------------------------------------------------
# GeoJSON features, tile detail


def _column(values: Sequence[Any]) -> np.ndarray:
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, bool, np.int64} and all(v is not None for v in values):
        return np.asarray(values, dtype=np.int64)
    if kinds and kinds <= {int, float, bool, np.int64, np.float64}:
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray(list(values), dtype=object)


def result_layer(res: ProjectResults, name: str) -> Any:
    """One result layer as a ``consensus.Layer`` (lon/lat shapely geometries + columns), the
    input of consensus' GeoJSON / CSV / GeoPackage writers."""
    import shapely
    from consensus.export import Layer

    if name == "tiles":
        b = np.asarray([t.bounds for t in res.tiles], dtype=np.float64).reshape(-1, 4)
        geoms = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3], ccw=True)
        props = [t.properties() for t in res.tiles]
    elif name in ("structures", "villages"):
        items = res.structures if name == "structures" else res.villages
        geoms = np.asarray([f["geometry"] for f in items], dtype=object)
        props = [f["properties"] for f in items]
    else:
        raise ResultsError(f"no layer {name!r}; layers: tiles, structures, villages",
                           field="layer")
    cols: list[str] = []
    for p in props:
        for k in p:
            if k not in cols:
                cols.append(k)
    columns = {k: _column([p.get(k) for p in props]) for k in cols}
    return Layer(name, np.asarray(geoms, dtype=object), columns)


def feature_collection(res: ProjectResults, name: str) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection of one layer, with the export metadata."""
    from consensus.export import to_geojson

    fc = to_geojson(result_layer(res, name), res.metadata(name))
    if name == "tiles":  # stable feature ids let clients address tiles
        for f in fc["features"]:
            f["id"] = f["properties"]["tile_id"]
    return fc


_AUDIT_TEXT = {
    "review.decide": "expert decision: {answer}",
    "review.withdraw": "expert decision withdrawn",
    "gold.set": "made a gold tile: {answer}",
    "gold.unset": "gold answer removed",
}


def _audit_text(entry: Mapping[str, Any]) -> str:
    d = entry.get("details")
    d = d if isinstance(d, dict) else {}
    template = _AUDIT_TEXT.get(str(entry["action"]))
    if template is None:
        return str(entry["action"]) + (f" {d['answer']}" if d.get("answer") else "")
    text = template.format(answer=d.get("answer", "?"))
    if entry["action"] == "review.decide" and d.get("note"):
        text += f" — {d['note']}"
    return text


def tile_detail(data: ProjectData, res: ProjectResults, tile_id: int, *,
                secret: str) -> dict[str, Any]:
    """A tile's result, its votes (pseudonymised), imagery URLs and history."""
    out = res.tile(tile_id)
    row = next(t for t in data.tiles if t["id"] == tile_id)
    ps = pseudonymizer(secret)
    votes = []
    history: list[tuple[datetime, str]] = []
    for lab in data.labels:
        if lab["tile_id"] != tile_id:
            continue
        v = {"volunteer": ps(str(lab["volunteer"])), "answer": lab["answer"],
             "skipped": bool(lab["skipped"]), "points": lab["points"] or [],
             "flag_note": lab["flag_note"], "gold": bool(lab["is_gold"]),
             "correct": lab["correct"], "time_spent_ms": lab["time_spent_ms"],
             "created_at": _iso(lab["created_at"])}
        votes.append(v)
        if lab["created_at"] is not None:
            what = "skipped" if lab["skipped"] else f"answered {lab['answer']}"
            history.append((lab["created_at"], f"{v['volunteer']} {what}"
                            + (f" — note: {lab['flag_note']}" if lab["flag_note"] else "")))
    if row["retired_at"] is not None:
        history.append((row["retired_at"], "retired as unresolved" if row["state"] == "unresolved"
                        else "retired"))
    for a in data.audit:
        if _audit_tile(a) == tile_id and a["at"] is not None:
            history.append((a["at"], _audit_text(a)))
    if out.review and not any(str(a["action"]).startswith("review.") for a in data.audit
                              if _audit_tile(a) == tile_id):
        rv = out.review
        at = rv.get("decided_at")
        history.append((datetime.fromisoformat(at.rstrip("Z")) if isinstance(at, str) else at,
                        f"expert decision: {rv['answer']}"))
    history.sort(key=lambda h: h[0])
    layers = [layer for layer in (data.project.get("layers") or [])
              if row.get("layers") is None or layer["name"] in (row.get("layers") or [])]
    image_urls = {layer["name"]: f"/tiles/{layer.get('root', data.project['slug'])}/"
                  f"{layer['name']}/{out.z}/{out.x}/{out.y}.{layer.get('ext', 'jpg')}"
                  for layer in layers}
    return {
        "tile_id": tile_id, "z": out.z, "x": out.x, "y": out.y, "bounds": list(out.bounds),
        "state": out.state, "gold_answer": out.gold_answer, "review": out.review,
        "result": {"answer": out.answer, "confidence": _r(out.confidence), "source": out.source,
                   "crowd_answer": out.crowd_answer, "posteriors": {k: _r(v) for k, v in
                                                                     out.posteriors.items()},
                   "n_votes": out.n_votes, "agreement": _r(out.agreement),
                   "counts": out.counts, "method": res.method},
        "votes": votes, "image_urls": image_urls,
        "history": [{"at": _iso(at), "text": text} for at, text in history],
    }


# --------------------------------------------------------------------------------------------
# Exports


def check_export(layer: str, fmt: str) -> None:
    if layer not in LAYERS:
        raise ResultsError(f"no export layer {layer!r}; layers: {', '.join(LAYERS)}",
                           field="layer")
    if fmt in SHEET_FORMATS:
        if layer != "villages":
            raise ResultsError(f"the {fmt.upper()} map sheet is a villages export: use "
                               f"layer villages", field="format")
        return
    if fmt not in FORMATS:
        raise ResultsError(f"no export format {fmt!r}; formats: "
                           f"{', '.join(FORMATS + SHEET_FORMATS)}", field="format")
    if layer == "volunteers" and fmt != "csv":
        raise ResultsError("the volunteer table is exported as csv only", field="format")


def export_filename(res: ProjectResults, layer: str, fmt: str) -> str:
    stamp = res.computed_at.strftime("%Y%m%d")
    kind = "mapsheet" if fmt in SHEET_FORMATS else layer
    return f"{res.project['slug']}-{kind}-{res.method}-{stamp}.{fmt}"


def _backdrop(res: ProjectResults, layers: Sequence[Mapping[str, Any]], tile_store: Any):
    """A ``(z, x, y) -> PIL.Image | None`` reader over the project's imagery (the "after"
    layer when there is one: the sheet shows the damage)."""
    if tile_store is None or not layers:
        return None
    from PIL import Image
    from tiles.store import TileStore

    layer = next((lay for lay in layers if lay["name"] == "after"), None) or \
        next((lay for lay in layers if lay["name"] not in ("before",)), None) or layers[0]
    store = TileStore(tile_store)

    def read(z: int, x: int, y: int):
        try:
            raw = store.read(layer.get("root", res.project["slug"]), layer["name"], z, x, y,
                             layer.get("ext", "jpg"))
        except Exception:  # noqa: BLE001 - a missing/unreadable tile leaves that square blank
            return None
        import io as _io

        try:
            with Image.open(_io.BytesIO(raw)) as im:
                return im.convert("RGB")
        except OSError:
            return None

    return read


def map_sheet(res: ProjectResults, *, layers: Sequence[Mapping[str, Any]] = (),
              tile_store: Any = None, size: tuple[int, int] = (1754, 1240)):
    """The villages map sheet as a ``PIL.Image`` (A4 landscape, 150 dpi)."""
    from labeler.dashboard.analyst_mapsheet import SheetFeature, render_map_sheet

    feats = []
    for i, v in enumerate(res.villages, start=1):
        p = v["properties"]
        lines = []
        if p.get("n_tiles") is not None:
            lines.append(f"{p.get('n_damaged_tiles', 0)} of {p['n_tiles']} tiles damaged"
                         + (f" ({p['share_damaged'] * 100:.0f} %)"
                            if p.get("share_damaged") is not None else ""))
        if p.get("n_structures"):
            lines.append(f"{p['n_structures']} structures marked")
        if p.get("confidence") is not None:
            lines.append(f"mean confidence {p['confidence']:.2f}")
        feats.append(SheetFeature(geometry=v["geometry"],
                                  label=str(p.get("name") or f"Village {i}"),
                                  value=p.get("share_damaged"), lines=lines))
    pts = [(f["geometry"].x, f["geometry"].y) for f in res.structures]
    meta = res.metadata("villages")
    damaged = set(res.extra.get("damaged_answers") or ())
    palette = {"destroyed": "#b2182b", "damaged": "#e66101", "yes": "#d7301f",
               "marked": "#6a3d9a"}
    cells = [(t.bounds, palette.get(t.answer or "", "#d7301f")) for t in res.tiles
             if t.answer in damaged]
    return render_map_sheet(
        feats, title=f"{res.project['name']} — damage by village",
        subtitle=f"{res.project['type']} project · consensus method {res.method} · "
                 f"{sum(1 for t in res.tiles if t.answer is not None)} of {len(res.tiles)} "
                 f"tiles with an answer",
        footer=f"Generated {meta['generated']} by crowdsight {meta['software_version']} · "
               f"crowd consensus; "
               f"expert decisions override the crowd · imagery: project layers",
        points=pts, cells=cells, backdrop=_backdrop(res, layers, tile_store), size=size)


def write_export(res: ProjectResults, layer: str, fmt: str, fp: Any, *,
                 tile_store: Any = None, layers: Sequence[Mapping[str, Any]] | None = None,
                 secret: str | None = None) -> None:
    """Write one export to the binary file object ``fp``."""
    check_export(layer, fmt)
    if fmt in SHEET_FORMATS:
        from labeler.dashboard.analyst_mapsheet import save_map_sheet

        img = map_sheet(res, layers=layers if layers is not None else
                        (res.extra.get("layers") or []), tile_store=tile_store)
        save_map_sheet(img, fp, fmt)
        return
    if layer == "volunteers":
        if secret is None:
            raise ResultsError("the volunteer export needs the server secret", field="layer")
        _write_volunteers(res, fp, secret)
        return
    _write_layer(res, layer, fmt, fp)


def _write_layer(res: ProjectResults, name: str, fmt: str, fp: Any) -> None:
    """GeoJSON (RFC 7946), CSV (WKT geometry) or GeoPackage via consensus' writers."""
    import json
    import os
    import tempfile

    from consensus.export import write_csv, write_gpkg

    lay = result_layer(res, name)
    if fmt == "geojson":
        text = json.dumps(feature_collection(res, name), ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False)
        fp.write(text.encode("utf-8"))
    elif fmt == "csv":
        buf = io.StringIO()
        write_csv(lay, buf)
        fp.write(buf.getvalue().encode("utf-8"))
    elif fmt == "gpkg":
        with tempfile.TemporaryDirectory(prefix="crowdsight-gpkg-") as tmp:
            path = os.path.join(tmp, f"{name}.gpkg")
            write_gpkg([lay], path, res.metadata(name))
            with open(path, "rb") as fh:
                fp.write(fh.read())
    else:
        raise ResultsError(f"no export format {fmt!r}", field="format")


def volunteer_table(res: ProjectResults, secret: str) -> list[dict[str, Any]]:
    """Per-volunteer rows: activity and agreement plus the consensus model's skill and
    confusion matrix (``p_<true>_<answer>``), keyed by pseudonym only."""
    from consensus.export import volunteer_rows

    rows = {r.volunteer: r.row() for r in res.volunteers}
    result = res.extra.get("result")
    if result is not None:
        for cr in volunteer_rows(result, secret):
            if cr["volunteer"] in rows:
                rows[cr["volunteer"]].update({k: v for k, v in cr.items()
                                              if k.startswith("p_")})
    return list(rows.values())


def _write_volunteers(res: ProjectResults, fp: Any, secret: str) -> None:
    from consensus.export import write_rows_csv

    rows = volunteer_table(res, secret)
    cols: list[str] = list(VolunteerOut.__annotations__)
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    write_rows_csv(rows, buf, cols)
    fp.write(buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Helpers for the researcher pages (gold promotion, quality control)


def confident_tiles(res: ProjectResults, min_confidence: float = 0.9, *,
                    crowd_only: bool = True) -> list[TileOut]:
    """Tiles whose final answer has at least ``min_confidence`` (most confident first);
    with ``crowd_only`` expert-decided and gold tiles are left out."""
    out = [t for t in res.tiles if t.answer is not None and t.confidence is not None
           and t.confidence >= min_confidence
           and not (crowd_only and (t.source == "expert" or t.gold_answer is not None))]
    return sorted(out, key=lambda t: (-(t.confidence or 0.0), t.tile_id))


def qc_sample(res: ProjectResults, n: int, *, min_confidence: float = 0.8,
              seed: int = 0) -> list[TileOut]:
    """A reproducible random sample of ``n`` confident crowd tiles for expert quality control."""
    pool = confident_tiles(res, min_confidence)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
    return [pool[i] for i in sorted(int(i) for i in idx)]
