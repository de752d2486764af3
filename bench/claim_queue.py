"""The claim's walk past full tiles: the queue of all live tiles vs only those with room
(issue 3, not a test).

A claim takes the first tile, closest to completion first, whose ``label_count +
lease_count`` is below the target. The tiles at the top of that order are the ones volunteers
are working on, so most of them are full with live leases: before migration ``0400`` every
claim walked past all of those on ``ix_tiles_queue`` (about 80 per claim with the service
benchmark's 200 volunteers, who hold two tasks each). Now the claim reads ``ix_tiles_room``,
a partial index over the tiles that have room (``tiles.has_room``, kept with the counters).

This seeds one project of ``--tiles`` tiles, makes the top ``F`` of the queue full (one label
short of the target and leased) — as ``F / 2`` volunteers at work holding two tasks each would
— and times the claim's own query as the assigner runs it (prepared, through
``labeler.sql.run``, PostgreSQL with its row lock), against the same query without the
``has_room`` term (the planner then takes ``ix_tiles_queue``, as before ``0400``).

    .venv/bin/python bench/claim_queue.py                        # F = 0, 400, 4,000
    .venv/bin/python bench/claim_queue.py --full 0,2000 --backends sqlite
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._seed import bench_project  # noqa: E402


def seed(url: str, n_tiles: int, full: int, target: int = 5) -> None:
    """A live project with ``n_tiles`` tiles at ``target - 1`` labels; the top ``full`` of the
    queue (highest ids) hold a lease each as well, so they are full."""
    now = datetime(2026, 11, 28, tzinfo=UTC)
    eng = bench_project(url, now, redundancy=target)
    try:
        with eng.begin() as c:
            c.execute(sa.text("INSERT INTO volunteers (public_id, tutorials_passed, created_at) "
                              "VALUES ('v1', '[]', :now)"), {"now": now})
            c.execute(sa.text(
                "INSERT INTO tiles (project_id, z, x, y, west, south, east, north, layers, "
                "tutorial, state, label_count, lease_count, has_room, answer_counts) "
                "VALUES (1, 18, :x, 0, 0, 0, 1, 1, '[]', false, 'live', :lc, :ls, :room, '{}')"),
                [{"x": i, "lc": target - 1, "ls": int(i >= n_tiles - full),
                  "room": i < n_tiles - full} for i in range(n_tiles)])
        if eng.dialect.name == "postgresql":
            with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE tiles")
        else:
            with eng.begin() as c:
                c.exec_driver_sql("ANALYZE")
    finally:
        eng.dispose()


def claim_sql(pg: bool, room: bool) -> str:
    """The assigner's claim query (``room``), or the same query as it was before ``0400``."""
    from labeler.assign import _ELIGIBLE, Assigner, _order_by

    project = SimpleNamespace(priority="completion")
    lock = " FOR UPDATE OF t SKIP LOCKED" if pg else ""
    if room:
        return Assigner._anchor_sql(project, None, lock=lock, pg=pg)  # type: ignore[arg-type]
    where = _ELIGIBLE.replace("AND t.has_room ", "")
    assert "has_room" not in where
    return (f"SELECT t.id FROM tiles t WHERE {where} ORDER BY {_order_by(project, None)} "  # type: ignore[arg-type]
            f"LIMIT 1{lock}")


def timed(url: str, sql: str, reps: int) -> tuple[float, int]:
    """Median µs per claim query (in one transaction, rolled back) and the tile it found."""
    from labeler.db import make_engine
    from labeler.sql import run

    eng = make_engine(url, pool_size=1)
    params = {"p": 1, "v": 1, "target": 5}
    try:
        with eng.connect() as conn:
            tx = conn.begin()
            got = int(run(conn, sql, params).one()[0])  # (prepares it)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run(conn, sql, params).one()
                times.append(time.perf_counter() - t0)
            tx.rollback()
        return statistics.median(times) * 1e6, got
    finally:
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=6000)
    ap.add_argument("--full", default="0,400,4000",
                    help="full tiles at the top of the queue (2 per volunteer at work)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--reps", type=int, default=1000)
    a = ap.parse_args()
    from labeler.testing import fresh_database, postgres_available

    print(f"tiles {a.tiles}, target 5; median µs per claim query of {a.reps}")
    print(f"{'backend':<11} {'full tiles':>10} {'queue (before 0400)':>20} "
          f"{'tiles with room':>16} {'ratio':>6}")
    for backend in a.backends.split(","):
        if backend == "postgresql" and not postgres_available():
            print("postgresql: not reachable on 127.0.0.1:5432, skipped")
            continue
        for full in (int(s) for s in a.full.split(",")):
            with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
                seed(url, a.tiles, full)
                pg = backend == "postgresql"
                before, t1 = timed(url, claim_sql(pg, room=False), a.reps)
                after, t2 = timed(url, claim_sql(pg, room=True), a.reps)
                assert t1 == t2 == a.tiles - full, (t1, t2)  # the same tile: the first with room
                print(f"{backend:<11} {full:>10} {before:>20.1f} {after:>16.1f} "
                      f"{before / after:>5.1f}x")


if __name__ == "__main__":
    main()
