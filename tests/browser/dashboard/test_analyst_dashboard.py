"""The analyst dashboard in Debian chromium against a live server (SQLite and PostgreSQL).

A real project (synthetic before/after scene, ingested; simulated volunteers; one expert
decision): the imagery pyramid is requested and rendered for both layers, the tile, village and
chart layers are drawn, a tile click shows its pseudonymised votes and imagery, the filters hide
tiles, and an export button downloads a valid GeoJSON. Writes docs/screenshots/analyst-dashboard.png
with CROWDSIGHT_SCREENSHOTS=1. The harness fails the test on any external request, uncaught page
error or CSP violation.
"""

from __future__ import annotations

import json
import re

import geojson
import pyogrio
import pytest
import shapely
from shapely.geometry import shape

pytestmark = pytest.mark.browser

READY = "body[data-ready='1']"


def _until(page, js: str, timeout_ms: int = 30_000) -> None:
    """Poll a JS predicate with ``page.evaluate`` (``wait_for_function`` evaluates strings with
    eval(), which the page's CSP rightly forbids)."""
    for _ in range(timeout_ms // 100):
        if page.evaluate(js):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for: {js}")


def _tile_requests(page, slug: str) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    pat = re.compile(rf"/tiles/{slug}/(before|after)/\d+/\d+/\d+\.\w+$")

    def on_response(resp):
        m = pat.search(resp.url)
        if m:
            seen.append((m.group(1), resp.status))

    page.on("response", on_response)
    return seen


def test_analyst_map_layers_tile_panel_and_export(page, sign_in, scene_project, shoot,
                                                  tmp_path):
    slug = scene_project.slug
    tile_requests = _tile_requests(page, slug)
    sign_in(page, f"/analyst/{slug}")
    page.wait_for_selector(READY, timeout=60_000)

    # the token moved out of the address bar into this tab's sessionStorage
    assert "token=" not in page.url
    assert page.evaluate("sessionStorage.getItem('crowdsight.token')").startswith("cs_")
    assert page.locator("#project-title").inner_text() == f"{slug} (synthetic scene)"

    # imagery pyramid: "after" (where damage shows) requested, served and rendered first
    page.wait_for_selector(".imagery-after img.leaflet-tile-loaded")
    assert any(layer == "after" and status == 200 for layer, status in tile_requests)
    natural = page.evaluate("""() => [...document.querySelectorAll(
        '.imagery-after img.leaflet-tile-loaded')].map(i => i.naturalWidth)""")
    assert natural and all(w == 256 for w in natural)
    # ... and the switch to "before"
    page.locator("label[for='imagery-before']").click()
    page.wait_for_selector(".imagery-before img.leaflet-tile-loaded")
    assert page.locator(".imagery-after").count() == 0
    assert any(layer == "before" and status == 200 for layer, status in tile_requests)
    page.locator("label[for='imagery-after']").click()
    page.wait_for_selector(".imagery-after img.leaflet-tile-loaded")

    # GeoJSON layers: every task tile, at least one village outline
    tiles = page.locator("path.cs-tile")
    assert tiles.count() == len(scene_project.tiles)
    n_villages = page.locator("path.cs-village").count()
    assert n_villages >= 1
    assert page.locator("#village-table tbody tr").count() == n_villages
    assert page.locator("#village-table tbody tr th").first.inner_text() == "Village 1"
    # progress charts and the volunteer table
    assert page.locator("figure.chart svg").count() == 4
    assert page.locator("#volunteer-table tbody tr").count() == 9
    assert page.locator("#stats .stat").first.inner_text().startswith(
        str(len(scene_project.tiles)))

    # tile click -> side panel with pseudonymised votes, imagery and history
    tid = scene_project.reviewed_tile
    page.locator(f"path.cs-tile-{tid}").click(force=True)
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    page.wait_for_selector("#panel-body h3:has-text('History')")
    body = page.locator("#panel-body").inner_text()
    assert "Expert review" in body and "overrides the crowd" in body
    rows = page.locator("#panel-body table.votes tbody tr td.pseudo")
    assert rows.count() >= 3
    for i in range(rows.count()):
        assert re.fullmatch(r"v_[0-9a-f]{16}", rows.nth(i).inner_text())
    assert "sim-" not in page.content()  # raw volunteer ids never reach the page
    _until(page, """(() => { const imgs = [...document.querySelectorAll('#panel-body .imgs img')];
        return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0); })()""")
    assert "expert decision: bad_imagery" in page.locator("#panel-body .history").inner_text()
    page.mouse.move(2, 2)  # no hover tooltip in the screenshot
    page.wait_for_timeout(200)
    shoot(page, "analyst-dashboard", full_page=True)

    # filters: hiding "No" answers hides those tiles (fill and stroke transparent)
    def hidden_tiles() -> int:
        return page.evaluate("""() => [...document.querySelectorAll('path.cs-tile')]
            .filter(p => p.getAttribute('fill-opacity') === '0').length""")

    assert hidden_tiles() == 0
    page.locator("input[data-answer='no']").uncheck()
    n_hidden_no = hidden_tiles()
    assert n_hidden_no > 0
    page.locator("input[data-answer='no']").check()
    page.locator("#min-conf").fill("1")
    assert hidden_tiles() > 0
    page.locator("#min-conf").fill("0")
    assert hidden_tiles() == 0

    # export button -> a valid RFC 7946 GeoJSON download
    with page.expect_download() as info:
        page.locator("button[data-export='tiles.geojson']").click()
    download = info.value
    assert re.fullmatch(rf"{slug}-tiles-spatial-\d{{8}}\.geojson", download.suggested_filename)
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    text = path.read_text()
    fc = json.loads(text)
    assert geojson.loads(text).is_valid and "crs" not in fc
    assert len(fc["features"]) == len(scene_project.tiles)
    for f in fc["features"]:
        g = shape(f["geometry"])
        assert g.is_valid and shapely.is_ccw(g.exterior)
    reviewed = [f for f in fc["features"] if f["properties"]["tile_id"] == tid]
    assert reviewed[0]["properties"]["answer"] == "bad_imagery"
    assert pyogrio.read_info(path)["features"] == len(scene_project.tiles)
    assert "downloaded" in page.locator("#export-status").inner_text().lower()


def test_sign_in_form_and_bad_token(page, dashboard_url, scene_project, tokens):
    page.goto(f"{dashboard_url}/analyst/{scene_project.slug}")
    form = page.locator("#signin")
    form.wait_for(state="visible")
    assert page.locator("#dashboard").is_hidden()
    page.locator("#signin-token").fill("cs_wrong-token")
    page.locator("#signin-form button[type=submit]").click()
    _until(page, "document.querySelector('#signin-error').textContent.length > 0")
    assert "token" in page.locator("#signin-error").inner_text().lower()
    page.locator("#signin-token").fill(tokens["researcher"])
    page.locator("#signin-form button[type=submit]").click()
    page.wait_for_selector(READY, timeout=60_000)
    assert page.locator("path.cs-tile").count() == len(scene_project.tiles)


def test_project_list(page, sign_in, scene_project):
    sign_in(page, "/analyst/", role="admin")
    link = page.locator(f".project-list a[href='/analyst/{scene_project.slug}']")
    link.wait_for()
    link.click()
    page.wait_for_selector(READY, timeout=60_000)
    assert page.url.rstrip("/").endswith(f"/analyst/{scene_project.slug}")


def test_tiles_to_check_open_from_the_keyboard(page, sign_in, scene_project):
    sign_in(page, f"/analyst/{scene_project.slug}")
    page.wait_for_selector(READY, timeout=60_000)
    first = page.locator("#tocheck button").first
    tile_id = int(first.get_attribute("data-tile"))
    first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#panel-body h3:has-text('History')")
    assert page.locator("#panel").is_visible()
    # the panel's close button takes the focus; Enter closes the panel again
    assert page.evaluate("document.activeElement.id") == "panel-close"
    assert page.locator(f"path.cs-tile-{tile_id}").get_attribute("stroke") == "#ffbf47"
    page.keyboard.press("Enter")
    assert page.locator("#panel").is_hidden()


def test_refresh_shows_new_votes_and_researcher_link(page, sign_in, scene_project,
                                                     labeler_settings):
    from labeler.dashboard.analyst_testing import Vote, insert_votes
    from labeler.db import make_engine

    sign_in(page, f"/analyst/{scene_project.slug}", role="researcher")
    page.wait_for_selector(READY, timeout=60_000)
    link = page.locator("#to-researcher")
    assert link.is_visible()
    assert link.get_attribute("href") == f"/researcher/#p={scene_project.slug}"
    votes_before = int(page.locator("#stats .stat").nth(4).locator(".v").inner_text())
    unvoted = [t["id"] for t in scene_project.tiles][-1]
    engine = make_engine(labeler_settings.resolved_database_url, pool_size=1)
    try:
        insert_votes(engine, scene_project.slug,
                     [Vote(unvoted, f"late-{i}", "yes") for i in range(3)])
    finally:
        engine.dispose()
    page.locator("#refresh").click()
    page.wait_for_selector(READY, timeout=60_000)
    votes_after = int(page.locator("#stats .stat").nth(4).locator(".v").inner_text())
    assert votes_after == votes_before + 3


def test_mark_project_structures_on_the_map(page, sign_in, labeler_settings):
    from labeler.dashboard.analyst_testing import Vote, insert_votes
    from labeler.db import make_engine
    from labeler.testing import seed_project

    proj = seed_project(labeler_settings, type="mark", n_tiles=4, redundancy=3)
    w, s, e, n = proj.tiles[proj.tile_ids[0]]["bounds"]
    lon, lat = (w + e) / 2, (s + n) / 2
    votes = [Vote(proj.tile_ids[0], f"m{k}", "marked",
                  points=[(lon + k * 1e-5, lat), (lon + 3e-4, lat + k * 1e-5)]) for k in range(3)]
    engine = make_engine(labeler_settings.resolved_database_url, pool_size=1)
    try:
        insert_votes(engine, proj.slug, votes)
    finally:
        engine.dispose()
    sign_in(page, f"/analyst/{proj.slug}")
    page.wait_for_selector(READY, timeout=60_000)
    page.wait_for_selector(".imagery-image img.leaflet-tile-loaded")
    assert page.locator("path.cs-structure").count() == 2
    assert page.locator("path.cs-tile").count() == 4
    page.locator("#show-structures").uncheck()
    assert page.locator("path.cs-structure").count() == 0
