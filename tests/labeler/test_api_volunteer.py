"""The volunteer half of docs/api.md, through the ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.db import make_engine
from labeler.testing import assert_counters_consistent, create_token, label_for, seed_project, start_volunteer


def _db_labels(settings: Settings, slug: str) -> list[sa.Row]:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT l.tile_id, l.volunteer_id, l.answer, l.points, l.skipped, l.flag_note, "
                "l.idempotency_key, l.is_gold, l.correct, l.time_spent_ms FROM labels l "
                "JOIN projects p ON p.id = l.project_id WHERE p.slug = :s ORDER BY l.id"),
                {"s": slug}).all()
    finally:
        engine.dispose()


def test_session_lifecycle(client: TestClient) -> None:
    assert client.get("/api/session").status_code == 401
    r = client.post("/api/session", json={"display_name": "  Ana   K "})
    assert r.status_code == 201
    body = r.json()
    assert body["volunteer"] == {"display_name": "Ana K", "labels": 0, "tutorials_passed": []}
    assert body["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert "cs_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    again = client.get("/api/session")
    assert again.status_code == 200 and again.json()["csrf_token"] == body["csrf_token"]
    # Resuming keeps the same volunteer.
    r2 = client.post("/api/session", json={})
    assert r2.status_code == 200 and r2.json()["csrf_token"] == body["csrf_token"]
    # An empty body is fine; a forged cookie is not a session.
    client.cookies.clear()
    client.cookies.set("cs_session", "forged")
    assert client.get("/api/session").status_code == 401


def test_projects_list_and_detail_hide_drafts_and_gold(client: TestClient, settings: Settings) -> None:
    live = seed_project(settings, n_tiles=4, gold=1, tutorial=2)
    draft = seed_project(settings, n_tiles=2, status="draft")
    listed = client.get("/api/projects").json()["projects"]
    assert [p["slug"] for p in listed] == [live.slug]
    assert listed[0]["progress"] == {"tiles": 4, "retired": 0, "labels": 0}
    assert client.get(f"/api/projects/{draft.slug}").status_code == 404
    detail = client.get(f"/api/projects/{live.slug}").json()
    assert detail["type"] == "find" and detail["layers"] == ["image"]
    assert [a["value"] for a in detail["answers"]] == ["yes", "no", "maybe", "bad_imagery"]
    assert [a["shortcut"] for a in detail["answers"]] == ["1", "2", "3", "4"]
    assert detail["block"] == {"cols": 1, "rows": 1} and detail["context"] is False
    assert [t["tile_id"] for t in detail["tutorial"]] == live.tutorial_ids
    assert "yes" not in str(detail["tutorial"]) and "gold" not in str(detail).lower()
    # Researchers see drafts too.
    token = create_token(settings, "researcher")
    all_slugs = [p["slug"] for p in client.get(
        "/api/projects", headers={"Authorization": f"Bearer {token}"}).json()["projects"]]
    assert set(all_slugs) == {live.slug, draft.slug}


def test_tutorial_grading_and_record(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, tutorial=2)
    h = start_volunteer(client)
    url = f"/api/projects/{p.slug}/tutorial"
    wrong = client.post(url, json={"answers": {"0": "yes", "1": "yes"}}, headers=h).json()
    assert wrong["passed"] is False
    assert [r["correct"] for r in wrong["results"]] == [True, False]
    assert wrong["results"][1]["expected"] == "no" and "no" in wrong["results"][1]["explanation"]
    assert client.get("/api/session").json()["volunteer"]["tutorials_passed"] == []
    right = client.post(url, json={"answers": {"0": "yes", "1": "no"}}, headers=h).json()
    assert right["passed"] is True
    assert client.get("/api/session").json()["volunteer"]["tutorials_passed"] == [p.slug]


def test_label_every_tile_once_then_done(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=5, gold_rate=0)
    h = start_volunteer(client)
    seen = []
    for i in range(5):
        task = client.get(f"/api/projects/{p.slug}/next").json()
        assert task["task_id"] and len(task["tiles"]) == 1
        t = task["tiles"][0]
        assert set(t) >= {"tile_id", "z", "x", "y", "bounds", "image_urls", "row", "col"}
        assert t["image_urls"]["image"] == f"/tiles/{p.slug}/image/{t['z']}/{t['x']}/{t['y']}.jpg"
        assert task["progress"]["labelled_by_you"] == i
        assert task["lease_expires_at"].endswith("Z")
        seen.append(t["tile_id"])
        r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"],
            "labels": [label_for(t, ["yes", "no"][i % 2], time_spent_ms=1200 + i)]})
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": 1, "duplicates": 0, "feedback": []}
    assert sorted(seen) == sorted(p.tile_ids)
    done = client.get(f"/api/projects/{p.slug}/next").json()
    assert done["task_id"] is None and done["done"] is True and done["tiles"] == []
    rows = _db_labels(settings, p.slug)
    assert [r.tile_id for r in rows] == seen
    assert [r.answer for r in rows] == ["yes", "no", "yes", "no", "yes"]
    assert [r.time_spent_ms for r in rows] == [1200, 1201, 1202, 1203, 1204]
    stats = client.get("/api/me/stats").json()
    assert stats == {"labels": 5, "projects": {p.slug: 5}, "gold": {"seen": 0, "correct": 0}}
    assert client.get("/api/session").json()["volunteer"]["labels"] == 5
    assert_counters_consistent(settings)


def test_next_returns_same_task_until_answered(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=3, gold_rate=0)
    start_volunteer(client)
    a = client.get(f"/api/projects/{p.slug}/next").json()
    b = client.get(f"/api/projects/{p.slug}/next").json()
    assert a["task_id"] == b["task_id"] and a["tiles"] == b["tiles"]
    assert b["lease_expires_at"] >= a["lease_expires_at"]


def test_retry_with_same_key_is_success_and_stored_once(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0)
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    body = {"task_id": task["task_id"], "labels": [label_for(task["tiles"][0], "maybe")]}
    first = client.post(f"/api/projects/{p.slug}/labels", json=body, headers=h)
    retry = client.post(f"/api/projects/{p.slug}/labels", json=body, headers=h)
    assert first.json()["stored"] == 1
    assert retry.status_code == 200 and retry.json() == {"stored": 0, "duplicates": 1, "feedback": []}
    # Same tile with a new key: still one label per volunteer and tile.
    body2 = {"task_id": task["task_id"], "labels": [label_for(task["tiles"][0], "no")]}
    third = client.post(f"/api/projects/{p.slug}/labels", json=body2, headers=h)
    assert third.status_code == 200 and third.json()["duplicates"] == 1
    rows = _db_labels(settings, p.slug)
    assert len(rows) == 1 and rows[0].answer == "maybe"
    assert_counters_consistent(settings)


def test_skip_and_flag(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0, redundancy=1)
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    tid = task["tiles"][0]["tile_id"]
    r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task["task_id"],
        "labels": [{"tile_id": tid, "answer": None, "skipped": True,
                    "flag_note": "clouds over half the tile", "idempotency_key": uuid.uuid4().hex}]})
    assert r.status_code == 200 and r.json()["stored"] == 1
    row = _db_labels(settings, p.slug)[0]
    assert row.skipped and row.answer is None and row.flag_note == "clouds over half the tile"
    # A skipped tile is never offered again to the same volunteer, and does not count as a vote.
    nxt = client.get(f"/api/projects/{p.slug}/next").json()
    assert nxt["tiles"][0]["tile_id"] != tid
    other = TestClient(client.app)
    with other:
        start_volunteer(other)
        got = other.get(f"/api/projects/{p.slug}/next").json()
        assert got["tiles"][0]["tile_id"] == tid  # still open for others (redundancy 1)
    assert_counters_consistent(settings)


def test_mark_project_points(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, type="mark", n_tiles=2, gold_rate=0)
    detail = client.get(f"/api/projects/{p.slug}").json()
    assert [a["value"] for a in detail["answers"]] == ["marked", "bad_imagery"]
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    t = task["tiles"][0]
    w, s, e, n = t["bounds"]
    pts = [[w + (e - w) * 0.25, s + (n - s) * 0.5], [w + (e - w) * 0.75, s + (n - s) * 0.1]]
    r = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, "marked", points=pts)]})
    assert r.status_code == 200, r.text
    task2 = client.get(f"/api/projects/{p.slug}/next").json()
    r2 = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task2["task_id"], "labels": [label_for(task2["tiles"][0], "marked", points=[])]})
    assert r2.status_code == 200
    rows = _db_labels(settings, p.slug)
    points = [json.loads(r.points) if isinstance(r.points, str) else r.points for r in rows]
    assert points == [pts, []]


def test_compare_project_serves_both_layers(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, type="compare", n_tiles=2, gold_rate=0)
    detail = client.get(f"/api/projects/{p.slug}").json()
    assert detail["layers"] == ["before", "after"]
    start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    urls = task["tiles"][0]["image_urls"]
    assert list(urls) == ["before", "after"]
    for url in urls.values():
        img = client.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert img.content[:2] == b"\xff\xd8"


def test_paused_project_gives_no_tasks_but_keeps_leased_work(client: TestClient,
                                                             settings: Settings) -> None:
    p = seed_project(settings, n_tiles=3, gold_rate=0)
    token = create_token(settings, "researcher")
    auth = {"Authorization": f"Bearer {token}"}
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    assert client.post(f"/api/projects/{p.slug}/pause", headers=auth).json()["status"] == "paused"
    r = client.get(f"/api/projects/{p.slug}/next")
    assert r.status_code == 409 and r.json()["error"]["code"] == "project_not_live"
    ok = client.post(f"/api/projects/{p.slug}/labels", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]})
    assert ok.status_code == 200 and ok.json()["stored"] == 1
    assert client.post(f"/api/projects/{p.slug}/publish", headers=auth).json()["status"] == "live"
    assert client.get(f"/api/projects/{p.slug}/next").status_code == 200


def test_submit_with_next_returns_the_following_task(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=3, gold_rate=0)
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    seen = [task["tiles"][0]["tile_id"]]
    for _ in range(3):
        r = client.post(f"/api/projects/{p.slug}/labels?next=1", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stored"] == 1 and body["duplicates"] == 0
        task = body["next"]
        if task.get("done"):
            break
        assert task["progress"]["labelled_by_you"] == len(seen)
        seen.append(task["tiles"][0]["tile_id"])
    assert task["done"] is True and sorted(seen) == sorted(p.tile_ids)
    assert len(_db_labels(settings, p.slug)) == 3
    # The next task from ?next=1 is a real lease: GET /next returns nothing new.
    assert client.get(f"/api/projects/{p.slug}/next").json()["done"] is True
    assert_counters_consistent(settings)
