"""How many labels has this volunteer given here? — counted vs kept (issue 3, not a test).

Every task the assigner hands out needs the number of labels the volunteer gave in the
project (gold interleaving, the progress shown). Until migration ``0300`` it was counted from
``labels`` each time (``count(*)`` over the volunteer's labels: a cost growing with their
work); now it is read from ``volunteer_progress``, kept by the statements that store labels.
This times both reads, as the hot path runs them (prepared, through ``labeler.sql.run``), for
one volunteer with N labels in a project, on SQLite and PostgreSQL (on PostgreSQL also after
a VACUUM: without one, as right after the labels were written, every counted label is a heap
visit; this machine's PostgreSQL runs with autovacuum off).

    .venv/bin/python bench/labels_given.py                      # N = 100, 1,000, 10,000
    .venv/bin/python bench/labels_given.py --sizes 50000 --backends postgresql
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._seed import bench_project  # noqa: E402

COUNT = "SELECT count(*) AS n FROM labels WHERE volunteer_id = :v AND project_id = :p"
KEPT = ("SELECT COALESCE((SELECT labels FROM volunteer_progress "
        "WHERE volunteer_id = :v AND project_id = :p), 0) AS n")


def seed(url: str, n: int) -> None:
    """A project with ``n`` tiles, 20 volunteers; volunteer 1 labelled all of them, the others
    a share each (so the volunteer's labels are not the whole table)."""
    now = datetime(2026, 11, 27, tzinfo=UTC)
    eng = bench_project(url, now)
    try:
        with eng.begin() as c:
            c.execute(sa.text(
                "INSERT INTO volunteers (public_id, tutorials_passed, created_at) "
                "VALUES " + ", ".join(f"('v{i}', '[]', :now)" for i in range(20))), {"now": now})
            c.execute(sa.text(
                "INSERT INTO tiles (project_id, z, x, y, west, south, east, north, layers, "
                "tutorial, state, label_count, lease_count, answer_counts) "
                "VALUES (1, 18, :x, 0, 0, 0, 1, 1, '[]', false, 'live', 0, 0, '{}')"),
                [{"x": i} for i in range(n)])
            rows = [{"t": t + 1, "v": v, "k": f"{t}-{v}", "now": now}
                    for t in range(n) for v in ([1] + [2 + t % 19])]
            c.execute(sa.text(
                "INSERT INTO labels (project_id, tile_id, volunteer_id, answer, skipped, "
                "idempotency_key, is_gold, created_at) "
                "VALUES (1, :t, :v, 'yes', false, :k, false, :now)"), rows)
            c.execute(sa.text(
                "INSERT INTO volunteer_progress (volunteer_id, project_id, labels) "
                "SELECT volunteer_id, project_id, count(*) FROM labels "
                "GROUP BY volunteer_id, project_id"))
    finally:
        eng.dispose()


def timed(url: str, sql: str, reps: int) -> tuple[float, int]:
    """Median µs per read (``labeler.sql.run`` in one transaction) and its answer."""
    from labeler.db import make_engine
    from labeler.sql import run

    eng = make_engine(url, pool_size=1)
    try:
        with eng.begin() as conn:
            got = int(run(conn, sql, {"v": 1, "p": 1}).one()[0])  # (prepares it)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run(conn, sql, {"v": 1, "p": 1}).one()
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6, got
    finally:
        eng.dispose()


def vacuum(url: str) -> None:
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql("VACUUM ANALYZE labels")
    finally:
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--reps", type=int, default=1000)
    a = ap.parse_args()
    from labeler.testing import fresh_database, postgres_available

    print(f"{'backend':<22} {'labels':>7} {'count(*) µs':>12} {'counter µs':>11} {'ratio':>6}")
    for backend in a.backends.split(","):
        if backend == "postgresql" and not postgres_available():
            print("postgresql: not reachable on 127.0.0.1:5432, skipped")
            continue
        for n in (int(s) for s in a.sizes.split(",")):
            with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
                seed(url, n)
                runs = [(backend, None)]
                if backend == "postgresql":
                    runs.append((backend + " (vacuumed)", vacuum))
                for name, prepare in runs:
                    if prepare is not None:
                        prepare(url)
                    counted, n1 = timed(url, COUNT, a.reps)
                    kept, n2 = timed(url, KEPT, a.reps)
                    assert n1 == n2 == n, (n1, n2, n)
                    print(f"{name:<22} {n:>7} {counted:>12.1f} {kept:>11.1f} "
                          f"{counted / kept:>5.1f}x")


if __name__ == "__main__":
    main()
