"""Manifest loading: idempotent, compare pairs only, store confinement, real ingest output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.app import create_app
from labeler.db import make_engine
from labeler.errors import ManifestError, ValidationError
from labeler.manifest import load_manifest
from labeler.testing import create_token, label_for, start_volunteer, write_manifest


@pytest.fixture
def engine(settings: Settings):
    eng = make_engine(settings.resolved_database_url, pool_size=2)
    yield eng
    eng.dispose()


def _tiles(engine, slug: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT t.z, t.x, t.y FROM tiles t JOIN projects p ON p.id = t.project_id "
            "WHERE p.slug = :s ORDER BY t.x, t.y"), {"s": slug}).all()


def test_load_is_idempotent_and_grows(engine, settings: Settings) -> None:
    store = settings.tile_store_path
    m = write_manifest(store, "area", n_tiles=4, layers=["image"])
    r1 = load_manifest(engine, m, "area-find", tile_store=store, create=True,
                       project_fields={"type": "find", "question": "Huts?"})
    assert (r1.tiles_added, r1.tiles_existing, r1.tiles_total) == (4, 0, 4)
    r2 = load_manifest(engine, m, "area-find", tile_store=store)
    assert (r2.tiles_added, r2.tiles_existing, r2.tiles_total) == (0, 4, 4)
    before = _tiles(engine, "area-find")
    m = write_manifest(store, "area", n_tiles=6, layers=["image"], grid_cols=2)
    r3 = load_manifest(engine, m, "area-find", tile_store=store)
    assert r3.tiles_total == len(set(before) | set(_tiles(engine, "area-find")))
    assert set(before) <= set(_tiles(engine, "area-find"))
    with engine.connect() as conn:
        actions = [r[0] for r in conn.execute(sa.text("SELECT action FROM audit_log ORDER BY id"))]
    assert actions.count("project.load_manifest") == 3


def test_compare_uses_only_complete_pairs(engine, settings: Settings) -> None:
    store = settings.tile_store_path
    m = write_manifest(store, "pair", n_tiles=4, layers=["after", "before"])
    data = json.loads(m.read_text())
    data["tasks"][0]["layers"] = ["before"]
    m.write_text(json.dumps(data))
    r = load_manifest(engine, m, "pair-cmp", tile_store=store, create=True,
                      project_fields={"type": "compare"})
    assert r.tiles_total == 3 and r.layers == ["before", "after"]
    r = load_manifest(engine, m, "pair-find", tile_store=store, create=True,
                      project_fields={"type": "find"})
    assert r.tiles_total == 4


def test_refuses_bad_manifests(engine, settings: Settings, tmp_path: Path) -> None:
    store = settings.tile_store_path
    outside = write_manifest(tmp_path / "elsewhere", "x", n_tiles=1, layers=["image"])
    with pytest.raises(ManifestError, match="outside the tile store"):
        load_manifest(engine, outside, "p", tile_store=store, create=True)
    with pytest.raises(ManifestError, match="outside the tile store"):
        load_manifest(engine, "../../etc/passwd", "p", tile_store=store, create=True)
    m = write_manifest(store, "bad", n_tiles=1, layers=["image"])
    with pytest.raises(ValidationError, match="--create"):
        load_manifest(engine, m, "missing", tile_store=store)
    m.write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(ManifestError, match="crowdsight-manifest/1"):
        load_manifest(engine, m, "p", tile_store=store, create=True)
    m.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(engine, m, "p", tile_store=store, create=True)
    single = write_manifest(store, "single", n_tiles=1, layers=["image"])
    with pytest.raises(ManifestError, match="two layers"):
        load_manifest(engine, single, "cmp", tile_store=store, create=True,
                      project_fields={"type": "compare"})
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tiles")).scalar_one() == 0


def test_api_and_cli_load(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    store = settings.tile_store_path
    m = write_manifest(store, "town", n_tiles=3, layers=["image"])
    with TestClient(create_app(settings)) as c:
        auth = {"Authorization": f"Bearer {create_token(settings, 'researcher')}"}
        assert c.post("/api/projects", headers=auth, json={
            "slug": "town", "type": "find", "question": "Roofs?"}).status_code == 201
        r = c.post("/api/projects/town/manifest", headers=auth, json={"path": "town/manifest.json"})
        assert r.status_code == 200 and r.json()["tiles_added"] == 3
        r = c.post("/api/projects/town/manifest", headers=auth, json={"path": "town"})
        assert r.json()["tiles_added"] == 0 and r.json()["tiles_total"] == 3
        # the API takes the coverage threshold too (default: CROWDSIGHT_MIN_TASK_COVERAGE)
        assert r.json()["min_coverage"] == settings.min_task_coverage
        r = c.post("/api/projects/town/manifest", headers=auth,
                   json={"path": "town", "min_coverage": 2})
        assert r.status_code == 422 and r.json()["error"]["field"] == "min_coverage"
    from crowdsight.cli import main

    monkeypatch.setenv("CROWDSIGHT_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CROWDSIGHT_TILE_STORE", str(store))
    monkeypatch.setenv("CROWDSIGHT_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    out = runner.invoke(main, ["project", "load-manifest", "--project", "town-cmp", "--create",
                               "--type", "find", "--question", "Burned?", "--block", "2x1", str(m)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["tiles_added"] == 3
    again = runner.invoke(main, ["project", "load-manifest", "--project", "town-cmp", str(m)])
    assert json.loads(again.stdout)["tiles_added"] == 0
    pub = runner.invoke(main, ["project", "publish", "town-cmp"])
    assert pub.exit_code == 0 and json.loads(pub.stdout)["status"] == "live"
    tok = runner.invoke(main, ["token", "create", "--role", "admin", "--name", "ops"])
    assert tok.exit_code == 0 and tok.stdout.strip().startswith("cs_")
    listed = runner.invoke(main, ["token", "list"])
    assert tok.stdout.strip() not in listed.stdout and '"ops"' in listed.stdout
    bad = runner.invoke(main, ["project", "load-manifest", "--project", "nope", str(m)])
    assert bad.exit_code != 0 and "--create" in bad.output


@pytest.mark.slow
def test_real_ingest_output_loads_and_serves(settings: Settings, tmp_path: Path) -> None:
    ingest = pytest.importorskip("ingest")
    scene = ingest.generate_scene(tmp_path / "scene", size=256, seed=1)
    store = settings.tile_store_path
    manifest = ingest.ingest({"before": [scene.before], "after": [scene.after]}, store, "scene")
    assert manifest["tasks"]
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        r = load_manifest(engine, store / "scene" / "manifest.json", "scene-cmp", tile_store=store,
                          create=True, project_fields={"type": "compare"})
        from labeler.projects import set_status
        set_status(engine, "scene-cmp", "live", actor="test")
    finally:
        engine.dispose()
    assert r.tiles_total >= 1 and r.layers == ["before", "after"]
    with TestClient(create_app(settings)) as c:
        start_volunteer(c)
        task = c.get("/api/projects/scene-cmp/next").json()
        for url in task["tiles"][0]["image_urls"].values():
            img = c.get(url)
            assert img.status_code == 200 and img.headers["content-type"].startswith("image/")
        tj = c.get("/tiles/scene/before/tilejson.json").json()
        assert tj["maxzoom"] == manifest["task_zoom"]


def _with_coverage(m: Path, coverages: list[dict | None]) -> None:
    data = json.loads(m.read_text())
    for task, cov in zip(data["tasks"], coverages):
        task.pop("coverage", None)
        if cov is not None:
            task["coverage"] = cov
    m.write_text(json.dumps(data))


def _keys(engine, slug: str) -> set[tuple[int, int]]:
    return {(x, y) for _, x, y in _tiles(engine, slug)}


def test_nearly_empty_tasks_are_skipped(engine, settings: Settings) -> None:
    store = settings.tile_store_path
    m = write_manifest(store, "edge", n_tiles=6, layers=["after", "before"], grid_cols=6)
    _with_coverage(m, [
        {"after": 0.2, "before": 1.0},   # after mostly nodata: not a usable pair
        {"after": 0.3, "before": 0.3},   # edge of both
        {"after": 0.55, "before": 0.6},
        None,                            # older manifest entry: fully covered
        {"before": 0.9},                 # layer missing from the map: fully covered
        {"after": 1.0, "before": 0.05},
    ])
    xs = [t["x"] for t in json.loads(m.read_text())["tasks"]]
    r = load_manifest(engine, m, "edge-cmp", tile_store=store, create=True,
                      project_fields={"type": "compare"})
    assert (r.tiles_added, r.tiles_skipped, r.tiles_removed, r.tiles_total) == (3, 3, 0, 3)
    assert {x for x, _ in _keys(engine, "edge-cmp")} == {xs[2], xs[3], xs[4]}
    assert r.to_json()["tiles_skipped"] == 3 and r.to_json()["min_coverage"] == 0.5
    # same threshold again: nothing changes
    again = load_manifest(engine, m, "edge-cmp", tile_store=store)
    assert (again.tiles_added, again.tiles_skipped, again.tiles_removed,
            again.tiles_total) == (0, 3, 0, 3)
    # find projects use the best layer
    f = load_manifest(engine, m, "edge-find", tile_store=store, create=True,
                      project_fields={"type": "find"})
    assert (f.tiles_total, f.tiles_skipped) == (5, 1)
    assert xs[1] not in {x for x, _ in _keys(engine, "edge-find")}
    # 0 loads everything; bad thresholds are refused before anything changes
    assert load_manifest(engine, m, "edge-cmp", tile_store=store,
                         min_coverage=0).tiles_total == 6
    with pytest.raises(ValidationError, match="between 0 and 1"):
        load_manifest(engine, m, "edge-cmp", tile_store=store, min_coverage=1.5)
    assert len(_keys(engine, "edge-cmp")) == 6


def test_raising_the_threshold_never_deletes_labelled_tiles(engine, settings: Settings) -> None:
    from labeler.projects import set_status

    store = settings.tile_store_path
    m = write_manifest(store, "strip", n_tiles=4, layers=["image"])
    r = load_manifest(engine, m, "strip", tile_store=store, create=True, min_coverage=0,
                      project_fields={"type": "find", "question": "Huts?", "redundancy": 1})
    assert r.tiles_total == 4
    set_status(engine, "strip", "live", actor="test")
    with TestClient(create_app(settings)) as c:
        h = start_volunteer(c)
        task = c.get("/api/projects/strip/next").json()
        tile = task["tiles"][0]
        assert c.post("/api/projects/strip/labels", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(tile, "yes")]}).status_code == 200
    labelled = (tile["x"], tile["y"])
    with engine.connect() as conn:
        n_labels = conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one()
        busy = {(x, y) for x, y in conn.execute(sa.text(
            "SELECT t.x, t.y FROM tiles t WHERE EXISTS (SELECT 1 FROM labels l WHERE "
            "l.tile_id = t.id) OR EXISTS (SELECT 1 FROM leases e WHERE e.tile_id = t.id)"))}
    assert labelled in busy and n_labels == 1
    _with_coverage(m, [{"image": 0.1}] * 4)  # a re-ingest says every tile is nearly empty
    r = load_manifest(engine, m, "strip", tile_store=store, min_coverage=0.5)
    assert (r.tiles_skipped, r.tiles_removed) == (4, 4 - len(busy))
    assert _keys(engine, "strip") == busy
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one() == n_labels
    again = load_manifest(engine, m, "strip", tile_store=store, min_coverage=0.5)
    assert (again.tiles_added, again.tiles_removed, again.tiles_total) == (0, 0, len(busy))


def test_cli_min_coverage(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdsight.cli import main

    store = settings.tile_store_path
    m = write_manifest(store, "cli-edge", n_tiles=3, layers=["image"])
    _with_coverage(m, [{"image": 1.0}, {"image": 0.7}, {"image": 0.2}])
    monkeypatch.setenv("CROWDSIGHT_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CROWDSIGHT_TILE_STORE", str(store))
    monkeypatch.setenv("CROWDSIGHT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CROWDSIGHT_MIN_TASK_COVERAGE", "0.8")
    runner = CliRunner()
    out = runner.invoke(main, ["project", "load-manifest", "--project", "cli-edge", "--create",
                               "--question", "Roofs?", str(m)])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert (body["tiles_total"], body["tiles_skipped"], body["min_coverage"]) == (1, 2, 0.8)
    assert "skipped 2 nearly-empty" in out.stderr
    out = runner.invoke(main, ["project", "load-manifest", "--project", "cli-edge",
                               "--min-coverage", "0.5", str(m)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["tiles_total"] == 2
    bad = runner.invoke(main, ["project", "load-manifest", "--project", "cli-edge",
                               "--min-coverage", "2", str(m)])
    assert bad.exit_code != 0 and "--min-coverage" in bad.output
