"""Hot-path third pass (issue 3): the group committer serves PostgreSQL too. Its batches run
concurrently in the two workers, so a batch locks the rows its requests name up front, in
key order, and runs again after a deadlock or serialization failure; a failing request is
rolled back alone on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import sqlalchemy as sa

from labeler.batch import GroupCommitter
from labeler.db import make_engine
from labeler.sql import run
from labeler.testing import run_async


def _table(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k VARCHAR(20) PRIMARY KEY)")


def _keys(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SELECT k FROM t"))


def _insert(key: str) -> Any:
    def work(conn: sa.Connection) -> str:
        run(conn, "INSERT INTO t (k) VALUES (:k)", {"k": key})
        return key
    return work


def test_a_failing_request_is_rolled_back_alone_and_rows_are_locked_in_key_order(
        db_url: str) -> None:
    engine = make_engine(db_url, pool_size=2)
    _table(engine)
    locked: list[list[int]] = []
    gc = GroupCommitter(engine, lock_rows=lambda conn, keys: locked.append(keys))

    async def main() -> list[Any]:
        return await asyncio.gather(  # queued in the same loop iteration: one batch
            gc.run(_insert("a"), locks=[7, 3]), gc.run(_insert("a")),
            gc.run(_insert("b"), locks=[3, 5]), return_exceptions=True)

    try:
        got = run_async(main)
    finally:
        gc.close()
    assert got[0] == "a" and got[2] == "b"
    assert isinstance(got[1], Exception) and "unique" in str(got[1]).lower()
    assert _keys(engine) == ["a", "b"]
    if engine.dialect.name == "postgresql":
        # the optimistic run (failed) and the run with savepoints each lock all the rows the
        # batch names, once, sorted: two workers' batches never lock in opposite orders
        assert locked == [[3, 5, 7], [3, 5, 7]]
    else:  # SQLite serialises writers with its write lock instead
        assert locked == []
    engine.dispose()


def test_a_batch_runs_again_after_a_deadlock(db_url: str) -> None:
    """A deadlock (or serialization failure) loses the whole transaction, not one request's
    writes: the batch runs again from the start, and every write lands exactly once."""
    engine = make_engine(db_url, pool_size=2)
    _table(engine)
    gc = GroupCommitter(engine)
    calls: list[int] = []

    def victim(conn: sa.Connection) -> str:
        calls.append(1)
        run(conn, "INSERT INTO t (k) VALUES (:k)", {"k": f"v{len(calls)}"})
        if len(calls) < 3:  # twice: a second run with savepoints would hand it the error
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return "ok"

    async def main() -> list[Any]:
        return await asyncio.gather(gc.run(_insert("x")), gc.run(victim), gc.run(_insert("y")))

    try:
        got = run_async(main)
    finally:
        gc.close()
    assert got == ["x", "ok", "y"]
    assert len(calls) == 3
    assert _keys(engine) == ["v3", "x", "y"]  # the failed runs' writes were all rolled back
    engine.dispose()


def test_a_batch_gives_up_after_repeated_deadlocks(db_url: str) -> None:
    from labeler import batch

    engine = make_engine(db_url, pool_size=2)
    _table(engine)
    gc = GroupCommitter(engine)
    calls: list[int] = []

    def always(conn: sa.Connection) -> None:
        calls.append(1)
        raise psycopg.errors.SerializationFailure("could not serialize access")

    async def main() -> list[Any]:
        return await asyncio.gather(gc.run(_insert("x")), gc.run(always),
                                    return_exceptions=True)

    try:
        got = run_async(main)
    finally:
        gc.close()
    assert all(isinstance(g, psycopg.errors.SerializationFailure) for g in got)
    assert len(calls) == batch.TRANSIENT_TRIES
    assert _keys(engine) == []
    engine.dispose()
