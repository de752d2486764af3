"""PostgreSQL: the submissions of a group-committed batch stored with a few set-based
statements instead of one statement each.

A batch (:mod:`labeler.batch`) used to run every submission as its own statement — insert
the labels, drop the leases, update the tiles, read the volunteer's state and claim their next
task — so its cost grew by a whole statement per answer: the server set up a plan of ~90 nodes,
ran the foreign-key checks and finished the data-modifying CTEs each time, and the event loop
waited for every one of those round trips in turn. Here the batch's submissions share four
statements whatever their number:

1. **write**: every label of every submission inserted (``ON CONFLICT DO NOTHING``), their
   leases deleted, their tiles' counters, consensus and room updated, the volunteers' label
   counters raised;
2. **state**: each volunteer's labels given, live tasks (renewed when less than
   ``RENEW_BELOW`` of the lease is left) and expired leases, as
   :meth:`labeler.assign.StateRead.take` would have read them;
3. **candidates**: the tiles at the head of the project's queue that have room, locked
   (``FOR UPDATE SKIP LOCKED``), with which of the batch's volunteers labelled or hold each;
4. **claim**: each claiming volunteer's lease on the first candidate they may take (in queue
   order, room counted), and the tiles' lease counts and room.

What each submission plans is checked in Python against the tile rows the batch locked
(:func:`labeler.labels.lock_tiles`), exactly as :func:`labeler.labels.submit_in` checks them.
Only the plain case runs here: a submission whose labels are all for tiles leased to it under
its task, the first of the batch from its volunteer, for the project of the batch's first.
Anything else — a late label, a duplicate, a second submission of the same volunteer, another
project's — is left to the submission's own code, which runs
after these statements in the same transaction. A claim this path does not make (a gold turn,
an expired lease to reclaim first, a tile queue exhausted by the batch) is made by
:meth:`labeler.assign.Assigner.next_tasks` as before.

Nothing here may fail quietly: a label refused by the database (its idempotency key used
before for another tile) or any error makes the batch's optimistic transaction roll back and
run again one request at a time (:class:`labeler.batch.GroupCommitter`), where each request
gets its own answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy.engine import Connection

from labeler.assign import StateRead, _order_by, _parse_state_pg, gold_turn, split_task_id
from labeler.labels import (LABEL_COLUMNS, PG_TILE_SET, _ROW_CASTS, _ROW_KEYS, _UPD_CASTS,
                            _UPD_KEYS, LabelIn, SubmitResult, _keep_written, _locked_rows,
                            _plan, _stored)
from labeler.models import utcnow
from labeler.projects import ProjectConfig
from labeler.sql import run


@dataclass
class FastSubmit:
    """What :func:`submit_many` needs of one ``POST /labels`` request. ``make_state``: the
    request's :class:`StateRead` (a new one each call; ``None`` when it wants no next task);
    ``finish(conn, result, state)``: the request's value once its labels are stored and its
    state read (e.g. its next task, built by ``next_tasks(state=state)``)."""

    project: ProjectConfig
    volunteer_id: int
    task_id: str
    labels: list[LabelIn]
    task_key: bytes | None
    make_state: Callable[[], StateRead | None]
    finish: Callable[[Connection, SubmitResult, StateRead | None], Any]


class Refused(Exception):
    """The database did not take every label planned: the batch runs again, one request
    at a time, where duplicates and reused keys are sorted out per request."""


def _recordset(keys: tuple[str, ...], casts: tuple[str, ...]) -> str:
    """The column list of ``json_to_recordset`` for rows with ``keys`` of types ``casts``."""
    return ", ".join(f"{k} {c}" for k, c in zip(keys, casts))


# (``cnt`` takes the counters' row locks in volunteer order, as every batch does, so two
# workers' batches with volunteers in common cannot deadlock on them.)
_WRITE_SQL = (
    "WITH nl AS (SELECT * FROM json_to_recordset(CAST(:labels AS json)) "
    f"AS nl({_recordset(_ROW_KEYS, _ROW_CASTS)})), "
    f"ins AS (INSERT INTO labels ({LABEL_COLUMNS}) SELECT {', '.join(_ROW_KEYS)} "
    "FROM nl ON CONFLICT DO NOTHING RETURNING tile_id, volunteer_id), "
    "del AS (DELETE FROM leases s USING ins WHERE s.tile_id = ins.tile_id "
    "AND s.volunteer_id = ins.volunteer_id), "
    "d AS (SELECT * FROM json_to_recordset(CAST(:tiles AS json)) "
    f"AS d({_recordset(_UPD_KEYS, _UPD_CASTS)})), "
    f"upd AS (UPDATE tiles SET {PG_TILE_SET} FROM d WHERE tiles.id = d.id), "
    "cnt AS (INSERT INTO volunteer_progress (volunteer_id, project_id, labels) "
    "SELECT v, p, count(*) FROM nl GROUP BY v, p ORDER BY v, p "
    "ON CONFLICT (volunteer_id, project_id) "
    "DO UPDATE SET labels = volunteer_progress.labels + EXCLUDED.labels) "
    "SELECT count(*) AS n FROM ins")

_NULLS = "NULL, " * 13 + "NULL"

# Per volunteer (``vs``: id and how many tasks it wants): k = 0 labels given, k = 1 the leases
# of its oldest ``n`` live tasks with their tiles (renewed by ``ren`` when ``:fresh`` is
# reached), k = 2 its expired leases; the columns of :func:`labeler.assign._state_pg_sql`,
# plus ``v``.
_STATE_SQL = (
    "WITH vs AS (SELECT * FROM json_to_recordset(CAST(:vs AS json)) AS vs(v int, n int)), "
    "lv AS (SELECT s.volunteer_id AS v, s.task_id, min(s.expires_at) AS exp, min(s.id) AS first "
    "FROM leases s WHERE s.volunteer_id IN (SELECT v FROM vs) AND s.project_id = :p "
    "AND s.expires_at > :now GROUP BY s.volunteer_id, s.task_id), "
    "live AS (SELECT x.v, x.task_id, x.exp FROM (SELECT lv.*, row_number() OVER "
    "(PARTITION BY lv.v ORDER BY lv.first) AS rn FROM lv) x JOIN vs ON vs.v = x.v "
    "WHERE x.rn <= vs.n), "
    "ren AS (UPDATE leases SET expires_at = :e FROM live WHERE leases.volunteer_id = live.v "
    "AND leases.task_id = live.task_id AND live.exp <= :fresh) "
    "SELECT 0 AS k, vs.v, COALESCE(vp.labels, 0) AS n, NULL AS task_id, NULL AS expires_at, "
    "NULL AS block_row, NULL AS block_col, NULL AS is_gold, NULL AS id, NULL AS z, NULL AS x, "
    "NULL AS y, NULL AS west, NULL AS south, NULL AS east, NULL AS north, NULL AS layers "
    "FROM vs LEFT JOIN volunteer_progress vp ON vp.volunteer_id = vs.v AND vp.project_id = :p "
    "UNION ALL SELECT 1, l.v, s.id, s.task_id, "
    "CASE WHEN l.exp <= :fresh THEN :e ELSE l.exp END, s.block_row, s.block_col, s.is_gold, "
    "t.id, t.z, t.x, t.y, t.west, t.south, t.east, t.north, t.layers "
    "FROM live l JOIN leases s ON s.task_id = l.task_id AND s.volunteer_id = l.v "
    "JOIN tiles t ON t.id = s.tile_id "
    f"UNION ALL SELECT 2, s.volunteer_id, count(*), {_NULLS} FROM leases s "
    "WHERE s.volunteer_id IN (SELECT v FROM vs) AND s.project_id = :p AND s.expires_at <= :now "
    "GROUP BY s.volunteer_id "
    "ORDER BY 1, 2, 3")

# The head of the queue (``{order}``: the project's, see ``labeler.assign._order_by``), locked;
# k = 1 rows: which of the volunteers ``:vs`` labelled or hold each of those tiles.
_CANDIDATES_SQL = (
    "WITH c AS (SELECT t.id, t.label_count, t.lease_count, t.confidence FROM tiles t "
    "WHERE t.project_id = :p AND t.state = 'live' AND t.gold_answer IS NULL AND NOT t.tutorial "
    "AND t.has_room AND t.label_count + t.lease_count < :target "
    "ORDER BY {order} LIMIT :k FOR UPDATE OF t SKIP LOCKED) "
    "SELECT 0 AS k, c.id, c.label_count, c.lease_count, c.confidence, NULL::int AS v FROM c "
    "UNION ALL SELECT 1, l.tile_id, NULL, NULL, NULL, l.volunteer_id FROM labels l "
    "WHERE l.tile_id IN (SELECT id FROM c) AND l.volunteer_id = ANY(CAST(:vs AS int[])) "
    "UNION ALL SELECT 1, s.tile_id, NULL, NULL, NULL, s.volunteer_id FROM leases s "
    "WHERE s.tile_id IN (SELECT id FROM c) AND s.volunteer_id = ANY(CAST(:vs AS int[]))")

_CLAIM_SQL = (
    "WITH d AS (SELECT * FROM json_to_recordset(CAST(:claims AS json)) "
    "AS d(task_id text, tile_id int, v int)), "
    "n AS (SELECT tile_id, count(*) AS n FROM d GROUP BY tile_id), "
    "u AS (UPDATE tiles SET lease_count = tiles.lease_count + n.n, "
    "has_room = (tiles.label_count + tiles.lease_count + n.n < :target) FROM n "
    "WHERE tiles.id = n.tile_id RETURNING tiles.id, tiles.z, tiles.x, tiles.y, tiles.west, "
    "tiles.south, tiles.east, tiles.north, tiles.layers), "
    "i AS (INSERT INTO leases (task_id, project_id, tile_id, volunteer_id, is_gold, block_row, "
    "block_col, expires_at, created_at) SELECT task_id, :p, tile_id, v, false, 0, 0, :e, :now "
    "FROM d) "
    "SELECT * FROM u")

#: candidates read per claiming volunteer (and a few more): a volunteer skips the tiles it
#: labelled or holds, and several may share a tile with room for them
CANDIDATES_PER_CLAIM = 2
CANDIDATES_EXTRA = 4


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _queue_key(project: ProjectConfig) -> Callable[[Any], tuple[Any, ...]]:
    """Python's sort key for the claim order of ``labeler.assign._order_by`` (no place)."""
    if project.priority == "uncertain":
        return lambda r: (r.confidence is None, r.confidence or 0.0, -r.label_count, r.id)
    return lambda r: (-r.label_count, -r.id)


def submit_many(conn: Connection, items: list[FastSubmit]) -> dict[int, Any]:
    """Store the batch's plain submissions (see the module doc) with set-based statements;
    ``{index in items: value}`` for those handled (their ``finish`` has run). The others are
    untouched and must run their own code. Raises on any error, or :class:`Refused`."""
    handled: list[tuple[int, FastSubmit, SubmitResult]] = []
    labels: list[dict[str, Any]] = []
    tiles: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()
    project_id = items[0].project.id
    for i, item in enumerate(items):
        if item.volunteer_id in seen or item.project.id != project_id:
            continue  # (its volunteer's first submission's statements would not see it)
        lease_id = split_task_id(item.task_id)
        rows = _locked_rows(conn, item.volunteer_id, lease_id, item.labels)
        if rows is None:
            continue  # not all leased under this task, or not read with the locks
        seen.add(item.volunteer_id)
        by_id = {r.id: r for r in rows}
        result = SubmitResult()
        stamp = utcnow()
        fresh, plan = _plan(conn, item.project, item.volunteer_id, item.task_id, lease_id,
                            item.labels, by_id, set(), item.task_key, stamp)
        for lb, row, upd in plan:
            # (JSON values as such: the row's are wrapped for the driver)
            labels.append({**row, "points": lb.points, "now": _iso(stamp)})
            if upd is not None:
                # a tile answered twice in the batch: one row, the second answer's counts
                # (planned on the tile as the first left it), both leases released
                prev = tiles.get(upd["id"])
                tiles[upd["id"]] = {
                    **{k: upd[k] for k in _UPD_KEYS}, "ac": upd["counts"],
                    "rel": upd["rel"] + (prev["rel"] if prev else 0),
                    "ra": (prev and prev["ra"]) or _iso(upd["ra"])}
        planned = {lb.tile_id for lb in fresh}
        # later submissions of the batch plan against the rows as this one leaves them
        _keep_written(conn, item.volunteer_id, plan, planned)
        _stored(result, fresh, by_id, planned)
        handled.append((i, item, result))
    if not handled:
        return {}
    got = run(conn, _WRITE_SQL, {"labels": json.dumps(labels),
                                 "tiles": json.dumps(list(tiles.values()))}).one()
    if got.n != len(labels):
        raise Refused(f"{len(labels) - got.n} of {len(labels)} labels were not inserted")
    states = _read_states(conn, handled)
    _claim(conn, handled, states)
    return {i: item.finish(conn, result, states.get(i)) for i, item, result in handled}


def _read_states(conn: Connection, handled: list[tuple[int, FastSubmit, SubmitResult]]
                 ) -> dict[int, StateRead]:
    """Make and read the state of every handled submission that wants a next task."""
    states: dict[int, StateRead] = {}
    for i, item, _ in handled:
        state = item.make_state()
        if state is not None:
            states[i] = state
    if not states:
        return states
    first = next(iter(states.values()))
    rows = run(conn, _STATE_SQL, {
        "vs": json.dumps([{"v": s.volunteer_id, "n": s.want} for s in states.values()]),
        "p": first.project_id, "now": first.now, "e": first.expires, "fresh": first.fresh,
    }).all()
    per: dict[int, list[Any]] = {}
    for r in rows:
        per.setdefault(r.v, []).append(r)
    for state in states.values():
        state.result = _parse_state_pg(per.get(state.volunteer_id, []))
    return states


def _claim(conn: Connection, handled: list[tuple[int, FastSubmit, SubmitResult]],
           states: dict[int, StateRead]) -> None:
    """Claim one single-tile task for each handled submission whose next task is a plain
    claim (what the statement of :func:`labeler.labels.submit_in` would have claimed: fewer
    tasks held than wanted, no expired lease, no gold turn); the others get none here."""
    claimers: list[StateRead] = []
    project = None
    for i, item, _ in handled:
        state = states.get(i)
        if state is None or state.claim is None:
            continue
        n_done, live, n_expired = state.result  # type: ignore[misc]
        held = list(live.values())[:state.want]
        if len(held) >= state.want or n_expired:
            continue
        if gold_turn(n_done + sum(len(rows) for rows in held), item.project.gold_rate):
            continue
        claimers.append(state)
        project = item.project
    if not claimers or project is None:
        return
    vids = [s.volunteer_id for s in claimers]
    params = {"p": project.id, "target": project.target, "vs": vids,
              "k": CANDIDATES_PER_CLAIM * len(claimers) + CANDIDATES_EXTRA}
    rows = run(conn, _CANDIDATES_SQL.format(order=_order_by(project, None)), params).all()
    cands = sorted((r for r in rows if r.k == 0), key=_queue_key(project))
    taken: set[tuple[int, int]] = {(r.id, r.v) for r in rows if r.k == 1}
    room = {r.id: project.target - r.label_count - r.lease_count for r in cands}
    claims: list[dict[str, Any]] = []
    for state in claimers:
        for r in cands:
            if room[r.id] > 0 and (r.id, state.volunteer_id) not in taken:
                room[r.id] -= 1
                taken.add((r.id, state.volunteer_id))
                claims.append({"task_id": state.claim[0]["task_id"],  # type: ignore[index]
                               "tile_id": r.id, "v": state.volunteer_id})
                break
    if not claims:
        return
    first = claimers[0]
    got = {r.id: r for r in run(conn, _CLAIM_SQL, {
        "claims": json.dumps(claims), "p": project.id, "target": project.target,
        "e": first.expires, "now": first.now}).all()}
    by_volunteer = {c["v"]: got[c["tile_id"]] for c in claims}
    for state in claimers:
        row = by_volunteer.get(state.volunteer_id)
        state.claimed = [row] if row is not None else []
