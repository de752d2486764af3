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

    async def main() -> list[object]:
        # all queued in the same loop iteration, before the drain task first runs
        futs = [asyncio.ensure_future(gc.run(_insert(k))) for k in keys]
        return await asyncio.gather(*futs, return_exceptions=True)

    results = run_async(main)
    gc.close()
    assert results[:20] == keys[:20]
    assert all(isinstance(r, ValueError) for r in results[20:])
    # the failed requests' inserts were rolled back to their savepoints, nobody else's
    assert _keys(engine) == set(keys[:20])
    assert batches == [8, 8, 6]


def test_the_event_loop_keeps_running_while_another_writer_holds_the_lock(
        engine: sa.Engine) -> None:
    """The batch waits for the writer lock in a worker thread; meanwhile the loop serves
    other coroutines, and requests arriving then join the batch."""
    import threading

    from labeler.db import writer_lock

    gc = GroupCommitter(engine)
    batches: list[int] = []
    real = gc._run_batch
    gc._run_batch = lambda batch: (batches.append(len(batch)), real(batch))[1]  # type: ignore
    lock = writer_lock(engine)
    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:  # e.g. another uvicorn worker's batch, or a CLI command
        with lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_writer)
    t.start()
    assert held.wait(10)

    async def main() -> tuple[list[object], int]:
        first = asyncio.ensure_future(gc.run(_insert("a")))
        ticks = 0
        for _ in range(20):  # the loop is not blocked by the waiting batch
            await asyncio.sleep(0.005)
            ticks += 1
        late = [asyncio.ensure_future(gc.run(_insert(k))) for k in ("b", "c")]
        await asyncio.sleep(0.02)
        assert not first.done() and _keys(engine) == set()
        release.set()
        return await asyncio.gather(first, *late), ticks

    try:
        results, ticks = run_async(main)
    finally:
        release.set()
        t.join()
        gc.close()
    assert results == ["a", "b", "c"] and ticks == 20
    assert batches == [3]  # the requests that came while waiting went in the same batch
    assert not lock.held


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
