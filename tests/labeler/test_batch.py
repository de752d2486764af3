"""Group commit (labeler.batch): one transaction per batch, one savepoint per request.

The tests on ``any_engine`` run on SQLite and PostgreSQL: there the two workers' batches run
side by side, so a batch locks the rows its requests name up front, in key order, skipping
rows another batch holds (their requests wait for the next batch), and runs again after a
deadlock or serialization failure."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from labeler.batch import GroupCommitter
from labeler.db import make_engine
from labeler.sql import run
from labeler.testing import run_async


def _engine_with_table(url: str):  # type: ignore[no-untyped-def]
    eng = make_engine(url, pool_size=3)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k VARCHAR(20) PRIMARY KEY)")
    return eng


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    """SQLite (the tests of its cross-process writer lock)."""
    eng = _engine_with_table(f"sqlite:///{tmp_path / 'b.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def any_engine(db_url: str):  # type: ignore[no-untyped-def]
    """SQLite, and PostgreSQL when it answers."""
    eng = _engine_with_table(db_url)
    yield eng
    eng.dispose()


def _insert(key: str):  # type: ignore[no-untyped-def]
    def work(conn: sa.Connection) -> str:
        run(conn, "INSERT INTO t (k) VALUES (:k)", {"k": key})
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

    async def counting(loop, batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        return await real(loop, batch)

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
    gc._run_batch = lambda loop, batch: (batches.append(len(batch)), real(loop, batch))[1]  # type: ignore
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


def test_a_failing_request_is_rolled_back_alone_and_rows_are_locked_in_key_order(
        any_engine: sa.Engine) -> None:
    engine = any_engine
    locked: list[list[int]] = []
    gc = GroupCommitter(engine, lock_rows=lambda conn, keys, wait: locked.append(keys) or keys)

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
    assert sorted(_keys(engine)) == ["a", "b"]
    if engine.dialect.name == "postgresql":
        # the optimistic run (failed) and the run with savepoints each lock all the rows the
        # batch names, once, sorted: two workers' batches never lock in opposite orders
        assert locked == [[3, 5, 7], [3, 5, 7]]
    else:  # SQLite serialises writers with its write lock instead
        assert locked == []


def test_a_batch_runs_again_after_a_deadlock(any_engine: sa.Engine) -> None:
    """A deadlock (or serialization failure) loses the whole transaction, not one request's
    writes: the batch runs again from the start, and every write lands exactly once."""
    engine = any_engine
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
    assert sorted(_keys(engine)) == ["v3", "x", "y"]  # the failed runs' writes were all rolled back


def test_a_batch_gives_up_after_repeated_deadlocks(any_engine: sa.Engine) -> None:
    from labeler import batch

    engine = any_engine
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
    assert sorted(_keys(engine)) == []


def test_requests_whose_rows_another_batch_holds_go_to_the_next_batch(any_engine: sa.Engine) -> None:
    """Rows held elsewhere are skipped, not waited for: the requests that got theirs run; the
    others run in the next batch — waiting for their rows (in a worker thread) only once
    nothing else could run."""
    engine = any_engine
    calls: list[tuple[list[int], bool]] = []

    def lock_rows(conn: sa.Connection, keys: list[int], wait: bool) -> list[int]:
        calls.append((keys, wait))
        return keys if wait else [k for k in keys if k != 2]  # row 2: "held by the other"

    gc = GroupCommitter(engine, lock_rows=lock_rows)
    order: list[str] = []

    def step(key: str) -> Any:
        def work(conn: sa.Connection) -> str:
            order.append(key)
            return _insert(key)(conn)
        return work

    async def main() -> list[Any]:
        return await asyncio.gather(gc.run(step("a"), locks=[1]), gc.run(step("b"), locks=[2]),
                                    gc.run(step("c")))

    try:
        got = run_async(main)
    finally:
        gc.close()
    assert got == ["a", "b", "c"]
    assert sorted(_keys(engine)) == ["a", "b", "c"]
    if engine.dialect.name == "postgresql":
        assert order == ["a", "c", "b"]  # b was put off to the next batch
        assert calls == [([1, 2], False), ([2], False), ([2], True)]
    else:
        assert order == ["a", "b", "c"] and calls == []


def test_lock_tiles_skips_rows_another_transaction_holds(settings: Any) -> None:
    from labeler.labels import lock_tiles
    from labeler.testing import seed_project

    seed_project(settings, n_tiles=3, with_images=False)
    engine = make_engine(settings.resolved_database_url, pool_size=3)
    if engine.dialect.name != "postgresql":
        engine.dispose()
        pytest.skip("SQLite has no row locks (its writers are serialised)")
    try:
        with engine.connect() as conn:
            ids = sorted(r[0] for r in conn.exec_driver_sql("SELECT id FROM tiles"))
        with engine.begin() as other, engine.begin() as conn:
            lock_tiles(other, [(ids[1], 7)])
            # keys are (tile, volunteer): a tile named twice is locked once, listed twice
            keys = [(ids[2], 7), (ids[0], 7), (ids[1], 7), (ids[0], 8)]
            got = lock_tiles(conn, keys, wait=False)
            assert sorted(got) == [(ids[0], 7), (ids[0], 8), (ids[2], 7)]
    finally:
        engine.dispose()


def test_a_batch_reads_its_submissions_tiles_with_their_locks(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: what a submission reads of its tile (and of the volunteer's lease on it)
    comes with the batch's locks, not from a statement of its own."""
    from starlette.testclient import TestClient

    import labeler.labels as labels_mod
    from labeler.app import create_app
    from labeler.testing import label_for, seed_project, start_volunteer

    if not settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("SQLite batches take no row locks")
    p = seed_project(settings, n_tiles=4, with_images=False, gold_rate=0, redundancy=2)
    statements: list[str] = []
    real = labels_mod.run

    def spy(conn: sa.Connection, text: str, params: Any = None) -> Any:
        statements.append(text)
        return real(conn, text, params)

    with TestClient(create_app(settings)) as client:
        h = start_volunteer(client)
        task = client.get(f"/api/projects/{p.slug}/next").json()
        monkeypatch.setattr(labels_mod, "run", spy)
        r = client.post(f"/api/projects/{p.slug}/labels?next=1", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]})
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    assert r.json()["next"]["task_id"]
    assert any("unnest" in t and "FOR UPDATE" in t for t in statements)  # the batch's lock
    assert not [t for t in statements if "FROM tiles t LEFT JOIN leases" in t]  # no own read


def test_two_answers_for_one_tile_in_one_batch_both_count(settings: Any) -> None:
    """Two volunteers' answers for the same tile in one batch, after a third volunteer's claim
    of it: the second answer must see the tile as the first left it (the rows read with the
    batch's locks are stale once a submission changed the tile), or its counts would
    overwrite the first's; the claim's lease must survive both."""

    from starlette.testclient import TestClient

    from labeler.app import create_app
    from labeler.assign import Assigner, split_task_id
    from labeler.labels import lock_tiles, parse_submission, submit_in
    from labeler.security import insert_volunteer
    from labeler.projects import config_from_row, get_row
    from labeler.testing import (
        assert_counters_consistent, label_for, run_async, seed_project, start_volunteer)

    p = seed_project(settings, n_tiles=1, with_images=False, gold_rate=0, redundancy=3)
    engine = make_engine(settings.resolved_database_url, pool_size=3)
    try:
        tasks = []
        with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
            for c in (a, b):
                start_volunteer(c)
                tasks.append(c.get(f"/api/projects/{p.slug}/next").json())
        subs = []
        with engine.connect() as conn:
            project = config_from_row(get_row(conn, p.slug))
            for task in tasks:
                vid = conn.execute(sa.text("SELECT volunteer_id FROM leases WHERE task_id = :t"),
                                   {"t": split_task_id(task["task_id"])}).scalar_one()
                subs.append((vid, task))
        committer = GroupCommitter(engine, lock_rows=lock_tiles)

        def work(vid: int, task: dict[str, Any], answer: str) -> Any:
            _, labels = parse_submission(project, {"task_id": task["task_id"], "labels": [
                label_for(task["tiles"][0], answer=answer)]}, 10)
            return lambda conn: submit_in(conn, project, vid, task["task_id"], labels).stored

        # a third volunteer claims the same tile first, in the same batch
        with engine.begin() as conn:
            third = insert_volunteer(conn, None).id
        assigner = Assigner(engine, 600)

        def claim(conn: sa.Connection) -> int:
            return len(assigner.next_tasks(project, third, conn=conn))

        async def together() -> list[Any]:
            return await asyncio.gather(committer.run(claim), *(
                committer.run(work(vid, task, ans), locks=[(task["tiles"][0]["tile_id"], vid)])
                for (vid, task), ans in zip(subs, ("yes", "no"))))

        assert run_async(together) == [1, 1, 1]
        committer.close()
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT label_count, lease_count, answer_counts "
                                       "FROM tiles").one()
        counts = row[2] if isinstance(row[2], dict) else json.loads(row[2])
        assert (row[0], row[1], counts) == (2, 1, {"yes": 1, "no": 1})
        assert_counters_consistent(settings)
    finally:
        engine.dispose()


def test_a_failed_answer_in_a_batch_leaves_no_trace_for_the_next(settings: Any) -> None:
    """An answer that stored its label and then failed is rolled back to its savepoint: the
    answers after it in the batch must see the tile without it (what the batch keeps of the
    tile was brought up to date by that answer, so it must be forgotten)."""
    import asyncio

    from starlette.testclient import TestClient

    from labeler.app import create_app
    from labeler.assign import split_task_id
    from labeler.labels import lock_tiles, parse_submission, submit_in
    from labeler.projects import config_from_row, get_row
    from labeler.testing import (
        assert_counters_consistent, label_for, run_async, seed_project, start_volunteer)

    p = seed_project(settings, n_tiles=1, with_images=False, gold_rate=0, redundancy=3)
    engine = make_engine(settings.resolved_database_url, pool_size=3)
    try:
        tasks = []
        with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b, \
                TestClient(create_app(settings)) as c:
            for client in (a, b, c):
                start_volunteer(client)
                tasks.append(client.get(f"/api/projects/{p.slug}/next").json())
        with engine.connect() as conn:
            project = config_from_row(get_row(conn, p.slug))
            vids = [conn.execute(sa.text("SELECT volunteer_id FROM leases WHERE task_id = :t"),
                                 {"t": split_task_id(t["task_id"])}).scalar_one() for t in tasks]
        committer = GroupCommitter(engine, lock_rows=lock_tiles)

        def work(i: int, fail: bool) -> Any:
            _, labels = parse_submission(project, {"task_id": tasks[i]["task_id"], "labels": [
                label_for(tasks[i]["tiles"][0], answer="yes")]}, 10)

            def run_it(conn: sa.Connection) -> int:
                stored = submit_in(conn, project, vids[i], tasks[i]["task_id"], labels).stored
                if fail:
                    raise RuntimeError("failed after storing")
                return stored
            return run_it

        async def three() -> list[Any]:
            return await asyncio.gather(*(
                committer.run(work(i, i == 1), locks=[(tasks[i]["tiles"][0]["tile_id"], vids[i])])
                for i in range(3)), return_exceptions=True)

        got = run_async(three)
        committer.close()
        assert got[0] == 1 and got[2] == 1 and isinstance(got[1], RuntimeError)
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT label_count, lease_count, answer_counts "
                                       "FROM tiles").one()
        counts = row[2] if isinstance(row[2], dict) else json.loads(row[2])
        assert (row[0], row[1], counts) == (2, 1, {"yes": 2})
        assert_counters_consistent(settings)
    finally:
        engine.dispose()
