"""``tiles.has_room`` and the claim's queue (``ix_tiles_room``): the flag follows the tile's
label and lease counts and the project's target through every change, the claim reads the
flag (a tile without room is not even visited), and the counts still guard the target when
the flag is wrong. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from crowdsight.settings import Settings
from labeler.assign import recount
from labeler.db import make_engine
from labeler.migrate import alembic_config, head_revision, upgrade
from labeler.sql import ts_text
from labeler.testing import (
    assert_counters_consistent, create_token, label_for, seed_project, start_volunteer,
)


def _sql(settings: Settings, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            res = conn.execute(sa.text(sql), params or {})
            return res.all() if res.returns_rows else []
    finally:
        engine.dispose()


def _room(settings: Settings, tile_id: int) -> tuple[int, int, bool]:
    r = _sql(settings, "SELECT label_count, lease_count, has_room FROM tiles WHERE id = :t",
             {"t": tile_id})[0]
    return r.label_count, r.lease_count, bool(r.has_room)


def _recount(settings: Settings, fix: bool = False) -> list[dict[str, Any]]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        return recount(engine, fix=fix)
    finally:
        engine.dispose()


def test_has_room_follows_claims_labels_expiry_and_the_target(make_client,
                                                              settings: Settings) -> None:
    p = seed_project(settings, with_images=False, n_tiles=1, redundancy=2, gold_rate=0)
    tile = p.tile_ids[0]
    assert _room(settings, tile) == (0, 0, True)
    c1, c2, c3 = make_client(), make_client(), make_client()
    h1, _, _ = start_volunteer(c1), start_volunteer(c2), start_volunteer(c3)
    t1 = c1.get(f"/api/projects/{p.slug}/next").json()
    assert _room(settings, tile) == (0, 1, True)
    assert c2.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == tile
    assert _room(settings, tile) == (0, 2, False)  # the claim that fills it
    assert c3.get(f"/api/projects/{p.slug}/next").json()["done"] is True
    r = c1.post(f"/api/projects/{p.slug}/labels", headers=h1, json={
        "task_id": t1["task_id"], "labels": [label_for(t1["tiles"][0])]})
    assert r.status_code == 200, r.text
    assert _room(settings, tile) == (1, 1, False)  # a label in place of its lease: still full
    # a bigger target gives the tile room again, and the next claim takes it
    token = create_token(settings, "researcher")
    r = c3.patch(f"/api/projects/{p.slug}", json={"redundancy": 3},
                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert _room(settings, tile) == (1, 1, True)
    assert c3.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == tile
    assert _room(settings, tile) == (1, 2, False)
    # expired leases given back make room (the reclaim a claim runs when it finds nothing)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    _sql(settings, "UPDATE leases SET expires_at = :e",
         {"e": ts_text(past) if settings.resolved_database_url.startswith("sqlite") else past})
    c4 = make_client()
    start_volunteer(c4)
    assert c4.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == tile
    assert _room(settings, tile) == (1, 1, True)
    # a smaller target takes the room away again
    r = c3.patch(f"/api/projects/{p.slug}", json={"redundancy": 2},
                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert _room(settings, tile) == (1, 1, False)
    assert_counters_consistent(settings)


def test_the_claim_reads_the_flag_and_the_counts_still_guard_the_target(
        make_client, settings: Settings) -> None:
    p = seed_project(settings, with_images=False, n_tiles=2, redundancy=1, gold_rate=0)
    a, b = p.tile_ids
    # a tile marked as having no room is not offered (the queue holds only tiles with room)
    _sql(settings, "UPDATE tiles SET has_room = false WHERE id = :t", {"t": b})
    drift = _recount(settings)
    assert [(d["tile_id"], d["has_room"], d["derived_room"]) for d in drift] == [(b, False, True)]
    c1, c2, c3 = make_client(), make_client(), make_client()
    for c in (c1, c2, c3):
        start_volunteer(c)
    assert c1.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == a
    assert c2.get(f"/api/projects/{p.slug}/next").json()["done"] is True
    # found and fixed by recount, the tile is offered again
    assert _recount(settings, fix=True) == drift
    assert _recount(settings) == []
    assert c2.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == b
    # a full tile wrongly marked as having room is still not handed out past its target
    _sql(settings, "UPDATE tiles SET has_room = true")
    assert c3.get(f"/api/projects/{p.slug}/next").json()["done"] is True
    assert [_room(settings, t) for t in (a, b)] == [(0, 1, True), (0, 1, True)]
    _recount(settings, fix=True)
    assert_counters_consistent(settings)


def test_the_claim_uses_the_room_index(backend: str, settings: Settings) -> None:
    """The claim's own query walks ``ix_tiles_room``, not ``ix_tiles_queue`` past the full
    tiles: SQLite because the query names it; PostgreSQL by its statistics, checked on a
    project shaped like a busy one (most tiles one label short, the top of the queue full)."""
    from labeler.assign import Assigner
    from labeler.projects import ProjectCache

    pg = backend != "sqlite"
    p = seed_project(settings, with_images=False, n_tiles=1500 if pg else 3, gold_rate=0)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        cfg = ProjectCache(engine).get(p.slug)
        if pg:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE tiles SET label_count = 4"))
                conn.execute(sa.text(
                    "UPDATE tiles SET lease_count = 1, has_room = false WHERE id > :t"),
                    {"t": p.tile_ids[-200]})
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE tiles")
        sql = Assigner._anchor_sql(cfg, None, lock=" FOR UPDATE OF t SKIP LOCKED" if pg else "",
                                   pg=pg)
        with engine.connect() as conn:
            plan = conn.execute(sa.text(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + sql),
                                {"p": cfg.id, "v": 1, "target": cfg.target}).all()
    finally:
        engine.dispose()
    assert any("ix_tiles_room" in str(r[-1]) for r in plan), plan


def test_the_migration_sets_has_room_from_the_counts(make_client, settings: Settings) -> None:
    from alembic import command

    p = seed_project(settings, with_images=False, n_tiles=2, redundancy=1, gold_rate=0)
    c = make_client()
    start_volunteer(c)
    task = c.get(f"/api/projects/{p.slug}/next").json()
    full = task["tiles"][0]["tile_id"]
    url = settings.resolved_database_url
    command.downgrade(alembic_config(url), "0300_volunteer_progress")
    assert upgrade(url) == head_revision()
    assert {t: _room(settings, t)[2] for t in p.tile_ids} == {
        t: t != full for t in p.tile_ids}
    assert_counters_consistent(settings)
