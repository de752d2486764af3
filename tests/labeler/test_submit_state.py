"""``labels?next=1``: on PostgreSQL the statement that stores the labels also reads the
volunteer's state for the next task (``labeler.assign.StateRead``). That read sees the
database as it was before the statement's own writes, so it must leave out by hand what the
statement deletes and count what it inserts. These tests pin the answers on both backends:
SQLite reads the state after the writes, with a statement of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crowdsight.settings import Settings
from labeler.db import make_engine
from labeler.sql import ts_text
from labeler.testing import assert_counters_consistent, label_for, seed_project, start_volunteer


def _post(c: Any, slug: str, h: dict[str, str], task: dict[str, Any], query: str,
          tiles: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    return c.post(f"/api/projects/{slug}/labels{query}", headers=h, json={
        "task_id": task["task_id"],
        "labels": [label_for(t, **extra) for t in (tiles or task["tiles"])]})


@contextmanager
def _db(settings: Settings) -> Iterator[sa.Connection]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _set_expiry(settings: Settings, when: datetime) -> None:
    with _db(settings) as conn:
        conn.execute(sa.text("UPDATE leases SET expires_at = :e"),
                     {"e": ts_text(when) if conn.dialect.name == "sqlite" else when})


def _expiry(settings: Settings, task_id: str) -> datetime:
    with _db(settings) as conn:
        v = conn.execute(sa.text("SELECT min(expires_at) FROM leases WHERE task_id = :t"),
                         {"t": task_id[:16]}).scalar_one()
    v = datetime.fromisoformat(str(v)) if not isinstance(v, datetime) else v
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _volunteer(make_client: Any, settings: Settings, query: str = "?ahead=1",
               **fields: Any) -> tuple[str, Any, dict[str, str], dict[str, Any]]:
    """A live project and a volunteer holding its first task(s): ``(slug, client, headers,
    task)``."""
    p = seed_project(settings, with_images=False, gold_rate=0, **{"n_tiles": 6, **fields})
    c = make_client()
    h = start_volunteer(c)
    return p.slug, c, h, c.get(f"/api/projects/{p.slug}/next{query}").json()


def test_the_answer_counts_the_label_just_stored(make_client, settings: Settings) -> None:
    slug, c, h, task = _volunteer(make_client, settings, n_tiles=8)
    for n in range(1, 4):
        r = _post(c, slug, h, task, "?next=1&ahead=1")
        assert r.status_code == 200 and r.json()["stored"] == 1, r.text
        nxt = r.json()["next"]
        assert nxt["task_id"] == task["ahead"]["task_id"]  # the held task, then a new one
        assert nxt["ahead"]["task_id"] not in (task["task_id"], nxt["task_id"])
        assert nxt["progress"]["labelled_by_you"] == n
        assert nxt["ahead"]["progress"]["labelled_by_you"] == n
        task = nxt
    assert_counters_consistent(settings)


def test_a_held_task_near_expiry_is_renewed_by_the_answer(make_client, settings: Settings) -> None:
    slug, c, h, task = _volunteer(make_client, settings)
    half = datetime.now(UTC) + timedelta(seconds=settings.lease_seconds / 2)
    _set_expiry(settings, half)
    r = _post(c, slug, h, task, "?next=1&ahead=1")
    assert r.status_code == 200, r.text
    nxt = r.json()["next"]
    assert nxt["task_id"] == task["ahead"]["task_id"]
    stored = _expiry(settings, nxt["task_id"])
    assert stored > half + timedelta(seconds=settings.lease_seconds * 0.4)  # renewed
    reported = datetime.fromisoformat(nxt["lease_expires_at"].replace("Z", "+00:00"))
    assert abs((reported - stored).total_seconds()) < 0.001
    assert_counters_consistent(settings)


def test_part_of_a_block_answered_keeps_the_rest_of_the_task(make_client,
                                                            settings: Settings) -> None:
    slug, c, h, task = _volunteer(make_client, settings, "", n_tiles=16, grid_cols=4,
                                  block={"cols": 2, "rows": 1})
    assert len(task["tiles"]) == 2
    r = _post(c, slug, h, task, "?next=1", tiles=task["tiles"][:1])
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    nxt = r.json()["next"]
    assert nxt["task_id"] == task["task_id"]
    assert [t["tile_id"] for t in nxt["tiles"]] == [task["tiles"][1]["tile_id"]]
    assert nxt["progress"]["labelled_by_you"] == 1
    assert_counters_consistent(settings)


def test_a_late_label_does_not_count_its_expired_lease(make_client, settings: Settings) -> None:
    """The expired lease the label consumes is deleted by the same statement: the state must
    not count it as one to reclaim, nor hand its task out again."""
    slug, c, h, task = _volunteer(make_client, settings, "")
    _set_expiry(settings, datetime.now(UTC) - timedelta(seconds=5))
    r = _post(c, slug, h, task, "?next=1&ahead=1")
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    nxt = r.json()["next"]
    done = task["tiles"][0]["tile_id"]
    held = [nxt["tiles"][0]["tile_id"], nxt["ahead"]["tiles"][0]["tile_id"]]
    assert done not in held and len(set(held)) == 2
    assert task["task_id"] not in (nxt["task_id"], nxt["ahead"]["task_id"])
    assert_counters_consistent(settings)


def test_a_repeated_answer_still_brings_the_next_task(make_client, settings: Settings) -> None:
    """Nothing is stored the second time (so no statement reads the state with it)."""
    slug, c, h, task = _volunteer(make_client, settings)
    body = {"task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]}
    first = c.post(f"/api/projects/{slug}/labels?next=1&ahead=1", headers=h, json=body)
    again = c.post(f"/api/projects/{slug}/labels?next=1&ahead=1", headers=h, json=body)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["stored"] == 0 and again.json()["duplicates"] == 1
    a, b = first.json()["next"], again.json()["next"]
    assert (a["task_id"], a["ahead"]["task_id"]) == (b["task_id"], b["ahead"]["task_id"])
    assert b["progress"]["labelled_by_you"] == 1
    assert_counters_consistent(settings)


def _handed_out(c: Any, slug: str, h: dict[str, str], answers: int) -> list[dict[str, Any]]:
    """The tasks a volunteer is handed, in order: /next?ahead=1 once, then the task ahead of
    each answer (labels?next=1&ahead=1)."""
    first = c.get(f"/api/projects/{slug}/next?ahead=1").json()
    out, task = [first, first["ahead"]], first
    for _ in range(answers):
        r = _post(c, slug, h, task, "?next=1&ahead=1")
        assert r.status_code == 200 and r.json()["stored"] == 1, r.text
        task = r.json()["next"]
        if not task.get("ahead"):
            break
        out.append(task["ahead"])
    return out


def test_the_answer_claims_the_next_task_in_its_own_statement(
        make_client, settings: Settings, backend: str, monkeypatch: Any) -> None:
    """PostgreSQL: the statement that stores an answer also claims the task it brings (no
    claim statement of its own); the tasks are those the separate claim would give: new
    tiles, closest to completion first."""
    from labeler import assign

    claims: list[int] = []
    real = assign.Assigner._claim_pg
    monkeypatch.setattr(assign.Assigner, "_claim_pg",
                        lambda self, *a, **kw: claims.append(1) or real(self, *a, **kw))
    monkeypatch.setattr(assign, "RECLAIM_EVERY_S", 1e9)  # (the periodic reclaim: not due)
    p = seed_project(settings, with_images=False, gold_rate=0, n_tiles=8, redundancy=2)
    other, c = make_client(), make_client()
    h2 = start_volunteer(other)
    t = other.get(f"/api/projects/{p.slug}/next").json()  # a tile one label from done
    assert _post(other, p.slug, h2, t, "").status_code == 200
    h = start_volunteer(c)
    before = len(claims)
    handed = _handed_out(c, p.slug, h, 5)
    tiles = [x["tiles"][0]["tile_id"] for x in handed]
    assert len(tiles) == len(set(tiles)) == 7
    assert tiles[0] == t["tiles"][0]["tile_id"]  # closest to completion first
    if backend == "postgresql":
        assert len(claims) - before == 2  # the two of /next?ahead=1 only
    assert_counters_consistent(settings)


def test_gold_turns_come_at_their_place_when_the_answer_claims(make_client,
                                                             settings: Settings) -> None:
    """The claim made with an answer leaves gold turns to the gold claim: a new volunteer
    with gold rate 0.25 (doubled) gets gold as every 2nd task handed out."""
    p = seed_project(settings, with_images=False, gold_rate=0.25, n_tiles=8, gold=4,
                     redundancy=1)
    c = make_client()
    h = start_volunteer(c)
    handed = _handed_out(c, p.slug, h, 6)
    gold = [i for i, x in enumerate(handed) if x["tiles"][0]["tile_id"] in p.gold_ids]
    assert len(handed) == 8
    assert gold == [1, 3, 5, 7]
    assert_counters_consistent(settings)
