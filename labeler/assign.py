"""Task assignment: hand a volunteer the next tile (or block of tiles) under a lease.

Invariants (checked by the concurrency tests on both backends):

- a tile's ``label_count + lease_count`` never exceeds the project's target: the claim reads
  and bumps those counters on rows it has locked (PostgreSQL ``FOR UPDATE SKIP LOCKED``;
  SQLite ``BEGIN IMMEDIATE`` serialises writers);
- a volunteer never gets a tile they already labelled, skipped or hold a lease on;
- retired/unresolved, gold-only and tutorial tiles never enter the normal queue.

Counters change only in the transaction that inserts/deletes the row they count, and every
transaction locks ``tiles`` rows before ``leases`` rows (ordered by id), so there are no
lock-order deadlocks. :func:`recount` recomputes them from scratch.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import mercantile
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from labeler.batch import forget_rows
from labeler.db import write_tx
from labeler.models import TS, Project, utcnow
from labeler.projects import ProjectConfig, project_target
from labeler.sql import from_ts_text, id_params, layer_list, run, ts

NEW_VOLUNTEER_LABELS = 20  # volunteers with fewer labels in a project see gold twice as often
RECLAIM_EVERY_S = 1.0
#: A held task's leases are extended only once less than this share of a full lease is left.
#: The volunteer page asks for its tasks again with every answer (``labels?next=1&ahead=1``);
#: renewing each time rewrote the same leases (an indexed column) inside the write lock.
RENEW_BELOW = 0.9


@dataclass
class TaskTile:
    tile_id: int
    z: int
    x: int
    y: int
    bounds: tuple[float, float, float, float]
    layers: list[str]
    row: int = 0
    col: int = 0


@dataclass
class Task:
    task_id: str
    expires_at: datetime
    tiles: list[TaskTile]
    is_gold: bool = False
    labelled_by_you: int = 0
    context: dict[str, list[str]] = field(default_factory=dict)


MAC_CHARS = 16  # hex characters of the task-id signature


def task_cell(tile_x: int, tile_y: int, z: int, cols: int, rows: int) -> tuple[int, int, int]:
    """The grid-aligned block cell a tile belongs to (the tile itself for 1x1 projects)."""
    return z, tile_x - tile_x % cols, tile_y - tile_y % rows


@functools.lru_cache(maxsize=4096)  # a held task is handed out again on every answer
def sign_task(key: bytes, lease_id: str, volunteer_id: int, project_id: int,
              cell: tuple[int, int, int]) -> str:
    """The task id the volunteer sees: the id stored on the leases plus a signature binding it
    to this volunteer, project and block cell. It lets a label arrive after its lease was
    reclaimed and still be proven to belong to a task we handed out (see ``labels.submit``)."""
    msg = f"{lease_id}:{volunteer_id}:{project_id}:{cell[0]}/{cell[1]}/{cell[2]}".encode()
    return lease_id + hmac.new(key, msg, hashlib.sha256).hexdigest()[:MAC_CHARS]


def split_task_id(task_id: str) -> str:
    """The id stored on the leases, from a task id the volunteer sent back."""
    return task_id[:-MAC_CHARS] if len(task_id) > MAC_CHARS else ""


def verify_task(key: bytes, task_id: str, volunteer_id: int, project_id: int,
                cell: tuple[int, int, int]) -> bool:
    lease_id = split_task_id(task_id)
    return bool(lease_id) and hmac.compare_digest(
        sign_task(key, lease_id, volunteer_id, project_id, cell), task_id)


def gold_turn(n_done: int, rate: float) -> bool:
    """Deterministic interleaving: the (n+1)-th task is gold when it crosses a multiple of
    1/rate. New volunteers (fewer than NEW_VOLUNTEER_LABELS labels) get twice the rate."""
    if rate <= 0:
        return False
    r = min(1.0, rate * 2) if n_done < NEW_VOLUNTEER_LABELS else rate
    return math.floor((n_done + 1) * r + 1e-9) > math.floor(n_done * r + 1e-9)


def _pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _ids(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, expanding=True)


_TILE_COLS = "t.id, t.z, t.x, t.y, t.west, t.south, t.east, t.north, t.layers"


def _task_tile(r: Any, row: int = 0, col: int = 0) -> TaskTile:
    return TaskTile(tile_id=r.id, z=r.z, x=r.x, y=r.y, bounds=(r.west, r.south, r.east, r.north),
                    layers=layer_list(r.layers), row=row, col=col)


def reclaim_expired(conn: Connection, project_id: int, now: datetime, *, target: int,
                    volunteer_id: int | None = None, limit: int = 500) -> int:
    """Delete expired leases (all, or one volunteer's) and give their places back (``target``:
    the project's, :attr:`labeler.projects.ProjectConfig.target`)."""
    where = "project_id = :p AND expires_at < :now"
    params: dict[str, Any] = {"p": project_id, "now": now, "lim": limit}
    if volunteer_id is not None:
        where += " AND volunteer_id = :v"
        params["v"] = volunteer_id
    tile_ids = [r[0] for r in conn.execute(sa.text(
        f"SELECT DISTINCT tile_id FROM leases WHERE {where} LIMIT :lim"
    ).bindparams(sa.bindparam("now", type_=TS)), params)]
    if not tile_ids:
        return 0
    lock = " FOR UPDATE SKIP LOCKED" if _pg(conn) else ""
    locked = [r[0] for r in conn.execute(sa.text(
        f"SELECT id FROM tiles WHERE id IN :ids ORDER BY id{lock}"
    ).bindparams(_ids("ids")), {"ids": tile_ids})]
    if not locked:
        return 0
    forget_rows(conn)
    deleted = conn.execute(sa.text(
        f"DELETE FROM leases WHERE tile_id IN :ids AND {where} RETURNING tile_id, is_gold"
    ).bindparams(_ids("ids"), sa.bindparam("now", type_=TS)), {**params, "ids": locked}).all()
    _release(conn, [r.tile_id for r in deleted if not r.is_gold], target)
    return len(deleted)


def _release(conn: Connection, tile_ids: list[int], target: int) -> None:
    per: dict[int, int] = {}
    for t in tile_ids:
        per[t] = per.get(t, 0) + 1
    if per:
        conn.execute(sa.text("UPDATE tiles SET lease_count = lease_count - :n, "
                             "has_room = (label_count + lease_count - :n < :target) WHERE id = :id"),
                     [{"id": t, "n": n, "target": target} for t, n in sorted(per.items())])


def _order_by(project: ProjectConfig, near: tuple[int, int] | None) -> str:
    if project.priority == "uncertain":
        key = ("CASE WHEN t.confidence IS NULL THEN 1 ELSE 0 END, t.confidence, "
               "t.label_count DESC, t.id")
    else:
        key = "t.label_count DESC, t.id DESC"
    if near is not None:
        return f"abs(t.x - :nx) + abs(t.y - :ny), {key}"
    return key


#: The labels a volunteer ``:v`` gave in project ``:p`` (their counter, kept by the
#: statements that store labels: ``labeler.labels.submit_in``).
_GIVEN = ("COALESCE((SELECT labels FROM volunteer_progress "
          "WHERE volunteer_id = :v AND project_id = :p), 0)")


def labels_given(conn: Connection, project_id: int, volunteer_id: int) -> int:
    """How many labels the volunteer gave in the project, in ``conn``'s transaction."""
    return int(run(conn, f"SELECT {_GIVEN} AS n", {"v": volunteer_id, "p": project_id}).one()[0])


# The volunteer's state in one statement: how many labels they gave in the project (first
# row), then their leases in it with the leased tiles' columns (so renewing a task needs no
# second read). Both halves are looked up by volunteer and the expiry is checked in Python:
# filtering on ``expires_at`` in SQL made SQLite's planner pick ``ix_leases_expiry`` and walk
# every live lease of the project on each call.
_STATE_SQL = (
    f"SELECT 0 AS k, {_GIVEN} AS n, NULL AS task_id, NULL AS expires_at, NULL AS block_row, "
    "NULL AS block_col, NULL AS is_gold, NULL AS id, NULL AS z, NULL AS x, NULL AS y, "
    "NULL AS west, NULL AS south, NULL AS east, NULL AS north, NULL AS layers "
    f"UNION ALL SELECT 1, s.id, s.task_id, s.expires_at, s.block_row, s.block_col, s.is_gold, "
    f"{_TILE_COLS} FROM leases s JOIN tiles t ON t.id = s.tile_id "
    "WHERE s.volunteer_id = :v AND s.project_id = :p ORDER BY 1, 2")


def _volunteer_state(conn: Connection, params: dict[str, Any]
                     ) -> tuple[int, dict[str, list[Any]], int]:
    """``(labels given, {live task id: its lease rows} oldest task first, expired leases)``
    for ``params``' volunteer ``v`` in project ``p`` at time ``now`` (as
    :func:`labeler.sql.ts` gives it)."""
    rows = run(conn, _STATE_SQL, params).all()
    now = params["now"]
    live: dict[str, list[Any]] = {}
    expired = 0
    for r in rows[1:]:
        if r.expires_at > now:
            live.setdefault(r.task_id, []).append(r)
        else:
            expired += 1
    return int(rows[0].n), live, expired


# PostgreSQL: the same state in one round trip, the oldest ``:n`` live tasks renewed when less
# than ``RENEW_BELOW`` of a lease is left (``:fresh``), as on SQLite (k = 0: labels given;
# k = 1: the leases of those tasks with their tiles and (new) expiry; k = 2: expired leases).
# ``after_insert``: the same read appended to a submission's statement (``labels.submit_in``,
# whose CTE ``ins`` holds the tiles just labelled and ``cnt`` the volunteer's label counter
# it updated), as it will be once that statement's lease deletions are done: every
# sub-statement of one statement sees the same snapshot, so the leases of ``ins``'s tiles are
# left out by hand and the count taken from ``cnt``; k = 3 rows carry ``ins``'s tile ids.
def _state_pg_sql(after_insert: bool, claim: str = "", gold: bool = False) -> tuple[str, str]:
    """``(CTEs, final SELECT)`` of the PostgreSQL state read; ``claim``: the ``ORDER BY`` of a
    claim made by the same statement (:func:`_claim_in_state_sql`, ``gold``: whether the
    project interleaves gold), or "" for none."""
    gone = " AND tile_id NOT IN (SELECT tile_id FROM ins)" if after_insert else ""
    nulls = "NULL, " * 13 + "NULL"
    ctes = (
        "live AS (SELECT task_id, min(expires_at) AS exp FROM leases WHERE volunteer_id = :v "
        f"AND project_id = :p AND expires_at > :now{gone} GROUP BY task_id ORDER BY min(id) "
        "LIMIT :n), "
        "ren AS (UPDATE leases SET expires_at = :e WHERE volunteer_id = :v "
        f"AND task_id IN (SELECT task_id FROM live WHERE exp <= :fresh){gone})")
    # after the insert: the counter as the statement's ``cnt`` left it (no row when it
    # stored nothing), else as it was
    given = f"COALESCE((SELECT labels FROM cnt), {_GIVEN})" if after_insert else _GIVEN
    expired = (f"FROM leases WHERE volunteer_id = :v AND project_id = :p "
               f"AND expires_at <= :now{gone}")
    if claim:
        ctes += ", " + _claim_in_state_sql(claim, given, expired, gold)
    select = (
        f"SELECT 0 AS k, {given} AS n, NULL AS task_id, NULL AS expires_at, NULL AS block_row, "
        "NULL AS block_col, NULL AS is_gold, NULL AS id, NULL AS z, NULL AS x, NULL AS y, "
        "NULL AS west, NULL AS south, NULL AS east, NULL AS north, NULL AS layers "
        "UNION ALL SELECT 1, s.id, s.task_id, CASE WHEN l.exp <= :fresh THEN :e ELSE l.exp END, "
        f"s.block_row, s.block_col, s.is_gold, {_TILE_COLS} "
        "FROM live l JOIN leases s ON s.task_id = l.task_id AND s.volunteer_id = :v "
        "JOIN tiles t ON t.id = s.tile_id"
        + (" WHERE s.tile_id NOT IN (SELECT tile_id FROM ins)" if after_insert else "")
        + f" UNION ALL SELECT 2, count(*), {nulls} {expired}"
        + (f" UNION ALL SELECT 3, tile_id, {nulls} FROM ins" if after_insert else "")
        + (" UNION ALL SELECT 4, u.id, NULL, NULL, NULL, NULL, NULL, u.id, u.z, u.x, u.y, "
           "u.west, u.south, u.east, u.north, u.layers FROM u" if claim else "")
        + " ORDER BY 1, 2")
    return ctes, select


def _claim_in_state_sql(order: str, given: str, expired: str, gold: bool) -> str:
    """CTEs that claim a single-tile task in the statement that stores a submission and reads
    the volunteer's state (k = 4 rows: the tile claimed), when :meth:`Assigner._fill` would
    claim one next with nothing else to do first: fewer than ``:n`` live tasks after the
    submission, no expired lease of the volunteer's to reclaim, and — when the project
    interleaves gold (``gold``) — not a gold turn (:func:`gold_turn` in SQL, on the same float
    arithmetic, over the labels given plus the tiles held, computed once in CTE ``g``: written
    out at each of its four uses, it was a dozen subplans that PostgreSQL set up for every
    statement, executed or not). The tile is the one
    :meth:`Assigner._claim_pg` would pick: the statement's snapshot still shows the leases it
    deletes, so the tiles just labelled stay out (and are left out by hand too)."""
    held = "(SELECT count(*) FROM live)"
    turn = ""
    if gold:
        rate = "CASE WHEN g.n < :newv THEN :rate2 ELSE :rate END"
        turn = (f"AND NOT (SELECT floor((g.n + 1) * ({rate}) + :ge) > floor(g.n * ({rate}) + :ge) "
                "FROM g) ")
    return (
        (f"g AS (SELECT {given} + {held} AS n), " if gold else "")
        + f"c AS (SELECT t.id FROM tiles t WHERE {_ELIGIBLE} "
        f"AND t.id NOT IN (SELECT tile_id FROM ins) AND {held} < :n "
        f"AND NOT EXISTS (SELECT 1 {expired}) {turn}"
        f"ORDER BY {order} LIMIT 1 FOR UPDATE OF t SKIP LOCKED), {_LEASE_CLAIMED}")


@functools.lru_cache(maxsize=8)
def _state_claim_sql(order: str, gold: bool) -> tuple[str, str]:
    return _state_pg_sql(True, order, gold)


_STATE_RENEW_PG = "WITH {} {}".format(*_state_pg_sql(False))


def _parse_state_pg(rows: list[Any]) -> tuple[int, dict[str, list[Any]], int]:
    live: dict[str, list[Any]] = {}
    n_done = n_expired = 0
    for r in rows:
        if r.k == 1:
            live.setdefault(r.task_id, []).append(r)
        elif r.k == 0:
            n_done = int(r.n)
        elif r.k == 2:
            n_expired = int(r.n)
    return n_done, live, n_expired


def _volunteer_state_pg(conn: Connection, params: dict[str, Any], want: int, expires: datetime,
                        fresh: datetime) -> tuple[int, dict[str, list[Any]], int]:
    """:func:`_volunteer_state` for PostgreSQL: the oldest ``want`` live tasks, those with at
    most ``fresh`` left renewed to ``expires`` (each row's ``expires_at`` is its task's)."""
    return _parse_state_pg(run(conn, _STATE_RENEW_PG,
                               {**params, "n": want, "e": expires, "fresh": fresh}).all())


@dataclass
class StateRead:
    """A volunteer's state for their next task, read (PostgreSQL) by the statement that
    stores their labels instead of by a statement of its own: one round trip fewer per
    answer. Made by :meth:`Assigner.state_read` before the submission; the submission
    appends :meth:`sql` to its statement and hands the rows to :meth:`take`; then
    :meth:`Assigner.next_tasks` (``state=``) uses :attr:`result` (or reads the state itself
    when the submission stored nothing and so ran no statement)."""

    volunteer_id: int
    project_id: int
    now: datetime
    expires: datetime
    want: int
    fresh: datetime
    result: tuple[int, dict[str, list[Any]], int] | None = None
    #: the claim the statement makes too (:func:`_claim_in_state_sql`): its parameters (the
    #: lease id is ``task_id``) and order, or None; :attr:`claimed`: the tile rows it claimed
    claim: tuple[dict[str, Any], str] | None = None
    claimed: list[Any] = field(default_factory=list)

    _SQL = _state_pg_sql(True)

    def sql(self) -> tuple[str, str, dict[str, Any]]:
        """``(CTEs, final SELECT, parameters)`` to append to a statement whose CTE ``ins``
        returns the ``tile_id`` of the labels it inserted for ``:v``."""
        params = {"v": self.volunteer_id, "p": self.project_id, "now": self.now,
                  "n": self.want, "e": self.expires, "fresh": self.fresh}
        if self.claim is None:
            return (*self._SQL, params)
        more, order = self.claim
        return (*_state_claim_sql(order, more["gold"]), {**params, **more})

    def take(self, rows: list[Any]) -> set[int]:
        """Keep the state from the statement's rows; return the tile ids it inserted."""
        self.claimed = [r for r in rows if r.k == 4]
        self.result = _parse_state_pg(rows)
        return {int(r.n) for r in rows if r.k == 3}


_RENEW_SQL = ("UPDATE leases SET expires_at = :e WHERE task_id = :t AND volunteer_id = :v "
              "RETURNING tile_id")

_LEASE_SQL = (
    "INSERT INTO leases (task_id, project_id, tile_id, volunteer_id, is_gold, block_row, block_col, "
    "expires_at, created_at) VALUES (:task_id, :p, :tile_id, :v, :g, :r, :c, :e, :now)")

_GOLD_LEASE_SQL = _LEASE_SQL + " ON CONFLICT DO NOTHING RETURNING id"

# A gold tile this volunteer has not seen, in a per-volunteer pseudo-random order; reads only
# the project's gold tiles (partial index ``ix_tiles_gold``).
_GOLD_SQL = (
    f"SELECT {_TILE_COLS} FROM tiles t WHERE t.project_id = :p AND t.gold_answer IS NOT NULL "
    "AND NOT t.tutorial "
    "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.tile_id = t.id AND l.volunteer_id = :v) "
    "AND NOT EXISTS (SELECT 1 FROM leases s WHERE s.tile_id = t.id AND s.volunteer_id = :v) "
    "ORDER BY (t.id * 7919 + :v * 104729) % 1000003 LIMIT 1")

_ELIGIBLE = """
    t.project_id = :p AND t.state = 'live' AND t.gold_answer IS NULL AND NOT t.tutorial
    AND t.has_room AND t.label_count + t.lease_count < :target
    AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.tile_id = t.id AND l.volunteer_id = :v)
    AND NOT EXISTS (SELECT 1 FROM leases s WHERE s.tile_id = t.id AND s.volunteer_id = :v)
"""


#: ``SET`` term of a claim's lease-count bump (``:target``: the project's): whether the tile
#: still has room after it (:attr:`labeler.models.Tile.has_room`)
ROOM_AFTER_CLAIM = "has_room = (label_count + lease_count + 1 < :target)"


#: The tiles of CTE ``c`` leased to ``:v`` under task ``:task_id`` until ``:e`` (block
#: position from ``:cols`` x ``:rows``): their lease counts bumped (``u``: the tiles' columns)
#: and the leases written (``i``). Both claim statements end with it.
_LEASE_CLAIMED = (
    f"u AS (UPDATE tiles SET lease_count = lease_count + 1, {ROOM_AFTER_CLAIM} "
    "FROM c WHERE tiles.id = c.id "
    "RETURNING tiles.id, tiles.z, tiles.x, tiles.y, tiles.west, tiles.south, tiles.east, "
    "tiles.north, tiles.layers), "
    "i AS (INSERT INTO leases (task_id, project_id, tile_id, volunteer_id, is_gold, "
    "block_row, block_col, expires_at, created_at) "
    "SELECT :task_id, :p, u.id, :v, false, u.y % :rows, u.x % :cols, :e, :now FROM u)")


class Assigner:
    """Claims tasks for volunteers. One per app (holds a little per-process timing state)."""

    def __init__(self, engine: Engine, lease_seconds: int, *,
                 task_key: bytes | None = None) -> None:
        """``task_key``: secret signing task ids (:func:`sign_task`); the app derives it from the
        service secret so every worker agrees. Without one, a random per-process key is used."""
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.task_key = task_key or os.urandom(32)
        self._last_reclaim: dict[int, float] = {}

    def next_task(self, project: ProjectConfig, volunteer_id: int, *,
                  near: tuple[float, float] | None = None, now: datetime | None = None) -> Task | None:
        """The volunteer's current task (renewed) or a newly claimed one; ``None`` when done."""
        tasks = self.next_tasks(project, volunteer_id, near=near, now=now)
        return tasks[0] if tasks else None

    def state_read(self, project: ProjectConfig, volunteer_id: int, *, ahead: int = 0,
                   near: tuple[float, float] | None = None, claim: bool = True) -> StateRead:
        """A :class:`StateRead` for a submission that asks for the next task(s) too. With
        ``claim``, for single-tile tasks not asked near a place, the statement also claims
        the next task when that is what comes next (:func:`_claim_in_state_sql`), unless the
        periodic reclaim of expired leases is due first."""
        now = utcnow()
        state = StateRead(volunteer_id, project.id, now,
                          now + timedelta(seconds=self.lease_seconds), 1 + max(0, ahead),
                          now + timedelta(seconds=self.lease_seconds * RENEW_BELOW))
        if (claim and project.block_cols * project.block_rows == 1 and near is None
                and not self._reclaim_is_due(project.id)):
            rate = float(project.gold_rate)
            state.claim = ({
                "target": project.target, "task_id": os.urandom(8).hex(), "rows": 1, "cols": 1,
                "gold": rate > 0, "newv": NEW_VOLUNTEER_LABELS, "rate": rate,
                "rate2": min(1.0, rate * 2), "ge": 1e-9}, _order_by(project, None))
        return state

    def next_tasks(self, project: ProjectConfig, volunteer_id: int, *, ahead: int = 0,
                   near: tuple[float, float] | None = None, now: datetime | None = None,
                   conn: Connection | None = None, state: StateRead | None = None
                   ) -> list[Task]:
        """Up to ``1 + ahead`` tasks for the volunteer, oldest first: the live ones they hold
        (leases renewed), then newly claimed ones. Every task is a separate lease counted
        against the tiles' targets, and never repeats a tile the volunteer holds or did.

        ``conn``: an open write transaction (``labeler.db.write_tx``, or a group-committed
        batch, :mod:`labeler.batch`) to claim in, e.g. the one that just stored the volunteer's
        labels — one transaction per task instead of two. Without one, the claim runs in a
        write transaction of its own. ``state``: the volunteer's state as that submission's
        statement read it (:class:`StateRead`, made with the same ``ahead``)."""
        if state is not None:
            now = state.now
        now = now or utcnow()
        expires = now + timedelta(seconds=self.lease_seconds)
        near_xy = None
        if near is not None and project.task_zoom is not None:
            t = mercantile.tile(near[0], near[1], project.task_zoom)
            near_xy = (t.x, t.y)
        want = 1 + max(0, ahead)
        if conn is not None:
            claimed = None
            if state is not None and state.result is not None and state.claim is not None:
                claimed = (state.claim[0]["task_id"], state.claimed)
            tasks = self._fill(conn, project, volunteer_id, near_xy, now, expires, want,
                               None if state is None else state.result, claimed)
        else:
            with write_tx(self.engine) as tx:
                tasks = self._fill(tx, project, volunteer_id, near_xy, now, expires, want)
        if project.context:
            for task in tasks:
                if len(task.tiles) == 1 and not task.context:
                    task.context = self._context(project, task.tiles[0])
        return tasks

    def _fill(self, conn: Connection, project: ProjectConfig, volunteer_id: int,
              near_xy: tuple[int, int] | None, now: datetime, expires: datetime,
              want: int, state: tuple[int, dict[str, list[Any]], int] | None = None,
              claimed: tuple[str, list[Any]] | None = None) -> list[Task]:
        """``state``: the volunteer's state as a submission's statement read it;
        ``claimed``: ``(lease id, tile rows)`` of the claim that statement made too."""
        pg = _pg(conn)

        def reclaim(vid: int | None = None) -> int:
            return reclaim_expired(conn, project.id, now, target=project.target,
                                   volunteer_id=vid)

        now_db, expires_db = ts(conn, now), ts(conn, expires)
        params = {"v": volunteer_id, "p": project.id, "now": now_db}
        tasks = []
        # held leases with more than this left are handed out again as they are
        fresh = now + timedelta(seconds=self.lease_seconds * RENEW_BELOW)
        if pg:  # state and renewal in one round trip (or read already: ``state``)
            n_done, live, n_expired = state or _volunteer_state_pg(conn, params, want, expires,
                                                                   fresh)
            for lid, rows in live.items():
                tasks.append(self._task_of(project, lid, rows, volunteer_id,
                                           rows[0].expires_at.astimezone(UTC), n_done))
            if claimed is not None and claimed[1]:
                forget_rows(conn, [r.id for r in claimed[1]], only=volunteer_id)
                tiles = [_task_tile(r) for r in claimed[1]]
                tasks.append(Task(
                    task_id=self._public_id(project, claimed[0], volunteer_id, tiles[0]),
                    expires_at=expires, tiles=tiles, labelled_by_you=n_done))
        else:
            n_done, live, n_expired = _volunteer_state(conn, params)
            fresh_db = ts(conn, fresh)
            for lid in list(live)[:want]:
                rows = live[lid]
                if all(r.expires_at > fresh_db for r in rows):  # (same text format: sortable)
                    task = self._task_of(project, lid, rows, volunteer_id,
                                         from_ts_text(min(r.expires_at for r in rows)), n_done)
                else:
                    task = self._renew(conn, project, lid, rows, volunteer_id, expires, n_done)
                if task.tiles:
                    tasks.append(task)
        if len(tasks) >= want:
            return tasks
        if n_expired:
            reclaim(volunteer_id)
        reclaimed = self._reclaim_due(project.id)
        if reclaimed:
            reclaim()
        while len(tasks) < want:
            lease_id = os.urandom(8).hex()
            lease = {"task_id": lease_id, "e": expires_db, "now": now_db}
            # Gold interleaving counts the tiles already held as if they were done.
            n_before = n_done + sum(len(t.tiles) for t in tasks)
            tiles: list[TaskTile] = []
            is_gold = False
            if gold_turn(n_before, project.gold_rate):
                tiles = self._claim_gold(conn, project, volunteer_id, lease)
                is_gold = bool(tiles)
            if not tiles:
                tiles = self._claim_any(conn, project, volunteer_id, near_xy, lease, pg)
                if not tiles and not reclaimed and reclaim():
                    reclaimed = True
                    tiles = self._claim_any(conn, project, volunteer_id, near_xy, lease, pg)
            if not tiles:
                break
            tasks.append(Task(task_id=self._public_id(project, lease_id, volunteer_id, tiles[0]),
                              expires_at=expires, tiles=tiles, is_gold=is_gold,
                              labelled_by_you=n_done))
        return tasks

    def _claim_any(self, conn: Connection, project: ProjectConfig, volunteer_id: int,
                   near_xy: tuple[int, int] | None, lease: dict[str, Any], pg: bool) -> list[TaskTile]:
        """Claim a normal (non-gold) task and write its leases."""
        if pg:
            return self._claim_pg(conn, project, volunteer_id, near_xy, lease)
        if project.block_cols * project.block_rows == 1:
            # Pick the tile and bump its lease count in one statement (writes are serialised
            # by BEGIN IMMEDIATE, so the pick cannot go stale before the bump).
            r = run(conn, "UPDATE tiles SET lease_count = lease_count + 1, "
                    f"{ROOM_AFTER_CLAIM} WHERE id = ("
                    f"{self._anchor_sql(project, near_xy)}) "
                    "RETURNING id, z, x, y, west, south, east, north, layers",
                    self._claim_params(project, volunteer_id, near_xy)).first()
            if r is None:
                return []
            run(conn, _LEASE_SQL, dict(lease, p=project.id, tile_id=r.id, v=volunteer_id,
                                       g=False, r=0, c=0))
            return [_task_tile(r)]
        tiles = self._claim(conn, project, volunteer_id, near_xy)
        if tiles:
            run(conn, _LEASE_SQL, [dict(lease, p=project.id, tile_id=t.tile_id, v=volunteer_id,
                                        g=False, r=t.row, c=t.col) for t in tiles])
            ids, params = id_params([t.tile_id for t in tiles])
            run(conn, f"UPDATE tiles SET lease_count = lease_count + 1, {ROOM_AFTER_CLAIM} "
                f"WHERE id IN {ids}", {**params, "target": project.target})
        return tiles

    def _public_id(self, project: ProjectConfig, lease_id: str, volunteer_id: int,
                   tile: TaskTile) -> str:
        cell = task_cell(tile.x, tile.y, tile.z, project.block_cols, project.block_rows)
        return sign_task(self.task_key, lease_id, volunteer_id, project.id, cell)

    def _reclaim_is_due(self, project_id: int) -> bool:
        """Whether :meth:`_reclaim_due` would say so now (without resetting it)."""
        return time.monotonic() - self._last_reclaim.get(project_id, 0.0) > RECLAIM_EVERY_S

    def _reclaim_due(self, project_id: int) -> bool:
        if self._reclaim_is_due(project_id):
            self._last_reclaim[project_id] = time.monotonic()
            return True
        return False

    # -- pieces --------------------------------------------------------------------------
    def _renew(self, conn: Connection, project: ProjectConfig, lease_id: str, rows: list[Any],
               volunteer_id: int, expires: datetime, n_done: int) -> Task:
        """Extend the lease of a live task; ``rows``: its leases (with tile columns) from
        :func:`_volunteer_state`. Tiles whose lease is gone meanwhile are left out."""
        kept = {r[0] for r in run(conn, _RENEW_SQL,
                                  {"e": ts(conn, expires), "t": lease_id, "v": volunteer_id})}
        return self._task_of(project, lease_id, [r for r in rows if r.id in kept], volunteer_id,
                             expires, n_done)

    def _task_of(self, project: ProjectConfig, lease_id: str, rows: list[Any],
                 volunteer_id: int, expires: datetime, n_done: int) -> Task:
        rows = sorted(rows, key=lambda r: (r.block_row, r.block_col))
        tiles = [_task_tile(r, r.block_row, r.block_col) for r in rows]
        task_id = self._public_id(project, lease_id, volunteer_id, tiles[0]) if tiles else ""
        return Task(task_id=task_id, expires_at=expires, tiles=tiles,
                    is_gold=bool(rows and rows[0].is_gold), labelled_by_you=n_done)

    def _claim_gold(self, conn: Connection, project: ProjectConfig, volunteer_id: int,
                    lease: dict[str, Any]) -> list[TaskTile]:
        """Lease a gold tile this volunteer has not seen. Gold tiles are not locked (no
        counters change): should a parallel request of the same volunteer lease the same tile
        first, the insert does nothing and the turn falls back to a normal task."""
        r = run(conn, _GOLD_SQL, {"p": project.id, "v": volunteer_id}).first()
        if r is not None:  # (the lease, not the tile: see _claim_pg)
            forget_rows(conn, [r.id], only=volunteer_id)
        if r is None or run(conn, _GOLD_LEASE_SQL, dict(
                lease, p=project.id, tile_id=r.id, v=volunteer_id, g=True, r=0, c=0)).first() is None:
            return []
        return [_task_tile(r)]

    def _claim_pg(self, conn: Connection, project: ProjectConfig, volunteer_id: int,
                  near_xy: tuple[int, int] | None, lease: dict[str, Any]) -> list[TaskTile]:
        cols, rows = project.block_cols, project.block_rows
        params = {**self._claim_params(project, volunteer_id, near_xy), "cols": cols,
                  "rows": rows, **lease}
        anchor = self._anchor_sql(project, near_xy, "t.id, t.z, t.x, t.y",
                                  " FOR UPDATE OF t SKIP LOCKED", pg=True)
        if cols * rows == 1:
            claim = f"c AS ({anchor})"
        else:  # every eligible tile of the grid-aligned block around the anchor
            claim = (f"a AS ({anchor}), c AS (SELECT t.id FROM tiles t, a WHERE {_ELIGIBLE} "
                     "AND t.z = a.z AND t.x >= a.x - a.x % :cols AND t.x < a.x - a.x % :cols + :cols "
                     "AND t.y >= a.y - a.y % :rows AND t.y < a.y - a.y % :rows + :rows "
                     "FOR UPDATE OF t SKIP LOCKED)")
        found = run(conn, f"WITH {claim}, {_LEASE_CLAIMED} SELECT * FROM u", params).all()
        if found:
            # The claim changes the tiles' lease counts (which a submission reads only for a
            # late label, and then reads again) and this volunteer's leases on them.
            forget_rows(conn, [r.id for r in found], only=volunteer_id)
        return sorted((_task_tile(r, r.y % rows, r.x % cols) for r in found),
                      key=lambda t: (t.row, t.col))

    @staticmethod
    def _claim_params(project: ProjectConfig, volunteer_id: int,
                      near_xy: tuple[int, int] | None) -> dict[str, Any]:
        params: dict[str, Any] = {"p": project.id, "v": volunteer_id, "target": project.target}
        if near_xy is not None:
            params.update(nx=near_xy[0], ny=near_xy[1])
        return params

    @staticmethod
    def _anchor_sql(project: ProjectConfig, near_xy: tuple[int, int] | None,
                    cols: str = "t.id", lock: str = "", *, pg: bool = False) -> str:
        # SQLite's planner prefers ix_tiles_queue (two equality terms) to the partial index of
        # the tiles with room, and would walk past every full tile again: it is named
        return (f"SELECT {cols} FROM tiles t{'' if pg else ' INDEXED BY ix_tiles_room'} "
                f"WHERE {_ELIGIBLE} ORDER BY {_order_by(project, near_xy)} LIMIT 1{lock}")

    def _claim(self, conn: Connection, project: ProjectConfig, volunteer_id: int,
               near_xy: tuple[int, int] | None) -> list[TaskTile]:
        pg = _pg(conn)
        lock = " FOR UPDATE OF t SKIP LOCKED" if pg else ""
        params = self._claim_params(project, volunteer_id, near_xy)
        anchor = run(conn, self._anchor_sql(project, near_xy, _TILE_COLS, lock, pg=pg),
                     params).first()
        if anchor is None:
            return []
        cols, rows = project.block_cols, project.block_rows
        if cols * rows == 1:
            return [_task_tile(anchor)]
        bx, by = anchor.x - anchor.x % cols, anchor.y - anchor.y % rows
        block = run(conn,
            f"SELECT {_TILE_COLS} FROM tiles t WHERE {_ELIGIBLE} AND t.z = :z "
            f"AND t.x >= :bx AND t.x < :bx2 AND t.y >= :by AND t.y < :by2 ORDER BY t.id{lock}",
            {**params, "z": anchor.z, "bx": bx, "bx2": bx + cols, "by": by, "by2": by + rows}).all()
        tiles = [_task_tile(r, r.y - by, r.x - bx) for r in block]
        if not any(t.tile_id == anchor.id for t in tiles):  # cannot happen; keep the anchor anyway
            tiles.append(_task_tile(anchor, anchor.y - by, anchor.x - bx))
        return sorted(tiles, key=lambda t: (t.row, t.col))

    def _context(self, project: ProjectConfig, tile: TaskTile) -> dict[str, list[str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT x, y, layers FROM tiles WHERE project_id = :p AND z = :z "
                "AND x BETWEEN :x0 AND :x1 AND y BETWEEN :y0 AND :y1"),
                {"p": project.id, "z": tile.z, "x0": tile.x - 1, "x1": tile.x + 1,
                 "y0": tile.y - 1, "y1": tile.y + 1}).all()
        out = {}
        for r in rows:
            if (r.x, r.y) == (tile.x, tile.y):
                continue
            layers = r.layers
            if isinstance(layers, str):
                import json
                layers = json.loads(layers)
            out[f"{r.x - tile.x},{r.y - tile.y}"] = list(layers or [])
        return out


def recount(engine: Engine, project_id: int | None = None, *, now: datetime | None = None,
            fix: bool = False) -> list[dict[str, int]]:
    """Compare each tile's counters with counts derived from ``labels``/``leases``.

    Returns the tiles that differ (``{"tile_id", "label_count", "derived_labels",
    "lease_count", "derived_leases", "has_room", "derived_room"}``; ``derived_room``: whether
    the derived counts are below the project's target); with ``fix=True`` also corrects them.
    """
    where = "WHERE t.project_id = :p" if project_id is not None else ""
    sql = f"""
      SELECT t.id, t.project_id, t.label_count, t.lease_count, t.has_room,
        (SELECT count(*) FROM labels l WHERE l.tile_id = t.id AND NOT l.skipped AND NOT l.is_gold) AS dl,
        (SELECT count(*) FROM leases s WHERE s.tile_id = t.id AND NOT s.is_gold) AS ds
      FROM tiles t {where}"""
    pt = Project.__table__  # type: ignore[attr-defined]
    with write_tx(engine) as conn:
        targets = {p.id: project_target(p.retirement or {}, p.redundancy) for p in conn.execute(
            sa.select(pt.c.id, pt.c.redundancy, pt.c.retirement))}
        rows = conn.execute(sa.text(sql), {"p": project_id}).all()
        bad = []
        for r in rows:
            room = r.dl + r.ds < targets[r.project_id]
            if (r.label_count, r.lease_count, bool(r.has_room)) != (r.dl, r.ds, room):
                bad.append({"tile_id": r.id, "label_count": r.label_count, "derived_labels": r.dl,
                            "lease_count": r.lease_count, "derived_leases": r.ds,
                            "has_room": bool(r.has_room), "derived_room": room})
        if fix and bad:
            conn.execute(sa.text("UPDATE tiles SET label_count = :dl, lease_count = :ds, "
                                 "has_room = :room WHERE id = :id"),
                         [{"id": b["tile_id"], "dl": b["derived_labels"], "ds": b["derived_leases"],
                           "room": b["derived_room"]} for b in bad])
    return bad


def recount_volunteers(engine: Engine, project_id: int | None = None, *,
                       fix: bool = False) -> list[dict[str, int]]:
    """Compare each volunteer's label counter per project (``volunteer_progress``) with a
    count of their labels; returns the pairs that differ (``{"volunteer_id",
    "project_id", "labels", "derived_labels"}``); with ``fix=True`` also corrects them."""
    where = "WHERE project_id = :p" if project_id is not None else ""
    sql = f"""
      SELECT volunteer_id, project_id, max(c) AS labels, max(d) AS derived FROM (
        SELECT volunteer_id, project_id, labels AS c, 0 AS d FROM volunteer_progress {where}
        UNION ALL
        SELECT volunteer_id, project_id, 0, count(*) FROM labels {where}
        GROUP BY volunteer_id, project_id) u
      GROUP BY volunteer_id, project_id"""
    with write_tx(engine) as conn:
        rows = conn.execute(sa.text(sql), {"p": project_id}).all()
        bad = [{"volunteer_id": r.volunteer_id, "project_id": r.project_id,
                "labels": r.labels, "derived_labels": r.derived}
               for r in rows if r.labels != r.derived]
        if fix and bad:
            conn.execute(sa.text(
                "INSERT INTO volunteer_progress (volunteer_id, project_id, labels) "
                "VALUES (:volunteer_id, :project_id, :derived_labels) "
                "ON CONFLICT (volunteer_id, project_id) DO UPDATE "
                "SET labels = excluded.labels"), bad)
    return bad
