"""The volunteer page on real imagery: the 2011 Joplin tornado, before/after, from ../shared.

The imagery goes through the real pipeline (``ingest.pipeline.ingest`` -> tile store ->
``labeler.manifest.load_manifest``); tutorial and gold tiles are chosen from the xView2
model's damage polygons and marked through the researcher API with a bearer token. The test
checks the page with real 256-px JPEG tiles (sharp upscaling, context neighbours, before/after)
and, with ``CROWDSIGHT_SCREENSHOTS=1``, writes the README screenshots docs/screenshots/volunteer-*.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.shared, pytest.mark.slow]

TIMEOUT = 15_000


@pytest.fixture(scope="module")
def joplin_store(imagery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Joplin before/after tiled at z18 into a module-wide tile store (about 4 s)."""
    from ingest.pipeline import ingest

    d = imagery_dir / "joplin_tornado"
    store = tmp_path_factory.mktemp("joplin-store")
    ingest({"before": sorted((d / "pre").glob("*.tif")), "after": sorted((d / "post").glob("*.tif"))},
           store, "joplin", zoom=18, min_zoom=18, jobs=1)
    return store


@pytest.fixture
def labeler_settings(db_backend: str, tmp_path: Path, joplin_store: Path) -> Any:
    """Overrides conftest's: same fresh database, but the Joplin tile store."""
    from labeler.testing import make_settings, migrated_database

    with migrated_database(db_backend, tmp_path) as url:
        yield make_settings(tmp_path, url, tile_store=str(joplin_store))


def covered(store: Path, x: int, y: int) -> bool:
    """Both dates have imagery over (almost) the whole tile (no black nodata corner)."""
    import numpy as np
    from PIL import Image

    for layer in ("before", "after"):
        path = store / "joplin" / layer / "18" / str(x) / f"{y}.jpg"
        if not path.exists():
            return False
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"))
        if (a < 12).mean() > 0.01:
            return False
    return True


def damage_by_tile(store: Path, imagery_dir: Path, manifest: dict) -> dict[tuple[int, int], int]:
    """Number of 'major'/'destroyed' xView2 polygons touching each fully covered task tile."""
    from shapely.geometry import box, shape

    data = json.loads((imagery_dir / "joplin_tornado" / "vectors" /
                       "xview2_model_damage.geojson").read_text())
    hits = [shape(f["geometry"]) for f in data["features"] if f["properties"]["dmg"] >= 3]
    out = {}
    for t in manifest["tasks"]:
        if len(t["layers"]) == 2 and covered(store, t["x"], t["y"]):
            b = box(*t["bounds"])
            out[(t["x"], t["y"])] = sum(1 for g in hits if g.intersects(b))
    return out


def centre(x: int, y: int) -> str:
    import mercantile

    b = mercantile.bounds(x, y, 18)
    return f"{(b.west + b.east) / 2:.6f},{(b.south + b.north) / 2:.6f}"


def setup_projects(settings: Any, store: Path, imagery_dir: Path, base: str,
                   db_rows: Any) -> dict[str, Any]:
    from labeler.db import make_engine
    from labeler.manifest import load_manifest
    from labeler.testing import create_token

    manifest = json.loads((store / "joplin" / "manifest.json").read_text())
    damage = damage_by_tile(store, imagery_dir, manifest)
    ranked = sorted(damage, key=lambda k: (-damage[k], k))
    destroyed, intact = ranked[:3], [k for k in ranked if damage[k] == 0][:2]
    assert len(destroyed) == 3 and len(intact) == 2, "the Joplin imagery changed?"
    specs = {
        "joplin-damage": dict(type="compare", name="Joplin tornado: before / after",
                              question="Were buildings destroyed here?", context=True,
                              layers=["before", "after"], help_text=(
                                  "Compare the two dates. Destroyed buildings lose their roofs: "
                                  "you see bare walls, debris spread over the lot and trees "
                                  "stripped of leaves.\n\nIf clouds or blur hide the tile, "
                                  "answer Bad imagery.")),
        "joplin-find": dict(type="find", name="Joplin: find damaged blocks",
                            question="Which tiles show destroyed buildings?", layers=["after"],
                            block={"cols": 3, "rows": 2}),
        "joplin-mark": dict(type="mark", name="Joplin: mark destroyed buildings",
                            question="Click each destroyed building.", layers=["before", "after"]),
    }
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        for slug, fields in specs.items():
            load_manifest(engine, store / "joplin" / "manifest.json", slug, tile_store=store,
                          create=True, project_fields=fields, actor="test")
    finally:
        engine.dispose()
    token = create_token(settings, "researcher")
    headers = {"Authorization": f"Bearer {token}"}
    explain_yes = "The after image shows roofs torn off and debris across the lots."
    explain_no = "The houses still have intact roofs on both dates."
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        items = ([{"z": 18, "x": x, "y": y, "answer": "yes", "explanation": explain_yes,
                   "tutorial": True} for x, y in destroyed[:1]]
                 + [{"z": 18, "x": x, "y": y, "answer": "no", "explanation": explain_no,
                     "tutorial": True} for x, y in intact[:1]])
        r = client.post("/api/projects/joplin-damage/gold", json={"tiles": items})
        assert r.status_code == 200, r.text
        ids = {(row.x, row.y): row.id for row in db_rows(
            "SELECT t.id, t.x, t.y FROM tiles t JOIN projects p ON p.id = t.project_id "
                      "WHERE p.slug = 'joplin-damage'")}
        examples = [{"tile_id": ids[destroyed[1]], "answer": "yes",
                     "caption": "Roofs gone, walls and debris scattered: destroyed."},
                    {"tile_id": ids[intact[1]], "answer": "no",
                     "caption": "Same roofs on both dates: not destroyed."}]
        r = client.patch("/api/projects/joplin-damage", json={"examples": examples})
        assert r.status_code == 200, r.text
        for slug in specs:
            r = client.post(f"/api/projects/{slug}/publish")
            assert r.status_code == 200, r.text
    return {"destroyed": [centre(*k) for k in destroyed], "intact": [centre(*k) for k in intact]}


sqlite_only = pytest.mark.parametrize("db_backend", ["sqlite"])


def wait_task(page: Page, prev: str = "") -> str:
    """Wait for a new task to be shown and ready; returns its id."""
    page.wait_for_function(
        "prev => document.body.dataset.taskState === 'ready' && "
        "document.body.dataset.taskId && document.body.dataset.taskId !== prev", arg=prev)
    return page.evaluate("() => document.body.dataset.taskId")


@sqlite_only
def test_real_imagery_pages(page: Page, live_server: str, labeler_settings: Any,
                            joplin_store: Path, imagery_dir: Path, shoot: Any, db_rows: Any,
                            browser: Any, page_watch: Any) -> None:
    places = setup_projects(labeler_settings, joplin_store, imagery_dir, live_server, db_rows)
    near = places["destroyed"][2]  # a destroyed block that is neither a tutorial nor an example
    page.set_default_timeout(TIMEOUT)
    page.goto(live_server)
    page.fill("#display-name", "Joplin volunteer")
    page.click("#welcome-start")
    expect(page.locator("#project-list > li")).to_have_count(3)

    # tutorial with real example tiles (before/after pairs)
    page.click("button[data-slug='joplin-damage']")
    expect(page.locator("#screen-tutorial")).to_be_visible()
    expect(page.locator("#tutorial-items .practice-item")).to_have_count(2)
    expect(page.locator("#tutorial-items .practice-item").first.locator("img")).to_have_count(2)
    page.check("#tut-0-no")   # one of the two shows destroyed houses: "no" is wrong there
    page.check("#tut-1-no")
    page.click("#tutorial-check")
    wrong = page.locator(".practice-item.wrong")
    expect(wrong).to_have_count(1)
    expect(wrong.locator(".item-result")).to_contain_text("roofs torn off")
    shoot(page, "volunteer-tutorial", full_page=True)
    page.check(f"#tut-{wrong.get_attribute('data-index')}-yes")
    page.click("#tutorial-check")
    # passed (the answer is back) before leaving the page: navigating while the check is in
    # flight shows the tutorial again, as the page does not know it was passed yet
    expect(page.locator("#tutorial-result")).to_have_class("result ok")
    page.goto(live_server + f"#/p/joplin-damage?near={near}")

    # compare: a single tile with faded neighbours, real 256-px JPEGs shown large and crisp
    task = wait_task(page)
    expect(page.locator("#grid .context .context-img:visible")).to_have_count(8)
    after_src = page.locator("#grid .context img.context-img:visible").first.get_attribute("src")
    page.keyboard.press("b")  # the neighbours follow the centre to the before date
    before_src = page.locator("#grid .context img.context-img:visible").first.get_attribute("src")
    assert "/after/" in after_src and "/before/" in before_src
    page.keyboard.press("a")
    sizes = page.eval_on_selector_all(
        "#grid img.layer", "els => els.map(e => [e.naturalWidth, e.clientWidth, e.className])")
    assert all(nat == 256 for nat, _, _ in sizes), sizes
    assert all(cw >= 256 for _, cw, _ in sizes), f"tiles shown smaller than their pixels: {sizes}"
    assert any("pixelated" in cls for _, cw, cls in sizes if cw >= 512) or all(cw < 512 for _, cw, _ in sizes)
    page.focus("#swipe")
    for _ in range(5):
        page.keyboard.press("PageUp")
    expect(page.locator("#grid")).to_have_attribute("data-showing", "split")
    shoot(page, "volunteer-compare")

    # find: a 3x2 block of real tiles
    page.goto(live_server + f"#/p/joplin-find?near={near}")
    task = wait_task(page, task)
    n = page.locator("#grid .tile").count()
    assert 1 < n <= 6  # blocks follow the tile grid, so blocks at the edge of the imagery are partial
    page.locator("#grid .tile").nth(0).click()
    page.keyboard.press("1")
    page.keyboard.press("2")
    page.keyboard.press("1")
    shoot(page, "volunteer-find")

    # mark: points on the after image
    page.goto(live_server + f"#/p/joplin-mark?near={near}")
    wait_task(page, task)
    box = page.locator(".mark-surface").bounding_box()
    assert box is not None
    for fx, fy in [(0.3, 0.35), (0.62, 0.28), (0.45, 0.7)]:
        page.mouse.click(round(box["x"] + fx * box["width"]), round(box["y"] + fy * box["height"]))
    expect(page.locator(".point")).to_have_count(3)
    shoot(page, "volunteer-mark")

    # phone: the find block at 360 px, touch
    ctx = page_watch.attach(browser.new_context(
        viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True,
        device_scale_factor=2, locale="sq-AL", reduced_motion="reduce"))
    try:
        phone = ctx.new_page()
        phone.set_default_timeout(TIMEOUT)
        phone.goto(live_server)
        phone.tap("#welcome-start")
        phone.goto(live_server + f"#/p/joplin-find?near={near}")
        wait_task(phone)
        phone.locator("#grid .tile").nth(1).tap()
        phone.tap("#answers button[data-value='yes']")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 360
        shoot(phone, "volunteer-mobile")
    finally:
        ctx.close()
