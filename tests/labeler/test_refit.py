"""Skill refits in the live service (labeler.refit): per-volunteer skills fitted on a project's
answers re-decide its tiles, with conditional writes that never clobber a concurrent label."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from crowdsight.settings import Settings
from labeler import retire
from labeler.db import make_engine
from labeler.models import Label, Tile, Volunteer, utcnow
from labeler.refit import RefitReport, SkillRefresher, refit_project, start_refresher
from labeler.testing import label_for, seed_project, start_volunteer

GOOD = ("good1", "good2", "good3")
N_CAL = 24


def _volunteers(conn: sa.Connection, names: list[str]) -> dict[str, int]:
    v = Volunteer.__table__
    out = {}
    for n in names:
        out[n] = conn.execute(sa.insert(v).values(
            public_id=uuid.uuid4().hex, display_name=n, tutorials_passed=[],
            created_at=utcnow()).returning(v.c.id)).scalar_one()
    return out


def _put(conn: sa.Connection, project_id: int, tile_id: int, vols: dict[str, int],
         answers: list[tuple[str, str]], *, gold: str | None = None, cfg: dict | None = None,
         redundancy: int = 5) -> None:
    """Store ``answers`` [(volunteer, answer)] on a tile and leave the tile as the service's
    per-answer rule (labeler.labels -> retire.evaluate on counts) would."""
    lb, t = Label.__table__, Tile.__table__
    counts: dict[str, int] = {}
    state, ca, cf, ra = "live", None, None, None
    for who, a in answers:
        conn.execute(sa.insert(lb).values(
            project_id=project_id, tile_id=tile_id, volunteer_id=vols[who], answer=a,
            skipped=False, idempotency_key=uuid.uuid4().hex, is_gold=gold is not None,
            correct=(a == gold) if gold is not None else None, created_at=utcnow()))
        if gold is not None:
            continue
        counts[a] = counts.get(a, 0) + 1
        new, ca, cf = retire.evaluate(cfg or {}, redundancy, ["yes", "no", "maybe", "bad_imagery"],
                                      counts)
        if state == "live":
            state = new
            ra = utcnow() if new != "live" else None
    if gold is None:
        conn.execute(sa.update(t).where(t.c.id == tile_id).values(
            label_count=sum(counts.values()), answer_counts=counts, consensus_answer=ca,
            confidence=cf, state=state, retired_at=ra))


def _crowd(settings: Settings, retirement: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """Three reliable volunteers and two spammers (yes/no at random, whatever the tile shows)
    on 24 tiles and 4 gold tiles; then
    C = good2 "yes" + spam2 "no" (live: a tie under equal skills),
    T = good1 "yes" + spam1 "no" (live, likewise),
    R = spam1 "yes" + spam2 "yes" (retired: two agreeing answers under equal skills)."""
    p = seed_project(settings, n_tiles=N_CAL + 6, gold=4, gold_rate=0, redundancy=5,
                     retirement=retirement)
    ids = p.tile_ids
    tiles = {"C": ids[0], "T": ids[1], "R": ids[2]}
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            pid = conn.execute(sa.text("SELECT id FROM projects WHERE slug = :s"),
                               {"s": p.slug}).scalar_one()
            vols = _volunteers(conn, [*GOOD, "spam1", "spam2"])
            for i, tid in enumerate(ids[3:3 + N_CAL]):
                truth = "yes" if i % 2 == 0 else "no"
                s1 = "yes" if (i // 2) % 2 == 0 else "no"
                s2 = "yes" if (i // 4) % 2 == 0 else "no"
                _put(conn, pid, tid, vols, [(g, truth) for g in GOOD]
                     + [("spam1", s1), ("spam2", s2)], cfg=retirement)
            for i, (tid, ans) in enumerate(sorted(p.gold_answers.items())):
                _put(conn, pid, tid, vols, [(g, ans) for g in GOOD]
                     + [("spam1", "yes" if i % 2 else "no"), ("spam2", "yes")], gold=ans)
            _put(conn, pid, tiles["C"], vols, [("good2", "yes"), ("spam2", "no")], cfg=retirement)
            _put(conn, pid, tiles["T"], vols, [("good1", "yes"), ("spam1", "no")], cfg=retirement)
            _put(conn, pid, tiles["R"], vols, [("spam1", "yes"), ("spam2", "yes")], cfg=retirement)
    finally:
        engine.dispose()
    return p, tiles


def _tiles(settings: Settings, slug: str) -> dict[int, tuple]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT t.id, t.state, t.label_count, t.consensus_answer, t.confidence, "
                "t.retired_at FROM tiles t JOIN projects p ON p.id = t.project_id "
                "WHERE p.slug = :s ORDER BY t.id"), {"s": slug}).all()
    finally:
        engine.dispose()
    return {r.id: tuple(r) for r in rows}


@pytest.fixture
def engine(settings: Settings):
    e = make_engine(settings.resolved_database_url, pool_size=2)
    yield e
    e.dispose()


def test_refit_reopens_a_spammer_retired_tile_and_retires_a_supported_one(
        settings: Settings, engine) -> None:
    p, t = _crowd(settings, {"policy": "adaptive"})
    before = _tiles(settings, p.slug)
    assert before[t["R"]][1] == "retired" and before[t["R"]][3] == "yes"
    assert before[t["T"]][1] == before[t["C"]][1] == "live"
    stages: list[str] = []
    rep = refit_project(engine, p.slug, progress=lambda s, d, n: stages.append(s))
    after = _tiles(settings, p.slug)
    # the spammers' agreeing pair is no evidence once their skills are known: back in the queue
    r = after[t["R"]]
    assert r[1] == "live" and r[5] is None and r[4] < 0.94
    # one reliable "yes" against a spammer's "no" is enough under the fitted skills
    for key in ("T", "C"):
        row = after[t[key]]
        assert row[1] == "retired" and row[3] == "yes" and row[4] >= 0.94
        assert row[5] is not None and row[2] == 2
    # the calibration tiles (three reliable answers each) stay retired, untouched
    changed = {tid for tid in before if before[tid] != after[tid]}
    assert changed == {t["R"], t["T"], t["C"]}
    assert (rep.reopened, rep.retired, rep.skipped_concurrent) == (1, 2, 0)
    assert rep.labels_used == N_CAL * 5 + 4 * 5 + 6 and rep.volunteers == 5
    assert rep.project == p.slug and stages[:2] == ["read", "fit"] and "apply" in stages
    # a second refit on the same answers changes nothing
    again = refit_project(engine, p.slug)
    assert (again.reopened, again.retired, again.skipped_concurrent) == (0, 0, 0)
    assert _tiles(settings, p.slug) == after


def test_a_tile_labelled_during_the_refit_is_skipped_not_clobbered(
        settings: Settings, engine, make_client) -> None:
    p, t = _crowd(settings, {"policy": "adaptive"})
    c = make_client()
    h = start_volunteer(c)
    task = c.get(f"/api/projects/{p.slug}/next").json()
    # C and T are the live tiles closest to completion: the volunteer gets one of them
    (busy,) = [x["tile_id"] for x in task["tiles"]]
    other = t["T"] if busy == t["C"] else t["C"]
    assert {busy, other} == {t["C"], t["T"]}

    def concurrent_label(stage: str, done: int, total: int) -> None:
        # after the refit read the tiles, before it writes: the volunteer's label lands
        if stage == "apply" and done == 0:
            r = c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
                "task_id": task["task_id"], "labels": [label_for(task["tiles"][0], "no")]})
            assert r.status_code == 200, r.text

    rep = refit_project(engine, p.slug, progress=concurrent_label)
    after = _tiles(settings, p.slug)
    assert rep.skipped_concurrent == 1 and (rep.reopened, rep.retired) == (1, 1)
    # that tile is as the label left it (three answers, live under the per-answer rule)
    assert after[busy][1] == "live" and after[busy][2] == 3
    assert after[other][1] == "retired" and after[t["R"]][1] == "live"


def test_fixed_policy_project_is_untouched(settings: Settings, engine) -> None:
    p, t = _crowd(settings, {"policy": "fixed"})
    before = _tiles(settings, p.slug)
    rep = refit_project(engine, p.slug)
    assert (rep.labels_used, rep.reopened, rep.retired, rep.skipped_concurrent) == (0, 0, 0, 0)
    assert _tiles(settings, p.slug) == before


def test_too_few_answers_is_a_no_op(settings: Settings, engine) -> None:
    p, t = _crowd(settings, {"policy": "adaptive"})
    before = _tiles(settings, p.slug)
    rep = refit_project(engine, p.slug, min_labels=10_000)
    assert rep.labels_used == N_CAL * 5 + 4 * 5 + 6
    assert (rep.reopened, rep.retired) == (0, 0)
    assert _tiles(settings, p.slug) == before


class _Reports:
    """Collects a refresher thread's reports; ``first`` is set by the first one."""

    def __init__(self) -> None:
        self.got: list[RefitReport] = []
        self.first = threading.Event()

    def __call__(self, rep: RefitReport) -> None:
        self.got.append(rep)
        self.first.set()


def test_refresher_refits_when_answers_grew(settings: Settings, engine) -> None:
    p, t = _crowd(settings, {"policy": "adaptive"})
    fixed, _ = _crowd(settings, {"policy": "fixed"})
    refresher = SkillRefresher(every=100)
    reports = refresher.maybe_refresh(engine)
    assert [r.project for r in reports] == [p.slug]  # the fixed project is never refitted
    assert (reports[0].reopened, reports[0].retired) == (1, 2)
    assert refresher.maybe_refresh(engine) == []     # no growth since
    assert SkillRefresher(every=10_000).maybe_refresh(engine) == []

    # the lifespan's thread: a fresh refresher refits the project once, then stops when asked
    reports = _Reports()
    errors: list[BaseException] = []
    stop = start_refresher(engine, interval=0.01, every=100, on_report=reports,
                           on_error=errors.append)
    try:
        assert reports.first.wait(timeout=120)
    finally:
        stop()
    assert not errors and [r.project for r in reports.got] == [p.slug]
    assert not any(th.name == "skill-refit" and th.is_alive() for th in threading.enumerate())


def test_only_the_lock_holder_refits(settings: Settings, engine, tmp_path) -> None:
    # the app's workers each start a refresher; the flock lets exactly one of them do the work
    import fcntl
    import os

    p, _ = _crowd(settings, {"policy": "adaptive"})
    lock_path = tmp_path / "skill-refit.lock"
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT)  # another worker holds the lock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    reports = _Reports()
    stop = start_refresher(engine, interval=0.01, every=100, on_report=reports,
                           on_error=lambda exc: None, lock_path=lock_path)
    try:
        assert not reports.first.wait(timeout=1.0) and reports.got == []  # locked out
        os.close(other)                                    # that worker exits
        assert reports.first.wait(timeout=120)             # this one takes over
    finally:
        stop()
    assert [r.project for r in reports.got] == [p.slug]
    # released on stop: the lock can be taken again
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_cli_refit_skills(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdsight.cli import main

    p, t = _crowd(settings, {"policy": "adaptive"})
    monkeypatch.setenv("CROWDSIGHT_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CROWDSIGHT_DATA_DIR", str(settings.data_dir))
    out = CliRunner().invoke(main, ["project", "refit-skills", p.slug])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["project"] == p.slug and (body["reopened"], body["retired"]) == (1, 2)
    assert _tiles(settings, p.slug)[t["R"]][1] == "live"
    bad = CliRunner().invoke(main, ["project", "refit-skills", "no-such-project"])
    assert bad.exit_code != 0 and "no-such-project" in bad.output


def test_answers_the_project_no_longer_offers_are_left_out(settings: Settings, engine) -> None:
    # a project's answers can be edited after volunteers used the old ones
    p, t = _crowd(settings, {"policy": "adaptive"})
    with engine.begin() as conn:
        pid, tid = conn.execute(sa.text(
            "SELECT project_id, id FROM tiles WHERE id = :i"), {"i": t["T"]}).one()
        vols = _volunteers(conn, ["old"])
        conn.execute(sa.insert(Label.__table__).values(
            project_id=pid, tile_id=tid, volunteer_id=vols["old"], answer="smoke",
            skipped=False, idempotency_key=uuid.uuid4().hex, is_gold=False,
            created_at=utcnow()))
        conn.execute(sa.text("UPDATE tiles SET label_count = label_count + 1 WHERE id = :i"),
                     {"i": tid})
    rep = refit_project(engine, p.slug)
    assert rep.labels_used == N_CAL * 5 + 4 * 5 + 6
    assert (rep.reopened, rep.retired, rep.skipped_concurrent) == (1, 2, 0)


def test_the_app_lifespan_runs_the_refresher(settings: Settings,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the served app refits due adaptive projects by itself (CROWDSIGHT_SKILL_REFIT_INTERVAL)
    # and does not when the setting is 0
    import dataclasses
    import time

    from starlette.testclient import TestClient

    import labeler.refit
    from labeler.app import create_app

    monkeypatch.setattr(labeler.refit, "REFIT_EVERY", 100)
    p, t = _crowd(settings, {"policy": "adaptive"})
    off = dataclasses.replace(settings, skill_refit_interval=0.0)
    with TestClient(create_app(off)):
        time.sleep(0.5)
    assert _tiles(settings, p.slug)[t["R"]][1] == "retired"      # untouched with 0
    on = dataclasses.replace(settings, skill_refit_interval=0.05)
    with TestClient(create_app(on)):
        deadline = time.monotonic() + 120
        while _tiles(settings, p.slug)[t["R"]][1] != "live" and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _tiles(settings, p.slug)[t["R"]][1] == "live"         # the refit reopened it
    assert not any(th.name == "skill-refit" and th.is_alive() for th in threading.enumerate())
