"""Group commit (labeler.batch): one transaction per batch, one savepoint per request."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from labeler.batch import GroupCommitter
from labeler.db import make_engine
from labeler.testing import run_async


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    eng = make_engine(f"sqlite:///{tmp_path / 'b.db'}", pool_size=2)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY)")
    yield eng
    eng.dispose()


def _insert(key: str):  # type: ignore[no-untyped-def]
    def work(conn: sa.Connection) -> str:
        conn.connection.driver_connection.execute("INSERT INTO t (k) VALUES (?)", (key,))
        if key.startswith("bad"):
            raise ValueError(f"refused {key}")
        return key
    return work


def _keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT k FROM t")}


def test_concurrent_requests_share_a_transaction_and_fail_alone(engine: sa.Engine) -> None:
    gc = GroupCommitter(engine, max_batch=8)
    batches: list[int] = []
    real = gc._run_batch

    def counting(batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        return real(batch)

    gc._run_batch = counting  # type: ignore[method-assign]
    keys = [f"k{i}" for i in range(20)] + ["bad1", "bad2"]
    hold = __import__("threading").Lock()

    def wait_for_queue(conn: sa.Connection) -> str:  # keeps the writer busy while others queue
        with hold:
            return "first"

    async def main() -> list[object]:
        with hold:
            first = asyncio.ensure_future(gc.run(wait_for_queue))
            rest = [asyncio.ensure_future(gc.run(_insert(k))) for k in keys]
            await asyncio.sleep(0.05)
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = run_async(main)[1:]
    gc.close()
    assert results[:20] == keys[:20]
    assert all(isinstance(r, ValueError) for r in results[20:])
    # the failed requests' inserts were rolled back to their savepoints, nobody else's
    assert _keys(engine) == set(keys[:20])
    assert sum(batches) == len(keys) + 1 and max(batches) == 8 and len(batches) <= 4


def test_duplicate_in_batch_is_an_error_for_that_request_only(engine: sa.Engine) -> None:
    gc = GroupCommitter(engine)

    async def main() -> list[object]:
        return await asyncio.gather(gc.run(_insert("a")), gc.run(_insert("a")),
                                    gc.run(_insert("b")), return_exceptions=True)

    a1, a2, b = run_async(main)
    gc.close()
    assert a1 == "a" and b == "b"
    assert isinstance(a2, sqlite3.IntegrityError) and "UNIQUE" in str(a2)
    assert _keys(engine) == {"a", "b"}


def test_a_failed_commit_acknowledges_nobody(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE child (p INTEGER REFERENCES parent(id) "
                             "DEFERRABLE INITIALLY DEFERRED)")
    gc = GroupCommitter(engine)

    def orphan(conn: sa.Connection) -> str:  # violates a deferred FK: COMMIT fails
        conn.connection.driver_connection.execute("INSERT INTO child (p) VALUES (42)")
        return "orphan"

    async def main() -> list[object]:
        return await asyncio.gather(gc.run(_insert("x")), gc.run(orphan),
                                    return_exceptions=True)

    x, o = run_async(main)
    gc.close()
    assert isinstance(x, sa.exc.IntegrityError) and isinstance(o, sa.exc.IntegrityError)
    assert "FOREIGN KEY" in str(o)
    assert _keys(engine) == set()
