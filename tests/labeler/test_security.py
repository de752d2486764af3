"""Every security rule of issue 3: CSRF, rate limits, body limits, strict validation,
role checks, headers, hashed tokens — and that a refused request stores nothing."""

from __future__ import annotations

import hashlib
import uuid

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.app import create_app
from labeler.db import make_engine
from labeler.openapi import iter_routes
from labeler.security import RateLimiter, client_ip
from labeler.errors import RateLimited
from labeler.testing import create_token, label_for, seed_project, start_volunteer


def _count(settings: Settings, table: str) -> int:
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def _task(client: TestClient, slug: str) -> dict:
    task = client.get(f"/api/projects/{slug}/next").json()
    assert task["task_id"]
    return task


def _err(r, status: int, code: str, field: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if field != "any":
        assert err["field"] == field
    return err


def test_csrf_required_and_tied_to_session(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0)
    a, b = make_client(), make_client()
    start_volunteer(a)
    hb = start_volunteer(b)
    task = _task(a, p.slug)
    body = {"task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]}
    _err(a.post(f"/api/projects/{p.slug}/labels", json=body), 403, "csrf_failed")
    _err(a.post(f"/api/projects/{p.slug}/labels", json=body, headers=hb), 403, "csrf_failed")
    _err(a.post(f"/api/projects/{p.slug}/labels", json=body, headers={"X-CSRF-Token": "x" * 40}),
         403, "csrf_failed")
    _err(a.post(f"/api/projects/{p.slug}/tutorial", json={"answers": {}}), 403, "csrf_failed")
    assert _count(settings, "labels") == 0


def test_no_session_is_401(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    _err(client.get(f"/api/projects/{p.slug}/next"), 401, "not_authenticated")
    _err(client.post(f"/api/projects/{p.slug}/labels", json={}), 401, "not_authenticated")
    _err(client.get("/api/me/stats"), 401, "not_authenticated")


@pytest.mark.parametrize("label,field,code", [
    ({"answer": "burned"}, "labels.0.answer", "validation_error"),
    ({"answer": None}, "labels.0.answer", "validation_error"),
    ({"idempotency_key": "short"}, "labels.0.idempotency_key", "validation_error"),
    ({"idempotency_key": "bad key with spaces!"}, "labels.0.idempotency_key", "validation_error"),
    ({"points": [[0, 0]]}, "labels.0.points", "validation_error"),  # points in a find project
    ({"time_spent_ms": -5}, "labels.0.time_spent_ms", "validation_error"),
    ({"flag_note": "x" * 1001}, "labels.0.flag_note", "validation_error"),
    ({"skipped": "yes"}, "labels.0.skipped", "validation_error"),
    ({"surprise": 1}, "labels.0.surprise", "validation_error"),
    ({"tile_id": "7"}, "labels.0.tile_id", "validation_error"),
])
def test_label_validation_stores_nothing(client: TestClient, settings: Settings, label: dict,
                                         field: str, code: str) -> None:
    p = seed_project(settings, n_tiles=2, gold_rate=0)
    h = start_volunteer(client)
    task = _task(client, p.slug)
    item = {**label_for(task["tiles"][0]), **label}
    r = client.post(f"/api/projects/{p.slug}/labels", headers=h,
                    json={"task_id": task["task_id"], "labels": [item]})
    _err(r, 422, code, field)
    assert _count(settings, "labels") == 0


def test_all_or_nothing_and_lease_rules(make_client, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=8, gold_rate=0, block={"cols": 2, "rows": 1}, grid_cols=4)
    other = seed_project(settings, n_tiles=1, gold_rate=0)
    a = make_client()
    h = start_volunteer(a)
    task = _task(a, p.slug)
    t0, t1 = task["tiles"]
    url = f"/api/projects/{p.slug}/labels"
    # One bad label in a block: nothing stored.
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        label_for(t0), label_for(t1, "nope")]}), 422, "validation_error", "labels.1.answer")
    # A tile of this project that is not leased to me.
    not_mine = next(t for t in p.tile_ids if t not in (t0["tile_id"], t1["tile_id"]))
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        label_for(t0), {"tile_id": not_mine, "answer": "yes", "idempotency_key": uuid.uuid4().hex}]}),
        409, "not_leased", "labels.1.tile_id")
    # A wrong task id.
    _err(a.post(url, headers=h, json={"task_id": "0" * 32, "labels": [label_for(t0)]}),
         409, "not_leased")
    # A tile of another project.
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        {"tile_id": other.tile_ids[0], "answer": "yes", "idempotency_key": uuid.uuid4().hex}]}),
        422, "validation_error", "labels.0.tile_id")
    # Same tile twice in one request; same key twice.
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        label_for(t0), label_for(t0)]}), 422, "validation_error", "labels.1.tile_id")
    key = uuid.uuid4().hex
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        {**label_for(t0), "idempotency_key": key}, {**label_for(t1), "idempotency_key": key}]}),
        422, "validation_error", "labels.1.idempotency_key")
    assert _count(settings, "labels") == 0
    ok = a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        {**label_for(t0), "idempotency_key": key}]})
    assert ok.status_code == 200
    # Reusing a key for another tile is an error, not a silent duplicate.
    _err(a.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        {**label_for(t1), "idempotency_key": key}]}), 422, "validation_error",
        "labels.0.idempotency_key")
    assert _count(settings, "labels") == 1


def test_points_inside_tile_and_limited(client: TestClient, settings: Settings) -> None:
    s = settings
    p = seed_project(s, type="mark", n_tiles=2, gold_rate=0, max_points=3)
    h = start_volunteer(client)
    task = _task(client, p.slug)
    t = task["tiles"][0]
    w, so, e, n = t["bounds"]
    inside = [w + (e - w) / 2, so + (n - so) / 2]
    url = f"/api/projects/{p.slug}/labels"
    for pts, field in (([[e + 0.001, so + (n - so) / 2]], "labels.0.points.0"),
                       ([inside, [w, n + 0.0001]], "labels.0.points.1"),
                       ([inside] * 4, "labels.0.points"),
                       ([[inside[0]]], "labels.0.points.0"),
                       ([[inside[0], float("nan")]], None)):
        body = {"task_id": task["task_id"], "labels": [label_for(t, "marked", points=pts)]}
        if field is None:  # NaN is not JSON: the body is refused before validation
            import json
            raw = json.dumps(body)
            r = client.post(url, headers={**h, "content-type": "application/json"}, content=raw)
            assert r.status_code in (400, 422)
            continue
        _err(client.post(url, headers=h, json=body), 422, "validation_error", field)
    _err(client.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        label_for(t, "bad_imagery", points=[inside])]}), 422, "validation_error", "labels.0.points")
    assert _count(settings, "labels") == 0
    ok = client.post(url, headers=h, json={"task_id": task["task_id"], "labels": [
        label_for(t, "marked", points=[inside, [w, so], [e, n]])]})
    assert ok.status_code == 200, ok.text


def test_settings_cap_points(settings: Settings, tmp_path) -> None:
    capped = settings.with_(max_points_per_tile=2)
    p = seed_project(capped, type="mark", n_tiles=1, gold_rate=0)
    with TestClient(create_app(capped)) as c:
        assert c.get(f"/api/projects/{p.slug}").json()["max_points"] == 2
        h = start_volunteer(c)
        task = _task(c, p.slug)
        t = task["tiles"][0]
        pt = [(t["bounds"][0] + t["bounds"][2]) / 2, (t["bounds"][1] + t["bounds"][3]) / 2]
        _err(c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(t, "marked", points=[pt] * 3)]}),
            422, "validation_error", "labels.0.points")


def test_bad_json_and_body_limit(settings: Settings) -> None:
    small = settings.with_(max_body_bytes=2048)
    p = seed_project(small, n_tiles=1, gold_rate=0)
    with TestClient(create_app(small)) as c:
        h = start_volunteer(c)
        url = f"/api/projects/{p.slug}/labels"
        _err(c.post(url, headers={**h, "content-type": "application/json"}, content=b"{nope"),
             400, "invalid_json")
        _err(c.post(url, headers=h, json=[1, 2]), 400, "invalid_json")
        task = _task(c, p.slug)
        big = {"task_id": task["task_id"],
               "labels": [label_for(task["tiles"][0], flag_note="x" * 900)] * 3}
        _err(c.post(url, headers=h, json=big), 413, "body_too_large")

        def chunks():
            for _ in range(10):
                yield b" " * 1000
        _err(c.post(url, headers={**h, "content-type": "application/json"}, content=chunks()),
             413, "body_too_large")
    assert _count(small, "labels") == 0


def test_rate_limits(settings: Settings) -> None:
    limited = settings.with_(rate_limit_volunteer=3, rate_limit_ip=1000)
    p = seed_project(limited, n_tiles=10, gold_rate=0)
    with TestClient(create_app(limited)) as c:
        h = start_volunteer(c)
        stored = 0
        for i in range(4):
            task = _task(c, p.slug)
            r = c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
                "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]})
            if i < 3:
                assert r.status_code == 200
                stored += 1
            else:
                _err(r, 429, "rate_limited")
                assert int(r.headers["retry-after"]) >= 1
    assert _count(limited, "labels") == stored == 3
    per_ip = settings.with_(rate_limit_volunteer=1000, rate_limit_ip=2)
    p2 = seed_project(per_ip, n_tiles=10, gold_rate=0)
    with TestClient(create_app(per_ip)) as c1, TestClient(create_app(per_ip)) as c2:
        codes = []
        for c in (c1, c2):
            h = start_volunteer(c)
            for _ in range(2):
                task = _task(c, p2.slug)
                codes.append(c.post(f"/api/projects/{p2.slug}/labels", headers=h, json={
                    "task_id": task["task_id"], "labels": [label_for(task["tiles"][0])]}).status_code)
    # Separate app instances have separate buckets (one per worker): each allows 2.
    assert codes == [200, 200, 200, 200]


def test_rate_limiter_unit() -> None:
    rl = RateLimiter(per_minute=60)
    for i in range(60):
        rl.hit("k", now=100.0)
    with pytest.raises(RateLimited) as info:
        rl.hit("k", now=100.0)
    assert info.value.retry_after == 1
    rl.hit("k", now=101.01)  # one more token after a second
    rl.hit("other", now=100.0)


def test_client_ip_trusts_only_configured_proxies() -> None:
    assert client_ip(("10.0.0.1", 1), "1.2.3.4", frozenset()) == "10.0.0.1"
    assert client_ip(("10.0.0.1", 1), "9.9.9.9, 1.2.3.4", frozenset({"10.0.0.1"})) == "1.2.3.4"


def test_role_checks(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    researcher = {"Authorization": f"Bearer {create_token(settings, 'researcher')}"}
    analyst = {"Authorization": f"Bearer {create_token(settings, 'analyst')}"}
    admin = {"Authorization": f"Bearer {create_token(settings, 'admin')}"}
    calls = [
        ("post", "/api/projects", {"slug": "new-one", "type": "find"}, "researcher"),
        ("patch", f"/api/projects/{p.slug}", {"question": "Any roofs?"}, "researcher"),
        ("post", f"/api/projects/{p.slug}/pause", None, "researcher"),
        ("post", f"/api/projects/{p.slug}/gold", {"tiles": [{"tile_id": p.tile_ids[0], "answer": "yes"}]}, "researcher"),
        ("post", f"/api/projects/{p.slug}/manifest", {"path": f"{p.slug}/manifest.json"}, "researcher"),
        ("get", f"/api/projects/{p.slug}/stats", None, "analyst"),
        ("get", f"/api/projects/{p.slug}/results", None, "analyst"),
        ("get", "/api/tokens", None, "admin"),
        ("post", "/api/tokens", {"role": "analyst"}, "admin"),
    ]
    for method, url, body, role in calls:
        kw = {"json": body} if body is not None else {}
        # anonymous -> 401
        _err(getattr(client, method)(url, **kw), 401, "not_authenticated")
        # bad token -> 401
        _err(getattr(client, method)(url, headers={"Authorization": "Bearer cs_nope"}, **kw),
             401, "not_authenticated")
        _err(getattr(client, method)(url, headers={"Authorization": "Basic abc"}, **kw),
             401, "not_authenticated")
    h = start_volunteer(client)
    for method, url, body, role in calls:
        kw = {"json": body} if body is not None else {}
        # volunteer session (even with its CSRF token) -> 403
        _err(getattr(client, method)(url, headers=h, **kw), 403, "forbidden")
        wrong = analyst if role in ("researcher", "admin") else researcher
        if role == "analyst":
            wrong = {"Authorization": f"Bearer {create_token(settings, 'researcher')}"}
            # researchers may read analyst endpoints; an analyst token cannot write
            assert getattr(client, method)(url, headers=wrong, **kw).status_code == 200
            continue
        _err(getattr(client, method)(url, headers=wrong, **kw), 403, "forbidden")
    for method, url, body, role in calls:
        kw = {"json": body} if body is not None else {}
        r = getattr(client, method)(url, headers=admin, **kw)
        assert r.status_code in (200, 201), (url, r.text)


def test_tokens_are_hashed_and_revocable(client: TestClient, settings: Settings) -> None:
    admin = {"Authorization": f"Bearer {create_token(settings, 'admin')}"}
    r = client.post("/api/tokens", json={"role": "analyst", "name": "dana"}, headers=admin)
    assert r.status_code == 201
    tok, tid = r.json()["token"], r.json()["id"]
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM api_tokens")).all()
    finally:
        engine.dispose()
    dumped = repr(rows)
    assert tok not in dumped and tok[10:] not in dumped
    assert hashlib.sha256(tok.encode()).hexdigest() in dumped
    listed = client.get("/api/tokens", headers=admin).json()["tokens"]
    assert tok not in repr(listed)
    assert {"id": tid, "name": "dana", "role": "analyst", "revoked": False}.items() <= \
        next(t for t in listed if t["id"] == tid).items()
    p = seed_project(settings, n_tiles=1)
    bearer = {"Authorization": f"Bearer {tok}"}
    assert client.get(f"/api/projects/{p.slug}/stats", headers=bearer).status_code == 200
    assert client.delete(f"/api/tokens/{tid}", headers=admin).json() == {"id": tid, "revoked": True}
    _err(client.get(f"/api/projects/{p.slug}/stats", headers=bearer), 401, "not_authenticated")
    _err(client.delete("/api/tokens/999999", headers=admin), 404, "not_found")
    _err(client.post("/api/tokens", json={"role": "god"}, headers=admin), 422, "validation_error",
         "role")


def test_security_headers(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    for url in ("/", "/api/projects", f"/api/projects/{p.slug}", "/api/nope",
                "/api/openapi.json"):
        r = client.get(url)
        csp = r.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    _err(client.get("/api/nope"), 404, "not_found")
    _err(client.delete("/api/projects"), 405, "method_not_allowed")


def test_openapi_lists_every_route(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    import re
    for path, methods, _ in iter_routes(client.app.routes):
        clean = re.sub(r"{([^}:]+)(?::[^}]+)?}", r"{\1}", path)
        assert clean in doc["paths"], clean
        for m in methods:
            assert m.lower() in doc["paths"][clean], (m, clean)
    assert doc["paths"]["/api/tokens"]["post"]["x-role"] == "admin"
    assert "/api/projects/{slug}/labels" in doc["paths"]


def test_tiles_cache_and_etag(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    t = p.tiles[p.tile_ids[0]]
    url = f"/tiles/{p.slug}/image/{t['z']}/{t['x']}/{t['y']}.jpg"
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "max-age=31536000" in r.headers["cache-control"]
    etag = r.headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    for bad in (f"/tiles/{p.slug}/image/{t['z']}/{t['x']}/{t['y'] + 1}.jpg",
                f"/tiles/{p.slug}/image/{t['z']}/{t['x']}/{t['y']}.tif",
                f"/tiles/{p.slug}/..%2F..%2Fdata/{t['z']}/{t['x']}/{t['y']}.jpg",
                f"/tiles/{p.slug}/image/40/{t['x']}/{t['y']}.jpg",
                "/tiles/../../etc/passwd"):
        assert client.get(bad).status_code == 404, bad
    tj = client.get(f"/tiles/{p.slug}/image/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0" and tj["tiles"][0].endswith(
        f"/tiles/{p.slug}/image/{{z}}/{{x}}/{{y}}.jpg")
    assert tj["minzoom"] == tj["maxzoom"] == 18 and len(tj["bounds"]) == 4
    assert client.get(f"/tiles/{p.slug}/nolayer/tilejson.json").status_code == 404


def test_no_500_on_garbage(client: TestClient, settings: Settings) -> None:
    p = seed_project(settings, n_tiles=1)
    admin = {"Authorization": f"Bearer {create_token(settings, 'admin')}"}
    bodies = [None, "x", 1, [], {"slug": 5}, {"slug": "Bad Slug"}, {"slug": "ok", "type": "zap"},
              {"slug": "ok2", "redundancy": 0}, {"slug": "ok3", "answers": ["yes"]},
              {"slug": "ok4", "block": {"cols": 99}}, {"slug": "ok5", "gold_rate": 2},
              {"slug": "ok6", "extra": 1}]
    for b in bodies:
        r = client.post("/api/projects", json=b, headers=admin)
        assert 400 <= r.status_code < 500, (b, r.text)
    for b in ({"tiles": "x"}, {"tiles": [{"tile_id": 10**9, "answer": "yes"}]},
              {"tiles": [{"tile_id": p.tile_ids[0], "answer": "purple"}]},
              {"tiles": [{"z": 1}]}):
        r = client.post(f"/api/projects/{p.slug}/gold", json=b, headers=admin)
        assert 400 <= r.status_code < 500, (b, r.text)
    for q in ("after=x", "limit=0", "limit=100000"):
        assert client.get(f"/api/projects/{p.slug}/results?{q}", headers=admin).status_code == 422
    assert client.post(f"/api/projects/{p.slug}/manifest", json={"path": "../../etc/passwd"},
                       headers=admin).status_code == 422
    assert client.post("/api/projects/nope/publish", headers=admin).status_code == 404
