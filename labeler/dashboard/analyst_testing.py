"""Seeding helpers for analyst tests, screenshots and demos: hand-made or simulated votes.

``insert_votes`` writes labels straight into the database (bypassing assignment, which the
labeler's own tests cover) and keeps the tiles' derived counters and retirement state
consistent, so results, charts and exports see a realistic project. ``scene_project`` builds a
small real project from the synthetic before/after scene (ingest + manifest load), and
``simulate_crowd`` lets simulated volunteers with known skills vote on it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from labeler.db import write_tx
from labeler.models import Label, Project, Tile, Volunteer
from labeler.projects import project_target

T_PROJECTS: sa.Table = Project.__table__  # type: ignore[attr-defined, assignment]
T_TILES: sa.Table = Tile.__table__  # type: ignore[attr-defined, assignment]
T_LABELS: sa.Table = Label.__table__  # type: ignore[attr-defined, assignment]
T_VOLUNTEERS: sa.Table = Volunteer.__table__  # type: ignore[attr-defined, assignment]


@dataclass(frozen=True)
class Vote:
    tile_id: int
    volunteer: str  # public id
    answer: str | None
    points: Sequence[Sequence[float]] | None = None
    skipped: bool = False
    flag_note: str | None = None
    at: datetime | None = None


def _volunteer_ids(conn: sa.Connection, public_ids: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(public_ids))
    have = {r.public_id: r.id for r in conn.execute(
        sa.select(T_VOLUNTEERS.c.id, T_VOLUNTEERS.c.public_id)
        .where(T_VOLUNTEERS.c.public_id.in_(wanted)))}
    for pid in wanted:
        if pid not in have:
            res = conn.execute(sa.insert(T_VOLUNTEERS).values(
                public_id=pid, display_name=None, tutorials_passed=[],
                created_at=datetime.now(UTC)))
            have[pid] = res.inserted_primary_key[0]
    return have


def insert_votes(engine: Engine, slug: str, votes: Sequence[Vote], *,
                 start: datetime | None = None, step: timedelta = timedelta(minutes=7),
                 redundancy: int | None = None) -> None:
    """Insert ``votes`` into project ``slug``; then recount tiles and retire those with
    ``redundancy`` (default: the project's) answers, as the fixed policy would."""
    start = start or datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    with write_tx(engine) as conn:
        project = conn.execute(sa.select(T_PROJECTS).where(T_PROJECTS.c.slug == slug)).one()
        ids = _volunteer_ids(conn, [v.volunteer for v in votes])
        gold = {r.id: r.gold_answer for r in conn.execute(
            sa.select(T_TILES.c.id, T_TILES.c.gold_answer).where(
                T_TILES.c.project_id == project.id))}
        rows = []
        for i, v in enumerate(votes):
            at = v.at or start + i * step
            g = gold.get(v.tile_id)
            rows.append({
                "project_id": project.id, "tile_id": v.tile_id, "volunteer_id": ids[v.volunteer],
                "answer": v.answer, "points": [list(p) for p in v.points] if v.points else None,
                "skipped": v.skipped, "flag_note": v.flag_note,
                "idempotency_key": f"seed-{v.tile_id}-{v.volunteer}",
                "is_gold": g is not None, "correct": (v.answer == g) if g is not None else None,
                "time_spent_ms": 4000, "created_at": at,
            })
        if rows:
            conn.execute(sa.insert(T_LABELS), rows)
        recount(conn, project.id, redundancy or project.redundancy,
                target=project_target(project.retirement or {}, project.redundancy))


def recount(conn: sa.Connection, project_id: int, redundancy: int, *, target: int) -> None:
    """Derive ``label_count``, ``answer_counts``, majority answer and fixed-policy retirement
    (and ``has_room`` against the project's ``target``)."""
    per_tile: dict[int, list[Any]] = {}
    for r in conn.execute(sa.select(T_LABELS.c.tile_id, T_LABELS.c.answer, T_LABELS.c.skipped,
                                    T_LABELS.c.is_gold, T_LABELS.c.created_at)
                          .where(T_LABELS.c.project_id == project_id)
                          .order_by(T_LABELS.c.created_at)):
        per_tile.setdefault(r.tile_id, []).append(r)
    for tile_id, labs in per_tile.items():
        answered = [r for r in labs if not r.skipped and r.answer is not None and not r.is_gold]
        counts = Counter(r.answer for r in answered)
        n = len(answered)
        best = counts.most_common(1)[0] if counts else None
        values: dict[str, Any] = {"label_count": n, "answer_counts": dict(counts),
                                  "has_room": T_TILES.c.lease_count + n < target}
        if best:
            values["consensus_answer"] = best[0]
            values["confidence"] = best[1] / n
        if n >= redundancy:
            values["state"] = "retired"
            values["retired_at"] = answered[redundancy - 1].created_at
        conn.execute(sa.update(T_TILES).where(T_TILES.c.id == tile_id).values(**values))


def tile_ids(engine: Engine, slug: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        pid = conn.execute(sa.select(T_PROJECTS.c.id).where(T_PROJECTS.c.slug == slug)).scalar_one()
        return [dict(r) for r in conn.execute(
            sa.select(T_TILES.c.id, T_TILES.c.z, T_TILES.c.x, T_TILES.c.y, T_TILES.c.west,
                      T_TILES.c.south, T_TILES.c.east, T_TILES.c.north)
            .where(T_TILES.c.project_id == pid).order_by(T_TILES.c.id)).mappings()]


def scene_project(engine: Engine, tile_store: Path, work_dir: Path, slug: str, *,
                  size: int = 1024, seed: int = 3, ptype: str = "compare",
                  status: str = "live") -> dict[str, Any]:
    """Synthetic before/after scene -> tiles -> project ``slug``. Returns ``{"truth": path,
    "manifest": path, "tiles": n}``."""
    from ingest import ingest
    from ingest.synthetic import generate_scene
    from labeler.manifest import load_manifest

    scene = generate_scene(Path(work_dir) / f"scene-{slug}", size=size, seed=seed)
    ingest({"before": [scene.before], "after": [scene.after]}, Path(tile_store), slug)
    manifest = Path(tile_store) / slug / "manifest.json"
    res = load_manifest(engine, manifest, slug, tile_store=Path(tile_store), create=True,
                        project_fields={"type": ptype, "name": f"{slug} (synthetic scene)",
                                        "question": "Is there a damaged or destroyed building?"})
    with write_tx(engine) as conn:
        conn.execute(sa.update(T_PROJECTS).where(T_PROJECTS.c.slug == slug)
                     .values(status=status))
    return {"truth": scene.truth, "manifest": manifest, "tiles": res.tiles_total}


def damaged_tiles(truth_geojson: Path, tiles: Sequence[Mapping[str, Any]]) -> set[int]:
    """Tiles containing a damaged/destroyed structure of the synthetic scene's truth."""
    feats = json.loads(Path(truth_geojson).read_text())["features"]
    pts = [f["geometry"]["coordinates"] for f in feats
           if f["properties"].get("state") in ("damaged", "destroyed")]
    out = set()
    for t in tiles:
        for lon, lat in pts:
            if t["west"] <= lon < t["east"] and t["south"] <= lat < t["north"]:
                out.add(t["id"])
                break
    return out


def simulate_crowd(engine: Engine, slug: str, truth: Mapping[int, str], *,
                   n_volunteers: int = 12, votes_per_tile: int = 5, seed: int = 0,
                   answers: Sequence[str] = ("yes", "no", "maybe"),
                   coverage: float = 0.8, start: datetime | None = None,
                   days: float = 3.0) -> int:
    """Simulated volunteers (accuracy 0.6-0.95, a few "maybe"s) answer ``coverage`` of the
    tiles ``votes_per_tile`` times over ``days``; returns the number of votes written."""
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.6, 0.95, n_volunteers)
    tiles = sorted(truth)
    chosen = [t for t in tiles if rng.random() < coverage]
    start = start or datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    votes: list[Vote] = []
    classes = [a for a in answers if a != "maybe"]
    for t in chosen:
        k = int(rng.integers(max(1, votes_per_tile - 2), votes_per_tile + 1))
        who = rng.choice(n_volunteers, size=min(k, n_volunteers), replace=False)
        for w in who:
            if "maybe" in answers and rng.random() < 0.06:
                a = "maybe"
            elif rng.random() < acc[w]:
                a = truth[t]
            else:
                a = str(rng.choice([c for c in classes if c != truth[t]]))
            at = start + timedelta(seconds=float(rng.uniform(0, days * 86400)))
            votes.append(Vote(t, f"sim-{w:03d}", a, at=at))
    votes.sort(key=lambda v: v.at)  # type: ignore[arg-type, return-value]
    insert_votes(engine, slug, votes)
    return len(votes)
