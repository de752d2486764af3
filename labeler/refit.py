"""Skill refits for adaptive projects: fit per-volunteer skills on a project's answers and
re-decide its tiles with them, as the replay benchmark does (``python -m bench._replay``,
docs/consensus.md "Retirement").

The hot path (:mod:`labeler.labels`) decides each tile on its answer counts with equally
skilled volunteers. :func:`refit_project` fits skills on every stored answer
(:func:`labeler.retire.fit_skills`, gold tiles' known answers seed them) and calls
:func:`labeler.retire.recheck`: retired tiles the skills no longer support reopen (or go to
the review list at ``max_votes``), live tiles they support retire. Changes are written with
conditional updates (same state and ``label_count`` as read), so a tile that took a label in
the meantime is skipped and counted, never overwritten.

:class:`SkillRefresher` runs that for every live adaptive project whose answers grew by
``every`` since its last refit; :meth:`SkillRefresher.run_forever` is the loop for a daemon
thread in the app's lifespan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from labeler.db import read_tx, write_tx
from labeler.errors import LabelerError, NotFound
from labeler.models import Label, Project, Tile, utcnow
from labeler.projects import config_from_row

#: Fewer stored answers than this: no refit (the skills would be noise).
MIN_LABELS = 50
#: Default growth (stored answers) between two refits of a project by :class:`SkillRefresher`.
REFIT_EVERY = 300
#: Conditional updates per write transaction (keeps SQLite's write lock short).
_CHUNK = 200

Progress = Callable[[str, int, int], None]


class RefitError(LabelerError):
    """A project's skills could not be refitted."""

    code = "refit_error"


@dataclass
class RefitReport:
    project: str
    labels_used: int = 0
    volunteers: int = 0
    reopened: int = 0
    retired: int = 0
    skipped_concurrent: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load_project(conn: sa.Connection, project: int | str) -> Project:
    p = Project.__table__
    where = p.c.id == int(project) if isinstance(project, int) else p.c.slug == str(project)
    row = conn.execute(sa.select(p).where(where)).first()
    if row is None:
        raise NotFound(f"no project '{project}'")
    return Project(**row._mapping)


def refit_project(engine: Engine, project: int | str, *, progress: Progress | None = None,
                  min_labels: int = MIN_LABELS) -> RefitReport:
    """Refit the skills of the adaptive project ``project`` (id or slug) and re-decide its
    live and retired tiles. A project that is not adaptive, or has fewer than ``min_labels``
    stored answers, is left alone (a report of zeros). ``progress(stage, done, total)`` is
    called with stages ``read``, ``fit`` and ``apply`` (never inside a transaction)."""
    from consensus.errors import ConsensusError
    from consensus.votes import RESPONSE_ONLY
    from labeler import retire

    t0 = time.perf_counter()
    with read_tx(engine) as conn:
        row = _load_project(conn, project)
        cfg = config_from_row(row)
        report = RefitReport(project=cfg.slug)
        if cfg.retirement.get("policy") != "adaptive":
            report.seconds = round(time.perf_counter() - t0, 3)
            return report
        lb, t = Label.__table__, Tile.__table__
        # One statement, so the labels and the tiles' counters come from one snapshot (each
        # statement has its own under PostgreSQL's READ COMMITTED).
        rows = conn.execute(
            sa.select(lb.c.tile_id, lb.c.volunteer_id, lb.c.answer, t.c.gold_answer,
                      t.c.tutorial, t.c.state, t.c.label_count)
            .select_from(lb.join(t, t.c.id == lb.c.tile_id))
            .where(lb.c.project_id == cfg.id, lb.c.skipped.is_(False),
                   lb.c.answer.is_not(None), t.c.tutorial.is_(False))
            .order_by(lb.c.id)).all()
    answer_values = [a["value"] for a in cfg.answers]
    # answers the project no longer offers (its answers were edited) cannot be fitted
    known = set(answer_values)
    rows = [r for r in rows if r.answer in known]
    if progress:
        progress("read", len(rows), len(rows))
    report.labels_used = len(rows)
    report.volunteers = len({r.volunteer_id for r in rows})
    if len(rows) < min_labels:
        report.seconds = round(time.perf_counter() - t0, 3)
        return report
    # gold tiles' known answers seed the skills (a response-only gold answer says nothing)
    gold = {r.tile_id: r.gold_answer for r in rows
            if r.gold_answer in known and r.gold_answer not in RESPONSE_ONLY}
    try:
        skills = retire.fit_skills([r.tile_id for r in rows], [r.volunteer_id for r in rows],
                                   [r.answer for r in rows], answer_values, gold=gold)
    except (ArithmeticError, ValueError, ConsensusError) as exc:
        raise RefitError(f"cannot fit skills for project '{cfg.slug}': {exc}") from exc
    if progress:
        progress("fit", 1, 1)
    tiles: dict[int, tuple[str, list[int], list[str]]] = {}
    label_count: dict[int, int] = {}   # as read: a tile whose count moved is not touched
    for r in rows:
        if r.gold_answer is not None or r.state not in ("live", "retired"):
            continue
        entry = tiles.get(r.tile_id)
        if entry is None:
            entry = tiles[r.tile_id] = (r.state, [], [])
            label_count[r.tile_id] = r.label_count
        entry[1].append(r.volunteer_id)
        entry[2].append(r.answer)
    changes = retire.recheck(cfg.retirement, cfg.redundancy, tiles, skills)
    todo = sorted(changes)
    if progress:
        progress("apply", 0, len(todo))
    stmt = (sa.update(t)
            .where(t.c.id == sa.bindparam("tid"), t.c.state == sa.bindparam("old"),
                   t.c.label_count == sa.bindparam("lc"))
            .values(state=sa.bindparam("st"), consensus_answer=sa.bindparam("ca"),
                    confidence=sa.bindparam("cf"), retired_at=sa.bindparam("ra")))
    done = 0
    for i in range(0, len(todo), _CHUNK):
        chunk = todo[i:i + _CHUNK]
        now = utcnow()
        with write_tx(engine) as conn:
            for tid in chunk:
                st, ca, cf = changes[tid]
                old, lc = tiles[tid][0], label_count[tid]
                n = conn.execute(stmt, {"tid": tid, "old": old, "lc": lc, "st": st, "ca": ca,
                                        "cf": cf, "ra": None if st == "live" else now}).rowcount
                if n != 1:
                    report.skipped_concurrent += 1
                elif old == "retired":
                    report.reopened += 1  # back to live, or to the review list at max_votes
                else:
                    report.retired += 1  # retired (or unresolved at max_votes)
        done += len(chunk)
        if progress:
            progress("apply", done, len(todo))
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _log_error(exc: BaseException) -> None:
    logging.getLogger(__name__).error("skill refit failed: %s", exc, exc_info=exc)


class SkillRefresher:
    """Refits each live adaptive project once its stored answers grew by ``every`` since this
    refresher last refitted it (kept in memory: after a restart every project with at least
    ``every`` answers is refitted once)."""

    def __init__(self, every: int = REFIT_EVERY, *, min_labels: int = MIN_LABELS) -> None:
        if every < 1:
            raise RefitError(f"every must be >= 1, got {every}")
        self.every = every
        self.min_labels = min_labels
        self._last: dict[int, int] = {}

    def _totals(self, engine: Engine) -> dict[int, tuple[str, int]]:
        p, lb = Project.__table__, Label.__table__
        with read_tx(engine) as conn:
            projects = conn.execute(sa.select(p.c.id, p.c.slug, p.c.retirement)
                                    .where(p.c.status == "live")).all()
            ids = [r.id for r in projects
                   if (r.retirement or {}).get("policy") == "adaptive"]
            if not ids:
                return {}
            counts = dict(conn.execute(
                sa.select(lb.c.project_id, sa.func.count())
                .where(lb.c.project_id.in_(ids), lb.c.skipped.is_(False))
                .group_by(lb.c.project_id)).all())
        return {r.id: (r.slug, int(counts.get(r.id, 0))) for r in projects if r.id in ids}

    def maybe_refresh(self, engine: Engine) -> list[RefitReport]:
        """Refit the projects that are due; returns their reports."""
        out = []
        for pid, (_, total) in sorted(self._totals(engine).items()):
            if total - self._last.get(pid, 0) < self.every:
                continue
            out.append(refit_project(engine, pid, min_labels=self.min_labels))
            self._last[pid] = total
        return out

    def run_forever(self, engine: Engine, stop: threading.Event, interval: float = 30.0,
                    on_error: Callable[[BaseException], None] | None = None,
                    on_report: Callable[[RefitReport], None] | None = None,
                    lock_path: str | os.PathLike[str] | None = None) -> None:
        """Every ``interval`` seconds, :meth:`maybe_refresh` until ``stop`` is set. Errors go to
        ``on_error`` (default: logged) and the loop goes on. With ``lock_path``, only the
        process holding an exclusive ``flock`` on that file refits (the app's workers each run
        a refresher; one of them takes the lock and keeps it until it exits, then another
        takes over), so the work is not repeated per worker."""
        lock = _RefitLock(lock_path) if lock_path is not None else None
        try:
            while not stop.wait(interval):
                try:
                    if lock is not None and not lock.acquire():
                        continue
                    for rep in self.maybe_refresh(engine):
                        if on_report:
                            on_report(rep)
                except Exception as exc:  # keep refitting the next time round
                    (on_error or _log_error)(exc)
        finally:
            if lock is not None:
                lock.release()


class _RefitLock:
    """A non-blocking, process-wide ``flock`` held from the first success until release."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def start_refresher(engine: Engine, *, interval: float, every: int | None = None,
                    on_error: Callable[[BaseException], None] | None = None,
                    on_report: Callable[[RefitReport], None] | None = None,
                    lock_path: str | os.PathLike[str] | None = None) -> Callable[[], None]:
    """Start :meth:`SkillRefresher.run_forever` in a daemon thread (for the app's lifespan);
    returns the function that stops it (waits up to 10 s for a refit under way). ``every``
    defaults to :data:`REFIT_EVERY`; ``lock_path``: see :meth:`SkillRefresher.run_forever`."""
    if interval <= 0:
        raise RefitError(f"interval must be > 0 seconds, got {interval}")
    stop = threading.Event()
    th = threading.Thread(target=SkillRefresher(REFIT_EVERY if every is None else every).run_forever, args=(engine, stop),
                          kwargs={"interval": interval, "on_error": on_error,
                                  "on_report": on_report, "lock_path": lock_path},
                          name="skill-refit", daemon=True)
    th.start()

    def stop_refresher() -> None:
        stop.set()
        th.join(timeout=10.0)

    return stop_refresher
