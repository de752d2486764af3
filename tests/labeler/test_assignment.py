"""Assignment rules: targets, leases, retirement, near=, priorities, blocks, context, gold."""

from __future__ import annotations

from datetime import timedelta

import mercantile
import pytest
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.assign import Assigner, gold_turn, recount
from labeler.db import make_engine
from labeler.models import utcnow
from labeler.projects import ProjectCache
from labeler.testing import create_token, label_for, seed_project, start_volunteer


def _label(client: TestClient, slug: str, h: dict, answer: str = "yes") -> dict:
    task = client.get(f"/api/projects/{slug}/next").json()
    assert task["task_id"], task
    r = client.post(f"/api/projects/{slug}/labels", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, answer) for t in task["tiles"]]})
    assert r.status_code == 200, r.text
    return {"task": task, "result": r.json()}


def _results(client: TestClient, settings: Settings, slug: str) -> dict[int, dict]:
    token = create_token(settings, "analyst")
    body = client.get(f"/api/projects/{slug}/results",
                      headers={"Authorization": f"Bearer {token}"}).json()
    return {r["tile_id"]: r for r in body["results"]}


def test_never_beyond_target_counting_leases(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1, redundancy=2, gold_rate=0)
    clients = [make_client() for _ in range(3)]
    heads = [start_volunteer(c) for c in clients]
    t1 = clients[0].get(f"/api/projects/{p.slug}/next").json()
    t2 = clients[1].get(f"/api/projects/{p.slug}/next").json()
    assert t1["tiles"][0]["tile_id"] == t2["tiles"][0]["tile_id"] == p.tile_ids[0]
    assert clients[2].get(f"/api/projects/{p.slug}/next").json()["done"] is True
    clients[0].post(f"/api/projects/{p.slug}/labels", headers=heads[0], json={
        "task_id": t1["task_id"], "labels": [label_for(t1["tiles"][0])]})
    # one label + one live lease = target: still nothing for the third volunteer
    assert clients[2].get(f"/api/projects/{p.slug}/next").json()["done"] is True


def test_retired_tiles_never_served(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, redundancy=1, gold_rate=0)
    a, b = make_client(), make_client()
    ha = start_volunteer(a)
    start_volunteer(b)
    _label(a, p.slug, ha)
    _label(a, p.slug, ha)
    assert b.get(f"/api/projects/{p.slug}/next").json()["done"] is True
    res = _results(a, settings, p.slug)
    assert {r["state"] for r in res.values()} == {"retired"}
    assert a.get(f"/api/projects/{p.slug}").json()["progress"]["tiles"] == 2


def test_expired_lease_returns_tile(settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1, redundancy=1, gold_rate=0)
    engine = make_engine(settings.resolved_database_url)
    try:
        from labeler.security import create_volunteer
        cfg = ProjectCache(engine).get(p.slug)
        v1, v2 = create_volunteer(engine, None), create_volunteer(engine, None)
        assigner = Assigner(engine, lease_seconds=600)
        now = utcnow()
        first = assigner.next_task(cfg, v1.id, now=now)
        assert first is not None and first.tiles[0].tile_id == p.tile_ids[0]
        assert assigner.next_task(cfg, v2.id, now=now + timedelta(seconds=599)) is None
        later = assigner.next_task(cfg, v2.id, now=now + timedelta(seconds=601))
        assert later is not None and later.tiles[0].tile_id == p.tile_ids[0]
        assert recount(engine) == []
    finally:
        engine.dispose()


def test_late_label_is_refused_when_its_place_was_taken(make_client, settings: Settings) -> None:
    short = settings.with_(lease_seconds=0)
    p = seed_project(short, n_tiles=1, redundancy=1, gold_rate=0)
    a, b = make_client(short), make_client(short)
    ha = start_volunteer(a)
    start_volunteer(b)
    ta = a.get(f"/api/projects/{p.slug}/next").json()
    tb = b.get(f"/api/projects/{p.slug}/next").json()  # a's lease expired and was reclaimed
    assert tb["tiles"][0]["tile_id"] == ta["tiles"][0]["tile_id"]
    r = a.post(f"/api/projects/{p.slug}/labels", headers=ha, json={
        "task_id": ta["task_id"], "labels": [label_for(ta["tiles"][0])]})
    # the tile's only place is now b's lease: a's late answer would push it over target
    assert r.status_code == 409 and r.json()["error"]["code"] == "lease_expired"
    assert r.json()["error"]["field"] == "labels.0.tile_id"
    engine = make_engine(short.resolved_database_url, pool_size=1)
    try:
        assert recount(engine) == []
    finally:
        engine.dispose()


def test_near_starts_at_the_place(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=20, grid_cols=5, gold_rate=0)
    start_volunteer(client)
    far = p.tiles[p.tile_ids[-1]]
    w, s, e, n = far["bounds"]
    task = client.get(f"/api/projects/{p.slug}/next", params={"near": f"{(w + e) / 2},{(s + n) / 2}"}).json()
    assert task["tiles"][0]["tile_id"] == p.tile_ids[-1]
    bad = client.get(f"/api/projects/{p.slug}/next", params={"near": "north-pole"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "near"


def test_completion_first_then_uncertain_first(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=3, redundancy=4, gold_rate=0)
    fresh, disagree, agree = p.tile_ids  # ties go to the highest id (index order)
    # Two volunteers: both say yes on `agree`, split on `disagree`.
    for answers in (("yes", "yes"), ("yes", "no")):
        c = make_client()
        h = start_volunteer(c)
        for tile, ans in zip((agree, disagree), answers):
            task = c.get(f"/api/projects/{p.slug}/next").json()
            assert task["tiles"][0]["tile_id"] == tile  # completion-first: ties by id, descending
            c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
                "task_id": task["task_id"], "labels": [label_for(task["tiles"][0], ans)]})
    # A third volunteer labels `agree`, so it is the closest to completion.
    c3 = make_client()
    h3 = start_volunteer(c3)
    t = c3.get(f"/api/projects/{p.slug}/next").json()
    assert t["tiles"][0]["tile_id"] == agree
    c3.post(f"/api/projects/{p.slug}/labels", headers=h3, json={
        "task_id": t["task_id"], "labels": [label_for(t["tiles"][0], "yes")]})
    c4 = make_client()
    start_volunteer(c4)
    assert c4.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == agree
    token = create_token(settings, "researcher")
    r = c4.patch(f"/api/projects/{p.slug}", json={"priority": "uncertain"},
                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["priority"] == "uncertain"
    c5 = make_client()
    start_volunteer(c5)
    assert c5.get(f"/api/projects/{p.slug}/next").json()["tiles"][0]["tile_id"] == disagree
    assert fresh  # the unlabelled tile comes last in both orders


def test_blocks_of_neighbouring_tiles(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=12, grid_cols=6, gold_rate=0, block={"cols": 3, "rows": 2})
    assert client.get(f"/api/projects/{p.slug}").json()["block"] == {"cols": 3, "rows": 2}
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    tiles = task["tiles"]
    assert len(tiles) == 6
    assert sorted((t["row"], t["col"]) for t in tiles) == [(r, c) for r in range(2) for c in range(3)]
    x0 = min(t["x"] for t in tiles)
    y0 = min(t["y"] for t in tiles)
    for t in tiles:
        assert (t["x"] - x0, t["y"] - y0) == (t["col"], t["row"])
    # One answer per tile, each its own label; partial submissions are fine.
    r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, "no") for t in tiles[:4]]})
    assert r.json()["stored"] == 4
    again = client.get(f"/api/projects/{p.slug}/next").json()
    assert again["task_id"] == task["task_id"]
    assert sorted(t["tile_id"] for t in again["tiles"]) == sorted(t["tile_id"] for t in tiles[4:])
    r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, "yes") for t in again["tiles"]]})
    assert r.json()["stored"] == 2
    second = client.get(f"/api/projects/{p.slug}/next").json()
    assert len(second["tiles"]) == 6
    assert not {t["tile_id"] for t in second["tiles"]} & {t["tile_id"] for t in tiles}


def test_context_neighbours(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=9, grid_cols=3, gold_rate=0, context=True)
    start_volunteer(client)
    centre = p.tile_ids[4]
    c = p.tiles[centre]
    lon, lat = (c["bounds"][0] + c["bounds"][2]) / 2, (c["bounds"][1] + c["bounds"][3]) / 2
    task = client.get(f"/api/projects/{p.slug}/next", params={"near": f"{lon},{lat}"}).json()
    t = task["tiles"][0]
    assert t["tile_id"] == centre
    ctx = task["context_urls"]
    assert sorted(ctx) == sorted(f"{dx},{dy}" for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                                 if (dx, dy) != (0, 0))
    assert ctx["1,-1"]["image"] == f"/tiles/{p.slug}/image/{t['z']}/{t['x'] + 1}/{t['y'] - 1}.jpg"
    assert client.get(ctx["1,-1"]["image"]).status_code == 200


@pytest.mark.parametrize("n,rate,expected", [
    (0, 0.0, False), (0, 1.0, True), (1, 0.25, True), (2, 0.25, False), (3, 0.25, True),
    (25, 0.25, False), (27, 0.25, True),
])
def test_gold_turn_schedule(n: int, rate: float, expected: bool) -> None:
    assert gold_turn(n, rate) is expected


def test_gold_interleaved_with_feedback_and_not_counted(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=6, gold=2, gold_rate=0.25, redundancy=1)
    h = start_volunteer(client)
    gold_seen, plain = [], []
    for i in range(8):
        task = client.get(f"/api/projects/{p.slug}/next").json()
        if task.get("done"):
            break
        assert "gold" not in str(task).lower()
        tile = task["tiles"][0]
        answer = "no" if tile["tile_id"] in p.gold_ids else "yes"
        r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(tile, answer)]}).json()
        if tile["tile_id"] in p.gold_ids:
            gold_seen.append(i)
            fb = r["feedback"][0]
            expected = p.gold_answers[tile["tile_id"]]
            assert fb == {"tile_id": tile["tile_id"], "correct": expected == "no",
                          "expected": expected, "explanation": f"This tile shows '{expected}'."}
        else:
            assert r["feedback"] == []
            plain.append(tile["tile_id"])
    # New volunteer, rate 0.25 doubled to 0.5: the 2nd and 4th tasks are gold.
    assert gold_seen == [1, 3]
    assert sorted(plain) == sorted(p.tile_ids)
    stats = client.get("/api/me/stats").json()
    assert stats["gold"] == {"seen": 2, "correct": 1}
    res = _results(client, settings, p.slug)
    assert set(res) == set(p.tile_ids)  # gold tiles are not in the results
    assert all(r["total"] == 1 for r in res.values())
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        assert recount(engine) == []
    finally:
        engine.dispose()


def test_adaptive_retirement(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0, redundancy=3,
                     retirement={"policy": "adaptive", "min_votes": 2, "max_votes": 4,
                                 "threshold": 0.95})
    agree, split = p.tile_ids
    votes = {agree: ["yes", "yes"], split: ["yes", "no", "maybe", "no"]}
    for i in range(4):
        c = make_client()
        h = start_volunteer(c)
        for _ in range(2):
            task = c.get(f"/api/projects/{p.slug}/next").json()
            if task.get("done"):
                break
            tid = task["tiles"][0]["tile_id"]
            c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
                "task_id": task["task_id"], "labels": [label_for(task["tiles"][0], votes[tid][i])]})
    res = _results(make_client(), settings, p.slug)
    assert res[agree]["state"] == "retired" and res[agree]["total"] == 2
    assert res[agree]["answer"] == "yes" and res[agree]["confidence"] >= 0.95
    assert res[split]["state"] == "unresolved" and res[split]["total"] == 4
    assert res[split]["agreement"] == pytest.approx((1 + 4 + 1 - 4) / 12)


def test_tile_math_matches_manifest(settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    t = p.tiles[p.tile_ids[0]]
    b = mercantile.bounds(t["x"], t["y"], t["z"])
    assert t["bounds"] == pytest.approx([b.west, b.south, b.east, b.north], abs=1e-7)
