"""Dashboard writes go through ``labeler.db.write_tx`` on SQLite.

A plain ``engine.begin()`` write that meets another writer holding the SQLite write lock
spins in SQLite's busy handler and fails with "database is locked" once the busy timeout is
over. Through ``write_tx`` it queues on the process's writer lock / the cross-process flock
instead and succeeds when the other writer commits. The busy timeout is cut to 100 ms here
(the blocker holds the lock for 1.5 s), so the old code fails every time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import labeler.db as db
from crowdsight.settings import Settings
from labeler.dashboard import researcher_jobs as jobs
from labeler.dashboard.analyst_testing import Vote, insert_votes
from labeler.db import make_engine, write_tx
from labeler.models import Label
from labeler.testing import make_settings, migrated_database, seed_project

HOLD_SECONDS = 1.5
T_JOBS = jobs.IngestJob.__table__


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with migrated_database("sqlite", tmp_path) as url:
        # make_engine reads this at connect time: every engine of this test gives up after
        # 100 ms in SQLite's busy handler
        monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)
        yield make_settings(tmp_path, url)


def _new_job(settings: Settings, slug: str) -> tuple[int, str]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with write_tx(engine) as conn:
            pid = conn.execute(sa.text("SELECT id FROM projects WHERE slug = :s"),
                               {"s": slug}).scalar_one()
            return pid, jobs.create_job(conn, project_id=pid, request={}, created_by="t")
    finally:
        engine.dispose()


def _job(settings: Settings, job_id: str) -> Any:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(T_JOBS).where(T_JOBS.c.id == job_id)).one()
    finally:
        engine.dispose()


class _ThreadBlocker:
    """Another connection of this process: BEGIN IMMEDIATE (through write_tx), one write,
    then the write lock is held for HOLD_SECONDS before committing."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.engine = make_engine(settings.resolved_database_url, pool_size=1)
        self.job_id = job_id
        self.locked = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with write_tx(self.engine) as conn:
                conn.execute(sa.update(T_JOBS).where(T_JOBS.c.id == self.job_id)
                             .values(message="blocker"))
                self.locked.set()
                time.sleep(HOLD_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc
            self.locked.set()

    def __enter__(self) -> "_ThreadBlocker":
        self.thread.start()
        assert self.locked.wait(30)
        assert self.error is None
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        self.engine.dispose()
        assert self.error is None


_PROCESS_BLOCKER = """
import sys, time
import sqlalchemy as sa
from labeler.db import make_engine, write_tx
engine = make_engine(sys.argv[1], pool_size=1)
with write_tx(engine) as conn:
    conn.execute(sa.text("UPDATE ingest_jobs SET message = 'blocker' WHERE id = :j"),
                 {"j": sys.argv[2]})
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
engine.dispose()
"""


@pytest.mark.parametrize("path", ["job_update", "insert_votes"])
def test_dashboard_write_waits_for_a_writer_in_this_process(settings: Settings,
                                                            path: str) -> None:
    proj = seed_project(settings, n_tiles=2)
    project_id, job_id = _new_job(settings, proj.slug)
    engine = make_engine(settings.resolved_database_url, pool_size=2)
    try:
        with _ThreadBlocker(settings, job_id):
            if path == "job_update":
                jobs._update(engine, job_id, stage="ingest", message="target")
            else:
                insert_votes(engine, proj.slug, [Vote(proj.tile_ids[0], "v1", "yes")])
        with engine.connect() as conn:
            row = conn.execute(sa.select(T_JOBS).where(T_JOBS.c.id == job_id)).one()
            n_labels = conn.execute(sa.select(sa.func.count()).select_from(Label.__table__)
                                    ).scalar_one()
    finally:
        engine.dispose()
    if path == "job_update":
        # our write came after the blocker's commit, not instead of it
        assert (row.stage, row.message) == ("ingest", "target")
    else:
        assert row.message == "blocker"
        assert n_labels == 1


def test_job_failure_is_recorded_while_another_process_writes(settings: Settings) -> None:
    proj = seed_project(settings, n_tiles=2)
    project_id, job_id = _new_job(settings, proj.slug)
    blocker = subprocess.Popen(
        [sys.executable, "-c", _PROCESS_BLOCKER, settings.resolved_database_url, job_id,
         str(HOLD_SECONDS)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout is not None
        assert blocker.stdout.readline().strip() == "locked"
        spec = jobs.IngestJobSpec(job_id=job_id, project_id=project_id, slug=proj.slug,
                                  database_url=settings.resolved_database_url,
                                  tile_store=str(settings.tile_store_path), layers={})
        # builds its own engine (100 ms busy timeout) and must wait for the other process
        jobs._mark_worker_failure(spec, RuntimeError("killed"))
    finally:
        assert blocker.wait(30) == 0
        if blocker.stdout is not None:
            blocker.stdout.close()
    row = _job(settings, job_id)
    assert (row.status, row.error_code) == ("failed", "worker_died")
