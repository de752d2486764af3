"""Label capture: validate a submission, then store it all-or-nothing.

Labels are append-only. A label whose idempotency key (or tile) this volunteer already
used is a duplicate: answered as success, stored once. The tile rows are locked first
(ordered by id), then the leases are checked and removed, the labels inserted with
``ON CONFLICT DO NOTHING``, and the tiles' counters/consensus/retirement updated in the
same transaction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from labeler.batch import keep_rows, kept_rows
from labeler.db import write_tx
from labeler.assign import StateRead, split_task_id, task_cell, verify_task
from labeler.errors import LeaseExpired, NotLeased, ValidationError
from labeler.models import utcnow
from labeler.sql import id_params, js, run, ts, unjs
from labeler.projects import ProjectConfig
from labeler.retire import evaluate

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_LABELS_PER_REQUEST = 36
MAX_FLAG_NOTE = 1000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000
EPS = 1e-9


@dataclass
class LabelIn:
    tile_id: int
    answer: str | None
    points: list[list[float]] | None
    skipped: bool
    flag_note: str | None
    time_spent_ms: int | None
    idempotency_key: str
    index: int


@dataclass
class SubmitResult:
    stored: int = 0
    duplicates: int = 0
    feedback: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates": self.duplicates, "feedback": self.feedback}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_submission(project: ProjectConfig, body: Any, max_points: int) -> tuple[str, list[LabelIn]]:
    """Check the shape of a submission (everything that needs no database)."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object", field=None)
    task_id = body.get("task_id")
    if not isinstance(task_id, str) or not 1 <= len(task_id) <= 64:
        raise ValidationError("'task_id' (from /next) is required", field="task_id")
    raw = body.get("labels")
    if not isinstance(raw, list) or not raw:
        raise ValidationError("'labels' must be a non-empty list", field="labels")
    if len(raw) > MAX_LABELS_PER_REQUEST:
        raise ValidationError(f"at most {MAX_LABELS_PER_REQUEST} labels per request", field="labels")
    limit = min(max_points, project.max_points)
    out: list[LabelIn] = []
    seen_keys: set[str] = set()
    seen_tiles: set[int] = set()
    allowed = {"tile_id", "answer", "points", "skipped", "flag_note", "time_spent_ms",
               "idempotency_key"}
    for i, item in enumerate(raw):
        f = f"labels.{i}"
        if not isinstance(item, dict):
            raise ValidationError("each label must be an object", field=f)
        extra = set(item) - allowed
        if extra:
            raise ValidationError(f"unknown field '{sorted(extra)[0]}'", field=f"{f}.{sorted(extra)[0]}")
        tile_id = item.get("tile_id")
        if not _is_int(tile_id):
            raise ValidationError("'tile_id' must be an integer", field=f"{f}.tile_id")
        if tile_id in seen_tiles:
            raise ValidationError("the same tile appears twice", field=f"{f}.tile_id")
        seen_tiles.add(tile_id)
        key = item.get("idempotency_key")
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ValidationError("'idempotency_key' must be 8-64 characters of [A-Za-z0-9_-]",
                                  field=f"{f}.idempotency_key")
        if key in seen_keys:
            raise ValidationError("the same idempotency_key appears twice",
                                  field=f"{f}.idempotency_key")
        seen_keys.add(key)
        skipped = item.get("skipped", False)
        if not isinstance(skipped, bool):
            raise ValidationError("'skipped' must be true or false", field=f"{f}.skipped")
        answer = item.get("answer")
        if answer is None:
            if not skipped:
                raise ValidationError("'answer' is required unless 'skipped' is true",
                                      field=f"{f}.answer")
        elif not isinstance(answer, str) or answer not in project.answer_values:
            raise ValidationError(
                f"'answer' must be one of {', '.join(a['value'] for a in project.answers)}",
                field=f"{f}.answer")
        points = item.get("points")
        if points is not None:
            if not isinstance(points, list):
                raise ValidationError("'points' must be a list of [lon, lat]", field=f"{f}.points")
            if points and project.type != "mark":
                raise ValidationError("'points' are only accepted in mark projects",
                                      field=f"{f}.points")
            if points and answer != "marked":
                raise ValidationError("'points' need the answer 'marked'", field=f"{f}.points")
            if len(points) > limit:
                raise ValidationError(f"at most {limit} points per tile", field=f"{f}.points")
            for j, p in enumerate(points):
                if not (isinstance(p, list) and len(p) == 2
                        and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                and math.isfinite(c) for c in p)):
                    raise ValidationError("each point must be [lon, lat] (two finite numbers)",
                                          field=f"{f}.points.{j}")
            points = [[float(p[0]), float(p[1])] for p in points]
        if project.type == "mark" and answer == "marked" and points is None:
            points = []
        note = item.get("flag_note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_FLAG_NOTE):
            raise ValidationError(f"'flag_note' must be text of at most {MAX_FLAG_NOTE} characters",
                                  field=f"{f}.flag_note")
        spent = item.get("time_spent_ms")
        if spent is not None and (not _is_int(spent) or not 0 <= spent <= MAX_TIME_SPENT_MS):
            raise ValidationError("'time_spent_ms' must be a whole number of milliseconds >= 0",
                                  field=f"{f}.time_spent_ms")
        out.append(LabelIn(tile_id=tile_id, answer=answer, points=points, skipped=skipped,
                           flag_note=note or None, time_spent_ms=spent, idempotency_key=key,
                           index=i))
    return task_id, out


#: the columns of ``labels`` a submission writes, in the order of ``_ROW_KEYS`` (the keys of a
#: label's row in :func:`_plan`) and ``_ROW_CASTS`` (their PostgreSQL types)
LABEL_COLUMNS = ("project_id, tile_id, volunteer_id, answer, points, skipped, flag_note, "
                 "idempotency_key, is_gold, correct, time_spent_ms, created_at")
_ROW_KEYS = ("p", "tile_id", "v", "answer", "points", "skipped", "flag_note", "key", "is_gold",
             "correct", "spent", "now")
_ROW_CASTS = ("int", "int", "int", "text", "json", "boolean", "text", "text", "boolean",
              "boolean", "int", "timestamptz")
#: a tile's update (:func:`_tile_update`): keys and their PostgreSQL types
_UPD_KEYS = ("id", "lc", "rel", "ac", "ca", "cf", "st", "ra", "tg")
_UPD_CASTS = ("int", "int", "int", "json", "text", "float8", "text", "timestamptz", "int")
#: PostgreSQL: ``SET`` of an answer's tile update from a row ``d`` with the keys ``_UPD_KEYS``
PG_TILE_SET = (
    "label_count = d.lc, lease_count = tiles.lease_count - d.rel, answer_counts = d.ac, "
    "consensus_answer = d.ca, confidence = d.cf, state = d.st, "
    "retired_at = COALESCE(tiles.retired_at, d.ra), "
    "has_room = (d.lc + tiles.lease_count - d.rel < d.tg)")

_INSERT_SQL = (
    f"INSERT INTO labels ({LABEL_COLUMNS}) VALUES ("
    + ", ".join(f":{k}" for k in _ROW_KEYS) + ") ON CONFLICT DO NOTHING RETURNING tile_id")


def _pg_submit_sql(plan: list[tuple[Any, dict[str, Any], dict[str, Any] | None]],
                   volunteer_id: int, state: StateRead | None = None) -> tuple[str, dict[str, Any]]:
    """One statement for PostgreSQL: multi-row insert (ON CONFLICT DO NOTHING), then — only
    for rows that went in — delete their leases and apply the precomputed tile updates;
    with ``state``, it also reads the volunteer's state for their next task."""
    params: dict[str, Any] = {"v": volunteer_id}
    values = []
    for i, (_, row, _) in enumerate(plan):
        values.append("(" + ", ".join(f":{k}{i}::{c}" for k, c in zip(_ROW_KEYS, _ROW_CASTS)) + ")")
        params.update({f"{k}{i}": row[k] for k in _ROW_KEYS})
    sql = (f"WITH ins AS (INSERT INTO labels ({LABEL_COLUMNS}) "
           f"VALUES {', '.join(values)} ON CONFLICT DO NOTHING RETURNING tile_id), "
           "del AS (DELETE FROM leases WHERE volunteer_id = :v "
           "AND tile_id IN (SELECT tile_id FROM ins))")
    upds = []
    for i, (_, _, upd) in enumerate(plan):
        if upd is None:
            continue
        upds.append("(" + ", ".join(f":u{k}{i}::{c}" for k, c in zip(_UPD_KEYS, _UPD_CASTS)) + ")")
        params.update({f"u{k}{i}": upd[k] for k in _UPD_KEYS})
    if upds:
        sql += (f", upd AS (UPDATE tiles SET {PG_TILE_SET} "
                f"FROM (VALUES {', '.join(upds)}) AS d({', '.join(_UPD_KEYS)}) "
                "WHERE tiles.id = d.id AND d.id IN (SELECT tile_id FROM ins))")
    # the volunteer's label counter (read back by ``state``'s count as ``cnt``)
    sql += (", cnt AS (INSERT INTO volunteer_progress (volunteer_id, project_id, labels) "
            "SELECT :v, :cp, count(*) FROM ins HAVING count(*) > 0 "
            "ON CONFLICT (volunteer_id, project_id) DO UPDATE "
            "SET labels = volunteer_progress.labels + EXCLUDED.labels RETURNING labels)")
    params["cp"] = plan[0][1]["p"]
    if state is not None:
        ctes, select, more = state.sql()
        params.update(more)
        return f"{sql}, {ctes} {select}", params
    return sql + " SELECT tile_id FROM ins", params


#: SQLite: add ``:n`` labels to the volunteer's counter in the project
_COUNT_SQL = (
    "INSERT INTO volunteer_progress (volunteer_id, project_id, labels) VALUES (:v, :p, :n) "
    "ON CONFLICT (volunteer_id, project_id) DO UPDATE "
    "SET labels = volunteer_progress.labels + excluded.labels")


_UPDATE_SQL = (
    "UPDATE tiles SET label_count = :lc, lease_count = lease_count - :rel, answer_counts = :ac, "
    "consensus_answer = :ca, confidence = :cf, state = :st, retired_at = COALESCE(retired_at, :ra), "
    "has_room = (:lc + lease_count - :rel < :tg) WHERE id = :id")


def _classify_duplicates(conn: Connection, volunteer_id: int, labels: list[LabelIn]) -> set[int]:
    """Indexes of ``labels`` that this volunteer already stored (same key, or same tile);
    raises if a key was used before for a different tile."""
    keys = ", ".join(f":k{i}" for i in range(len(labels)))
    tiles, params = id_params([lb.tile_id for lb in labels])
    params.update({f"k{i}": lb.idempotency_key for i, lb in enumerate(labels)})
    params["v"] = volunteer_id
    prior = run(conn,
        "SELECT tile_id, idempotency_key FROM labels WHERE volunteer_id = :v AND "
        f"(idempotency_key IN ({keys}) OR tile_id IN {tiles})",
        params).all()
    key_tile = {r.idempotency_key: r.tile_id for r in prior}
    done_tiles = {r.tile_id for r in prior}
    dup = set()
    for lb in labels:
        if lb.idempotency_key in key_tile:
            if key_tile[lb.idempotency_key] != lb.tile_id:
                raise ValidationError("this idempotency_key was already used for another tile",
                                      field=f"labels.{lb.index}.idempotency_key")
            dup.add(lb.index)
        elif lb.tile_id in done_tiles:
            dup.add(lb.index)
    return dup


_TILE_READ_COLS = (
    "t.id, t.project_id, t.z, t.x, t.y, t.west, t.south, t.east, t.north, t.gold_answer, "
    "t.gold_explanation, t.tutorial, t.state, t.label_count, t.lease_count, t.answer_counts, "
    "s.task_id, s.is_gold AS lease_gold")

#: PostgreSQL: lock the tiles of (tile, volunteer) keys in id order and read what
#: :func:`submit_in` needs of each: the tile and that volunteer's lease on it.
_LOCK_READ_SQL = (
    f"SELECT {_TILE_READ_COLS}, k.v FROM unnest(CAST(:t AS int[]), CAST(:v AS int[])) AS k(t, v) "
    "JOIN tiles t ON t.id = k.t LEFT JOIN leases s ON s.tile_id = k.t AND s.volunteer_id = k.v "
    "ORDER BY t.id FOR UPDATE OF t")


def lock_tiles(conn: Connection, keys: list[tuple[int, int]], wait: bool = True
               ) -> list[tuple[int, int]]:
    """Lock the tiles of ``keys`` — ``(tile id, volunteer id)`` pairs, sorted — (PostgreSQL,
    in id order) until the transaction ends and return the keys whose tile was locked: a
    group-committed batch (:mod:`labeler.batch`) takes its submissions' tiles up front.
    Without ``wait``, rows another transaction holds are skipped. In a batch, what
    :func:`submit_in` reads of each tile comes with the locks (one statement fewer per
    submission), kept for the transaction: submissions bring it up to date with what they
    write, claims forget the claimer's rows (:func:`labeler.batch.forget_rows`)."""
    rows = run(conn, _LOCK_READ_SQL + ("" if wait else " SKIP LOCKED"),
               {"t": [int(k[0]) for k in keys], "v": [int(k[1]) for k in keys]}).all()
    keep_rows(conn, {(r.id, r.v): r for r in rows})
    return [(r.id, r.v) for r in rows]


def _keep_written(conn: Connection, volunteer_id: int,
                  plan: list[tuple[LabelIn, dict[str, Any], dict[str, Any] | None]],
                  inserted: set[int]) -> None:
    """After a submission's statement: bring the rows the batch read with its locks (for
    other volunteers' answers to the same tiles) up to date with what it wrote, and drop
    this volunteer's (their lease is gone). Submissions are the batch's only writers of the
    columns those rows are used for (counts, answers, state)."""
    rows = kept_rows(conn)
    if not rows:
        return
    for lb, _, upd in plan:
        rows.pop((lb.tile_id, volunteer_id), None)
        if upd is None or lb.tile_id not in inserted:
            continue
        for key in [k for k in rows if k[0] == lb.tile_id]:
            r = rows[key]
            rows[key] = r._replace(label_count=upd["lc"], answer_counts=upd["counts"],
                                   state=upd["st"], lease_count=r.lease_count - upd["rel"])


def _locked_rows(conn: Connection, volunteer_id: int, lease_id: str,
                 labels: list[LabelIn]) -> list[Any] | None:
    """The rows :func:`lock_tiles` read for these labels in this batch (as the batch's
    submissions since left them), when all of them are kept and each shows the tile leased
    to the volunteer under ``lease_id``; ``None`` otherwise. (Claims in the batch change the
    tiles' lease counts without updating the rows; only a late label reads that count, and a
    late label's tile is read again.)"""
    rows = kept_rows(conn)
    if not rows or not lease_id:
        return None
    got = [rows.get((lb.tile_id, volunteer_id)) for lb in labels]
    if any(r is None or r.task_id != lease_id for r in got):
        return None
    return got


def submit(engine: Engine, project: ProjectConfig, volunteer_id: int, task_id: str,
           labels: list[LabelIn], *, task_key: bytes | None = None) -> SubmitResult:
    """Store ``labels`` (already shape-checked by :func:`parse_submission`) all-or-nothing.

    Common path: four statements (lock tiles + read leases, insert, delete leases, update
    tiles). Duplicates are classified only when something does not line up.

    Late labels (the lease expired and was reclaimed): with ``task_key`` (the assigner's),
    a label whose signed ``task_id`` proves the tile was handed to this volunteer is still
    stored when that is safe — the tile is live and has room below its target (or it is a
    skip, or a gold tile). Otherwise :class:`LeaseExpired`; never a silent drop."""
    with write_tx(engine) as conn:
        return submit_in(conn, project, volunteer_id, task_id, labels, task_key=task_key)


def submit_in(conn: Connection, project: ProjectConfig, volunteer_id: int, task_id: str,
              labels: list[LabelIn], *, task_key: bytes | None = None,
              state: StateRead | None = None) -> SubmitResult:
    """:func:`submit` inside the caller's write transaction (``labeler.db.write_tx``), e.g.
    to claim the next task in the same transaction. ``state`` (PostgreSQL): the statement
    that stores the labels also reads the volunteer's state for their next task into it
    (:class:`labeler.assign.StateRead`); left unread when nothing is stored."""
    result = SubmitResult()
    now = utcnow()
    lease_id = split_task_id(task_id)
    pg = conn.dialect.name == "postgresql"
    rows = _locked_rows(conn, volunteer_id, lease_id, labels) if pg else None
    if rows is None:
        ids, params = id_params([lb.tile_id for lb in labels])
        params["v"] = volunteer_id
        rows = run(conn,
            f"SELECT {_TILE_READ_COLS} FROM tiles t LEFT JOIN leases s "
            f"ON s.tile_id = t.id AND s.volunteer_id = :v WHERE t.id IN {ids} "
            "ORDER BY t.id" + (" FOR UPDATE OF t" if pg else ""), params).all()
    tiles = {r.id: r for r in rows}
    unleased = [lb for lb in labels if lb.tile_id not in tiles
                or tiles[lb.tile_id].task_id != lease_id]
    dup = _classify_duplicates(conn, volunteer_id, unleased) if unleased else set()
    result.duplicates = len(dup)
    fresh, plan = _plan(conn, project, volunteer_id, task_id, lease_id, labels, tiles, dup,
                        task_key, ts(conn, now))
    if not fresh:
        return result
    inserted: set[int] = set()
    if pg:
        # One round trip: insert; for what went in, drop the leases and update the tiles.
        sql, params = _pg_submit_sql(plan, volunteer_id, state)
        if state is None:
            inserted = {r[0] for r in run(conn, sql, params)}
        else:
            inserted = state.take(run(conn, sql, params).all())
        _keep_written(conn, volunteer_id, plan, inserted)
    else:
        for lb, row, _ in plan:
            if run(conn, _INSERT_SQL, row).first() is not None:
                inserted.add(lb.tile_id)
        if inserted:
            ids, params = id_params(sorted(inserted))
            params["v"] = volunteer_id
            run(conn, f"DELETE FROM leases WHERE volunteer_id = :v AND tile_id IN {ids}", params)
            updates = [upd for lb, _, upd in plan if upd and lb.tile_id in inserted]
            if len(updates) == 1:
                run(conn, _UPDATE_SQL, updates[0])
            elif updates:
                run(conn, _UPDATE_SQL, updates)
            run(conn, _COUNT_SQL, {"v": volunteer_id, "p": project.id, "n": len(inserted)})
    if len(inserted) < len(fresh):
        # A concurrent request of the same volunteer got there first, or a key was reused.
        late = _classify_duplicates(conn, volunteer_id, [lb for lb in fresh
                                                         if lb.tile_id not in inserted])
        result.duplicates += len(late)
    _stored(result, fresh, tiles, inserted)
    return result


def _stored(result: SubmitResult, fresh: list[LabelIn], tiles: dict[int, Any],
            inserted: set[int]) -> None:
    """Count the labels of ``fresh`` that went in (``inserted``: their tile ids) into
    ``result``, with the feedback of the gold tiles among them."""
    result.stored = len(inserted)
    for lb in fresh:
        tile = tiles[lb.tile_id]
        if lb.tile_id in inserted and tile.gold_answer is not None and not lb.skipped:
            result.feedback.append({
                "tile_id": lb.tile_id, "correct": lb.answer == tile.gold_answer,
                "expected": tile.gold_answer, "explanation": tile.gold_explanation or ""})


def _plan(conn: Connection, project: ProjectConfig, volunteer_id: int, task_id: str,
          lease_id: str, labels: list[LabelIn], tiles: dict[int, Any], dup: set[int],
          task_key: bytes | None, now_db: Any
          ) -> tuple[list[LabelIn], list[tuple[LabelIn, dict[str, Any], dict[str, Any] | None]]]:
    """Check ``labels`` against their tiles' rows (``tiles``, by id, with this volunteer's
    lease) and plan what storing them writes: ``(labels to store, [(label, its row for
    labels, its tile's update or None)])``. No statement runs here; raises on a bad label."""
    fresh: list[LabelIn] = []
    for lb in labels:
        if lb.index in dup:
            continue
        f = f"labels.{lb.index}"
        tile = tiles.get(lb.tile_id)
        if tile is None or tile.project_id != project.id:
            raise ValidationError(f"tile {lb.tile_id} is not part of project '{project.slug}'",
                                  field=f"{f}.tile_id")
        if tile.task_id != lease_id or not lease_id:
            _check_late(project, volunteer_id, task_id, tile, lb, task_key, f)
        if lb.points:
            for j, (lon, lat) in enumerate(lb.points):
                if not (tile.west - EPS <= lon <= tile.east + EPS
                        and tile.south - EPS <= lat <= tile.north + EPS):
                    raise ValidationError(
                        f"point {j} ({lon}, {lat}) is outside tile {lb.tile_id} "
                        f"[{tile.west}, {tile.south}, {tile.east}, {tile.north}]",
                        field=f"{f}.points.{j}")
        fresh.append(lb)
    plan: list[tuple[LabelIn, dict[str, Any], dict[str, Any] | None]] = []
    for lb in fresh:
        tile = tiles[lb.tile_id]
        is_gold = tile.gold_answer is not None
        row = dict(
            p=project.id, tile_id=lb.tile_id, v=volunteer_id, answer=lb.answer,
            points=None if lb.points is None else js(conn, lb.points), skipped=lb.skipped,
            flag_note=lb.flag_note, key=lb.idempotency_key, is_gold=is_gold,
            correct=(lb.answer == tile.gold_answer) if is_gold and not lb.skipped else None,
            spent=lb.time_spent_ms, now=now_db)
        # The lease this label consumes: none for a gold lease (gold is not counted) or
        # when the lease is gone (a late label); a live normal lease of this volunteer on
        # the tile (even under another task) is released.
        release = 0 if tile.task_id is None or tile.lease_gold else 1
        if is_gold:  # gold answers feed skill, not the tile's counts
            upd = _tile_update(tile, None, release=1, project=project) if release else None
        else:
            upd = _tile_update(tile, None if lb.skipped else lb.answer,
                               release=release, project=project)
        if upd is not None:
            upd = {**upd, "ac": js(conn, upd["ac"]), "counts": upd["ac"],
                   "ra": now_db if upd["st"] != "live" else None}
        plan.append((lb, row, upd))
    return fresh, plan


def _check_late(project: ProjectConfig, volunteer_id: int, task_id: str, tile: Any, lb: LabelIn,
                key: bytes | None, f: str) -> None:
    """Raise unless a label for a tile not (or no longer) leased under ``task_id`` is safe."""
    cell = task_cell(tile.x, tile.y, tile.z, project.block_cols, project.block_rows)
    if key is None or tile.tutorial or not verify_task(key, task_id, volunteer_id, project.id, cell):
        raise NotLeased(f"tile {lb.tile_id} was never part of task {task_id} for you: "
                        "ask /next for a task", field=f"{f}.tile_id")
    if lb.skipped or tile.gold_answer is not None:
        return  # changes no tile's counts
    if tile.state != "live":
        raise LeaseExpired(f"your lease on tile {lb.tile_id} expired and the tile has meanwhile "
                           f"been {tile.state}: this answer is no longer needed, thank you",
                           field=f"{f}.tile_id")
    # A live lease of this volunteer on the tile (under another task) is already counted.
    room = tile.label_count + tile.lease_count - (1 if tile.task_id is not None
                                                  and not tile.lease_gold else 0)
    if room >= project.target:
        raise LeaseExpired(f"your lease on tile {lb.tile_id} expired and other volunteers have "
                           "taken its places: this answer is no longer needed, thank you",
                           field=f"{f}.tile_id")


def _tile_update(tile: Any, answer: str | None, *, release: int, project: ProjectConfig) -> dict[str, Any]:
    counts = dict(unjs(tile.answer_counts) or {})
    label_count = tile.label_count
    state = tile.state
    ca = None
    cf = None
    if answer is not None:
        counts[answer] = counts.get(answer, 0) + 1
        label_count += 1
    if counts:
        new_state, ca, cf = evaluate(project.retirement, project.redundancy,
                                     [a["value"] for a in project.answers], counts)
        if state == "live":
            state = new_state
    return {"id": tile.id, "lc": label_count, "rel": release, "ac": counts, "ca": ca, "cf": cf,
            "st": state, "tg": project.target}


def volunteer_stats(conn: Connection, volunteer_id: int) -> dict[str, Any]:
    rows = conn.execute(sa.text(
        "SELECT p.slug, count(*) AS n, "
        "sum(CASE WHEN l.is_gold AND NOT l.skipped THEN 1 ELSE 0 END) AS gold_seen, "
        "sum(CASE WHEN l.correct THEN 1 ELSE 0 END) AS gold_correct "
        "FROM labels l JOIN projects p ON p.id = l.project_id WHERE l.volunteer_id = :v "
        "GROUP BY p.slug ORDER BY p.slug"), {"v": volunteer_id}).all()
    return {
        "labels": int(sum(r.n for r in rows)),
        "projects": {r.slug: int(r.n) for r in rows},
        "gold": {"seen": int(sum(r.gold_seen or 0 for r in rows)),
                 "correct": int(sum(r.gold_correct or 0 for r in rows))},
    }
