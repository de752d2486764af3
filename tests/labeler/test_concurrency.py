"""Many volunteers at once against a live uvicorn: no tile over target, no duplicate label,
no lost label (every acknowledged label is in the database), counters consistent."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from crowdsight.settings import Settings
from labeler.app import create_app
from labeler.assign import recount
from labeler.db import make_engine
from labeler.testing import run_async, seed_project


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    relaxed = settings.with_(rate_limit_volunteer=100_000, rate_limit_ip=100_000)
    server = uvicorn.Server(uvicorn.Config(create_app(relaxed), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


async def _volunteer(base: str, slug: str, acked: list[tuple[str, int]], errors: list[str],
                     seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.post("/api/session", json={})
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        for _ in range(100):
            r = await c.get(f"/api/projects/{slug}/next")
            if r.status_code != 200:
                errors.append(f"next {r.status_code} {r.text}")
                return
            task = r.json()
            if task.get("done"):
                return
            labels = [{"tile_id": t["tile_id"], "answer": rng.choice(["yes", "no"]),
                       "idempotency_key": uuid.uuid4().hex} for t in task["tiles"]]
            body = {"task_id": task["task_id"], "labels": labels}
            tries = 2 if rng.random() < 0.3 else 1  # some clients retry (lost response)
            for _ in range(tries):
                r = await c.post(f"/api/projects/{slug}/labels", json=body, headers=csrf)
                if r.status_code != 200:
                    errors.append(f"labels {r.status_code} {r.text}")
                    return
            acked.extend((lb["idempotency_key"], lb["tile_id"]) for lb in labels)


async def _page_volunteer(base: str, slug: str, acked: list[tuple[str, int]],
                          errors: list[str], seed: int) -> None:
    """As the volunteer page works: ``GET /next?ahead=1`` once, then each answer brings the
    next task (``labels?next=1&ahead=1``) while one more is held ahead."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.post("/api/session", json={})
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        r = await c.get(f"/api/projects/{slug}/next?ahead=1")
        task = r.json()
        for _ in range(100):
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text}")
                return
            if task is None or task.get("done"):
                return
            labels = [{"tile_id": t["tile_id"], "answer": rng.choice(["yes", "no"]),
                       "idempotency_key": uuid.uuid4().hex} for t in task["tiles"]]
            body = {"task_id": task["task_id"], "labels": labels}
            for _ in range(2 if rng.random() < 0.3 else 1):  # some clients retry
                r = await c.post(f"/api/projects/{slug}/labels?next=1&ahead=1", json=body,
                                 headers=csrf)
                if r.status_code != 200:
                    errors.append(f"labels {r.status_code} {r.text}")
                    return
            acked.extend((lb["idempotency_key"], lb["tile_id"]) for lb in labels)
            task = r.json()["next"]


@pytest.mark.parametrize("block,page", [(None, False), ({"cols": 2, "rows": 2}, False),
                                        (None, True)],
                         ids=["tiles", "blocks", "page"])
def test_concurrent_volunteers(live_server: str, settings: Settings, block: dict | None,
                               page: bool) -> None:
    """``page``: the volunteer page's flow, whose answers claim the next task in the same
    batch (on PostgreSQL, batches of several answers run set-based: labeler.batchsubmit)."""
    fields = {"block": block} if block else {}
    p = seed_project(settings, n_tiles=16, grid_cols=4, redundancy=3, gold_rate=0,
                     with_images=False, **fields)
    acked: list[tuple[str, int]] = []
    errors: list[str] = []
    volunteer = _page_volunteer if page else _volunteer

    async def main() -> None:
        await asyncio.gather(*(volunteer(live_server, p.slug, acked, errors, i)
                               for i in range(24)))

    run_async(main)
    assert errors == []
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT idempotency_key, tile_id, volunteer_id FROM labels")).all()
            per_tile = dict(conn.execute(sa.text(
                "SELECT tile_id, count(*) FROM labels GROUP BY tile_id")).all())
            leases = conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one()
        assert recount(engine) == []
    finally:
        engine.dispose()
    stored = {(r.idempotency_key, r.tile_id) for r in rows}
    assert len(rows) == len(stored)                       # no duplicates
    assert stored == set(acked)                           # nothing lost, nothing extra
    assert len({(r.tile_id, r.volunteer_id) for r in rows}) == len(rows)
    assert max(per_tile.values()) <= 3                    # never over target
    assert sorted(per_tile) == sorted(p.tile_ids) and set(per_tile.values()) == {3}
    assert leases == 0
