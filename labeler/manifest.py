"""Load an ingest manifest (``docs/manifest.md``) into a project — idempotently.

Tiles are inserted with ``ON CONFLICT DO NOTHING`` on (project, z, x, y), so loading the
same manifest twice (or a grown one after a second ingest run) adds only what is new.

Nearly-empty tasks (edges of the imagery, nodata strips) are skipped: a task's coverage is the
valid-pixel fraction the ingest recorded per layer (``task["coverage"]``; absent = 1.0). For a
compare project every used layer must reach ``min_coverage``; otherwise the best layer must.
Tiles already in the project that now fall below the threshold are removed only when nobody
has labelled or leased them and they are not gold/tutorial tiles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from labeler.db import write_tx
from labeler.errors import ManifestError, ValidationError
from labeler.models import Project, Tile, utcnow
from labeler.projects import audit, create_project, get_row

FORMAT = "crowdsight-manifest/1"
LAYER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
ROOT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
EXTS = {"jpg", "jpeg", "png", "webp"}
BATCH = 1000
DEFAULT_MIN_COVERAGE = 0.5  # = Settings.min_task_coverage's default


@dataclass(frozen=True)
class LoadResult:
    project: str
    tiles_added: int
    tiles_existing: int
    tiles_total: int
    layers: list[str]
    tiles_skipped: int = 0  # tasks of the manifest below min_coverage (not loaded)
    tiles_removed: int = 0  # unlabelled tiles of an earlier load now below min_coverage
    min_coverage: float = DEFAULT_MIN_COVERAGE

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "tiles_added": self.tiles_added,
                "tiles_existing": self.tiles_existing, "tiles_total": self.tiles_total,
                "tiles_skipped": self.tiles_skipped, "tiles_removed": self.tiles_removed,
                "min_coverage": self.min_coverage, "layers": self.layers}


def task_coverage(task: dict[str, Any], layers: list[str], compare: bool) -> float:
    """The coverage that decides whether ``task`` is worth labelling (see module docstring).

    ``task["coverage"]`` maps layer -> valid-pixel fraction; a missing map or a missing entry
    for a layer the task has counts as fully covered (manifests written before coverage).
    """
    cov = task.get("coverage")
    if not isinstance(cov, dict):
        return 1.0
    values = []
    for name in layers:
        raw = cov.get(name, 1.0)
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ManifestError(f"task {task.get('z')}/{task.get('x')}/{task.get('y')}: "
                                f"coverage of layer '{name}' is not a number", field="tasks") \
                from None
        values.append(v if v == v else 0.0)  # NaN -> 0
    if not values:
        return 0.0
    return min(values) if compare else max(values)


def check_min_coverage(value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"min_coverage {value!r}: give a number between 0 and 1",
                              field="min_coverage") from None
    if not 0.0 <= v <= 1.0:
        raise ValidationError(f"min_coverage {v}: give a number between 0 and 1 "
                              "(0 loads every task, 0.5 skips tiles that are mostly no-data)",
                              field="min_coverage")
    return v


def resolve_in_store(tile_store: Path, path: str | Path) -> Path:
    """``path`` (absolute, or relative to the store) resolved and checked to lie in the store."""
    store = Path(tile_store).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else store / p).resolve()
    if not full.is_relative_to(store):
        raise ManifestError(f"{path} is outside the tile store {store}; manifests must be "
                            "loaded from inside CROWDSIGHT_TILE_STORE", field="path")
    if full.is_dir():
        full = full / "manifest.json"
    if not full.is_file():
        raise ManifestError(f"no manifest at {full}", field="path")
    return full


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}", field="path") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a {FORMAT} manifest (see docs/manifest.md)",
                            field="path")
    layers = data.get("layers")
    tasks = data.get("tasks")
    if not isinstance(layers, dict) or not layers or not isinstance(tasks, list):
        raise ManifestError(f"{path}: 'layers' and 'tasks' are required", field="path")
    for name, layer in layers.items():
        if not LAYER_RE.match(str(name)) or not isinstance(layer, dict) \
                or str(layer.get("ext", "")).lower() not in EXTS:
            raise ManifestError(f"{path}: layer '{name}' has a bad name or ext", field="path")
    return data


def _choose_layers(ptype: str, current: list[dict[str, Any]], manifest_layers: dict[str, Any]) -> list[str]:
    names = list(manifest_layers)
    wanted = [layer["name"] for layer in current]
    if wanted:
        missing = [n for n in wanted if n not in manifest_layers]
        if missing:
            raise ManifestError(f"the project wants layer '{missing[0]}' but the manifest has "
                                f"{', '.join(names)}", field="layers")
        return wanted
    if ptype == "compare":
        if "before" in manifest_layers and "after" in manifest_layers:
            return ["before", "after"]
        if len(names) != 2:
            raise ManifestError("a compare project needs a manifest with two layers "
                                f"(before/after); this one has {', '.join(names)}", field="layers")
        return sorted(names)
    ordered = [n for n in ("before", "after") if n in manifest_layers]
    return ordered + sorted(n for n in names if n not in ordered)


def load_manifest(
    engine: Engine,
    manifest_path: str | Path,
    project_slug: str,
    *,
    tile_store: Path,
    create: bool = False,
    project_fields: dict[str, Any] | None = None,
    actor: str = "cli",
    progress: Callable[[int, int], None] | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> LoadResult:
    """Load ``manifest_path`` (inside ``tile_store``) into project ``project_slug``.

    With ``create=True`` a missing project is created from ``project_fields`` (type, question...).
    ``progress(done, total)`` is called after each batch of tiles. Tasks whose coverage
    (:func:`task_coverage`) is below ``min_coverage`` (0..1; 0 keeps all) are skipped, and
    unlabelled tiles of earlier loads that fall below it are removed; see ``tiles_skipped`` /
    ``tiles_removed`` of the result.
    """
    min_coverage = check_min_coverage(min_coverage)
    path = resolve_in_store(tile_store, manifest_path)
    data = read_manifest(path)
    root = path.parent.resolve().relative_to(Path(tile_store).resolve()).as_posix()
    if not all(ROOT_RE.match(part) for part in root.split("/")) or "/" in root:
        raise ManifestError(f"the manifest must sit in a project folder directly under the tile "
                            f"store ({{store}}/<project>/manifest.json), not {root}", field="path")
    with engine.connect() as conn:
        exists = conn.execute(sa.select(Project.__table__.c.id).where(  # type: ignore[attr-defined]
            Project.__table__.c.slug == project_slug)).first()  # type: ignore[attr-defined]
    if exists is None:
        if not create:
            raise ValidationError(f"no project '{project_slug}': create it first or pass --create",
                                  field="project")
        create_project(engine, {"slug": project_slug, **(project_fields or {})}, actor=actor)

    t = Tile.__table__  # type: ignore[attr-defined]
    with write_tx(engine) as conn:
        project = get_row(conn, project_slug)
        names = _choose_layers(project.type, list(project.layers or []), data["layers"])
        layer_info = [{
            "name": n, "root": root, "ext": str(data["layers"][n]["ext"]).lower(),
            "media_type": data["layers"][n].get("media_type", "image/jpeg"),
        } for n in names]
        compare = project.type == "compare"
        need_all = set(names) if compare else set()
        rows = []
        low: list[tuple[int, int, int]] = []
        for i, task in enumerate(data["tasks"]):
            try:
                z, x, y = int(task["z"]), int(task["x"]), int(task["y"])
                w, s, e, n = (float(v) for v in task["bounds"])
                tl = sorted(str(v) for v in task.get("layers", names))
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{path}: task {i} is malformed ({exc})", field="tasks") from exc
            if not (w < e and s < n):
                raise ManifestError(f"{path}: task {i} has bad bounds", field="tasks")
            have = [name for name in names if name in tl]
            if not have or not need_all <= set(have):
                continue
            if task_coverage(task, have, compare) < min_coverage:
                low.append((z, x, y))
                continue
            rows.append(dict(project_id=project.id, z=z, x=x, y=y, west=w, south=s, east=e, north=n,
                             layers=have, tutorial=False, state="live", label_count=0,
                             lease_count=0, answer_counts={}))
        removed = _remove_low(conn, project.id, low)
        before = conn.execute(sa.select(sa.func.count()).select_from(t).where(
            t.c.project_id == project.id)).scalar_one()
        insert = (sqlite.insert if conn.dialect.name == "sqlite"
                  else postgresql.insert)
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            conn.execute(insert(t).on_conflict_do_nothing(
                index_elements=["project_id", "z", "x", "y"]), chunk)
            if progress:
                progress(min(start + BATCH, len(rows)), len(rows))
        after = conn.execute(sa.select(sa.func.count()).select_from(t).where(
            t.c.project_id == project.id)).scalar_one()
        task_zoom = data.get("task_zoom") or (rows[0]["z"] if rows else None)
        conn.execute(sa.update(Project.__table__).where(  # type: ignore[attr-defined]
            Project.__table__.c.id == project.id).values(  # type: ignore[attr-defined]
            layers=layer_info, task_zoom=task_zoom, manifest_path=str(path), updated_at=utcnow()))
        added = after - before
        audit(conn, actor, "project.load_manifest", project_slug,
              {"manifest": str(path), "added": added, "skipped": len(low), "removed": removed,
               "min_coverage": min_coverage})
    return LoadResult(project=project_slug, tiles_added=added, tiles_existing=len(rows) - added,
                      tiles_total=after, layers=names, tiles_skipped=len(low),
                      tiles_removed=removed, min_coverage=min_coverage)


def _remove_low(conn: sa.Connection, project_id: int, low: list[tuple[int, int, int]]) -> int:
    """Delete this project's tiles at ``low`` (z, x, y) that nobody labelled or leased and that
    are not gold/tutorial tiles; return how many went. Labelled tiles are never deleted."""
    if not low:
        return 0
    t = Tile.__table__  # type: ignore[attr-defined]
    labels = sa.table("labels", sa.column("tile_id"))
    leases = sa.table("leases", sa.column("tile_id"))
    removed = 0
    for start in range(0, len(low), BATCH):
        chunk = low[start:start + BATCH]
        res = conn.execute(sa.delete(t).where(
            t.c.project_id == project_id,
            sa.tuple_(t.c.z, t.c.x, t.c.y).in_(chunk),
            t.c.gold_answer.is_(None), t.c.tutorial.is_(False),
            t.c.label_count == 0, t.c.lease_count == 0,
            ~sa.exists().where(labels.c.tile_id == t.c.id),
            ~sa.exists().where(leases.c.tile_id == t.c.id)))
        removed += res.rowcount or 0
    return removed
