"""``crowdsight export``: the same results as the dashboard's downloads, every layer and format."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import geojson
import pyogrio
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from consensus.export import pseudonym
from crowdsight.cli import main
from labeler.app import create_app
from labeler.dashboard.analyst_testing import Vote, insert_votes
from labeler.db import make_engine
from labeler.testing import (
    TEST_SECRET,
    create_token,
    database_urls,
    make_settings,
    migrated_database,
    seed_project,
)

VOLS = ["cli-ann", "cli-ben", "cli-cat"]


@pytest.fixture(scope="module", params=database_urls())
def project(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with migrated_database(request.param, tmp) as url:
        settings = make_settings(tmp, url)
        proj = seed_project(settings, type="compare", n_tiles=4, redundancy=3)
        t = proj.tile_ids
        answers = {t[0]: ["yes", "yes", "yes"], t[1]: ["no", "no", "yes"],
                   t[2]: ["yes", "yes", "no"]}
        engine = make_engine(url, pool_size=1)
        try:
            insert_votes(engine, proj.slug, [Vote(tile, v, a) for tile, ans in answers.items()
                                             for v, a in zip(VOLS, ans)],
                         start=datetime(2026, 11, 21, 9, tzinfo=UTC))
        finally:
            engine.dispose()
        env = {"CROWDSIGHT_DATABASE_URL": url, "CROWDSIGHT_SECRET_KEY": TEST_SECRET,
               "CROWDSIGHT_DATA_DIR": str(settings.data_dir),
               "CROWDSIGHT_TILE_STORE": str(settings.tile_store_path)}
        yield settings, proj, env


def run(env, *args):
    result = CliRunner().invoke(main, ["export", *args], env=env, catch_exceptions=False)
    return result


def test_geojson_matches_the_dashboard_download(project, tmp_path):
    settings, proj, env = project
    out = tmp_path / "tiles.geojson"
    r = run(env, "--project", proj.slug, "--layer", "tiles", "--out", str(out), "--method", "mv")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out.resolve())  # results on stdout, messages on stderr
    cli = json.loads(out.read_text())
    assert geojson.loads(out.read_text()).is_valid and "crs" not in cli
    answers = {f["properties"]["tile_id"]: f["properties"]["answer"] for f in cli["features"]}
    t = proj.tile_ids
    assert (answers[t[0]], answers[t[1]], answers[t[2]], answers[t[3]]) == ("yes", "no", "yes",
                                                                            None)
    token = create_token(settings, "analyst")
    with TestClient(create_app(settings)) as c:
        web = c.get(f"/api/analyst/projects/{proj.slug}/export/tiles.geojson?method=mv",
                    headers={"Authorization": f"Bearer {token}"}).json()
    assert [f["properties"] for f in web["features"]] == [f["properties"] for f in cli["features"]]
    assert [f["geometry"] for f in web["features"]] == [f["geometry"] for f in cli["features"]]
    assert pyogrio.read_info(out)["features"] == 4


def test_csv_gpkg_and_format_from_extension(project, tmp_path):
    _, proj, env = project
    r = run(env, "--project", proj.slug, "--out", str(tmp_path / "t.csv"))
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(rows) == 4 and rows[0]["wkt"].startswith("POLYGON")
    r = run(env, "--project", proj.slug, "--layer", "villages", "--format", "gpkg",
            "--out", str(tmp_path / "v.gpkg"))
    assert r.exit_code == 0, r.output
    info = pyogrio.read_info(tmp_path / "v.gpkg")
    assert info["features"] >= 1 and "EPSG:4326" in info["crs"]


def test_volunteers_csv_uses_pseudonyms(project, tmp_path):
    _, proj, env = project
    r = run(env, "--project", proj.slug, "--layer", "volunteers", "--out", "-")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["volunteer"] for row in rows} == {pseudonym(v, TEST_SECRET) for v in VOLS}
    assert not any(v in r.stdout for v in VOLS)


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_map_sheet(project, tmp_path, fmt):
    _, proj, env = project
    out = tmp_path / f"sheet.{fmt}"
    r = run(env, "--project", proj.slug, "--format", fmt, "--out", str(out))
    assert r.exit_code == 0, r.output
    if fmt == "png":
        with Image.open(out) as img:
            assert img.size == (1754, 1240)
    else:
        assert out.read_bytes().startswith(b"%PDF")


def test_errors_are_clear_and_leave_no_file(project, tmp_path):
    _, proj, env = project
    out = tmp_path / "x.geojson"
    r = CliRunner().invoke(main, ["export", "--project", "nope", "--out", str(out)], env=env)
    assert r.exit_code != 0 and "no project 'nope'" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["export", "--project", proj.slug, "--out", str(tmp_path / "x")],
                           env=env)
    assert r.exit_code == 2 and "--format" in r.output
    r = CliRunner().invoke(main, ["export", "--project", proj.slug, "--layer", "volunteers",
                                  "--format", "geojson", "--out", str(out)], env=env)
    assert r.exit_code == 2 and "csv only" in r.output
    r = CliRunner().invoke(main, ["export", "--project", proj.slug, "--method", "magic",
                                  "--out", str(out)], env=env)
    assert r.exit_code == 1 and "unknown consensus method" in r.output and not out.exists()
    assert not list(tmp_path.glob(".*.part"))
