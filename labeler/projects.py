"""Projects: validation of researcher input, create/update/status changes, and a small
per-process cache of project configuration for the volunteer hot path.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from labeler.db import write_tx
from labeler.errors import NotFound, ValidationError
from labeler.models import (
    PRIORITIES,
    PROJECT_STATUSES,
    PROJECT_TYPES,
    AuditLog,
    Project,
    Tile,
    Volunteer,
    utcnow,
)

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VALUE_RE = re.compile(r"^[a-z0-9_]{1,64}$")

DEFAULT_ANSWERS: dict[str, list[dict[str, str]]] = {
    "find": [
        {"value": "yes", "label": "Yes", "shortcut": "1"},
        {"value": "no", "label": "No", "shortcut": "2"},
        {"value": "maybe", "label": "Maybe", "shortcut": "3"},
        {"value": "bad_imagery", "label": "Bad imagery", "shortcut": "4"},
    ],
    "mark": [
        {"value": "marked", "label": "Done", "shortcut": "1"},
        {"value": "bad_imagery", "label": "Bad imagery", "shortcut": "2"},
    ],
}
DEFAULT_ANSWERS["compare"] = DEFAULT_ANSWERS["find"]

# Allowed status transitions (researcher actions).
TRANSITIONS: dict[str, set[str]] = {
    "draft": {"live", "finished"},
    "live": {"paused", "finished"},
    "paused": {"live", "finished"},
    "finished": {"live"},
}

EDITABLE = (
    "name", "question", "help_text", "answers", "layers", "redundancy", "retirement", "gold_rate",
    "priority", "block", "context", "max_points", "examples",
)


def project_target(retirement: Mapping[str, Any], redundancy: int) -> int:
    """Most non-gold labels (plus live leases) a tile may collect: ``redundancy``, or for an
    adaptive project its retirement policy's ``max_votes`` (where the tile goes unresolved)."""
    if retirement.get("policy") == "adaptive":
        from labeler.retire import policy_for

        return policy_for(retirement, redundancy).max_votes
    return redundancy


@dataclass(frozen=True)
class ProjectConfig:
    """What the volunteer hot path needs to know about a project (immutable snapshot)."""

    id: int
    slug: str
    name: str
    type: str
    status: str
    question: str
    help_text: str
    answers: tuple[dict[str, str], ...]
    layers: tuple[dict[str, Any], ...]
    redundancy: int
    retirement: Mapping[str, Any]
    gold_rate: float
    priority: str
    block_cols: int
    block_rows: int
    context: bool
    max_points: int
    task_zoom: int | None
    examples: tuple[dict[str, Any], ...] = ()
    answer_values: frozenset[str] = field(default=frozenset())

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]

    @cached_property
    def target(self) -> int:
        """Most non-gold labels (plus live leases) a tile may collect (:func:`project_target`)."""
        return project_target(self.retirement, self.redundancy)

    def image_urls(self, z: int, x: int, y: int, tile_layers: list[str] | None = None) -> dict[str, str]:
        out = {}
        for layer in self.layers:
            if tile_layers is not None and layer["name"] not in tile_layers:
                continue
            out[layer["name"]] = f"/tiles/{layer['root']}/{layer['name']}/{z}/{x}/{y}.{layer['ext']}"
        return out


def config_from_row(row: Project) -> ProjectConfig:
    answers = tuple(row.answers or DEFAULT_ANSWERS[row.type])
    return ProjectConfig(
        id=row.id or 0, slug=row.slug, name=row.name, type=row.type, status=row.status,
        question=row.question, help_text=row.help_text, answers=answers,
        layers=tuple(row.layers or []), redundancy=row.redundancy,
        retirement=dict(row.retirement or {"policy": "fixed"}), gold_rate=row.gold_rate,
        priority=row.priority, block_cols=row.block_cols, block_rows=row.block_rows,
        context=row.context, max_points=row.max_points, task_zoom=row.task_zoom,
        examples=tuple(row.examples or []), answer_values=frozenset(a["value"] for a in answers),
    )


# --- validation -------------------------------------------------------------------------

def _req_str(data: Mapping[str, Any], key: str, max_len: int, *, required: bool = True,
             default: str = "") -> str:
    value = data.get(key, None)
    if value is None:
        if required:
            raise ValidationError(f"'{key}' is required", field=key)
        return default
    if not isinstance(value, str):
        raise ValidationError(f"'{key}' must be a string", field=key)
    if len(value) > max_len:
        raise ValidationError(f"'{key}' is longer than {max_len} characters", field=key)
    return value


def _int(data: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(f"'{key}' must be an integer from {lo} to {hi}", field=key)
    return value


def validate_fields(data: Mapping[str, Any], ptype: str, max_points_cap: int) -> dict[str, Any]:
    """Turn researcher JSON into column values (only the keys present in ``data``)."""
    unknown = set(data) - set(EDITABLE) - {"slug", "type"}
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationError(f"unknown field '{name}'", field=name)
    out: dict[str, Any] = {}
    if "name" in data:
        out["name"] = _req_str(data, "name", 200)
        if not out["name"].strip():
            raise ValidationError("'name' must not be empty", field="name")
    if "question" in data:
        out["question"] = _req_str(data, "question", 500)
    if "help_text" in data:
        out["help_text"] = _req_str(data, "help_text", 20_000)
    if "answers" in data:
        answers = data["answers"]
        if not isinstance(answers, list) or not 2 <= len(answers) <= 9:
            raise ValidationError("'answers' must be a list of 2 to 9 answers", field="answers")
        clean, seen = [], set()
        for i, a in enumerate(answers):
            if isinstance(a, str):
                a = {"value": a}
            if not isinstance(a, dict) or not isinstance(a.get("value"), str) \
                    or not VALUE_RE.match(a["value"]):
                raise ValidationError("each answer needs a 'value' of [a-z0-9_] (<= 64 chars)",
                                      field=f"answers.{i}.value")
            if a["value"] in seen:
                raise ValidationError(f"answer '{a['value']}' appears twice", field=f"answers.{i}")
            seen.add(a["value"])
            label = a.get("label", a["value"].replace("_", " ").capitalize())
            if not isinstance(label, str) or len(label) > 100:
                raise ValidationError("answer label must be a string <= 100 chars",
                                      field=f"answers.{i}.label")
            clean.append({"value": a["value"], "label": label,
                          "shortcut": str(a.get("shortcut", i + 1))[:8]})
        if ptype == "mark" and "marked" not in seen:
            raise ValidationError("mark projects need the answer 'marked'", field="answers")
        out["answers"] = clean
    if "redundancy" in data:
        out["redundancy"] = _int(data, "redundancy", 1, 100)
    if "retirement" in data:
        r = data["retirement"]
        if isinstance(r, str):
            r = {"policy": r}
        if not isinstance(r, dict) or r.get("policy") not in ("fixed", "adaptive"):
            raise ValidationError("'retirement.policy' must be 'fixed' or 'adaptive'",
                                  field="retirement.policy")
        clean_r: dict[str, Any] = {"policy": r["policy"]}
        for key, lo, hi in (("min_votes", 1, 100), ("max_votes", 1, 200)):
            if key in r:
                clean_r[key] = _int(r, key, lo, hi)
        if "threshold" in r:
            t = r["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.5 <= t <= 1:
                raise ValidationError("'retirement.threshold' must be from 0.5 to 1",
                                      field="retirement.threshold")
            clean_r["threshold"] = float(t)
        if r.get("final_threshold") is not None:
            t = r["final_threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.5 <= t <= 1:
                raise ValidationError("'retirement.final_threshold' must be from 0.5 to 1 "
                                      "(or null)", field="retirement.final_threshold")
            clean_r["final_threshold"] = float(t)
        out["retirement"] = clean_r
    if "gold_rate" in data:
        g = data["gold_rate"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g <= 1:
            raise ValidationError("'gold_rate' must be a number from 0 to 1", field="gold_rate")
        out["gold_rate"] = float(g)
    if "priority" in data:
        if data["priority"] not in PRIORITIES:
            raise ValidationError(f"'priority' must be one of {', '.join(PRIORITIES)}",
                                  field="priority")
        out["priority"] = data["priority"]
    if "block" in data:
        b = data["block"]
        if not isinstance(b, dict):
            raise ValidationError("'block' must be {\"cols\": n, \"rows\": m}", field="block")
        out["block_cols"] = _int(b, "cols", 1, 6) if "cols" in b else 1
        out["block_rows"] = _int(b, "rows", 1, 6) if "rows" in b else 1
    if "context" in data:
        if not isinstance(data["context"], bool):
            raise ValidationError("'context' must be true or false", field="context")
        out["context"] = data["context"]
    if "max_points" in data:
        out["max_points"] = _int(data, "max_points", 0, max_points_cap)
    if "layers" in data:
        layers = data["layers"]
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers) \
                or not 1 <= len(layers) <= 4:
            raise ValidationError("'layers' must be a list of 1-4 layer names", field="layers")
        out["layer_order"] = layers
    if "examples" in data:
        ex = data["examples"]
        if not isinstance(ex, list) or len(ex) > 20:
            raise ValidationError("'examples' must be a list of at most 20 items", field="examples")
        clean_ex = []
        for i, item in enumerate(ex):
            if not isinstance(item, dict):
                raise ValidationError("each example must be an object", field=f"examples.{i}")
            e: dict[str, Any] = {"caption": _req_str(item, "caption", 500, required=False),
                                 "answer": item.get("answer")}
            if "tile_id" in item:
                if isinstance(item["tile_id"], bool) or not isinstance(item["tile_id"], int):
                    raise ValidationError("'tile_id' must be an integer",
                                          field=f"examples.{i}.tile_id")
                e["tile_id"] = item["tile_id"]
            elif isinstance(item.get("image_url"), str) and item["image_url"].startswith("/static/"):
                e["image_url"] = item["image_url"][:500]
            else:
                raise ValidationError("an example needs a 'tile_id' or an 'image_url' under /static/",
                                      field=f"examples.{i}")
            clean_ex.append(e)
        out["examples"] = clean_ex
    return out


def _apply_layer_order(current: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    if not current:
        return [{"name": n} for n in order]  # resolved when a manifest is loaded
    by_name = {layer["name"]: layer for layer in current}
    missing = [n for n in order if n not in by_name]
    if missing:
        raise ValidationError(f"layer '{missing[0]}' is not in this project's imagery "
                              f"({', '.join(by_name)})", field="layers")
    return [by_name[n] for n in order]


# --- service functions ------------------------------------------------------------------

def audit(conn: Connection, actor: str, action: str, target: str, details: Any = None) -> None:
    conn.execute(sa.insert(AuditLog.__table__).values(  # type: ignore[attr-defined]
        at=utcnow(), actor=actor[:200], action=action, target=target[:200], details=details))


def get_row(conn: Connection, slug: str) -> Project:
    row = conn.execute(sa.select(Project.__table__).where(Project.__table__.c.slug == slug)).first()  # type: ignore[attr-defined]
    if row is None:
        raise NotFound(f"no project '{slug}'", field="slug")
    return Project.model_validate(dict(row._mapping))


def create_project(engine: Engine, data: Mapping[str, Any], *, actor: str,
                   max_points_cap: int = 200) -> ProjectConfig:
    slug = _req_str(data, "slug", 63)
    if not SLUG_RE.match(slug):
        raise ValidationError("'slug' must match [a-z0-9][a-z0-9-]{0,62}", field="slug")
    ptype = data.get("type", "find")
    if ptype not in PROJECT_TYPES:
        raise ValidationError(f"'type' must be one of {', '.join(PROJECT_TYPES)}", field="type")
    values = validate_fields({k: v for k, v in data.items() if k not in ("slug", "type")}, ptype,
                             max_points_cap)
    values.setdefault("name", slug)
    order = values.pop("layer_order", None)
    now = utcnow()
    row = dict(
        slug=slug, type=ptype, name=values.get("name", slug), question=values.get("question", ""),
        help_text=values.get("help_text", ""), examples=values.get("examples", []),
        answers=values.get("answers", DEFAULT_ANSWERS[ptype]),
        layers=[{"name": n} for n in order] if order else [],
        redundancy=values.get("redundancy", 5),
        retirement=values.get("retirement", {"policy": "fixed"}),
        gold_rate=values.get("gold_rate", 0.1), priority=values.get("priority", "completion"),
        block_cols=values.get("block_cols", 1), block_rows=values.get("block_rows", 1),
        context=values.get("context", False),
        max_points=min(values.get("max_points", max_points_cap), max_points_cap),
        status="draft", created_at=now, updated_at=now,
    )
    with write_tx(engine) as conn:
        exists = conn.execute(sa.select(Project.__table__.c.id).where(  # type: ignore[attr-defined]
            Project.__table__.c.slug == slug)).first()  # type: ignore[attr-defined]
        if exists:
            from labeler.errors import Conflict
            raise Conflict(f"project '{slug}' already exists", field="slug")
        conn.execute(sa.insert(Project.__table__).values(**row))  # type: ignore[attr-defined]
        audit(conn, actor, "project.create", slug, {"type": ptype})
        return config_from_row(get_row(conn, slug))


def update_project(engine: Engine, slug: str, data: Mapping[str, Any], *, actor: str,
                   max_points_cap: int = 200) -> ProjectConfig:
    with write_tx(engine) as conn:
        current = get_row(conn, slug)
        if "slug" in data or "type" in data:
            key = "slug" if "slug" in data else "type"
            raise ValidationError(f"'{key}' cannot be changed; create a new project", field=key)
        values = validate_fields(data, current.type, max_points_cap)
        order = values.pop("layer_order", None)
        if order is not None:
            values["layers"] = _apply_layer_order(list(current.layers or []), order)
        if values:
            values["updated_at"] = utcnow()
            conn.execute(sa.update(Project.__table__).where(  # type: ignore[attr-defined]
                Project.__table__.c.id == current.id).values(**values))  # type: ignore[attr-defined]
            audit(conn, actor, "project.update", slug, sorted(k for k in data))
        cfg = config_from_row(get_row(conn, slug))
        if cfg.target != project_target(current.retirement or {}, current.redundancy):
            set_room(conn, cfg.id, cfg.target)
        return cfg


def set_room(conn: Connection, project_id: int, target: int) -> None:
    """Bring the project's tiles' ``has_room`` in line with a new target (their counters are
    unchanged; the tiles now at or past it stay as they are, new claims skip them)."""
    conn.execute(sa.text(
        "UPDATE tiles SET has_room = (label_count + lease_count < :t) WHERE project_id = :p "
        "AND has_room <> (label_count + lease_count < :t)"), {"t": target, "p": project_id})


def set_status(engine: Engine, slug: str, status: str, *, actor: str) -> ProjectConfig:
    if status not in PROJECT_STATUSES:
        raise ValidationError(f"unknown status '{status}'", field="status")
    with write_tx(engine) as conn:
        current = get_row(conn, slug)
        if status != current.status and status not in TRANSITIONS[current.status]:
            from labeler.errors import Conflict
            raise Conflict(f"project '{slug}' is {current.status}; it cannot become {status}",
                           field="status")
        if status == "live":
            n = conn.execute(sa.select(sa.func.count()).select_from(Tile.__table__).where(  # type: ignore[attr-defined]
                Tile.__table__.c.project_id == current.id)).scalar_one()  # type: ignore[attr-defined]
            if n == 0:
                from labeler.errors import Conflict
                raise Conflict(f"project '{slug}' has no tiles yet: load a manifest first "
                               f"(crowdsight project load-manifest --project {slug} MANIFEST)")
        conn.execute(sa.update(Project.__table__).where(  # type: ignore[attr-defined]
            Project.__table__.c.id == current.id).values(status=status, updated_at=utcnow()))  # type: ignore[attr-defined]
        audit(conn, actor, f"project.{status}", slug)
        return config_from_row(get_row(conn, slug))


def list_projects(engine: Engine, *, live_only: bool = True) -> list[ProjectConfig]:
    t = Project.__table__  # type: ignore[attr-defined]
    q = sa.select(t).order_by(t.c.id)
    if live_only:
        q = q.where(t.c.status == "live")
    with engine.connect() as conn:
        return [config_from_row(Project.model_validate(dict(r._mapping))) for r in conn.execute(q)]


def progress(conn: Connection, project_id: int) -> dict[str, int]:
    """``{"tiles", "retired", "labels"}`` for a project; gold and tutorial tiles excluded."""
    t = Tile.__table__  # type: ignore[attr-defined]
    row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((t.c.state != "live", 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(t.c.label_count), 0),
        ).where(t.c.project_id == project_id, t.c.gold_answer.is_(None), t.c.tutorial.is_(False))
    ).one()
    return {"tiles": int(row[0]), "retired": int(row[1]), "labels": int(row[2])}


class ProjectCache:
    """Project configs and progress counters, kept ``ttl`` seconds per process.

    Status changes made through this process invalidate at once; changes made by another
    worker are seen within ``ttl`` seconds.
    """

    def __init__(self, engine: Engine, ttl: float = 2.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._lock = threading.Lock()
        self._configs: dict[str, tuple[float, ProjectConfig]] = {}
        self._progress: dict[int, tuple[float, dict[str, int]]] = {}
        self._tutorial: dict[int, tuple[float, bool]] = {}
        self._passed: set[tuple[int, str]] = set()

    def peek(self, slug: str) -> ProjectConfig | None:
        """The cached config if still fresh (no database access), else ``None``."""
        hit = self._configs.get(slug)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    def get(self, slug: str) -> ProjectConfig:
        now = time.monotonic()
        hit = self._configs.get(slug)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        with self.engine.connect() as conn:
            cfg = config_from_row(get_row(conn, slug))
        with self._lock:
            self._configs[slug] = (now, cfg)
        return cfg

    def peek_progress(self, project_id: int) -> dict[str, int] | None:
        """The cached progress counters if still fresh (no database access), else ``None``."""
        hit = self._progress.get(project_id)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    def progress(self, project_id: int) -> dict[str, int]:
        now = time.monotonic()
        hit = self._progress.get(project_id)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        with self.engine.connect() as conn:
            p = progress(conn, project_id)
        with self._lock:
            self._progress[project_id] = (now, p)
        return p

    def has_tutorial(self, project_id: int) -> bool:
        """Whether the project has tutorial tiles (cached like the configs)."""
        now = time.monotonic()
        hit = self._tutorial.get(project_id)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        t = Tile.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(t.c.id).where(
                t.c.project_id == project_id, t.c.tutorial.is_(True)).limit(1)).first() is not None
        with self._lock:
            self._tutorial[project_id] = (now, found)
        return found

    def tutorial_passed(self, volunteer_id: int, slug: str) -> bool:
        """Whether the volunteer passed this project's tutorial. Passing is permanent, so
        positive answers are remembered (bounded) and cost no query afterwards."""
        if (volunteer_id, slug) in self._passed:
            return True
        v = Volunteer.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            done = conn.execute(sa.select(v.c.tutorials_passed).where(
                v.c.id == volunteer_id)).scalar_one_or_none()
        if isinstance(done, str):
            done = json.loads(done)
        ok = slug in (done or [])
        if ok:
            with self._lock:
                if len(self._passed) > 100_000:
                    self._passed.clear()
                self._passed.add((volunteer_id, slug))
        return ok

    def invalidate(self, slug: str | None = None) -> None:
        with self._lock:
            self._tutorial.clear()
            if slug is None:
                self._configs.clear()
            else:
                self._configs.pop(slug, None)
            self._progress.clear()
