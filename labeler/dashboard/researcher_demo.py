"""The one-command demo (``crowdsight demo``): a complete, offline campaign in a data directory.

:func:`setup_demo` is idempotent — every step checks what the data directory already holds:

1. the synthetic before/after scene (``ingest.synthetic.generate_scene``), or the given files;
2. ingest into the tile store (``ingest.pipeline.ingest``: resumable, skips finished tiles);
3. ``db upgrade`` (Alembic);
4. the ``demo`` project (type ``compare``) with help examples, tutorial and gold tiles whose
   answers come from the scene's ground truth, published;
5. optionally ``simulate`` volunteers with realistic skills labelling through the labeler's own
   assignment and label-capture code (``labeler.assign.Assigner`` + ``labeler.labels.submit``,
   what ``/next`` and ``/labels`` run), with a few flag notes for the review queue;
6. a researcher token kept in ``{data_dir}/demo/token`` (mode 0600) for the printed URLs.

Simulated skills are drawn around what the real crowd datasets in ``../shared/data/crowd``
show (per-worker accuracy against truth, workers with >= 10 answers; see :data:`SKILLS`); the
numbers are hard-coded so the demo needs no shared data.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

SLUG = "demo"
Progress = Callable[[str, int, int], None]

ANSWERS = [
    {"value": "destroyed", "label": "Burned / destroyed", "shortcut": "1"},
    {"value": "damaged", "label": "Damaged", "shortcut": "2"},
    {"value": "intact", "label": "Homes, no damage", "shortcut": "3"},
    {"value": "none", "label": "No homes", "shortcut": "4"},
    {"value": "bad_imagery", "label": "Bad imagery", "shortcut": "5"},
]
CLASSES = ("destroyed", "damaged", "intact", "none")
FEEDBACK = {
    "destroyed": "Burned: the round thatched roofs of the 'before' image are dark scorched "
                 "circles with grey ash in the 'after' image.",
    "damaged": "Damaged: a few roofs are partly scorched, but most homes still stand.",
    "intact": "No damage: the same round huts and compound fences are in both images.",
    "none": "No homes: only sand, tracks and scrub — nothing to assess here.",
}
HELP_TEXT = (
    "Each task shows the same place before and after an attack. Compare the two images and "
    "say what happened to the homes (round thatched huts, tukuls, inside fenced compounds).\n\n"
    "Burned / destroyed: roofs that were light in 'before' are dark circles with grey ash "
    "in 'after'. Damaged: some roofs partly scorched. Homes, no damage: huts look the same. "
    "No homes: no buildings on the tile at all.\n\n"
    "If the images are blank, cloudy or do not line up, answer 'Bad imagery'. Unsure? Use "
    "the flag to leave a note for the researchers."
)

#: Skill archetypes of simulated volunteers, from the shared crowd datasets
#: (accuracy of workers with >= 10 answers against the truth):
#: snow2008_rte median 0.85 (q10 0.66, q90 0.95); snow2008_temp median 0.90 (q10 0.57);
#: zheng2017_d_jn-product median 0.91 (q10 0.32, q90 1.0); zheng2017_s4_Dog median 0.69
#: (q10 0.60, q90 0.82); welinder2010_bluebirds median 0.62 with 44 % of workers below 0.6.
#: The busiest 20 % of workers give 50-80 % of the answers (``activity`` is a Pareto weight).
#: ``(name, share of volunteers, mean accuracy, sd, skip rate, bad-imagery rate)``
SKILLS: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("careful", 0.25, 0.92, 0.04, 0.01, 0.01),
    ("typical", 0.45, 0.82, 0.06, 0.03, 0.02),
    ("hasty", 0.20, 0.65, 0.07, 0.05, 0.03),
    ("spammer", 0.10, 0.30, 0.05, 0.00, 0.05),
)
FLAG_NOTES = (
    "smoke or haze over the village?",
    "the two images do not line up exactly",
    "looks like a fence burned, not a hut",
    "not sure: part of the roof is dark",
)


@dataclass
class DemoResult:
    slug: str
    token: str
    data_dir: Path
    scene_dir: Path | None
    tiles: int
    gold: int
    tutorial: int
    simulated_volunteers: int
    labels: int
    timings: dict[str, float] = field(default_factory=dict)
    created: bool = False


def _noop(stage: str, done: int, total: int) -> None:
    return None


# --------------------------------------------------------------------------- truth


def tile_truth(tasks: list[dict[str, Any]], truth_geojson: Path) -> dict[tuple[int, int, int], str]:
    """Each task tile's answer from point ground truth (``properties.state`` intact / damaged /
    destroyed): the worst state of the homes on the tile, ``none`` without homes."""
    import mercantile

    data = json.loads(Path(truth_geojson).read_text(encoding="utf-8"))
    rank = {"intact": 1, "damaged": 2, "destroyed": 3}
    zoom = tasks[0]["z"] if tasks else 18
    worst: dict[tuple[int, int], int] = {}
    for f in data.get("features", []):
        geom = f.get("geometry") or {}
        if geom.get("type") != "Point":
            continue
        lon, lat = geom["coordinates"][:2]
        state = str((f.get("properties") or {}).get("state", "intact"))
        t = mercantile.tile(lon, lat, zoom)
        worst[(t.x, t.y)] = max(worst.get((t.x, t.y), 0), rank.get(state, 1))
    names = {1: "intact", 2: "damaged", 3: "destroyed"}
    return {(t["z"], t["x"], t["y"]): names.get(worst.get((t["x"], t["y"]), 0), "none")
            for t in tasks}


# --------------------------------------------------------------------------- skills


def volunteer_confusion(rng: np.random.Generator, accuracy: float, skip: float,
                        bad: float) -> np.ndarray:
    """P(answer | truth) over ``CLASSES + ("bad_imagery", "skip")``: errors go mostly to the
    neighbouring class (destroyed <-> damaged <-> intact <-> none), as people confuse them."""
    k = len(CLASSES)
    conf = np.zeros((k, k + 2))
    for i in range(k):
        row = np.zeros(k)
        for j in range(k):
            if j != i:
                row[j] = 3.0 if abs(i - j) == 1 else 1.0
        row = row / row.sum() * (1 - accuracy)
        row[i] = accuracy
        conf[i, :k] = row * (1 - skip - bad)
        conf[i, k] = bad
        conf[i, k + 1] = skip
    # a little per-volunteer noise, rows stay distributions
    conf = conf * rng.uniform(0.85, 1.15, conf.shape)
    return conf / conf.sum(axis=1, keepdims=True)


def draw_volunteers(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    shares = np.array([s[1] for s in SKILLS])
    kinds = rng.choice(len(SKILLS), size=n, p=shares / shares.sum())
    out = []
    for i, kind in enumerate(kinds):
        name, _, mean, sd, skip, bad = SKILLS[int(kind)]
        acc = float(np.clip(rng.normal(mean, sd), 0.26, 0.99))
        out.append({"name": f"sim-{i + 1:02d}", "kind": name, "accuracy": round(acc, 3),
                    "activity": float(rng.pareto(1.2) + 0.3),
                    "confusion": volunteer_confusion(rng, acc, skip, bad)})
    return out


# --------------------------------------------------------------------------- steps


def _scene(data_dir: Path, size: int, seed: int, progress: Progress) -> tuple[Path, Path, Path]:
    from ingest.synthetic import generate_scene

    d = data_dir / "demo" / "scene"
    stamp = d / "scene.json"
    want = {"size": size, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(
            (d / n).exists() for n in ("before.tif", "after.tif", "truth.geojson")):
        return d / "before.tif", d / "after.tif", d / "truth.geojson"
    progress("scene", 0, 5)
    s = generate_scene(d, size=size, seed=seed,
                       progress=lambda done, total, stage: progress("scene", done, total))
    stamp.write_text(json.dumps(want))
    return s.before, s.after, s.truth


def _token(engine: sa.Engine, data_dir: Path) -> str:
    from labeler.security import authenticate_token, create_token

    path = data_dir / "demo" / "token"
    if path.exists():
        token = path.read_text().strip()
        try:
            if authenticate_token(engine, token) is not None:
                return token
        except Exception:  # noqa: BLE001 - revoked/unknown (e.g. a new database): make another
            pass
    token = create_token(engine, "researcher", "demo", actor="demo")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token


def nodata_share(store: Path, z: int, x: int, y: int, layers: list[str]) -> float:
    """Largest share of black (no-data) pixels over a tile's layer images; 1.0 if one is
    missing. Edge tiles of a scene are mostly no-data and make poor gold or tutorial tiles."""
    from PIL import Image

    worst = 0.0
    for layer in layers:
        base = store / SLUG / layer / str(z) / str(x)
        path = next((base / f"{y}.{ext}" for ext in ("jpg", "png", "webp")
                     if (base / f"{y}.{ext}").exists()), None)
        if path is None:
            return 1.0
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at 1/4 size, plenty for a share
            a = np.asarray(img.convert("RGB"))
        worst = max(worst, float(np.mean(a.max(axis=2) < 12)))
    return worst


def nodata_shares(engine: sa.Engine, store: Path) -> dict[int, float]:
    """:func:`nodata_share` for every tile of the demo project."""
    from labeler.models import Tile
    from labeler.projects import get_row

    t = Tile.__table__
    with engine.connect() as conn:
        project = get_row(conn, SLUG)
        rows = conn.execute(sa.select(t.c.id, t.c.z, t.c.x, t.c.y, t.c.layers).where(
            t.c.project_id == project.id)).all()
    return {int(r.id): nodata_share(store, r.z, r.x, r.y, list(r.layers or [])) for r in rows}


def _configure_new_project(engine: sa.Engine, truth: dict[tuple[int, int, int], str],
                           shares: dict[int, float]) -> tuple[int, int]:
    """Tutorial + gold tiles and help examples from the truth, preferring tiles with complete
    imagery; returns (gold, tutorial)."""
    from labeler.db import write_tx
    from labeler.models import Tile
    from labeler.projects import audit, get_row, update_project

    t = Tile.__table__
    with write_tx(engine) as conn:
        project = get_row(conn, SLUG)
        rows = conn.execute(sa.select(t.c.id, t.c.z, t.c.x, t.c.y, t.c.layers).where(
            t.c.project_id == project.id).order_by(t.c.id)).all()
        by_class: dict[str, list[int]] = {c: [] for c in CLASSES}
        for r in sorted(rows, key=lambda r: (round(shares.get(int(r.id), 1.0), 2), r.id)):
            answer = truth.get((r.z, r.x, r.y))
            if answer and shares.get(int(r.id), 1.0) < 0.5:  # most complete imagery first
                by_class[answer].append(r.id)
        tutorial = [ids[0] for c in ("destroyed", "intact", "none")
                    if (ids := by_class[c])]
        gold = [ids[1] if len(ids) > 1 else None for c in CLASSES if (ids := by_class[c])]
        gold = [g for g in gold if g is not None]
        answer_of = {tid: c for c, ids in by_class.items() for tid in ids}
        for tid in tutorial:
            conn.execute(sa.update(t).where(t.c.id == tid).values(
                gold_answer=answer_of[tid], gold_explanation=FEEDBACK[answer_of[tid]],
                tutorial=True))
        for tid in gold:
            conn.execute(sa.update(t).where(t.c.id == tid).values(
                gold_answer=answer_of[tid], gold_explanation=FEEDBACK[answer_of[tid]]))
        audit(conn, "demo", "gold.set", SLUG, {"gold": gold, "tutorial": tutorial})
        examples = [{"tile_id": ids[2], "answer": c, "caption": FEEDBACK[c]}
                    for c in ("destroyed", "intact") if len(ids := by_class[c]) > 2]
    if examples:
        update_project(engine, SLUG, {"examples": examples}, actor="demo")
    return len(gold), len(tutorial)


def simulate(engine: sa.Engine, truth: dict[tuple[int, int, int], str], n: int, *,
             seed: int = 0, coverage: float = 0.6, progress: Progress = _noop,
             shares: dict[int, float] | None = None) -> tuple[int, int]:
    """Add simulated volunteers ``sim-01`` .. ``sim-NN`` that do not exist yet and let them
    label through the labeler's assignment and label code until about ``coverage`` of the
    tiles' redundancy is used. Returns ``(new volunteers, labels stored)``.

    Tiles that are mostly no-data (``shares``: :func:`nodata_shares`) get "Bad imagery" from
    most volunteers.
    Demo data only: afterwards the new labels' times are spread over the last five days (and
    retirement times moved with them) so the dashboard's time charts have a shape.
    """
    from labeler.assign import Assigner
    from labeler.db import write_tx
    from labeler.labels import LabelIn, submit
    from labeler.models import Label, Tile, Volunteer, utcnow
    from labeler.projects import config_from_row, get_row
    from labeler.security import create_volunteer

    vt, lt, tt = Volunteer.__table__, Label.__table__, Tile.__table__
    people = draw_volunteers(n, seed)
    with engine.connect() as conn:
        cfg = config_from_row(get_row(conn, SLUG))
        existing = set(conn.execute(sa.select(vt.c.display_name).where(
            vt.c.display_name.like("sim-%"))).scalars())
        coords = {r.id: (r.z, r.x, r.y) for r in conn.execute(
            sa.select(tt.c.id, tt.c.z, tt.c.x, tt.c.y).where(tt.c.project_id == cfg.id))}
        n_tiles = conn.execute(sa.select(sa.func.count()).select_from(tt).where(
            tt.c.project_id == cfg.id, tt.c.gold_answer.is_(None))).scalar_one()
    people = [p for p in people if p["name"] not in existing]
    if not people:
        return 0, 0
    blank = {tid for tid, share in (shares or {}).items() if share > 0.5}
    rng = np.random.default_rng(seed + 1)
    for p in people:
        p["vid"] = create_volunteer(engine, p["name"]).id
    budget = int(math.ceil(coverage * n_tiles * cfg.redundancy * len(people) / max(n, 1)))
    assigner = Assigner(engine, lease_seconds=600)
    options = list(CLASSES) + ["bad_imagery", None]
    active = list(people)
    stored = 0
    while active and stored < budget:
        weights = np.array([p["activity"] for p in active])
        p = active[int(rng.choice(len(active), p=weights / weights.sum()))]
        task = assigner.next_task(cfg, p["vid"])
        if task is None:
            active.remove(p)
            continue
        items = []
        for i, tile in enumerate(task.tiles):
            true = truth.get(coords.get(tile.tile_id, (0, 0, 0)), "none")
            ans = options[int(rng.choice(len(options), p=p["confusion"][CLASSES.index(true)]))]
            if tile.tile_id in blank and ans is not None and rng.random() < 0.7:
                ans = "bad_imagery"
            note = None
            if ans is not None and true in ("destroyed", "damaged") and rng.random() < 0.03:
                note = FLAG_NOTES[int(rng.integers(len(FLAG_NOTES)))]
            items.append(LabelIn(tile_id=tile.tile_id, answer=ans, points=None,
                                 skipped=ans is None, flag_note=note,
                                 time_spent_ms=int(rng.gamma(2.0, 2500)),
                                 idempotency_key=uuid.uuid4().hex, index=i))
        res = submit(engine, cfg, p["vid"], task.task_id, items)
        stored += res.stored
        progress("volunteers", min(stored, budget), budget)
    # spread the new labels over the last five days (demo data only)
    with write_tx(engine) as conn:
        vids = [p["vid"] for p in people]
        ids = conn.execute(sa.select(lt.c.id).where(lt.c.volunteer_id.in_(vids))
                           .order_by(lt.c.id)).scalars().all()
        if ids:
            now = utcnow()
            span = timedelta(days=5).total_seconds()
            # one executemany instead of one statement per label: shorter write lock
            conn.execute(
                sa.update(lt).where(lt.c.id == sa.bindparam("b_id"))
                .values(created_at=sa.bindparam("b_at")),
                [{"b_id": lid, "b_at": now - timedelta(seconds=span * (1 - (i + 1) / len(ids)))}
                 for i, lid in enumerate(ids)])
            last = (sa.select(sa.func.max(lt.c.created_at)).where(lt.c.tile_id == tt.c.id)
                    .scalar_subquery())
            conn.execute(sa.update(tt).where(tt.c.project_id == cfg.id,
                                             tt.c.retired_at.is_not(None))
                         .values(retired_at=last))
    return len(people), stored


def setup_demo(settings: Any, *, before: list[Path] | None = None,
               after: list[Path] | None = None, truth: Path | None = None, size: int = 2048,
               seed: int = 0, simulate_n: int = 0,
               progress: Progress | None = None) -> DemoResult:
    """Build (or reuse) the demo campaign in ``settings.data_dir``; see the module docstring."""
    from ingest.pipeline import ingest
    from labeler.db import make_engine
    from labeler.manifest import load_manifest, read_manifest
    from labeler.migrate import upgrade
    from labeler.projects import get_row, set_status

    report = progress or _noop
    timings: dict[str, float] = {}
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    scene_dir = None
    if before or after:
        if not (before and after):
            raise ValueError("give both --before and --after files (or neither, for the "
                             "synthetic scene)")
        layers = {"before": list(before), "after": list(after)}
    else:
        b, a, truth = _scene(data_dir, size, seed, report)
        layers = {"before": [b], "after": [a]}
        scene_dir = b.parent
    timings["scene"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = settings.tile_store_path
    report("ingest", 0, 1)
    ingest(layers, store, SLUG,
           progress=lambda done, total, stage: report("ingest", done, total) if total else None)
    manifest_path = store / SLUG / "manifest.json"
    timings["ingest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("database", 0, 1)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url, pool_size=2)
    try:
        with engine.connect() as conn:
            try:
                get_row(conn, SLUG)
                created = False
            except Exception:  # noqa: BLE001 - NotFound: first run
                created = True
        fields = {
            "type": "compare", "name": "Demo: village damage (synthetic scene)"
            if scene_dir else "Demo: before/after damage",
            "question": "Compare the two images: what happened to the homes on this tile?",
            "help_text": HELP_TEXT, "answers": ANSWERS, "redundancy": 5,
            "retirement": {"policy": "adaptive", "threshold": 0.9, "min_votes": 3,
                           "max_votes": 7},
            "gold_rate": 0.1, "priority": "completion",
        }
        load_manifest(engine, manifest_path, SLUG, tile_store=store, create=created,
                      project_fields=fields, actor="demo",
                      min_coverage=settings.min_task_coverage)
        tasks = read_manifest(manifest_path)["tasks"]
        truth_map = tile_truth(tasks, truth) if truth else {}
        gold = tut = 0
        shares = nodata_shares(engine, store) if truth_map and (created or simulate_n) else {}
        if created:
            gold, tut = _configure_new_project(engine, truth_map, shares)
        with engine.connect() as conn:
            row = get_row(conn, SLUG)
            n_tiles = conn.execute(sa.text("SELECT count(*) FROM tiles WHERE project_id = :p"),
                                   {"p": row.id}).scalar_one()
            if not created:
                gold = conn.execute(sa.text(
                    "SELECT count(*) FROM tiles WHERE project_id = :p AND gold_answer IS NOT NULL "
                    "AND NOT tutorial"), {"p": row.id}).scalar_one()
                tut = conn.execute(sa.text(
                    "SELECT count(*) FROM tiles WHERE project_id = :p AND tutorial"),
                    {"p": row.id}).scalar_one()
        if row.status in ("draft", "paused"):
            set_status(engine, SLUG, "live", actor="demo")
        token = _token(engine, data_dir)
        timings["project"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        new_people = n_labels = 0
        if simulate_n > 0 and truth_map:
            new_people, n_labels = simulate(engine, truth_map, simulate_n, seed=seed,
                                            progress=report, shares=shares)
        timings["simulate"] = time.perf_counter() - t0
    finally:
        engine.dispose()
    return DemoResult(slug=SLUG, token=token, data_dir=data_dir, scene_dir=scene_dir,
                      tiles=int(n_tiles), gold=int(gold), tutorial=int(tut),
                      simulated_volunteers=new_people, labels=n_labels, timings=timings,
                      created=created)
