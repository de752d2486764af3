"""Analyst dashboard API end to end through the ASGI app, on SQLite and PostgreSQL.

A project seeded with hand-made votes of five volunteers (known majority answers), a gold tile,
a skip with a note and one expert decision; checked: per-tile results, the expert override,
volunteer pseudonyms, progress statistics, charts, tile detail, exports (GeoJSON validity and
RFC 7946, CSV with WKT, GeoPackage through GDAL, PNG/PDF map sheet), role checks, researcher-only
exports, cache invalidation, and structures/villages of a mark project.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geojson
import pyogrio
import pytest
import shapely
from PIL import Image
from shapely.geometry import shape
from starlette.testclient import TestClient

from consensus.export import pseudonym
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

VOLS = ["vol-alice", "vol-bob", "vol-carol", "vol-dan", "vol-erin"]
# tile index -> the five volunteers' answers (None: no vote)
ANSWERS = {
    0: ["yes", "yes", "yes", "yes", "yes"],
    1: ["no", "no", "no", "no", "no"],
    2: ["yes", "yes", "yes", "no", "maybe"],
    3: ["no", "no", "no", "yes", "bad_imagery"],
    4: ["bad_imagery", "bad_imagery", "bad_imagery", "bad_imagery", "no"],
    5: [None, None, None, None, None],
}
EXPECTED_MV = {0: "yes", 1: "no", 2: "yes", 3: "no", 4: "bad_imagery", 5: None}
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass
class Seeded:
    settings: object
    slug: str
    tiles: list[int]  # tile ids in ANSWERS order
    gold: int
    tokens: dict[str, str]

    def auth(self, role: str = "analyst") -> dict[str, str]:
        return {"Authorization": "Bearer " + self.tokens[role]}


def _seed(settings) -> Seeded:
    proj = seed_project(settings, type="find", n_tiles=6, gold=1, redundancy=5)
    tiles = proj.tile_ids
    gold = proj.gold_ids[0]
    votes = []
    for i, answers in ANSWERS.items():
        for v, a in zip(VOLS, answers):
            if a is not None:
                votes.append(Vote(tiles[i], v, a))
    votes += [Vote(gold, v, "yes" if v != "vol-erin" else "no") for v in VOLS]
    votes.append(Vote(tiles[5], "vol-alice", None, skipped=True, flag_note="all clouds here"))
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        insert_votes(engine, proj.slug, votes, start=START, step=timedelta(hours=2))
        from labeler.dashboard.researcher_review import decide
        from labeler.projects import config_from_row, get_row

        with engine.begin() as conn:
            decide(conn, config_from_row(get_row(conn, proj.slug)), tiles[3], answer="yes",
                   note="rubble visible on the after image", actor="test-researcher")
    finally:
        engine.dispose()
    tokens = {role: create_token(settings, role, role) for role in
              ("analyst", "researcher", "admin")}
    return Seeded(settings, proj.slug, tiles, gold, tokens)


@pytest.fixture(scope="module", params=database_urls())
def seeded(request, tmp_path_factory):
    """One seeded project per backend, shared by the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp(f"analyst-{request.param}")
    with migrated_database(request.param, tmp) as url:
        yield _seed(make_settings(tmp, url))


@pytest.fixture(scope="module")
def client(seeded):
    with TestClient(create_app(seeded.settings)) as c:
        yield c


def _base(s: Seeded) -> str:
    return f"/api/analyst/projects/{s.slug}"


def _by_tile(fc: dict) -> dict[int, dict]:
    return {f["properties"]["tile_id"]: f["properties"] for f in fc["features"]}


def test_seeded_votes_leave_consistent_tile_counters(seeded):
    """insert_votes keeps the tiles' counters (and ``has_room``) as the service would: full
    tiles (5 answers, redundancy 5) have no room, the others do."""
    from labeler.assign import recount

    engine = make_engine(seeded.settings.resolved_database_url, pool_size=1)
    try:
        assert recount(engine) == []
        with engine.connect() as conn:
            room = dict(conn.exec_driver_sql(
                "SELECT id, has_room FROM tiles WHERE gold_answer IS NULL").all())
    finally:
        engine.dispose()
    assert {i: bool(room[t]) for i, t in enumerate(seeded.tiles)} == {
        0: False, 1: False, 2: False, 3: False, 4: False, 5: True}


# ------------------------------------------------------------------------------ results


def test_majority_vote_results_match_the_hand_made_votes(client, seeded):
    r = client.get(_base(seeded) + "/map/tiles?method=mv", headers=seeded.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    props = _by_tile(r.json())
    for i, expected in EXPECTED_MV.items():
        p = props[seeded.tiles[i]]
        if i == 3:  # the expert decision overrides the crowd's "no"
            assert (p["answer"], p["source"], p["confidence"]) == ("yes", "expert", 1.0)
            assert p["crowd_answer"] == "no" and p["review_answer"] == "yes"
        else:
            assert p["answer"] == expected, (i, p)
            assert p["source"] == ("crowd" if expected else None)
    assert props[seeded.tiles[0]]["confidence"] == pytest.approx(1.0)
    assert props[seeded.tiles[0]]["yes_count"] == 5
    # maybe counts in total_count and agreement: (3^2 + 1 + 1 - 5) / (5 * 4)
    p2 = props[seeded.tiles[2]]
    assert (p2["total_count"], p2["maybe_count"]) == (5, 1)
    assert p2["agreement"] == pytest.approx(0.3)
    assert props[seeded.tiles[5]]["total_count"] == 0
    assert props[seeded.gold]["gold_answer"] == "yes"
    assert props[seeded.tiles[0]]["state"] == "retired"


def test_default_method_agrees_on_the_clear_tiles(client, seeded):
    r = client.get(_base(seeded) + "/map/tiles", headers=seeded.auth())
    fc = r.json()
    assert fc["metadata"]["method"] == "spatial"
    props = _by_tile(fc)
    assert props[seeded.tiles[0]]["answer"] == "yes"
    assert props[seeded.tiles[1]]["answer"] == "no"
    assert props[seeded.tiles[3]]["source"] == "expert"


def test_summary_and_project_list(client, seeded):
    r = client.get("/api/analyst/projects", headers=seeded.auth())
    assert r.status_code == 200
    [p] = [p for p in r.json()["projects"] if p["slug"] == seeded.slug]
    assert p["tiles"] == 7 and p["labels"] == 30
    s = client.get(_base(seeded), headers=seeded.auth()).json()
    assert s["stats"]["votes"] == 30 and s["stats"]["volunteers"] == 5
    assert {layer["name"] for layer in s["layers"]} == {"image"}
    assert s["layers"][0]["tiles"].endswith("/{z}/{x}/{y}.jpg")
    assert s["exports_allowed"] is True and "spatial" in s["methods"]
    assert [a["value"] for a in s["answers"]] == ["yes", "no", "maybe", "bad_imagery"]
    w, south, e, n = s["bounds"]
    assert w < e and south < n


def test_volunteer_table_is_pseudonymised(client, seeded):
    r = client.get(_base(seeded) + "/volunteers?method=mv", headers=seeded.auth())
    rows = {v["volunteer"]: v for v in r.json()["volunteers"]}
    assert set(rows) == {pseudonym(v, TEST_SECRET) for v in VOLS}
    assert not any(v in r.text for v in VOLS)
    erin = rows[pseudonym("vol-erin", TEST_SECRET)]
    assert (erin["gold_seen"], erin["gold_correct"]) == (1, 0)
    alice = rows[pseudonym("vol-alice", TEST_SECRET)]
    assert (alice["n_votes"], alice["n_skipped"], alice["gold_correct"]) == (6, 1, 1)
    assert 0 <= alice["skill"] <= 1


def test_tile_detail_votes_imagery_and_history(client, seeded):
    tid = seeded.tiles[3]
    r = client.get(_base(seeded) + f"/tiles/{tid}?method=mv", headers=seeded.auth())
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["result"]["answer"] == "yes" and d["result"]["crowd_answer"] == "no"
    assert d["review"]["note"] == "rubble visible on the after image"
    assert sorted(v["answer"] for v in d["votes"]) == sorted(ANSWERS[3])
    assert {v["volunteer"] for v in d["votes"]} == {pseudonym(v, TEST_SECRET) for v in VOLS}
    assert not any(v in r.text for v in VOLS)
    assert set(d["image_urls"]) == {"image"}
    assert client.get(d["image_urls"]["image"]).status_code == 200
    texts = [h["text"] for h in d["history"]]
    assert "expert decision: yes — rubble visible on the after image" in texts
    assert sum("answered" in t for t in texts) == 5
    assert [h["at"] for h in d["history"]] == sorted(h["at"] for h in d["history"])
    skipped = client.get(_base(seeded) + f"/tiles/{seeded.tiles[5]}", headers=seeded.auth())
    assert skipped.json()["votes"][0]["flag_note"] == "all clouds here"
    assert client.get(_base(seeded) + "/tiles/999999", headers=seeded.auth()).status_code == 404


def test_progress_statistics(client, seeded):
    r = client.get(_base(seeded) + "/progress?bucket=day&method=mv", headers=seeded.auth())
    st = r.json()
    assert st["bucket"] == "day"
    assert sum(st["votes"]) == 30 and st["totals"]["volunteers"] == 5
    assert st["tiles_labelled"][-1] == 6  # 5 voted tiles + gold; the skipped tile is not labelled
    # gold answers do not count towards retirement (as in the labeler): 5 tiles retired
    assert st["tiles_retired"][-1] == st["totals"]["retired"] == 5
    assert st["labels"] == sorted(st["labels"]) and len(st["labels"]) == len(st["votes"])
    assert sum(st["agreement_hist"]) == 6  # every tile with >= 2 votes
    hourly = client.get(_base(seeded) + "/progress?bucket=hour", headers=seeded.auth()).json()
    assert sum(hourly["votes"]) == 30 and len(hourly["labels"]) > len(st["labels"])
    bad = client.get(_base(seeded) + "/progress?bucket=week", headers=seeded.auth())
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "bucket"


@pytest.mark.parametrize("name", ["labelled", "votes", "volunteers", "agreement"])
def test_charts_are_accessible_svg(client, seeded, name):
    r = client.get(_base(seeded) + f"/charts/{name}.svg", headers=seeded.auth())
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.text)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == ns + "svg" and root.get("role") == "img"
    assert root.find(ns + "title").text and root.find(ns + "desc").text
    assert root.findall(f".//{ns}rect") or root.findall(f".//{ns}polyline")
    assert "style=" not in r.text and "<script" not in r.text


# ------------------------------------------------------------------------------ exports


def _export(client, seeded, layer, fmt, role="analyst", method="mv"):
    r = client.get(_base(seeded) + f"/export/{layer}.{fmt}?method={method}",
                   headers=seeded.auth(role))
    assert r.status_code == 200, r.text
    cd = r.headers["content-disposition"]
    assert cd.startswith("attachment;") and f'.{fmt}"' in cd and seeded.slug in cd
    return r


def test_geojson_export_is_valid_rfc7946(client, seeded, tmp_path):
    r = _export(client, seeded, "tiles", "geojson")
    assert r.headers["content-type"].startswith("application/geo+json")
    fc = r.json()
    assert "crs" not in fc and fc["metadata"]["method"] == "mv"
    assert fc["metadata"]["project"] == seeded.slug and fc["metadata"]["software_version"]
    assert geojson.loads(r.text).is_valid
    assert len(fc["features"]) == 7
    for f in fc["features"]:
        g = shape(f["geometry"])
        assert g.is_valid and g.geom_type == "Polygon"
        assert shapely.is_ccw(g.exterior)  # RFC 7946 exterior ring winding
        lon, lat = f["geometry"]["coordinates"][0][0]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert all(len(repr(c).split(".")[-1]) <= 7
                   for c in f["geometry"]["coordinates"][0][0])
    path = tmp_path / "tiles.geojson"
    path.write_bytes(r.content)
    info = pyogrio.read_info(path)
    assert info["features"] == 7 and info["geometry_type"] == "Polygon"
    assert _by_tile(fc)[seeded.tiles[3]]["answer"] == "yes"


def test_csv_export_has_wkt_geometry(client, seeded):
    r = _export(client, seeded, "tiles", "csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 7 and list(rows[0])[0] == "wkt"
    by_tile = {int(row["tile_id"]): row for row in rows}
    assert by_tile[seeded.tiles[2]]["answer"] == "yes"
    assert by_tile[seeded.tiles[5]]["answer"] == ""
    geom = shapely.from_wkt(by_tile[seeded.tiles[0]]["wkt"])
    assert geom.geom_type == "Polygon" and geom.is_valid


def test_gpkg_export_opens_with_gdal(client, seeded, tmp_path):
    r = _export(client, seeded, "tiles", "gpkg")
    assert r.headers["content-type"] == "application/geopackage+sqlite3"
    path = tmp_path / "tiles.gpkg"
    path.write_bytes(r.content)
    layers = pyogrio.list_layers(path)
    assert "tiles" in layers[:, 0]
    info = pyogrio.read_info(path, layer="tiles")
    assert info["features"] == 7 and "EPSG:4326" in info["crs"]
    assert "answer" in list(info["fields"])


def test_no_volunteer_ids_in_geographic_exports(client, seeded):
    secret_names = set(VOLS) | {pseudonym(v, TEST_SECRET) for v in VOLS}
    for layer in ("tiles", "structures", "villages"):
        for fmt in ("geojson", "csv"):
            body = _export(client, seeded, layer, fmt).text
            leaked = [v for v in secret_names if v in body]
            assert not leaked, (layer, fmt, leaked)
    vol = _export(client, seeded, "volunteers", "csv").text
    assert not any(v in vol for v in VOLS)
    assert all(pseudonym(v, TEST_SECRET) in vol for v in VOLS)
    header = vol.splitlines()[0].split(",")
    assert header[:3] == ["volunteer", "n_votes", "n_skipped"] and "p_yes_yes" in header


def test_map_sheet_png_and_pdf(client, seeded):
    png = _export(client, seeded, "villages", "png")
    assert png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as img:
        assert img.size == (1754, 1240)
    pdf = _export(client, seeded, "villages", "pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and b"/Count 1" in pdf.content


def test_villages_from_damaged_tiles(client, seeded):
    fc = _export(client, seeded, "villages", "geojson").json()
    assert geojson.loads(json.dumps(fc)).is_valid
    assert len(fc["features"]) >= 1
    p = fc["features"][0]["properties"]
    assert p["n_damaged_tiles"] >= 2 and 0 < p["share_damaged"] <= 1
    assert shapely.is_ccw(shape(fc["features"][0]["geometry"]).exterior)


@pytest.mark.parametrize("path,status,field", [
    ("/export/tiles.shp", 422, "format"),
    ("/export/people.csv", 422, "layer"),
    ("/export/tiles.png", 422, "format"),
    ("/export/volunteers.geojson", 422, "format"),
    ("/map/tiles?method=nonsense", 422, "method"),
    ("/charts/pie.svg", 404, "chart"),
])
def test_bad_requests_say_what_to_fix(client, seeded, path, status, field):
    r = client.get(_base(seeded) + path, headers=seeded.auth())
    assert r.status_code == status
    err = r.json()["error"]
    assert err["field"] == field and err["message"]


def test_unknown_project_is_404(client, seeded):
    r = client.get("/api/analyst/projects/no-such-project/map/tiles", headers=seeded.auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ------------------------------------------------------------------------------ auth

ENDPOINTS = ["", "/map/tiles", "/tiles/{tile}", "/progress", "/charts/votes.svg",
             "/volunteers", "/export/tiles.geojson"]


@pytest.mark.parametrize("suffix", ENDPOINTS)
def test_roles(client, seeded, suffix):
    url = _base(seeded) + suffix.format(tile=seeded.tiles[0])
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer cs_not-a-token"}).status_code == 401
    for role in ("analyst", "researcher", "admin"):
        assert client.get(url, headers=seeded.auth(role)).status_code == 200, role
    with TestClient(create_app(seeded.settings)) as volunteer:
        assert volunteer.post("/api/session", json={}).status_code in (200, 201)
        r = volunteer.get(url)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_project_list_needs_a_token(client, seeded):
    assert client.get("/api/analyst/projects").status_code == 401


def test_page_is_served_without_inline_code(client, seeded):
    r = client.get(f"/analyst/{seeded.slug}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "style=" not in html and "<script>" not in html
    assert "http://" not in html and "https://" not in html  # no CDN
    assert "/static/vendor/leaflet/leaflet.js" in html and "/static/dashboard/analyst.js" in html
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert client.get("/analyst").status_code == 200


# ------------------------------------------------------------------------------ mutations


@pytest.fixture(params=database_urls())
def fresh(request, tmp_path):
    with migrated_database(request.param, tmp_path) as url:
        yield _seed(make_settings(tmp_path, url))


def test_researcher_only_exports(fresh):
    from labeler.dashboard.researcher_access import set_access

    engine = make_engine(fresh.settings.resolved_database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            pid = conn.exec_driver_sql("SELECT id FROM projects WHERE slug = %s"
                                       if engine.dialect.name == "postgresql" else
                                       "SELECT id FROM projects WHERE slug = ?",
                                       (fresh.slug,)).scalar_one()
            set_access(conn, pid, exports_restricted=True)
    finally:
        engine.dispose()
    with TestClient(create_app(fresh.settings)) as c:
        url = _base(fresh) + "/export/tiles.geojson"
        r = c.get(url, headers=fresh.auth("analyst"))
        assert r.status_code == 403 and "researchers" in r.json()["error"]["message"]
        assert c.get(url, headers=fresh.auth("researcher")).status_code == 200
        assert c.get(url, headers=fresh.auth("admin")).status_code == 200
        s = c.get(_base(fresh), headers=fresh.auth("analyst")).json()
        assert s["exports_allowed"] is False
        # the analyst still sees the map and tables
        assert c.get(_base(fresh) + "/map/tiles", headers=fresh.auth("analyst")).status_code == 200


def test_results_follow_new_votes(fresh):
    with TestClient(create_app(fresh.settings)) as c:
        url = _base(fresh) + "/map/tiles?method=mv"
        before = _by_tile(c.get(url, headers=fresh.auth()).json())
        assert before[fresh.tiles[5]]["answer"] is None
        engine = make_engine(fresh.settings.resolved_database_url, pool_size=1)
        try:
            insert_votes(engine, fresh.slug, [Vote(fresh.tiles[5], v, "yes") for v in VOLS[1:4]],
                         start=START + timedelta(days=2))
        finally:
            engine.dispose()
        after = _by_tile(c.get(url, headers=fresh.auth()).json())
        assert after[fresh.tiles[5]]["answer"] == "yes"
        assert after[fresh.tiles[5]]["total_count"] == 3


# ------------------------------------------------------------------------------ mark project


def test_mark_project_structures_and_villages(tmp_path):
    with migrated_database("sqlite", tmp_path) as url:
        settings = make_settings(tmp_path, url)
        proj = seed_project(settings, type="mark", n_tiles=4, redundancy=3)
        t0 = proj.tiles[proj.tile_ids[0]]["bounds"]
        lon = (t0[0] + t0[2]) / 2
        lat = (t0[1] + t0[3]) / 2
        d = 1e-5  # ~1 m: clicks on the same building scatter a little
        house_a = (lon, lat)
        house_b = (lon + 0.0002, lat)  # ~18 m east: a second building
        votes = [Vote(proj.tile_ids[0], v, "marked",
                      points=[(house_a[0] + k * d, house_a[1]), (house_b[0], house_b[1] + k * d)])
                 for k, v in enumerate(VOLS[:3])]
        votes += [Vote(t, v, "marked", points=[]) for t in proj.tile_ids[1:] for v in VOLS[:3]]
        engine = make_engine(url, pool_size=1)
        try:
            insert_votes(engine, proj.slug, votes, start=START)
        finally:
            engine.dispose()
        token = create_token(settings, "analyst")
        with TestClient(create_app(settings)) as c:
            h = {"Authorization": f"Bearer {token}"}
            base = f"/api/analyst/projects/{proj.slug}"
            st = c.get(base + "/export/structures.geojson", headers=h)
            assert st.status_code == 200
            fc = st.json()
            assert geojson.loads(st.text).is_valid and len(fc["features"]) == 2
            for f in fc["features"]:
                assert f["geometry"]["type"] == "Point"
                assert f["properties"]["n_support"] == 3
            xs = sorted(f["geometry"]["coordinates"][0] for f in fc["features"])
            assert xs[0] == pytest.approx(house_a[0], abs=3e-5)
            assert xs[1] == pytest.approx(house_b[0], abs=3e-5)
            tiles = _by_tile(c.get(base + "/map/tiles", headers=h).json())
            assert tiles[proj.tile_ids[0]]["answer"] == "marked"
            assert tiles[proj.tile_ids[1]]["answer"] == "none"
            vil = c.get(base + "/export/villages.geojson", headers=h).json()
            assert len(vil["features"]) == 1
            assert vil["features"][0]["properties"]["n_structures"] == 2
            gpkg = c.get(base + "/export/structures.gpkg", headers=h)
            path = Path(tmp_path) / "s.gpkg"
            path.write_bytes(gpkg.content)
            assert pyogrio.read_info(path)["geometry_type"] == "Point"
            assert not any(v in st.text for v in VOLS)


@pytest.mark.parametrize("n_tiles", [0, 3])
def test_project_without_votes_still_serves_everything(tmp_path, n_tiles):
    with migrated_database("sqlite", tmp_path) as url:
        settings = make_settings(tmp_path, url)
        if n_tiles:
            slug = seed_project(settings, type="compare", n_tiles=n_tiles, status="draft").slug
        else:
            from labeler.projects import create_project

            engine = make_engine(url, pool_size=1)
            try:
                slug = create_project(engine, {"slug": "empty", "type": "find"}, actor="t").slug
            finally:
                engine.dispose()
        token = create_token(settings, "analyst")
        h = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(settings)) as c:
            base = f"/api/analyst/projects/{slug}"
            s = c.get(base, headers=h).json()
            assert s["stats"]["votes"] == 0 and (s["bounds"] is None) == (n_tiles == 0)
            for suffix in ("/map/tiles", "/map/structures", "/map/villages", "/progress",
                           "/volunteers", "/charts/votes.svg", "/charts/labelled.svg"):
                r = c.get(base + suffix, headers=h)
                assert r.status_code == 200, (suffix, r.text)
            assert len(c.get(base + "/map/tiles", headers=h).json()["features"]) == n_tiles
            for layer, fmt in (("tiles", "geojson"), ("tiles", "csv"), ("tiles", "gpkg"),
                               ("villages", "geojson"), ("villages", "png"),
                               ("volunteers", "csv")):
                r = c.get(base + f"/export/{layer}.{fmt}", headers=h)
                assert r.status_code == 200, (layer, fmt, r.text)
            fc = c.get(base + "/export/tiles.geojson", headers=h).json()
            assert geojson.loads(json.dumps(fc)).is_valid


def test_map_layers_are_gzipped_when_accepted(client, seeded, monkeypatch):
    import gzip as _gzip

    from labeler.dashboard import analyst

    url = _base(seeded) + "/map/tiles"
    plain = client.get(url, headers={**seeded.auth(), "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    with client.stream("GET", url, headers={**seeded.auth(), "Accept-Encoding": "gzip"}) as r:
        assert "content-encoding" not in r.headers  # small bodies are sent as they are
    monkeypatch.setattr(analyst, "GZIP_ABOVE", 100)
    with client.stream("GET", url, headers={**seeded.auth(), "Accept-Encoding": "gzip"}) as r:
        wire = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert json.loads(_gzip.decompress(wire)) == plain.json()
    assert len(wire) < len(plain.content)
