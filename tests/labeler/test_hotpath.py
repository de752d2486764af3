"""Hot-path behaviour that the service benchmark exposed (issue 3): writes never poll SQLite's
busy handler, and a stale project cache is refreshed once, not by every waiting request."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler import api, db
from labeler.app import create_app
from labeler.db import make_engine, write_tx
from labeler.testing import seed_project


def _hold_write_lock(url: str, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Another writer of this process holds SQLite's write lock for ``seconds``."""
    held = threading.Event()

    def run() -> None:
        engine = make_engine(url, pool_size=1)
        try:
            with write_tx(engine):
                held.set()
                time.sleep(seconds)
        finally:
            engine.dispose()

    t = threading.Thread(target=run)
    t.start()
    assert held.wait(10)
    return t, held


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_new_session_waits_for_the_write_lock_instead_of_failing(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy timeout far shorter than the time the lock is held: a write that polled SQLite's
    # busy handler (a plain BEGIN) would fail with "database is locked"; writes queued on
    # the writer lock (BEGIN IMMEDIATE through write_tx / the group committer) just wait.
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    with TestClient(create_app(settings)) as client:
        t, _ = _hold_write_lock(settings.resolved_database_url, 0.6)
        try:
            r = client.post("/api/session", json={"display_name": "Ana"})
        finally:
            t.join()
        assert r.status_code == 201, r.text
        assert r.json()["volunteer"] == {"display_name": "Ana", "labels": 0,
                                         "tutorials_passed": []}
        # the session works: the volunteer row exists
        assert client.get("/api/session").json()["volunteer"]["display_name"] == "Ana"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_create_volunteer_waits_for_the_write_lock(settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from labeler.security import create_volunteer

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        t, _ = _hold_write_lock(settings.resolved_database_url, 0.6)
        try:
            session = create_volunteer(engine, None)
        finally:
            t.join()
        assert session.id > 0
    finally:
        engine.dispose()


def test_stale_project_cache_is_refreshed_once_for_concurrent_requests(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    project = seed_project(settings, n_tiles=2, with_images=False)
    app = create_app(settings)
    with TestClient(app) as client:
        st = client.app_state["labeler"]
        calls: list[str] = []
        real_get = st.projects.get

        def slow_get(slug: str) -> Any:
            calls.append(slug)
            time.sleep(0.05)  # every request arrives while the lookup is running
            return real_get(slug)

        monkeypatch.setattr(st.projects, "get", slow_get)

        def request() -> Request:
            return Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                            "query_string": b"", "app": app, "state": client.app_state,
                            "path_params": {"slug": project.slug}})

        async def many() -> list[Any]:
            return await asyncio.gather(*(api._project(request()) for _ in range(20)))

        assert client.portal is not None
        got = client.portal.call(many)
        assert {p.slug for p in got} == {project.slug}
        assert calls == [project.slug]
