"""Hot-path second pass (issue 3): on SQLite the group committer holds the cross-process
write lock while it runs a batch, so the answers of ``next`` and of ``labels?next=1`` are
shaped after the commit and the lock's release, not inside the transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler import api
from labeler.app import create_app
from labeler.testing import run_async, seed_project, start_volunteer


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_task_answers_are_built_outside_the_group_commit_writer(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    p = seed_project(settings, n_tiles=6, with_images=False)
    from labeler import db

    built_in: list[bool] = []  # was the writer lock held while the answer was built?
    real = api._task_json

    def spy(*args: Any) -> dict[str, Any]:
        built_in.append(any(lock.held for lock in db._sqlite_locks.values()))
        return real(*args)

    monkeypatch.setattr(api, "_task_json", spy)
    with TestClient(create_app(settings)) as client:
        h = start_volunteer(client)
        first = client.get(f"/api/projects/{p.slug}/next?ahead=1")
        assert first.status_code == 200, first.text
        task = first.json()
        assert task["task_id"] and task["ahead"]["task_id"]
        tile = task["tiles"][0]["tile_id"]
        r = client.post(f"/api/projects/{p.slug}/labels?next=1&ahead=1", headers=h, json={
            "task_id": task["task_id"],
            "labels": [{"tile_id": tile, "answer": "yes", "idempotency_key": "key-0001"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stored"] == 1
        # the task held ahead comes back as next, with a new one ahead of it
        assert body["next"]["task_id"] == task["ahead"]["task_id"]
        assert body["next"]["tiles"][0]["image_urls"]
        assert body["next"]["progress"]["tiles"] == 6
        assert body["next"]["ahead"]["task_id"] not in (task["task_id"], task["ahead"]["task_id"])
        # the stored label is there (the answer came after the commit)
        again = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"],
            "labels": [{"tile_id": tile, "answer": "yes", "idempotency_key": "key-0001"}]})
        assert again.status_code == 200 and again.json()["duplicates"] == 1, again.text
    assert built_in == [False] * 4  # next: task + ahead; labels?next=1: next + ahead



def test_group_commit_writer_keeps_one_connection_across_batches(tmp_path: Path) -> None:
    import asyncio

    import sqlalchemy as sa

    from labeler.batch import GroupCommitter
    from labeler.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}", pool_size=2)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE child (p INTEGER REFERENCES parent(id) "
                             "DEFERRABLE INITIALLY DEFERRED)")
    checkouts: list[int] = []
    sa.event.listen(engine, "checkout", lambda *a: checkouts.append(1))
    gc = GroupCommitter(engine)

    def insert(key: str) -> Any:
        def work(conn: sa.Connection) -> str:
            conn.connection.driver_connection.execute("INSERT INTO t (k) VALUES (?)", (key,))
            return key
        return work

    def orphan(conn: sa.Connection) -> None:  # violates a deferred FK: COMMIT fails
        conn.connection.driver_connection.execute("INSERT INTO child (p) VALUES (42)")

    async def main() -> list[Any]:
        out = [await gc.run(insert(f"k{i}")) for i in range(5)]  # five batches, one by one
        out.append(await asyncio.gather(gc.run(orphan), return_exceptions=True))
        out.append(await gc.run(insert("after")))  # a new connection after the failed commit
        return out

    try:
        got = run_async(main)
    finally:
        gc.close()
    assert got[:5] == [f"k{i}" for i in range(5)]
    assert isinstance(got[5][0], sa.exc.IntegrityError)
    assert got[6] == "after"
    assert len(checkouts) == 2  # five batches on one connection; one more after the failure
    with engine.connect() as conn:
        keys = {r[0] for r in conn.exec_driver_sql("SELECT k FROM t")}
    assert keys == {"k0", "k1", "k2", "k3", "k4", "after"}
    assert engine.pool.checkedout() == 0  # closed when the writer stopped
    engine.dispose()


def test_held_tasks_are_renewed_only_when_a_tenth_of_the_lease_has_passed(
        make_client, settings: Settings) -> None:
    """Asking again for a freshly leased task does not rewrite its lease (one UPDATE less
    per answer in the batch's transaction); once less than 90 % of a lease is left it is
    renewed to a full one. Either way the answer reports the lease's real expiry."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from labeler.db import make_engine
    from labeler.sql import ts_text

    p = seed_project(settings, n_tiles=4, with_images=False, gold_rate=0)
    c = make_client()
    start_volunteer(c)
    first = c.get(f"/api/projects/{p.slug}/next").json()
    engine = make_engine(settings.resolved_database_url, pool_size=1)

    def expiry() -> datetime:
        with engine.connect() as conn:
            v = conn.execute(sa.text("SELECT expires_at FROM leases")).scalar_one()
        v = datetime.fromisoformat(str(v)) if not isinstance(v, datetime) else v
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    def reported(body: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(body["lease_expires_at"].replace("Z", "+00:00"))

    try:
        e1 = expiry()
        assert abs((reported(first) - e1).total_seconds()) < 0.001
        again = c.get(f"/api/projects/{p.slug}/next").json()
        assert again["task_id"] == first["task_id"]
        assert expiry() == e1 and reported(again) == reported(first)  # not rewritten
        # half the lease has gone by: the next ask renews it to a full lease from now
        half = datetime.now(UTC) + timedelta(seconds=settings.lease_seconds / 2)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE leases SET expires_at = :e"),
                         {"e": ts_text(half) if engine.dialect.name == "sqlite" else half})
        later = c.get(f"/api/projects/{p.slug}/next").json()
        assert later["task_id"] == first["task_id"]
        e2 = expiry()
        assert e2 > half + timedelta(seconds=settings.lease_seconds * 0.4)
        assert abs((reported(later) - e2).total_seconds()) < 0.001
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_gold_turn_reads_only_the_gold_tiles(settings: Settings) -> None:
    """The gold claim (every 10th task by default) uses the partial index on gold tiles: it
    used to scan every tile of the project, inside the write lock, when there were few or no
    gold tiles."""
    from labeler.assign import _GOLD_SQL
    from labeler.db import make_engine

    seed_project(settings, n_tiles=50, gold=2, with_images=False)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            plan = " | ".join(r[3] for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + _GOLD_SQL, {"p": 1, "v": 1}).all())
    finally:
        engine.dispose()
    assert "USING INDEX ix_tiles_gold" in plan, plan


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_progress_counters_are_not_read_under_the_write_lock(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a cache miss the progress counters are an aggregate over the project's tiles: it
    runs after the group commit (once per event loop), never while the writer lock is held."""
    from labeler import db
    from labeler.projects import ProjectCache

    p = seed_project(settings, n_tiles=6, with_images=False, gold_rate=0)
    held: list[bool] = []
    real = ProjectCache.progress

    def spy(self: ProjectCache, project_id: int) -> dict[str, int]:
        held.append(any(lock.held for lock in db._sqlite_locks.values()))
        self._progress.clear()  # always a miss: the aggregate runs every time
        return real(self, project_id)

    monkeypatch.setattr(ProjectCache, "progress", spy)
    monkeypatch.setattr(ProjectCache, "peek_progress", lambda self, project_id: None)
    with TestClient(create_app(settings)) as client:
        h = start_volunteer(client)
        task = client.get(f"/api/projects/{p.slug}/next?ahead=1").json()
        assert task["progress"]["tiles"] == 6
        r = client.post(f"/api/projects/{p.slug}/labels?next=1&ahead=1", headers=h, json={
            "task_id": task["task_id"], "labels": [
                {"tile_id": task["tiles"][0]["tile_id"], "answer": "yes",
                 "idempotency_key": "key-progress-1"}]})
        assert r.status_code == 200, r.text
        assert r.json()["next"]["progress"] == {"labelled_by_you": 1, "tiles": 6, "retired": 0}
    assert held and not any(held), held


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_server_process_freezes_its_startup_objects_for_the_gc(settings: Settings) -> None:
    import gc

    before = gc.get_freeze_count()
    try:
        with TestClient(create_app(settings)):
            assert gc.get_freeze_count() == before  # tests and embedders: untouched
        with TestClient(create_app(settings, freeze_gc=True)) as client:
            assert gc.get_freeze_count() > max(before, 10_000)
            assert client.get("/api/health").status_code == 200
    finally:
        gc.unfreeze()
