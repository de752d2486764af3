"""Issue 3 follow-ups: a task held ahead (prefetch), submit-and-next, tutorial enforcement,
late labels accepted when safe."""

from __future__ import annotations

import sqlalchemy as sa
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.assign import recount
from labeler.db import make_engine
from labeler.testing import assert_counters_consistent, label_for, seed_project, start_volunteer


def _post(c: TestClient, slug: str, h: dict, task: dict, query: str = "", answer: str = "yes"):
    return c.post(f"/api/projects/{slug}/labels{query}", headers=h, json={
        "task_id": task["task_id"], "labels": [label_for(t, answer) for t in task["tiles"]]})


def test_ahead_leases_a_second_distinct_task_and_counts_it(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=3, redundancy=1, gold_rate=0)
    a, b = make_client(), make_client()
    ha = start_volunteer(a)
    start_volunteer(b)
    first = a.get(f"/api/projects/{p.slug}/next?ahead=1").json()
    ahead = first["ahead"]
    assert ahead is not None and ahead["task_id"] != first["task_id"]
    assert ahead["tiles"][0]["tile_id"] != first["tiles"][0]["tile_id"]
    assert ahead["tiles"][0]["image_urls"]["image"].startswith(f"/tiles/{p.slug}/image/")
    # asking again renews the same two tasks; plain /next still answers the current one
    again = a.get(f"/api/projects/{p.slug}/next?ahead=1").json()
    assert (again["task_id"], again["ahead"]["task_id"]) == (first["task_id"], ahead["task_id"])
    assert a.get(f"/api/projects/{p.slug}/next").json()["task_id"] == first["task_id"]
    # both leases count against the target (1): b gets the third tile, then nothing
    tb = b.get(f"/api/projects/{p.slug}/next?ahead=1").json()
    held = {first["tiles"][0]["tile_id"], ahead["tiles"][0]["tile_id"]}
    assert tb["tiles"][0]["tile_id"] not in held and tb["ahead"] is None
    # submit-and-next: the ahead task becomes current, nothing is left to hold ahead
    r = _post(a, p.slug, ha, first, "?next=1&ahead=1")
    assert r.status_code == 200, r.text
    nxt = r.json()["next"]
    assert nxt["task_id"] == ahead["task_id"] and nxt["ahead"] is None
    r = _post(a, p.slug, ha, nxt, "?next=1&ahead=1")
    assert r.json()["next"]["done"] is True and r.json()["next"]["ahead"] is None
    assert_counters_consistent(settings)


def test_ahead_with_target_two_never_over_target(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, redundancy=2, gold_rate=0)
    clients = [make_client() for _ in range(3)]
    for c in clients:
        start_volunteer(c)
    seen: list[int] = []
    for c in clients[:2]:
        body = c.get(f"/api/projects/{p.slug}/next?ahead=1").json()
        ids = [body["tiles"][0]["tile_id"], body["ahead"]["tiles"][0]["tile_id"]]
        assert len(set(ids)) == 2  # never the same tile twice to one volunteer
        seen += ids
    assert sorted(seen) == sorted(p.tile_ids * 2)
    third = clients[2].get(f"/api/projects/{p.slug}/next?ahead=1").json()
    assert third["done"] is True and third["ahead"] is None
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            counts = conn.execute(sa.text("SELECT lease_count FROM tiles WHERE id IN (:a, :b)"),
                                  {"a": p.tile_ids[0], "b": p.tile_ids[1]}).scalars().all()
        assert counts == [2, 2]
        assert recount(engine) == []
    finally:
        engine.dispose()


def test_ahead_flag_is_validated(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0)
    start_volunteer(client)
    r = client.get(f"/api/projects/{p.slug}/next?ahead=2")
    assert r.status_code == 422 and r.json()["error"]["field"] == "ahead"


def test_next_requires_the_tutorial(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, tutorial=2, gold_rate=0)
    h = start_volunteer(client)
    r = client.get(f"/api/projects/{p.slug}/next")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tutorial_required"
    assert client.get(f"/api/projects/{p.slug}/next?ahead=1").status_code == 403
    passed = client.post(f"/api/projects/{p.slug}/tutorial", headers=h,
                         json={"answers": {"0": "yes", "1": "no"}}).json()
    assert passed["passed"] is True
    task = client.get(f"/api/projects/{p.slug}/next").json()
    assert task["task_id"] and task["tiles"][0]["tile_id"] in p.tile_ids
    # a project without tutorial items needs none
    q = seed_project(settings, n_tiles=1, gold_rate=0)
    assert client.get(f"/api/projects/{q.slug}/next").status_code == 200


def test_late_label_with_room_is_stored(make_client, settings: Settings) -> None:
    short = settings.with_(lease_seconds=0)
    p = seed_project(short, n_tiles=1, redundancy=2, gold_rate=0)
    a, b = make_client(short), make_client(short)
    ha = start_volunteer(a)
    start_volunteer(b)
    ta = a.get(f"/api/projects/{p.slug}/next").json()
    b.get(f"/api/projects/{p.slug}/next")  # reclaims a's expired lease, takes one of 2 places
    r = _post(a, p.slug, ha, ta)
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    retry = a.post(f"/api/projects/{p.slug}/labels", headers=ha, json={
        "task_id": ta["task_id"], "labels": [label_for(ta["tiles"][0])]})
    assert retry.status_code == 200 and retry.json()["duplicates"] == 1
    assert_counters_consistent(short)


def test_late_label_for_a_retired_tile_is_refused(make_client, settings: Settings) -> None:
    short = settings.with_(lease_seconds=0)
    p = seed_project(short, n_tiles=1, redundancy=1, gold_rate=0)
    a, b = make_client(short), make_client(short)
    ha, hb = start_volunteer(a), start_volunteer(b)
    ta = a.get(f"/api/projects/{p.slug}/next").json()
    tb = b.get(f"/api/projects/{p.slug}/next").json()
    assert _post(b, p.slug, hb, tb).status_code == 200  # b's label retires the tile
    r = _post(a, p.slug, ha, ta)
    assert r.status_code == 409 and r.json()["error"]["code"] == "lease_expired"
    assert "retired" in r.json()["error"]["message"]
    # a late skip changes no counts and is recorded
    skip = a.post(f"/api/projects/{p.slug}/labels", headers=ha, json={
        "task_id": ta["task_id"], "labels": [{"tile_id": ta["tiles"][0]["tile_id"],
                                              "answer": None, "skipped": True,
                                              "idempotency_key": "late-skip-0001"}]})
    assert skip.status_code == 200 and skip.json()["stored"] == 1
    assert_counters_consistent(short)


def test_late_label_needs_a_task_that_was_really_handed_out(make_client, settings: Settings) -> None:
    short = settings.with_(lease_seconds=0)
    p = seed_project(short, n_tiles=3, redundancy=3, gold_rate=0)
    a = make_client(short)
    ha = start_volunteer(a)
    ta = a.get(f"/api/projects/{p.slug}/next").json()
    other = next(t for t in p.tile_ids if t != ta["tiles"][0]["tile_id"])
    # a tile that was never part of this task, and a forged task id: both not_leased
    r = a.post(f"/api/projects/{p.slug}/labels", headers=ha, json={
        "task_id": ta["task_id"], "labels": [label_for({"tile_id": other})]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_leased"
    forged = ("0" if ta["task_id"][0] != "0" else "1") + ta["task_id"][1:]
    r = a.post(f"/api/projects/{p.slug}/labels", headers=ha, json={
        "task_id": forged, "labels": [label_for(ta["tiles"][0])]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_leased"
    # another volunteer cannot use a's task id either
    b = make_client(short)
    hb = start_volunteer(b)
    r = b.post(f"/api/projects/{p.slug}/labels", headers=hb, json={
        "task_id": ta["task_id"], "labels": [label_for(ta["tiles"][0])]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_leased"
    assert_counters_consistent(short)


def test_openapi_lists_the_query_parameters(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    nxt = doc["paths"]["/api/projects/{slug}/next"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in nxt} >= {("slug", "path"), ("ahead", "query"),
                                                    ("near", "query")}
    post = doc["paths"]["/api/projects/{slug}/labels"]["post"]["parameters"]
    assert {p["name"] for p in post if p["in"] == "query"} == {"next", "ahead", "near"}


def test_submit_with_next_stores_labels_even_when_the_tutorial_became_required(
        client: TestClient, settings: Settings) -> None:
    from labeler.testing import create_token

    p = seed_project(settings, n_tiles=3, gold_rate=0)
    h = start_volunteer(client)
    task = client.get(f"/api/projects/{p.slug}/next").json()
    spare = next(t for t in p.tile_ids if t != task["tiles"][0]["tile_id"])
    token = create_token(settings, "researcher")
    r = client.post(f"/api/projects/{p.slug}/gold", headers={"Authorization": f"Bearer {token}"},
                    json={"tiles": [{"tile_id": spare, "answer": "yes", "tutorial": True}]})
    assert r.status_code == 200, r.text
    r = _post(client, p.slug, h, task, "?next=1&ahead=1")
    assert r.status_code == 200 and r.json()["stored"] == 1 and r.json()["next"] is None
    err = client.get(f"/api/projects/{p.slug}/next").json()["error"]
    assert err["code"] == "tutorial_required"
    # and nothing was leased to them meanwhile (the answer's statement claims no task)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one() == 0
    finally:
        engine.dispose()
