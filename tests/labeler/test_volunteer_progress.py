"""The volunteers' label counters (``volunteer_progress``): kept by the statements that store
labels, read by the assigner for every task (gold interleaving, ``labelled_by_you``) instead
of counting the volunteer's labels each time. Both backends."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command

from crowdsight.settings import Settings
from labeler.assign import recount_volunteers
from labeler.db import make_engine
from labeler.migrate import alembic_config, head_revision, upgrade
from labeler.testing import assert_counters_consistent, label_for, seed_project, start_volunteer


def _counters(settings: Settings) -> dict[tuple[int, int], int]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT volunteer_id, project_id, labels FROM volunteer_progress")).all()
    finally:
        engine.dispose()
    return {(r.volunteer_id, r.project_id): r.labels for r in rows}


def _answer(c: Any, slug: str, h: dict[str, str], task: dict[str, Any], query: str = "",
            **extra: Any) -> Any:
    r = c.post(f"/api/projects/{slug}/labels{query}", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, **extra) for t in task["tiles"]]})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_counter_follows_every_way_labels_are_stored(make_client, settings: Settings) -> None:
    a = seed_project(settings, with_images=False, gold_rate=0, n_tiles=4, grid_cols=2,
                     block={"cols": 2, "rows": 1})
    b = seed_project(settings, with_images=False, gold_rate=0, n_tiles=3)
    c = make_client()
    h = start_volunteer(c)
    # project a: a block of two tiles (two labels in one statement), answered without next
    task = c.get(f"/api/projects/{a.slug}/next").json()
    assert len(task["tiles"]) == 2
    assert _answer(c, a.slug, h, task)["stored"] == 2
    # project b: answers with the next task in the same request, one of them a skip
    task = c.get(f"/api/projects/{b.slug}/next?ahead=1").json()
    body = _answer(c, b.slug, h, task, "?next=1&ahead=1")
    assert body["next"]["progress"]["labelled_by_you"] == 1
    task = body["next"]
    body = _answer(c, b.slug, h, task, "?next=1&ahead=1", answer=None, skipped=True)
    assert body["stored"] == 1 and body["next"]["progress"]["labelled_by_you"] == 2
    # the same answer again: nothing stored, nothing counted
    again = c.post(f"/api/projects/{b.slug}/labels?next=1", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]})
    assert again.status_code == 200 and again.json()["stored"] == 0, again.text
    assert again.json()["next"]["progress"]["labelled_by_you"] == 2
    task = again.json()["next"]
    body = _answer(c, b.slug, h, task, "?next=1")
    # b's three tiles are done for this volunteer: the count comes from the counter alone
    assert body["next"]["done"] is True and body["next"]["progress"]["labelled_by_you"] == 3
    done = c.get(f"/api/projects/{b.slug}/next").json()
    assert done["done"] is True and done["progress"]["labelled_by_you"] == 3
    counters = _counters(settings)
    assert sorted(counters.values()) == [2, 3] and len({v for v, _ in counters}) == 1
    assert_counters_consistent(settings)


def test_recount_finds_and_fixes_a_counter_that_drifted(make_client, settings: Settings) -> None:
    p = seed_project(settings, with_images=False, gold_rate=0, n_tiles=4)
    c = make_client()
    h = start_volunteer(c)
    task = c.get(f"/api/projects/{p.slug}/next").json()
    _answer(c, p.slug, h, task)
    (vid, pid), = _counters(settings)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        assert recount_volunteers(engine) == []
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE volunteer_progress SET labels = 7"))
        drift = [{"volunteer_id": vid, "project_id": pid, "labels": 7, "derived_labels": 1}]
        assert recount_volunteers(engine, pid) == drift
        assert recount_volunteers(engine, pid, fix=True) == drift
        assert recount_volunteers(engine) == []
        with engine.begin() as conn:  # a lost row is found too (and made again)
            conn.execute(sa.text("DELETE FROM volunteer_progress"))
        assert recount_volunteers(engine, fix=True) == [dict(drift[0], labels=0)]
        assert _counters(settings) == {(vid, pid): 1}
    finally:
        engine.dispose()


def test_the_migration_counts_the_labels_stored_before_it(make_client, settings: Settings) -> None:
    p = seed_project(settings, with_images=False, gold_rate=0, n_tiles=4)
    for _ in range(2):
        c = make_client()
        h = start_volunteer(c)
        task = c.get(f"/api/projects/{p.slug}/next?ahead=1").json()
        body = _answer(c, p.slug, h, task, "?next=1&ahead=1")
        _answer(c, p.slug, h, body["next"])
    before = _counters(settings)
    assert sorted(before.values()) == [2, 2]
    url = settings.resolved_database_url
    command.downgrade(alembic_config(url), "0200_gold_index")
    engine = make_engine(url, pool_size=1)
    try:
        assert "volunteer_progress" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert upgrade(url) == head_revision()
    assert _counters(settings) == before
