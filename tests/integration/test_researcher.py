"""Researcher pages end to end through the HTTP API, on SQLite and PostgreSQL.

Covers: role checks, project create/configure/publish flow, streamed uploads (413 / 415 / 422),
background ingest in a worker process with progress to completion, a failed ingest leaving the
project unchanged, gold marking and promotion, the review queue and the expert override in
exports, private projects with invite links and researcher-only exports.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from labeler.app import create_app
from labeler.db import make_engine
from labeler.testing import (
    create_token,
    database_urls,
    label_for,
    make_settings,
    migrated_database,
    run_async,
    seed_project,
    start_volunteer,
)

JOB_TIMEOUT_S = 180  # a bound so a broken worker fails the test instead of hanging it


@pytest.fixture(params=database_urls())
def settings(request, tmp_path):
    with migrated_database(request.param, tmp_path) as url:
        yield make_settings(tmp_path, url)


@pytest.fixture
def client(settings):
    app = create_app(settings)
    with TestClient(app) as c:
        yield c
    runner = getattr(app.state, "researcher_job_runner", None)
    if runner is not None:
        runner.shutdown()


@pytest.fixture
def researcher(settings) -> dict[str, str]:
    return {"Authorization": "Bearer " + create_token(settings, "researcher", "rs")}


@pytest.fixture
def analyst(settings) -> dict[str, str]:
    return {"Authorization": "Bearer " + create_token(settings, "analyst", "an")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A tiny synthetic before/after pair (different CRSs) from the ingest package."""
    from ingest.synthetic import generate_scene

    return generate_scene(tmp_path_factory.mktemp("scene"), size=256, seed=3)


def _engine(settings):
    return make_engine(settings.resolved_database_url, pool_size=1)


def _sql(settings, query: str, **params: Any) -> list[Any]:
    eng = _engine(settings)
    try:
        with eng.begin() as conn:
            res = conn.execute(sa.text(query), params)
            return res.all() if res.returns_rows else []
    finally:
        eng.dispose()


def _upload(client, headers, slug, layer, path_or_bytes, filename="x.tif",
            content_type="image/tiff"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return client.put(f"/api/projects/{slug}/uploads/{layer}", params={"filename": filename},
                      content=data, headers={**headers, "Content-Type": content_type})


def _wait_job(client, headers, slug, job_id) -> tuple[dict, list[float]]:
    seen: list[float] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        r = client.get(f"/api/projects/{slug}/ingest-jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        seen.append(job["progress"])
        if job["status"] in ("succeeded", "failed"):
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"ingest job {job_id} did not finish: {job}")


def _create(client, headers, slug, type_="compare", **extra) -> dict:
    r = client.post("/api/projects", headers=headers,
                    json={"slug": slug, "name": slug.title(), "type": type_,
                          "question": "Were huts burned?", **extra})
    assert r.status_code == 201, r.text
    return r.json()


# --------------------------------------------------------------------------- roles


def test_page_and_role_checks(client, settings, researcher, analyst):
    page = client.get("/researcher/")
    assert page.status_code == 200
    assert "researcher.js" in page.text and "<script>" not in page.text  # CSP: no inline JS
    seeded = seed_project(settings, type="find", n_tiles=2)
    url = f"/api/projects/{seeded.slug}/review"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=analyst)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    csrf = start_volunteer(client)
    r = client.get(url, headers=csrf)  # a volunteer cookie is not a researcher
    assert r.status_code in (401, 403)
    assert client.get(url, headers=researcher).status_code == 200
    admin = {"Authorization": "Bearer " + create_token(settings, "admin", "ad")}
    assert client.get(url, headers=admin).status_code == 200
    bad = {"Authorization": "Bearer not-a-real-token"}
    assert client.get(url, headers=bad).status_code == 401
    # every researcher write route refuses analysts too
    for method, path in [("PATCH", f"/api/projects/{seeded.slug}/access"),
                         ("POST", f"/api/projects/{seeded.slug}/invites"),
                         ("POST", f"/api/projects/{seeded.slug}/gold/promote"),
                         ("POST", f"/api/projects/{seeded.slug}/ingest-jobs")]:
        r = client.request(method, path, headers=analyst, json={})
        assert r.status_code == 403, (method, path, r.text)


# --------------------------------------------------------------------------- flow


def test_create_configure_upload_ingest_publish(client, settings, researcher, scene):
    slug = "darfur-demo"
    _create(client, researcher, slug)
    r = client.patch(f"/api/projects/{slug}", headers=researcher, json={
        "help_text": "Burned huts are dark circles.", "redundancy": 3, "gold_rate": 0.2,
        "retirement": {"policy": "adaptive", "threshold": 0.8, "min_votes": 2, "max_votes": 5},
        "answers": [{"value": "destroyed", "label": "Destroyed"},
                    {"value": "intact", "label": "Intact"},
                    {"value": "bad_imagery", "label": "Bad imagery"}]})
    assert r.status_code == 200, r.text
    view = client.get(f"/api/projects/{slug}/researcher", headers=researcher).json()
    assert view["status"] == "draft" and view["redundancy"] == 3
    assert view["retirement"]["policy"] == "adaptive" and view["gold_rate"] == 0.2
    assert view["progress"]["tiles"] == 0
    assert view["access"] == {"private": False, "exports_restricted": False}

    # no imagery yet: publishing is refused with a clear message
    r = client.post(f"/api/projects/{slug}/publish", headers=researcher)
    assert r.status_code == 409

    ids = {}
    for layer, path in (("before", scene.before), ("after", scene.after)):
        r = _upload(client, researcher, slug, layer, path, filename=Path(path).name)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["raster"]["driver"] == "GTiff" and body["size"] == Path(path).stat().st_size
        ids[layer] = [body["id"]]
    pending = client.get(f"/api/projects/{slug}/uploads", headers=researcher).json()["uploads"]
    assert sorted(u["layer"] for u in pending) == ["after", "before"]

    r = client.post(f"/api/projects/{slug}/ingest-jobs", headers=researcher,
                    json={"uploads": ids})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"].endswith(job_id)
    job, seen = _wait_job(client, researcher, slug, job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and seen == sorted(seen)  # progress never goes backwards
    assert job["result"]["tiles_added"] > 0
    assert job["request"]["layers"]["before"][0]["filename"] == Path(scene.before).name
    # uploads were consumed by the job
    assert client.get(f"/api/projects/{slug}/uploads", headers=researcher).json()["uploads"] == []
    assert not list((settings.data_dir / "uploads" / slug).glob("*.tif"))
    view = client.get(f"/api/projects/{slug}/researcher", headers=researcher).json()
    assert view["progress"]["tiles"] == job["result"]["tiles_total"]
    assert view["layers"] == ["before", "after"]

    # the tiles are served
    tiles = client.get(f"/api/projects/{slug}/researcher/tiles?which=all&limit=1",
                       headers=researcher).json()["tiles"]
    url = tiles[0]["image_urls"]["after"]
    assert client.get(url).status_code == 200

    r = client.post(f"/api/projects/{slug}/publish", headers=researcher)
    assert r.status_code == 200 and r.json()["status"] == "live"
    assert client.post(f"/api/projects/{slug}/pause", headers=researcher).json()["status"] == "paused"
    assert client.post(f"/api/projects/{slug}/finish", headers=researcher).json()["status"] == "finished"
    jobs = client.get(f"/api/projects/{slug}/ingest-jobs", headers=researcher).json()["jobs"]
    assert [j["id"] for j in jobs] == [job_id]


def test_upload_too_large_is_413_and_leaves_nothing(tmp_path, settings, scene):
    small = settings.with_(max_upload_bytes=50_000)
    app = create_app(small)
    headers = {"Authorization": "Bearer " + create_token(small, "researcher")}
    with TestClient(app) as client:
        _create(client, headers, "big")
        r = _upload(client, headers, "big", "before", scene.before)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] in ("upload_too_large", "body_too_large")

        # a client that lies about (or omits) the length is stopped while streaming
        def chunks():
            data = Path(scene.before).read_bytes()
            for i in range(0, len(data), 16_384):
                yield data[i:i + 16_384]

        r = client.put("/api/projects/big/uploads/before", content=chunks(),
                       headers={**headers, "Content-Type": "image/tiff"})
        assert r.status_code == 413, r.text
    updir = small.data_dir / "uploads" / "big"
    assert not updir.exists() or not any(updir.iterdir())


def test_upload_not_a_tiff_is_415_with_a_clear_message(client, researcher):
    _create(client, researcher, "png-test", type_="find")
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    r = _upload(client, researcher, "png-test", "image", buf.getvalue(), filename="photo.png")
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert err["code"] == "not_a_geotiff" and err["field"] == "file"
    assert "TIFF" in err["message"] or "GeoTIFF" in err["message"]
    r = _upload(client, researcher, "png-test", "image", b"", filename="empty.tif")
    assert r.status_code in (415, 422)


def test_upload_tiff_without_georeferencing_is_422(client, researcher, tmp_path):
    from PIL import Image

    path = tmp_path / "plain.tif"  # a valid TIFF without any georeferencing
    Image.new("RGB", (32, 32), (10, 120, 10)).save(path, format="TIFF")
    _create(client, researcher, "nocrs", type_="find")
    r = _upload(client, researcher, "nocrs", "image", path, filename="plain.tif")
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "georeferenc" in err["message"] and "plain.tif" in err["message"]
    assert str(tmp_path) not in err["message"]  # the server's path is not leaked


def test_upload_check_reads_no_sidecars_like_the_ingest(tmp_path):
    """The upload check validates as the ingest reads: a TIFF georeferenced only by a PAM
    .aux.xml next to it is refused by both (the ingest never reads sidecars), not accepted
    by the check and refused later by the ingest job."""
    from PIL import Image
    from rasterio.crs import CRS

    from labeler.dashboard.researcher_errors import UnusableRaster
    from labeler.dashboard.researcher_uploads import inspect_geotiff

    path = tmp_path / "scan.tif"
    Image.new("RGB", (32, 32), (10, 120, 10)).save(path, format="TIFF")
    wkt = CRS.from_epsg(32635).to_wkt().replace("<", "&lt;")
    (tmp_path / "scan.tif.aux.xml").write_text(
        f"<PAMDataset><SRS>{wkt}</SRS><GeoTransform>735000, 0.5, 0, 1483000, 0, -0.5"
        "</GeoTransform></PAMDataset>")
    with pytest.raises(UnusableRaster, match="sidecar files such as scan.tif.aux.xml"):
        inspect_geotiff(path, max_pixels=10**9, display="scan.tif")


def test_failed_ingest_leaves_project_unchanged(client, settings, researcher, scene, tmp_path):
    """Layers that do not overlap fail inside the worker; tiles and files stay as they were."""
    import rasterio
    from affine import Affine

    seeded = seed_project(settings, type="compare", n_tiles=4, status="live")
    store = settings.tile_store_path / seeded.slug
    files_before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    manifest_before = (store / "manifest.json").read_bytes()
    tiles_before = _sql(settings, "SELECT count(*) FROM tiles t JOIN projects p ON "
                        "p.id = t.project_id WHERE p.slug = :s", s=seeded.slug)[0][0]
    far = tmp_path / "far.tif"  # somewhere else entirely (Greenland)
    with rasterio.open(far, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(1e-5, 0.0, -40.0, 0.0, -1e-5, 70.0)) as ds:
        ds.write(np.full((3, 64, 64), 90, np.uint8))
    ids = {}
    for layer, path in (("before", scene.before), ("after", far)):
        r = _upload(client, researcher, seeded.slug, layer, path)
        assert r.status_code == 201, r.text
        ids[layer] = [r.json()["id"]]
    r = client.post(f"/api/projects/{seeded.slug}/ingest-jobs", headers=researcher,
                    json={"uploads": ids})
    assert r.status_code == 202, r.text
    job, _ = _wait_job(client, researcher, seeded.slug, r.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] and "overlap" in job["error"]["message"]
    tiles_after = _sql(settings, "SELECT count(*) FROM tiles t JOIN projects p ON "
                       "p.id = t.project_id WHERE p.slug = :s", s=seeded.slug)[0][0]
    assert tiles_after == tiles_before
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == files_before
    assert (store / "manifest.json").read_bytes() == manifest_before
    assert not (settings.tile_store_path / ".staging" / job["id"]).exists()
    view = client.get(f"/api/projects/{seeded.slug}/researcher", headers=researcher).json()
    assert view["status"] == "live"


def test_publish_staging_rolls_back_when_loading_fails(settings, tmp_path, monkeypatch):
    """If the manifest cannot be loaded, added tile files go and the old manifest returns."""
    from labeler.dashboard import researcher_jobs as jobs
    from labeler.errors import ManifestError
    from labeler.testing import write_manifest

    seeded = seed_project(settings, type="find", n_tiles=2)
    store = settings.tile_store_path
    old = (store / seeded.slug / "manifest.json").read_bytes()
    files_before = sorted(p for p in (store / seeded.slug).rglob("*"))
    staging = store / ".staging" / "job1"
    new_manifest = write_manifest(staging, seeded.slug, n_tiles=6, layers=["image"])

    def boom(*args, **kwargs):
        raise ManifestError("simulated failure while loading")

    monkeypatch.setattr("labeler.manifest.load_manifest", boom)
    spec = jobs.IngestJobSpec(job_id="job1", project_id=1, slug=seeded.slug,
                              database_url=settings.resolved_database_url,
                              tile_store=str(store), layers={})
    eng = _engine(settings)
    try:
        with pytest.raises(ManifestError):
            jobs.publish_staging(spec, eng, staging, new_manifest)
    finally:
        eng.dispose()
    assert (store / seeded.slug / "manifest.json").read_bytes() == old
    assert sorted(p for p in (store / seeded.slug).rglob("*")) == files_before


def test_second_ingest_while_one_runs_is_409(client, settings, researcher, scene):
    _create(client, researcher, "busy", type_="find")
    ids = []
    for _ in range(2):
        r = _upload(client, researcher, "busy", "image", scene.before)
        ids.append(r.json()["id"])
    pid = _sql(settings, "SELECT id FROM projects WHERE slug = 'busy'")[0][0]
    eng = _engine(settings)
    try:
        from labeler.dashboard import researcher_jobs as jobs
        from labeler.db import write_tx

        with write_tx(eng) as conn:  # a live job held by "another worker"
            jobs.create_job(conn, project_id=pid, request={}, created_by="other")
    finally:
        eng.dispose()
    r = client.post("/api/projects/busy/ingest-jobs", headers=researcher,
                    json={"uploads": {"image": [ids[0]]}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "ingest_running"
    r = client.post("/api/projects/busy/ingest-jobs", headers=researcher,
                    json={"uploads": {"image": ["0" * 32]}})
    assert r.status_code == 422 and "upload the file again" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- gold + review


def _settle(settings, slug: str, states: dict[int, tuple[str, str | None, float | None, dict]]):
    """Put tiles into retired/unresolved states as the labeler's retirement would."""
    for tid, (state, answer, conf, counts) in states.items():
        _sql(settings, "UPDATE tiles SET state = :st, consensus_answer = :a, confidence = :c, "
             "answer_counts = :ac, label_count = :n WHERE id = :id", st=state, a=answer, c=conf,
             ac=json.dumps(counts), n=sum(counts.values()), id=tid)


def test_gold_marking_and_promotion(client, settings, researcher):
    seeded = seed_project(settings, type="find", n_tiles=6, gold=1)
    t = seeded.tile_ids
    _settle(settings, seeded.slug, {
        t[0]: ("retired", "yes", 0.97, {"yes": 5}),
        t[1]: ("retired", "no", 0.92, {"no": 4, "yes": 1}),
        t[2]: ("retired", "yes", 0.60, {"yes": 3, "no": 2}),
        t[3]: ("unresolved", "no", 0.51, {"yes": 3, "no": 3}),
    })
    base = f"/api/projects/{seeded.slug}"
    # mark one by hand: an explanation is required
    r = client.post(base + "/researcher/gold", headers=researcher,
                    json={"tile_id": t[4], "answer": "yes"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "explanation"
    r = client.post(base + "/researcher/gold", headers=researcher,
                    json={"tile_id": t[4], "answer": "maybe", "explanation": "Hard to tell.",
                          "tutorial": True})
    assert r.status_code == 200 and r.json()["gold_answer"] == "maybe" and r.json()["tutorial"]
    r = client.post(base + "/researcher/gold", headers=researcher,
                    json={"tile_id": t[4], "answer": "nonsense", "explanation": "x"})
    assert r.status_code == 422

    # promote confident consensus tiles (>= 0.9): t0 and t1, not t2 (0.60) nor t3 (unresolved)
    r = client.post(base + "/gold/promote", headers=researcher,
                    json={"min_confidence": 0.9, "limit": 10})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["promoted"]) == sorted([t[0], t[1]])
    rows = dict(_sql(settings, "SELECT id, gold_answer FROM tiles WHERE id IN (:a, :b)",
                     a=t[0], b=t[1]))
    assert rows == {t[0]: "yes", t[1]: "no"}
    expl = _sql(settings, "SELECT gold_explanation FROM tiles WHERE id = :a", a=t[1])[0][0]
    assert "4 of 5 volunteers" in expl
    # a reviewed tile is promoted with the expert's answer, not the crowd's
    r = client.post(base + f"/review/{t[3]}", headers=researcher,
                    json={"answer": "yes", "note": "roof visible on the left", "source": "unresolved"})
    assert r.status_code == 200, r.text
    r = client.post(base + "/gold/promote", headers=researcher, json={"tile_ids": [t[3]]})
    assert r.json()["promoted"] == [t[3]]
    assert _sql(settings, "SELECT gold_answer FROM tiles WHERE id = :a", a=t[3])[0][0] == "yes"
    gold = client.get(base + "/researcher/tiles?which=gold", headers=researcher).json()["tiles"]
    assert {g["tile_id"] for g in gold} >= {t[0], t[1], t[3], t[4], *seeded.gold_ids}
    # unmark
    r = client.post(base + "/researcher/gold", headers=researcher,
                    json={"tile_id": t[0], "answer": None})
    assert r.status_code == 200 and r.json()["gold_answer"] is None
    audit = _sql(settings, "SELECT action FROM audit_log WHERE action LIKE 'gold.%'")
    assert {a for (a,) in audit} == {"gold.set", "gold.unset"}


def test_review_queue_and_expert_override_in_exports(client, settings, researcher, analyst):
    seeded = seed_project(settings, type="find", n_tiles=8, redundancy=3)
    slug, t = seeded.slug, seeded.tile_ids
    # volunteers label through the API; one leaves a note (flag)
    for i in range(3):
        csrf = start_volunteer(client, f"v{i}")
        task = client.get(f"/api/projects/{slug}/next", headers=csrf).json()
        for tile in task["tiles"]:
            note = "smoke over the village?" if i == 0 else None
            r = client.post(f"/api/projects/{slug}/labels", headers=csrf, json={
                "task_id": task["task_id"], "labels": [label_for(tile, "yes", flag_note=note)]})
            assert r.status_code == 200, r.text
        client.cookies.clear()
    flagged_tile = _sql(settings, "SELECT tile_id FROM labels WHERE flag_note IS NOT NULL")[0][0]
    _settle(settings, slug, {
        t[5]: ("unresolved", "no", 0.5, {"yes": 2, "no": 2}),
        t[6]: ("retired", "yes", 0.95, {"yes": 5}),
        t[7]: ("retired", "no", 0.99, {"no": 5}),
    })
    base = f"/api/projects/{slug}/review"
    q = client.get(base + "?queue=unresolved", headers=researcher).json()
    assert [i["tile_id"] for i in q["items"]] == [t[5]]
    assert q["counts"]["unresolved"] == 1 and q["counts"]["flagged"] == 1
    assert q["items"][0]["image_urls"]["image"].startswith(f"/tiles/{slug}/image/")
    fl = client.get(base + "?queue=flagged", headers=researcher).json()["items"]
    assert [i["tile_id"] for i in fl] == [flagged_tile]
    assert fl[0]["notes"][0]["note"] == "smoke over the village?"
    sample = client.get(base + "?queue=sample&seed=1", headers=researcher).json()["items"]
    # t6/t7 plus any tile the volunteers above retired confidently (redundancy 3)
    assert {i["tile_id"] for i in sample} >= {t[6], t[7]}
    assert all(i["state"] == "retired" and i["confidence"] >= 0.8 for i in sample)
    assert client.get(base + "?queue=sample&seed=1", headers=researcher).json()["items"] == sample
    assert client.get(base + "?queue=bogus", headers=researcher).status_code == 422

    # decide: t5 -> yes (overrides an unresolved crowd), t7 -> yes (overrides a confident "no")
    r = client.post(f"{base}/{t[5]}", headers=researcher,
                    json={"answer": "yes", "note": "clear roofs", "source": "unresolved"})
    assert r.status_code == 200 and r.json()["decision"]["answer"] == "yes"
    r = client.post(f"{base}/{t[7]}", headers=researcher,
                    json={"answer": "yes", "source": "sample", "make_gold": True})
    assert r.status_code == 422  # gold needs a feedback sentence
    r = client.post(f"{base}/{t[7]}", headers=researcher,
                    json={"answer": "yes", "source": "sample", "make_gold": True,
                          "explanation": "The roofs are intact."})
    assert r.status_code == 200 and r.json()["gold_answer"] == "yes"
    assert client.post(f"{base}/{t[7]}", headers=researcher,
                       json={"answer": "purple"}).status_code == 422
    q = client.get(base + "?queue=unresolved", headers=researcher).json()
    assert q["items"] == [] and q["counts"]["decided"] == 2
    decided = client.get(base + "?queue=decided", headers=researcher).json()["items"]
    assert {d["tile_id"] for d in decided} == {t[5], t[7]}

    # the audit log has both decisions
    rows = _sql(settings, "SELECT target, details FROM audit_log WHERE action = 'review.decide'")
    assert {r[0] for r in rows} == {f"tile:{t[5]}", f"tile:{t[7]}"}

    # exports (analyst download) apply the expert's answer
    r = client.get(f"/api/analyst/projects/{slug}/export/tiles.geojson", headers=analyst)
    assert r.status_code == 200, r.text
    props = {f["properties"]["tile_id"]: f["properties"] for f in r.json()["features"]}
    assert props[t[5]]["answer"] == "yes" and props[t[7]]["answer"] == "yes"

    # withdrawing brings the crowd back
    assert client.delete(f"{base}/{t[5]}", headers=researcher).status_code == 200
    assert client.delete(f"{base}/{t[5]}", headers=researcher).status_code == 404
    r = client.get(f"/api/analyst/projects/{slug}/export/tiles.geojson", headers=analyst)
    props = {f["properties"]["tile_id"]: f["properties"] for f in r.json()["features"]}
    assert props[t[5]]["answer"] != "yes" or props[t[5]].get("source") != "expert"


# --------------------------------------------------------------------------- access


def test_private_project_invites_and_restricted_exports(client, settings, researcher, analyst):
    seeded = seed_project(settings, type="find", n_tiles=4)
    slug = seeded.slug
    r = client.patch(f"/api/projects/{slug}/access", headers=researcher,
                     json={"private": True, "exports_restricted": True})
    assert r.json() == {"private": True, "exports_restricted": True}
    assert client.patch(f"/api/projects/{slug}/access", headers=researcher,
                        json={"private": "yes"}).status_code == 422

    # an uninvited volunteer neither sees nor gets the project
    csrf = start_volunteer(client, "outsider")
    listed = [p["slug"] for p in client.get("/api/projects").json()["projects"]]
    assert slug not in listed
    assert client.get(f"/api/projects/{slug}/next", headers=csrf).status_code == 404
    assert client.get(f"/api/projects/{slug}").status_code == 404

    # invite link -> redeem -> access
    inv = client.post(f"/api/projects/{slug}/invites", headers=researcher,
                      json={"label": "partner NGO"}).json()
    assert inv["url"] == "/join#" + inv["token"]
    r = client.post("/api/invites/redeem", json={"token": inv["token"]})  # no CSRF header
    assert r.status_code == 403
    r = client.post("/api/invites/redeem", headers=csrf, json={"token": inv["token"]})
    assert r.status_code == 200 and r.json() == {"slug": slug}
    assert slug in [p["slug"] for p in client.get("/api/projects").json()["projects"]]
    task = client.get(f"/api/projects/{slug}/next", headers=csrf)
    assert task.status_code == 200 and task.json()["tiles"]
    invites = client.get(f"/api/projects/{slug}/invites", headers=researcher).json()["invites"]
    assert invites[0]["members"] == 1 and "token" not in invites[0]

    # a withdrawn invite no longer admits anyone (members already admitted stay)
    assert client.delete(f"/api/projects/{slug}/invites/{inv['id']}",
                         headers=researcher).status_code == 200
    client.cookies.clear()
    csrf2 = start_volunteer(client, "late")
    r = client.post("/api/invites/redeem", headers=csrf2, json={"token": inv["token"]})
    assert r.status_code == 404
    assert client.get(f"/api/projects/{slug}/next", headers=csrf2).status_code == 404

    # exports: researcher yes, analyst no
    url = f"/api/analyst/projects/{slug}/export/tiles.geojson"
    assert client.get(url, headers=analyst).status_code == 403
    assert client.get(url, headers=researcher).status_code == 200
    client.patch(f"/api/projects/{slug}/access", headers=researcher,
                 json={"exports_restricted": False})
    assert client.get(url, headers=analyst).status_code == 200


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("backend", database_urls())
def test_issue5_migration_matches_models(backend, tmp_path):
    """The issue-5 Alembic revision creates exactly ``labeler/dashboard/models.py``."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import labeler.dashboard.models  # noqa: F401
    from labeler.migrate import upgrade
    from labeler.testing import fresh_database

    ours = {"ingest_jobs", "review_decisions", "project_access", "project_invites",
            "project_members"}
    with fresh_database(backend, tmp_path) as url:
        upgrade(url)
        eng = make_engine(url, pool_size=1)
        try:
            assert ours <= set(sa.inspect(eng).get_table_names())
            with eng.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                meta = sa.MetaData()
                for t in SQLModel.metadata.sorted_tables:
                    t.to_metadata(meta)
                diffs = [d for group in compare_metadata(ctx, meta)
                         for d in (group if isinstance(group, list) else [group])]
                mine = [d for d in diffs if any(
                    getattr(getattr(p, "table", None), "name", None) in ours
                    or getattr(p, "name", None) in ours or p in ours for p in d[1:])]
                assert mine == [], mine
        finally:
            eng.dispose()


def test_promotion_after_real_votes(client, settings, researcher):
    """Tiles retired by volunteers voting through the API are promoted with the crowd's
    answer and a sentence summarising the votes."""
    seeded = seed_project(settings, type="find", n_tiles=4, redundancy=3)
    slug = seeded.slug
    for i in range(3):  # three volunteers answer "yes": the tile they share retires
        csrf = start_volunteer(client, f"p{i}")
        task = client.get(f"/api/projects/{slug}/next", headers=csrf).json()
        r = client.post(f"/api/projects/{slug}/labels", headers=csrf, json={
            "task_id": task["task_id"], "labels": [label_for(t, "yes") for t in task["tiles"]]})
        assert r.status_code == 200, r.text
        client.cookies.clear()
    retired = [tid for (tid,) in _sql(settings, "SELECT t.id FROM tiles t JOIN projects p ON "
                                      "p.id = t.project_id WHERE p.slug = :s AND "
                                      "t.state = 'retired'", s=slug)]
    assert retired
    r = client.post(f"/api/projects/{slug}/gold/promote", headers=researcher,
                    json={"min_confidence": 0.9, "limit": 10})
    assert sorted(r.json()["promoted"]) == sorted(retired)
    rows = _sql(settings, "SELECT gold_answer, gold_explanation FROM tiles WHERE id = :t",
                t=retired[0])
    assert rows[0][0] == "yes" and rows[0][1] == "3 of 3 volunteers answered Yes."
    # nothing left to promote: live tiles never qualify
    r = client.post(f"/api/projects/{slug}/gold/promote", headers=researcher,
                    json={"min_confidence": 0.5, "limit": 10})
    assert r.json()["promoted"] == []


# --------------------------------------------------------------------------- plumbing


def test_stream_to_disk_is_atomic_and_checks_length(tmp_path):
    from labeler.dashboard.researcher_errors import NotAGeoTIFF, UploadIncomplete
    from labeler.dashboard.researcher_uploads import display_name, stream_to_disk

    async def chunks(*parts: bytes):
        for p in parts:
            yield p

    dest = tmp_path / "u" / "a.tif"
    size, sha = run_async(lambda: stream_to_disk(chunks(b"II*\x00", b"x" * 100), dest,
                                                 max_bytes=1000, declared_length=104))
    assert size == 104 and dest.read_bytes()[:4] == b"II*\x00" and len(sha) == 64
    with pytest.raises(UploadIncomplete):  # the client promised more than it sent
        run_async(lambda: stream_to_disk(chunks(b"MM\x00*", b"y" * 10), tmp_path / "b.tif",
                                         max_bytes=1000, declared_length=500))
    with pytest.raises(NotAGeoTIFF):  # refused on the first chunk
        run_async(lambda: stream_to_disk(chunks(b"\x89PNG\r\n", b"z" * 10), tmp_path / "c.tif",
                                         max_bytes=1000))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.tif"]
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\my scene (1).tif") == "my_scene_1_.tif"
    assert display_name(None) == "upload.tif"


def test_silent_job_is_reported_interrupted_and_does_not_block(settings):
    from datetime import timedelta

    from labeler.dashboard import researcher_jobs as jobs
    from labeler.db import write_tx
    from labeler.models import utcnow

    seeded = seed_project(settings, type="find", n_tiles=1)
    eng = _engine(settings)
    try:
        pid = _sql(settings, "SELECT id FROM projects WHERE slug = :s", s=seeded.slug)[0][0]
        with write_tx(eng) as conn:
            job_id = jobs.create_job(conn, project_id=pid, request={}, created_by="t")
            assert jobs.active_job(conn, pid).id == job_id
            t = jobs.IngestJob.__table__
            conn.execute(sa.update(t).where(t.c.id == job_id).values(
                status="running", heartbeat_at=utcnow() - jobs.STALE_AFTER - timedelta(seconds=1)))
        with eng.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == job_id)).one()
            out = jobs.job_json(row)
            assert out["status"] == "failed" and out["error"]["code"] == "interrupted"
            assert jobs.active_job(conn, pid) is None
        # a worker that died is recorded as failed right away
        with write_tx(eng) as conn:
            job2 = jobs.create_job(conn, project_id=pid, request={}, created_by="t")
        spec = jobs.IngestJobSpec(job_id=job2, project_id=pid, slug=seeded.slug,
                                  database_url=settings.resolved_database_url,
                                  tile_store=str(settings.tile_store_path), layers={})
        jobs._mark_worker_failure(spec, RuntimeError("killed"))
        with eng.connect() as conn:
            out = jobs.job_json(conn.execute(sa.select(t).where(t.c.id == job2)).one())
        assert out["status"] == "failed" and out["error"]["code"] == "worker_died"
    finally:
        eng.dispose()


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_job_consumes_its_uploads_before_it_reports_the_outcome(
        settings, tmp_path, monkeypatch, outcome):
    """Whoever sees the job done finds its uploads gone (they used to be removed just after
    the final status was written: a client polling the job could still see them)."""
    from labeler.dashboard import researcher_jobs as jobs
    from labeler.errors import ManifestError

    upload = tmp_path / "up.tif"
    upload.write_bytes(b"II*\0")
    seen: list[tuple[str, bool]] = []

    def spy(engine, job_id, **fields):
        if "status" in fields:
            seen.append((fields["status"], upload.exists()))

    def publish(*args, **kwargs):
        if outcome == "failed":
            raise ManifestError("simulated failure while loading")
        return {"tiles_added": 1}

    monkeypatch.setattr(jobs, "_update", spy)
    monkeypatch.setattr(jobs, "ingest_to_staging", lambda spec, staging, progress: staging)
    monkeypatch.setattr(jobs, "publish_staging", publish)
    spec = jobs.IngestJobSpec(job_id="j1", project_id=1, slug="p",
                              database_url=settings.resolved_database_url,
                              tile_store=str(tmp_path / "store"),
                              layers={"image": [str(upload)]})
    jobs.run_ingest_job(spec)
    assert seen == [("running", True), (outcome, False)]
