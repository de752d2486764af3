"""Set-based submissions of a group-committed batch (labeler.batchsubmit; PostgreSQL).

Each test queues several volunteers' ``POST /labels?next=1`` work in the same event-loop
iteration, so they run as ONE batch, exactly as the service's handler builds them
(:func:`labeler.api.submission_work`), and checks what the volunteers get back and what the
database holds against what storing them one at a time guarantees."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler import batch as batch_mod
from labeler import batchsubmit
from labeler.api import submission_work
from labeler.app import build_state, create_app
from labeler.assign import split_task_id
from labeler.db import make_engine
from labeler.errors import ValidationError
from labeler.labels import parse_submission
from labeler.projects import config_from_row, get_row
from labeler.testing import (assert_counters_consistent, label_for, postgres_available,
                             run_async, seed_project, start_volunteer)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres, id="postgresql")])
def backend(request: pytest.FixtureRequest) -> str:
    """PostgreSQL only: set-based batch submissions are PostgreSQL's (SQLite serialises its
    writers, and each submission runs its own statements)."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (or CROWDSIGHT_TEST_POSTGRES=0)")
    return request.param


@pytest.fixture
def pg(settings: Settings) -> Settings:
    assert settings.resolved_database_url.startswith("postgresql")
    return settings


class World:
    """A seeded project, volunteers holding tasks (``GET /next?ahead=1``, through the app)
    and a labeler state whose committer the tests queue work on."""

    def __init__(self, settings: Settings, **seed: Any) -> None:
        self.settings = settings
        self.p = seed_project(settings, with_images=False, **seed)
        self.engine = make_engine(settings.resolved_database_url, pool_size=3)
        self.st = build_state(settings, self.engine)
        self.handled: list[int] = []
        self.statements: list[str] = []
        real = self.st.committer._fast

        def spy(conn: sa.Connection, items: list[Any]) -> dict[int, Any]:
            got = real(conn, items)  # type: ignore[misc]
            self.handled.append(len(got))
            return got

        self.st.committer._fast = spy

    def project(self) -> Any:
        with self.engine.connect() as conn:
            return config_from_row(get_row(conn, self.p.slug))

    def volunteers(self, n: int, ahead: bool = True) -> list[tuple[int, dict[str, Any]]]:
        """``n`` new volunteers and the first task each got (with ``ahead`` held too)."""
        out = []
        with TestClient(create_app(self.settings)) as c:
            for _ in range(n):
                c.cookies.clear()
                start_volunteer(c)
                task = c.get(f"/api/projects/{self.p.slug}/next"
                             + ("?ahead=1" if ahead else "")).json()
                out.append((self.vid(task["task_id"]), task))
        return out

    def vid(self, task_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT volunteer_id FROM leases WHERE task_id = :t"),
                                {"t": split_task_id(task_id)}).scalars().first()

    def batch(self, subs: list[tuple[int, str, list[dict[str, Any]]]], *,
              ahead: bool = True) -> list[Any]:
        """Run the submissions ``(volunteer, task id, labels)`` as one batch; each one's
        ``(SubmitResult, next parts)`` or exception."""
        project = self.project()
        work = []
        for vid, task_id, labels in subs:
            _, parsed = parse_submission(project, {"task_id": task_id, "labels": labels}, 10)
            store, fast = submission_work(self.st, project, vid, task_id, parsed,
                                          want_next=True, ahead=ahead, near=None)
            work.append((store, fast, [(lb.tile_id, vid) for lb in parsed]))

        async def together() -> list[Any]:
            futs = [asyncio.ensure_future(self.st.committer.run(s, locks=k, fast=f))
                    for s, f, k in work]
            return await asyncio.gather(*futs, return_exceptions=True)

        # the periodic reclaim of expired leases just ran (as it does once a second under
        # load): when it is due, a submission's next task is claimed by next_tasks after it
        self.st.assigner._last_reclaim[project.id] = time.monotonic()
        real = batchsubmit.run

        def spy(conn: sa.Connection, sql: str, params: Any = None) -> Any:
            self.statements.append(sql)
            return real(conn, sql, params)

        batchsubmit.run = spy  # type: ignore[assignment]
        try:
            return run_async(together)
        finally:
            batchsubmit.run = real  # type: ignore[assignment]

    def claimed_together(self) -> bool:
        """Whether a batch ran the set-based claim."""
        return batchsubmit._CLAIM_SQL in self.statements

    def close(self) -> None:
        self.st.committer.close()
        self.engine.dispose()

    def check(self) -> None:
        """The invariants: counters as a recount finds them, no tile past its target, no
        tile labelled or held twice by one volunteer, nobody holding a tile they labelled."""
        assert_counters_consistent(self.settings)
        with self.engine.connect() as conn:
            target = self.project().target
            assert conn.execute(sa.text(
                "SELECT count(*) FROM tiles WHERE label_count + lease_count > :t"),
                {"t": target}).scalar() == 0
            assert conn.execute(sa.text(
                "SELECT count(*) FROM leases s JOIN labels l ON l.tile_id = s.tile_id "
                "AND l.volunteer_id = s.volunteer_id")).scalar() == 0


@pytest.fixture
def world(pg: Settings, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # the set-based path from two submissions on (the service waits for FAST_MIN: below it,
    # one statement per submission costs the database less; the results are the same)
    monkeypatch.setattr(batch_mod, "FAST_MIN", 2)
    made: list[World] = []

    def make(**seed: Any) -> World:
        w = World(pg, **seed)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _answer(task: dict[str, Any], answer: str = "yes") -> list[dict[str, Any]]:
    return [label_for(task["tiles"][0], answer=answer)]


def test_a_batch_of_answers_is_stored_together_and_each_gets_its_next_task(world: Any) -> None:
    w = world(n_tiles=12, redundancy=3, gold_rate=0)
    vols = w.volunteers(6)
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
    assert w.handled == [6]  # all six by the set-based statements
    for (_vid, task), (result, parts) in zip(vols, got):
        assert result.stored == 1 and result.duplicates == 0
        tasks, _ = parts
        # the task held ahead comes first, then one newly claimed
        assert [t.tiles[0].tile_id for t in tasks[:1]] == [task["ahead"]["tiles"][0]["tile_id"]]
        assert len(tasks) == 2
        new = tasks[1].tiles[0].tile_id
        assert new not in (task["tiles"][0]["tile_id"], task["ahead"]["tiles"][0]["tile_id"])
    with w.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar() == 6
        held = dict(conn.execute(sa.text(
            "SELECT volunteer_id, count(*) FROM leases GROUP BY volunteer_id")).all())
    assert held == {vid: 2 for vid, _ in vols}
    assert w.claimed_together()
    w.check()


def test_claims_take_the_head_of_the_queue_and_respect_room(world: Any) -> None:
    """Few tiles, target 2: the batch's claims compete for the room left; nobody gets a
    tile past its target or one it labelled, and who finds no room here gets its claim from
    ``next_tasks`` (or nothing when every tile is taken)."""
    w = world(n_tiles=4, redundancy=2, gold_rate=0)
    vols = w.volunteers(4)  # 8 leases on 4 tiles of target 2: all full
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
    assert w.handled == [4]
    claimed = []
    for (_vid, task), (result, parts) in zip(vols, got):
        assert result.stored == 1
        tasks, _ = parts
        assert tasks[0].tiles[0].tile_id == task["ahead"]["tiles"][0]["tile_id"]
        claimed += [t.tiles[0].tile_id for t in tasks[1:]]
    # every tile is full (2 labels or leases) before and after: no room, no new claim
    assert claimed == []
    w.check()


def test_claims_prefer_tiles_closest_to_completion_and_share_their_room(world: Any) -> None:
    """Target 3: A, B and C hold the same tile, D the next one. Once the four answers are in,
    D's tile (1 label) is the head of the queue for A, B and C, with room for two of them;
    the third and D take fresh tiles."""
    w = world(n_tiles=10, redundancy=3, gold_rate=0)
    vols = w.volunteers(4, ahead=False)
    first = [t["tiles"][0]["tile_id"] for _, t in vols]
    assert first[0] == first[1] == first[2] != first[3]  # (the queue: most labels, then id)
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols], ahead=False)
    assert w.handled == [4]
    new = [parts[0][0].tiles[0].tile_id for _, parts in got]
    assert w.claimed_together()
    assert sorted(new[:3]).count(first[3]) == 2
    assert new[3] != first[3] and first[0] not in new
    w.check()


def test_two_answers_for_one_tile_count_both(world: Any) -> None:
    w = world(n_tiles=1, redundancy=3, gold_rate=0)
    vols = w.volunteers(2, ahead=False)
    got = w.batch([(vid, t["task_id"], _answer(t, a)) for (vid, t), a in zip(vols, ("yes", "no"))],
                  ahead=False)
    assert w.handled == [2]
    assert [r.stored for r, _ in got] == [1, 1]
    with w.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT label_count, lease_count, answer_counts, has_room "
                                   "FROM tiles")).one()
    counts = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    assert (row[0], row[1], counts, row[3]) == (2, 0, {"yes": 1, "no": 1}, True)
    w.check()


def test_a_bad_answer_fails_alone_and_the_others_are_stored(world: Any) -> None:
    """A point outside its tile is found by the set-based path's check: the batch runs again
    one request at a time, where only that request fails."""
    w = world(type="mark", n_tiles=8, redundancy=3, gold_rate=0)
    vols = w.volunteers(4)
    subs = []
    for i, (vid, t) in enumerate(vols):
        w_, s_, e_, n_ = t["tiles"][0]["bounds"]
        point = [e_ + 1.0, n_] if i == 2 else [(w_ + e_) / 2, (s_ + n_) / 2]
        subs.append((vid, t["task_id"], [label_for(t["tiles"][0], answer="marked",
                                                   points=[point])]))
    got = w.batch(subs)
    assert w.handled == []  # the set-based attempt was rolled back
    assert isinstance(got[2], ValidationError) and "outside tile" in str(got[2])
    assert [g[0].stored for i, g in enumerate(got) if i != 2] == [1, 1, 1]
    with w.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar() == 3
    w.check()


def test_a_reused_key_is_refused_for_that_volunteer_only(world: Any) -> None:
    """A key this volunteer used before for another tile: the database refuses the set-based
    insert, and the batch one request at a time gives that volunteer the error."""
    w = world(n_tiles=10, redundancy=3, gold_rate=0)
    vols = w.volunteers(3)
    vid0, t0 = vols[0]
    key = uuid.uuid4().hex
    first = w.batch([(vid0, t0["task_id"], [dict(label_for(t0["tiles"][0]),
                                                 idempotency_key=key)])])
    assert first[0][0].stored == 1
    ahead0 = t0["ahead"]
    subs = [(vid0, ahead0["task_id"], [dict(label_for(ahead0["tiles"][0]), idempotency_key=key)])]
    subs += [(vid, t["task_id"], _answer(t)) for vid, t in vols[1:]]
    got = w.batch(subs)
    assert isinstance(got[0], ValidationError) and "already used" in str(got[0])
    assert [g[0].stored for g in got[1:]] == [1, 1]
    w.check()


def test_a_retried_answer_is_a_duplicate_and_the_others_are_stored_together(world: Any) -> None:
    """The retry of an answer already stored (its lease is gone) is not a plain submission:
    it runs its own statements after the set-based ones, as a duplicate."""
    w = world(n_tiles=10, redundancy=3, gold_rate=0)
    vols = w.volunteers(3)
    vid0, t0 = vols[0]
    labels0 = _answer(t0)
    assert w.batch([(vid0, t0["task_id"], labels0)])[0][0].stored == 1
    got = w.batch([(vid0, t0["task_id"], labels0)]
                  + [(vid, t["task_id"], _answer(t)) for vid, t in vols[1:]])
    assert w.handled == [2]
    assert (got[0][0].stored, got[0][0].duplicates) == (0, 1)
    assert [g[0].stored for g in got[1:]] == [1, 1]
    w.check()


def test_gold_turns_are_left_to_next_tasks(world: Any) -> None:
    """A volunteer whose next task is a gold turn gets no claim from the set-based path:
    ``next_tasks`` leases the gold tile, as for a submission on its own."""
    w = world(n_tiles=10, gold=4, redundancy=3, gold_rate=1.0)
    vols = w.volunteers(3, ahead=False)
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols], ahead=False)
    assert w.handled == [3]
    for (_vid, _task), (result, parts) in zip(vols, got):
        assert result.stored == 1
        tasks, _ = parts
        assert len(tasks) == 1 and tasks[0].is_gold
    assert not w.claimed_together()
    w.check()


def test_a_failure_after_the_set_based_statements_stores_nothing_of_them(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error once the set-based statements ran rolls them back with the transaction; the
    batch then stores every answer one request at a time."""
    w = world(n_tiles=10, redundancy=3, gold_rate=0)
    vols = w.volunteers(3)
    real = batchsubmit._claim

    def failing(*a: Any, **k: Any) -> None:
        real(*a, **k)
        raise RuntimeError("after the claims")

    monkeypatch.setattr(batchsubmit, "_claim", failing)
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
    assert w.handled == []
    assert [g[0].stored for g in got] == [1, 1, 1]
    for (_vid, _task), (_, parts) in zip(vols, got):
        assert len(parts[0]) == 2
    with w.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar() == 3
        assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar() == 6
    w.check()


def test_a_held_task_near_expiry_is_renewed_by_the_batch(world: Any) -> None:
    w = world(n_tiles=12, redundancy=3, gold_rate=0)
    vols = w.volunteers(3)
    with w.engine.begin() as conn:
        conn.execute(sa.text("UPDATE leases SET expires_at = now() + interval '20 seconds'"))
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
    assert w.handled == [3]
    lease = w.settings.lease_seconds
    for _, (_, parts) in zip(vols, got):
        held = parts[0][0]  # the task held ahead, renewed to a whole lease
        left = (held.expires_at - datetime.now(UTC)).total_seconds()
        assert lease - 60 < left <= lease
    with w.engine.connect() as conn:
        shortest = conn.execute(sa.text(
            "SELECT min(expires_at - now()) FROM leases")).scalar().total_seconds()
    assert shortest > lease - 60
    w.check()


def test_an_expired_lease_is_reclaimed_before_the_next_claim(world: Any) -> None:
    """A volunteer whose task held ahead expired gets no claim from the set-based path:
    ``next_tasks`` releases the expired lease first, then claims (its counts stay right)."""
    w = world(n_tiles=12, redundancy=3, gold_rate=0)
    vols = w.volunteers(3)
    _, t0 = vols[0]
    with w.engine.begin() as conn:
        conn.execute(sa.text("UPDATE leases SET expires_at = now() - interval '1 second' "
                             "WHERE task_id = :t"), {"t": split_task_id(t0["ahead"]["task_id"])})
    got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
    assert w.handled == [3]
    tasks0 = got[0][1][0]
    assert len(tasks0) == 2
    assert t0["ahead"]["task_id"] not in [t.task_id for t in tasks0]
    with w.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM leases WHERE expires_at < now()")
                            ).scalar() == 0
    w.check()


def test_small_batches_run_one_submission_at_a_time(pg: Settings) -> None:
    """Below ``FAST_MIN`` plain submissions, each runs its own single statement."""
    w = World(pg, n_tiles=12, redundancy=3, gold_rate=0)
    try:
        vols = w.volunteers(batch_mod.FAST_MIN - 1)
        got = w.batch([(vid, t["task_id"], _answer(t)) for vid, t in vols])
        assert w.handled == [] and not w.statements
        assert [g[0].stored for g in got] == [1] * len(vols)
        assert all(len(g[1][0]) == 2 for g in got)
        more = w.volunteers(batch_mod.FAST_MIN)
        w.batch([(vid, t["task_id"], _answer(t)) for vid, t in more])
        assert w.handled == [batch_mod.FAST_MIN]
        w.check()
    finally:
        w.close()


def test_gold_answers_and_skips_in_a_batch(world: Any) -> None:
    """Gold answers give their feedback and leave the gold tiles' counts alone; a skip
    releases its lease without counting; both stored together with the plain answers."""
    w = world(n_tiles=10, gold=6, redundancy=3, gold_rate=1.0)
    vols = w.volunteers(4, ahead=False)  # a new volunteer's first task is a gold turn
    assert all(t["tiles"][0]["tile_id"] in w.p.gold_ids for _, t in vols)
    subs = []
    for i, (vid, t) in enumerate(vols):
        tile = t["tiles"][0]
        if i == 3:
            labels = [{"tile_id": tile["tile_id"], "skipped": True,
                       "idempotency_key": uuid.uuid4().hex}]
        else:
            right = w.p.gold_answers[tile["tile_id"]]
            labels = [label_for(tile, answer=right if i < 2 else ("no" if right == "yes"
                                                                   else "yes"))]
        subs.append((vid, t["task_id"], labels))
    got = w.batch(subs, ahead=False)
    assert w.handled == [4]
    assert [[f["correct"] for f in r.feedback] for r, _ in got] == [[True], [True], [False], []]
    assert [r.stored for r, _ in got] == [1, 1, 1, 1]
    with w.engine.connect() as conn:
        counted = conn.execute(sa.text(
            "SELECT count(*) FROM tiles WHERE gold_answer IS NOT NULL AND "
            "(label_count > 0 OR lease_count > 0)")).scalar()
        rows = conn.execute(sa.text(
            "SELECT is_gold, correct, skipped FROM labels ORDER BY id")).all()
    assert counted == 0
    assert sorted(map(str, rows)) == sorted(map(str, [
        (True, True, False), (True, True, False), (True, False, False), (True, None, True)]))
    w.check()
