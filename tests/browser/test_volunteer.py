"""The volunteer page driven in Debian chromium against the real service and database.

Every test runs the page served by ``labeler.app.create_app`` on a live uvicorn, with the
offline guard of conftest.py (no request may leave 127.0.0.1; no page error; no CSP
violation), and checks what reached the database.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from labeler.testing import seed_project

pytestmark = pytest.mark.browser

TIMEOUT = 15_000


# ------------------------------------------------------------------------------ helpers

class Volunteer:
    """Drives the volunteer page like a person would (keyboard first)."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.task_id = ""
        page.set_default_timeout(TIMEOUT)

    def start(self, name: str | None = "Tester") -> None:
        self.page.goto(self.base)
        expect(self.page.locator("#screen-welcome")).to_be_visible()
        if name:
            self.page.fill("#display-name", name)
        self.page.click("#welcome-start")
        expect(self.page.locator("#screen-projects")).to_be_visible()

    def open(self, slug: str) -> None:
        self.page.click(f"button[data-slug='{slug}']")

    def wait_task(self) -> str:
        """Wait until a new task is shown and ready; returns its task_id."""
        self.page.wait_for_function(
            "prev => document.body.dataset.taskState === 'ready' && "
            "document.body.dataset.taskId && document.body.dataset.taskId !== prev",
            arg=self.task_id)
        self.task_id = self.page.evaluate("document.body.dataset.taskId")
        return self.task_id

    def tile_ids(self) -> list[int]:
        return [int(x) for x in self.page.eval_on_selector_all(
            "#grid [data-tile-id]", "els => els.map(e => e.dataset.tileId)")]


def labels_of(db_rows: Any, display_name: str) -> list[Any]:
    return db_rows(
        "SELECT l.tile_id, l.answer, l.points, l.skipped, l.flag_note, l.idempotency_key, "
        "p.slug FROM labels l JOIN volunteers v ON v.id = l.volunteer_id "
        "JOIN projects p ON p.id = l.project_id WHERE v.display_name = :n ORDER BY l.id",
        n=display_name)


def points_of(raw: Any) -> list[list[float]]:
    return json.loads(raw) if isinstance(raw, str) else (raw or [])


def mercator_lonlat(bounds: list[float], fx: float, fy: float) -> tuple[float, float]:
    """Reference for the page's math: y is linear in the Mercator ordinate, not in latitude."""
    w, s, e, n = bounds
    merc = lambda lat: math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))  # noqa: E731
    y = merc(n) + fy * (merc(s) - merc(n))
    return w + fx * (e - w), math.degrees(2 * math.atan(math.exp(y)) - math.pi / 2)


# ------------------------------------------------------------------------------ the main flow

def test_new_volunteer_full_flow(page: Page, live_server: str, labeler_settings: Any,
                                 db_rows: Any) -> None:
    """Tutorial, 5 find tasks by keyboard, compare flip + swipe, mark + undo, language switch;
    the database then holds exactly those labels (SQLite and PostgreSQL)."""
    find = seed_project(labeler_settings, type="find", slug="villages", n_tiles=5, tutorial=2,
                        name="Find villages", question="Does this tile show an inhabited settlement?",
                        help_text="Look for roofs and compounds.\n\nBurned huts look like dark rings.")
    compare = seed_project(labeler_settings, type="compare", slug="damage", n_tiles=1,
                           name="Before / after", question="Were structures destroyed here?")
    mark = seed_project(labeler_settings, type="mark", slug="huts", n_tiles=1,
                        name="Mark huts", question="Click each destroyed structure.")
    v = Volunteer(page, live_server)
    v.start("Ana")
    expect(page.locator("#project-list > li")).to_have_count(3)

    # --- tutorial: a wrong answer is explained and blocks; the right ones pass
    v.open("villages")
    expect(page.locator("#screen-tutorial")).to_be_visible()
    expect(page.locator("#tutorial-help")).to_contain_text("Burned huts look like dark rings.")
    expected = [find.gold_answers.get(t) or a for t, a in zip(find.tutorial_ids, ("yes", "no"))]
    wrong = "no" if expected[0] == "yes" else "yes"
    page.check(f"#tut-0-{wrong}")
    page.check(f"#tut-1-{expected[1]}")
    page.click("#tutorial-check")
    expect(page.locator("#tutorial-result")).to_have_class("result bad")
    expect(page.locator(".practice-item[data-index='0'] .item-result")).to_contain_text("This tile shows")
    expect(page.locator("#tutorial-continue")).to_be_hidden()
    page.select_option("#lang-select", "sr")  # the tutorial re-translates, answers kept
    expect(page.locator("label[for='tut-1-yes']")).to_have_text("Da")
    expect(page.locator(f"#tut-1-{expected[1]}")).to_be_checked()
    page.select_option("#lang-select", "en")
    page.check(f"#tut-0-{expected[0]}")
    page.click("#tutorial-check")
    expect(page.locator("#tutorial-result")).to_have_class("result ok")
    page.keyboard.press("Enter")  # the continue button has focus

    # --- five find tasks, keyboard only: 1 = yes, 2 = no
    find_answers: dict[int, str] = {}
    for i in range(5):
        v.wait_task()
        (tile,) = v.tile_ids()
        key, answer = ("1", "yes") if i % 2 == 0 else ("2", "no")
        page.keyboard.press(key)
        expect(page.locator(f"#answers button[data-value='{answer}']")).to_have_attribute(
            "aria-pressed", "true")
        find_answers[tile] = answer
        page.keyboard.press("ArrowRight")
    expect(page.locator("#screen-done")).to_be_visible()
    assert set(find_answers) == set(find.tile_ids)

    # --- language switch: Albanian, remembered, lang attribute updated
    page.select_option("#lang-select", "sq")
    expect(page.locator("html")).to_have_attribute("lang", "sq")
    expect(page.locator("#done-projects")).to_have_text("Zgjidhni një projekt tjetër")
    assert page.evaluate("localStorage.getItem('crowdsight.lang')") == "sq"
    page.click("#done-projects")
    expect(page.locator("#projects-heading")).to_have_text("Zgjidhni një projekt")

    # --- compare: flip with keys and buttons, swipe with the keyboard
    v.open("damage")
    v.wait_task()
    grid = page.locator("#grid")
    expect(grid).to_have_attribute("data-showing", "after")
    page.keyboard.press("b")
    expect(grid).to_have_attribute("data-showing", "before")
    expect(page.locator("#btn-before")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("t")
    expect(grid).to_have_attribute("data-showing", "after")
    page.click("#btn-before")
    expect(grid).to_have_attribute("data-showing", "before")
    page.focus("#swipe")
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    expect(grid).to_have_attribute("data-showing", "split")
    assert page.input_value("#swipe") == "90"
    clip = page.eval_on_selector("#grid img.layer-after", "img => img.style.clipPath")
    assert clip == "inset(0px 0px 0px 90%)"
    # dragging across the image moves the divider too (mouse here; touch works the same way)
    tile_box = page.locator("#grid .tile").bounding_box()
    assert tile_box is not None
    y = tile_box["y"] + tile_box["height"] / 2
    page.mouse.move(tile_box["x"] + tile_box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(tile_box["x"] + tile_box["width"] * 0.4, y, steps=4)
    page.mouse.move(tile_box["x"] + tile_box["width"] * 0.3, y, steps=4)
    page.mouse.up()
    assert 25 <= int(page.input_value("#swipe")) <= 35
    expect(grid).to_have_attribute("data-showing", "split")
    page.focus("#swipe")
    page.keyboard.press("2")  # answers work while the slider has focus
    (compare_tile,) = v.tile_ids()
    page.click("#btn-next")

    # --- mark: add three points, remove one, undo twice
    page.click("#nav-projects")
    v.open("huts")
    v.wait_task()
    (mark_tile,) = v.tile_ids()
    surface = page.locator(".mark-surface")
    box = surface.bounding_box()
    assert box is not None
    clicks = []
    for fx, fy in [(0.25, 0.25), (0.5, 0.75), (0.8, 0.4)]:
        # mouse events land on whole CSS pixels: click there and expect exactly that spot
        px, py = round(box["x"] + fx * box["width"]), round(box["y"] + fy * box["height"])
        page.mouse.click(px, py)
        clicks.append(((px - box["x"]) / box["width"], (py - box["y"]) / box["height"]))
    expect(page.locator(".point")).to_have_count(3)
    page.locator(".point").nth(1).click()          # remove the second point
    expect(page.locator(".point")).to_have_count(2)
    page.keyboard.press("u")                        # undo the removal
    expect(page.locator(".point")).to_have_count(3)
    page.keyboard.press("u")                        # undo the last add (third click)
    expect(page.locator(".point")).to_have_count(2)
    expect(page.locator("#mark-count")).to_contain_text("2")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#screen-done")).to_be_visible()

    # --- the database holds exactly those labels
    rows = labels_of(db_rows, "Ana")
    assert len(rows) == 7, rows
    stored_find = {r.tile_id: r.answer for r in rows if r.slug == "villages"}
    assert stored_find == find_answers
    (c,) = [r for r in rows if r.slug == "damage"]
    assert (c.tile_id, c.answer, c.skipped) == (compare_tile, "no", False)
    assert compare_tile in compare.tile_ids
    (m,) = [r for r in rows if r.slug == "huts"]
    assert (m.tile_id, m.answer) == (mark_tile, "marked")
    bounds = mark.tiles[mark_tile]["bounds"]
    got = points_of(m.points)
    want = [mercator_lonlat(bounds, fx, fy) for fx, fy in clicks[:2]]
    assert len(got) == 2
    for (glon, glat), (wlon, wlat) in zip(got, want):
        assert glon == pytest.approx(wlon, abs=3e-7) and glat == pytest.approx(wlat, abs=3e-7)
    assert len({r.idempotency_key for r in rows}) == 7
    assert all(not r.skipped and r.flag_note is None for r in rows)


# ------------------------------------------------------------------------------ focused tests

# The full flow runs on both backends; the focused tests on SQLite only (they exercise the page).
sqlite_only = pytest.mark.parametrize("db_backend", ["sqlite"])


@sqlite_only
def test_gold_feedback_is_shown(page: Page, live_server: str, labeler_settings: Any,
                                db_rows: Any) -> None:
    gold = seed_project(labeler_settings, type="find", slug="gold", n_tiles=2, gold=1,
                        gold_rate=1.0, gold_answer="yes")
    v = Volunteer(page, live_server)
    v.start("Gold")
    v.open("gold")
    v.wait_task()
    assert v.tile_ids() == gold.gold_ids  # gold comes first at rate 1.0
    page.keyboard.press("2")  # "no": wrong
    page.keyboard.press("ArrowRight")
    box = page.locator("#feedback")
    expect(box).to_be_visible()
    expect(box).to_contain_text("Yes")
    expect(box).to_contain_text("This tile shows 'yes'.")
    expect(box).not_to_have_class("feedback all-correct")
    expect(page.locator("#status")).to_contain_text("This tile shows 'yes'.")
    page.click("#feedback-dismiss")
    expect(box).to_be_hidden()
    v.wait_task()
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    v.wait_task()
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#done-stats")).to_contain_text("On 1 known tile you answered 0 right.")
    rows = labels_of(db_rows, "Gold")
    assert [(r.tile_id, r.answer) for r in rows][0] == (gold.gold_ids[0], "no")
    assert sorted(r.tile_id for r in rows[1:]) == sorted(gold.tile_ids)


@sqlite_only
def test_retry_after_network_failure_does_not_duplicate(
        page: Page, live_server: str, labeler_settings: Any, db_rows: Any) -> None:
    """The first submission reaches the server but its answer is lost on the way back; the
    page retries with the same idempotency keys and the label is stored once."""
    seed_project(labeler_settings, type="find", slug="flaky", n_tiles=2)
    v = Volunteer(page, live_server)
    v.start("Flaky")
    posts: list[str] = []

    def drop_first_response(route: Any) -> None:
        posts.append(route.request.post_data or "")
        if len(posts) == 1:
            route.fetch()          # the server stores the labels...
            route.abort("failed")  # ...but the browser never hears back
        else:
            route.continue_()

    page.route("**/api/projects/flaky/labels*", drop_first_response)
    v.open("flaky")
    v.wait_task()
    (tile,) = v.tile_ids()
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    v.wait_task()  # the prefetched next task appears at once; the outbox retries meanwhile
    page.wait_for_function("() => localStorage.getItem('crowdsight.outbox') === '[]'")
    assert len(posts) == 2 and posts[0] == posts[1]
    rows = labels_of(db_rows, "Flaky")
    assert [(r.tile_id, r.answer) for r in rows] == [(tile, "yes")]
    assert page.evaluate("localStorage.getItem('crowdsight.outbox')") == "[]"


@sqlite_only
def test_block_of_tiles_one_answer_each(page: Page, live_server: str, labeler_settings: Any,
                                        db_rows: Any) -> None:
    seed_project(labeler_settings, type="find", slug="block", n_tiles=6, grid_cols=3,
                 block={"cols": 3, "rows": 2})
    v = Volunteer(page, live_server)
    v.start("Block")
    v.open("block")
    v.wait_task()
    tiles = v.tile_ids()
    assert len(tiles) == 6
    page.locator("#grid .tile").nth(4).click()      # tap a tile to select it
    expect(page.locator("#grid .tile").nth(4)).to_have_attribute("aria-pressed", "true")
    page.click("#answers button[data-value='maybe']")
    page.locator("#grid .tile").nth(0).click()
    page.keyboard.press("1")                         # tile 0: yes, moves on to tile 1
    expect(page.locator("#grid .tile").nth(1)).to_have_class("tile selected")
    page.keyboard.press("ArrowRight")                # not complete: moves, does not send
    expect(page.locator("#task-hint")).to_have_text("Answer every tile first: 4 tiles left.")
    page.keyboard.press("Shift+Digit2")              # the rest: no
    expect(page.locator("#grid .tile.answered")).to_have_count(6)
    page.keyboard.press("ArrowRight")
    expect(page.locator("#screen-done")).to_be_visible()
    got = {r.tile_id: r.answer for r in labels_of(db_rows, "Block")}
    assert got == {tiles[0]: "yes", tiles[1]: "no", tiles[2]: "no", tiles[3]: "no",
                   tiles[4]: "maybe", tiles[5]: "no"}


def test_a_late_project_list_does_not_replace_the_task(page: Page, live_server: str,
                                                      labeler_settings: Any) -> None:
    """The volunteer starts and goes straight on to a project (a shared #/p/... link, or a
    quick tap): the project list that the start asked for arrives after the task is on
    screen, and must not replace it. (Seen in CI under load: the phone check of the
    real-imagery test found its task hidden behind the project list.)"""
    seed_project(labeler_settings, type="find", slug="late-list", n_tiles=2)
    v = Volunteer(page, live_server)
    page.goto(live_server)
    expect(page.locator("#screen-welcome")).to_be_visible()
    held: list[Any] = []
    page.route("**/api/projects", lambda route: held.append(route))  # the list only
    with page.expect_request("**/api/projects"):  # the session is made; the list is asked for
        page.click("#welcome-start")
    page.goto(live_server + "#/p/late-list")
    v.wait_task()
    assert len(held) == 1  # the start's project list is still on its way
    with page.expect_response("**/api/projects"):
        held[0].continue_()
    page.evaluate("() => new Promise((done) => setTimeout(done, 100))")  # let the page react
    expect(page.locator("#screen-task")).to_be_visible()
    expect(page.locator("#screen-projects")).to_be_hidden()
    expect(page.locator("#grid .tile").first).to_be_visible()


@sqlite_only
def test_flag_and_skip(page: Page, live_server: str, labeler_settings: Any, db_rows: Any) -> None:
    seed_project(labeler_settings, type="find", slug="flags", n_tiles=2)
    v = Volunteer(page, live_server)
    v.start("Flagger")
    v.open("flags")
    v.wait_task()
    (first,) = v.tile_ids()
    page.keyboard.press("f")
    expect(page.locator("#flag-dialog")).to_be_visible()
    page.keyboard.type("Clouds cover half the tile")
    page.click("#flag-save")
    expect(page.locator("#flag-dialog")).to_be_hidden()
    page.keyboard.press("s")  # skip, with the flag note
    v.wait_task()
    (second,) = v.tile_ids()
    page.keyboard.press("4")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#screen-done")).to_be_visible()
    rows = labels_of(db_rows, "Flagger")
    assert [(r.tile_id, r.answer, bool(r.skipped), r.flag_note) for r in rows] == [
        (first, None, True, "Clouds cover half the tile"), (second, "bad_imagery", False, None)]


@sqlite_only
def test_keyboard_reaches_every_control_with_visible_focus(
        page: Page, live_server: str, labeler_settings: Any) -> None:
    seed_project(labeler_settings, type="compare", slug="kb", n_tiles=2)
    v = Volunteer(page, live_server)
    page.goto(live_server)
    # welcome screen by keyboard only
    seen: dict[str, dict[str, Any]] = {}
    probe = """() => {
      const el = document.activeElement;
      const cs = getComputedStyle(el);
      const name = el.getAttribute('aria-label') || el.labels?.[0]?.textContent
                   || el.textContent || el.title || '';
      return {key: el.id || el.dataset.value || el.dataset.tileId || el.className || el.tagName,
              outline: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2,
              name: name.trim()};
    }"""
    expect(page.locator("#screen-welcome")).to_be_visible()
    for _ in range(6):  # backwards from the focused heading: header controls, then skip link
        page.keyboard.press("Shift+Tab")
        first = page.evaluate(probe)
        if first["name"] == "Skip to main content":
            break
    assert first["name"] == "Skip to main content" and first["outline"]
    expect(page.locator(".skip-link")).to_be_in_viewport()
    page.focus("#display-name")
    page.keyboard.type("Keys")
    page.keyboard.press("Enter")
    expect(page.locator("#screen-projects")).to_be_visible()
    page.keyboard.press("Tab")
    for _ in range(12):
        info = page.evaluate(probe)
        if info["key"] == "btn btn-primary":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    v.wait_task()
    for _ in range(40):
        page.keyboard.press("Tab")
        info = page.evaluate(probe)
        seen[info["key"]] = info
    wanted = {"lang-select", "nav-projects", "nav-keys", "btn-before", "btn-after", "btn-toggle",
              "swipe", "yes", "no", "maybe", "bad_imagery", "btn-next", "btn-flag",
              "btn-skip"}
    missing = wanted - set(seen)
    assert not missing, f"not reachable by Tab: {missing}"
    for key in wanted:
        assert seen[key]["outline"], f"{key} has no visible focus outline"
        assert seen[key]["name"], f"{key} has no accessible name"
    # a mark surface is focusable and operable by keyboard (arrows + Enter)
    seed_project(labeler_settings, type="mark", slug="kb-mark", n_tiles=1)
    page.goto(live_server + "#/p/kb-mark")  # same document: wait for a task other than the last
    v.wait_task()
    page.focus(".mark-surface")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    expect(page.locator(".point")).to_have_count(1)
    page.locator(".point").focus()
    assert page.evaluate(probe)["name"].startswith("Marked point 1")
    page.keyboard.press("Enter")  # removes it
    expect(page.locator(".point")).to_have_count(0)


@sqlite_only
def test_mobile_touch_smoke(browser: Any, page_watch: Any, live_server: str,
                            labeler_settings: Any, db_rows: Any) -> None:
    seed_project(labeler_settings, type="find", slug="phone", n_tiles=6, grid_cols=3,
                 block={"cols": 3, "rows": 2}, name="Find villages",
                 question="Which tiles show an inhabited settlement?")
    ctx = page_watch.attach(browser.new_context(
        viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True,
        device_scale_factor=2, locale="en-US", reduced_motion="reduce"))
    try:
        page = ctx.new_page()
        v = Volunteer(page, live_server)
        page.goto(live_server)
        page.tap("#welcome-start")
        expect(page.locator("#screen-projects")).to_be_visible()
        page.tap("button[data-slug='phone']")
        v.wait_task()
        tiles = v.tile_ids()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"page scrolls sideways on a phone ({width}px)"
        page.locator("#grid .tile").nth(1).tap()
        page.tap("#answers button[data-value='yes']")
        for btn in page.locator("#answers button, #btn-next").all():
            b = btn.bounding_box()
            assert b and b["height"] >= 44 and b["width"] >= 44, "touch target under 44 px"
            assert b["y"] + b["height"] <= 740, "answer buttons below the fold"
        for _ in range(5):  # each answer moves the selection to the next unanswered tile
            page.tap("#answers button[data-value='no']")
        page.tap("#btn-next")
        expect(page.locator("#screen-done")).to_be_visible()
        got = {r.tile_id: r.answer for r in db_rows("SELECT tile_id, answer FROM labels")}
        assert got == {t: ("yes" if t == tiles[1] else "no") for t in tiles}
    finally:
        ctx.close()


@sqlite_only
def test_language_follows_the_browser_and_is_remembered(
        browser: Any, page_watch: Any, live_server: str, labeler_settings: Any) -> None:
    for locale, code, tag, text in [("sq-AL", "sq", "sq", "Fillo"),
                                    ("sr-Latn-RS", "sr", "sr-Latn", "Počni"),
                                    ("sr-Cyrl-RS", "sr-Cyrl", "sr-Cyrl", "Почни"),
                                    ("de-DE", "en", "en", "Start")]:
        ctx = page_watch.attach(browser.new_context(locale=locale))
        try:
            page = ctx.new_page()
            page.goto(live_server)
            expect(page.locator("html")).to_have_attribute("lang", tag)
            expect(page.locator("#welcome-start")).to_have_text(text)
            assert page.input_value("#lang-select") == code
            if code == "sq":  # an explicit choice wins over the browser's language
                page.select_option("#lang-select", "sr-Cyrl")
                expect(page.locator("html")).to_have_attribute("lang", "sr-Cyrl")
                page.reload()
                expect(page.locator("#welcome-start")).to_have_text("Почни")
                expect(page.locator("html")).to_have_attribute("lang", "sr-Cyrl")
        finally:
            ctx.close()


@sqlite_only
def test_point_math_is_web_mercator(page: Page, live_server: str) -> None:
    """geo.js against an independent reference, at a zoom where latitude is visibly non-linear."""
    import mercantile

    page.goto(live_server)
    cases = []
    for (x, y, z) in [(1, 1, 2), (3, 5, 3), (61234, 101234, 18)]:
        b = mercantile.bounds(x, y, z)
        bounds = [b.west, b.south, b.east, b.north]
        for fx, fy in [(0, 0), (0.5, 0.5), (0.25, 0.9), (1, 1)]:
            ref = mercantile.ul(x + fx, y + fy, z)  # tile coords are linear in Mercator
            cases.append((bounds, fx, fy, ref.lng, ref.lat))
    got = page.evaluate("""async cases => {
        const geo = await import('./static/volunteer/geo.js');
        return cases.map(([b, fx, fy]) => {
          const ll = geo.fractionToLonLat(b, fx, fy);
          return [ll, geo.lonLatToFraction(b, ll[0], ll[1])];
        });
    }""", [c[:3] for c in cases])
    for (bounds, fx, fy, lon, lat), ((glon, glat), (rfx, rfy)) in zip(cases, got):
        assert glon == pytest.approx(lon, abs=1e-7) and glat == pytest.approx(lat, abs=1e-7)
        tol = 2e-7 / (bounds[3] - bounds[1])  # 7-decimal rounding, as a share of the tile
        assert rfx == pytest.approx(fx, abs=tol) and rfy == pytest.approx(fy, abs=tol)
    # the linear-in-latitude mistake would be off by degrees on a z2 tile
    b = mercantile.bounds(1, 1, 2)
    naive = b.north + 0.5 * (b.south - b.north)
    assert abs(got[1][0][1] - naive) > 1.0


@sqlite_only
def test_offline_answers_survive_a_reload(page: Page, live_server: str, labeler_settings: Any,
                                          db_rows: Any) -> None:
    """Offline: the answer waits in the outbox (shown to the volunteer); after a reload with the
    connection back it is sent before anything else, and stored once."""
    seed_project(labeler_settings, type="find", slug="offline", n_tiles=2)
    v = Volunteer(page, live_server)
    v.start("Offline")
    page.route("**/api/projects/offline/labels*", lambda route: route.abort("internetdisconnected"))
    v.open("offline")
    v.wait_task()
    (tile,) = v.tile_ids()
    page.keyboard.press("3")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#outbox")).to_be_visible()
    expect(page.locator("#outbox")).to_contain_text("1 answer is waiting")
    assert db_rows("SELECT id FROM labels") == []
    page.unroute("**/api/projects/offline/labels*")
    page.reload()
    v.task_id = ""
    second = v.wait_task()
    assert v.tile_ids() != [tile], "the answered task came back"
    rows = labels_of(db_rows, "Offline")
    assert [(r.tile_id, r.answer) for r in rows] == [(tile, "maybe")]
    assert second


CONTRAST_JS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      if (e.classList.contains('tile')) return null;  // text over imagery has its own badge
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.9)) return c;
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || el.closest('[hidden], .visually-hidden, .statusbar')) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility === 'hidden' || Number(cs.opacity) < 1 || el.closest('button:disabled')) continue;
    const bg = background(el);
    if (!bg) continue;
    const [a, b] = [lum(rgb(cs.color)), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(cs.fontSize), bold = Number(cs.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) out.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)} < ${need}`);
  }
  return out;
}"""


@sqlite_only
def test_text_contrast_meets_wcag_aa(page: Page, live_server: str,
                                     labeler_settings: Any) -> None:
    seed_project(labeler_settings, type="compare", slug="contrast", n_tiles=2, tutorial=2)
    v = Volunteer(page, live_server)
    page.goto(live_server)
    expect(page.locator("#screen-welcome")).to_be_visible()
    assert page.evaluate(CONTRAST_JS) == []
    page.click("#welcome-start")
    expect(page.locator("#screen-projects")).to_be_visible()
    assert page.evaluate(CONTRAST_JS) == []
    v.open("contrast")
    page.check("#tut-0-yes")
    page.check("#tut-1-yes")
    page.click("#tutorial-check")  # one wrong: error colours are on screen too
    expect(page.locator("#tutorial-result")).to_be_visible()
    assert page.evaluate(CONTRAST_JS) == []
    page.check("#tut-1-no")
    page.click("#tutorial-check")
    page.click("#tutorial-continue")
    v.wait_task()
    page.keyboard.press("1")
    assert page.evaluate(CONTRAST_JS) == []
    # the check itself notices a low-contrast text (grey #999 on white is 2.8:1)
    page.evaluate("""() => { const s = document.createElement('span'); s.textContent = 'faint';
        s.className = 'probe'; document.querySelector('.panel').append(s);
        s.style.color = '#999'; }""")
    assert [x for x in page.evaluate(CONTRAST_JS) if "faint" in x]


@sqlite_only
def test_lease_is_renewed_while_the_task_is_on_screen(
        page: Page, serve: Any, labeler_settings: Any, db_rows: Any) -> None:
    from labeler.app import create_app

    settings = labeler_settings.with_(lease_seconds=4)
    base = serve(create_app(settings))
    seed_project(settings, type="find", slug="slow", n_tiles=2)
    nexts: list[str] = []
    page.on("request", lambda r: nexts.append(r.url) if "/next" in r.url else None)
    v = Volunteer(page, base)
    v.start("Slow")
    v.open("slow")
    task = v.wait_task()
    (tile,) = v.tile_ids()
    lease_id = task[:-16]  # the page's task id is the lease id plus a signature
    first = db_rows("SELECT expires_at FROM leases WHERE task_id = :t", t=lease_id)[0].expires_at
    page.wait_for_timeout(5000)  # longer than the lease: renewed at about half of it
    assert len(nexts) >= 2, nexts
    later = db_rows("SELECT expires_at FROM leases WHERE task_id = :t", t=lease_id)[0].expires_at
    assert str(later) > str(first)
    assert page.evaluate("() => document.body.dataset.taskId") == task  # same task kept
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    v.wait_task()  # may be the task held ahead, shown before the answer is acknowledged
    page.wait_for_function("() => localStorage.getItem('crowdsight.outbox') === '[]'")
    assert [(r.tile_id, r.answer) for r in labels_of(db_rows, "Slow")] == [(tile, "yes")]


@sqlite_only
def test_next_task_is_prefetched_and_shown_before_the_answer_is_acknowledged(
        page: Page, live_server: str, labeler_settings: Any, db_rows: Any) -> None:
    """While the volunteer looks at task N, task N+1 is already leased and its image requested;
    "Next" shows it even while the answer to N is still on its way (held here), and the
    answer is stored once it gets through."""
    seed_project(labeler_settings, type="find", slug="prefetch", n_tiles=3, gold_rate=0)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/labels" in r.url
            else None)
    held: list[Any] = []
    page.route("**/api/projects/prefetch/labels*", lambda route: held.append(route))
    v = Volunteer(page, live_server)
    v.start("Prefetch")
    v.open("prefetch")
    v.wait_task()
    (tile,) = v.tile_ids()
    leases = db_rows("SELECT tile_id FROM leases")
    assert len(leases) == 2  # the task on screen and the one ahead
    ahead = next(r.tile_id for r in leases if r.tile_id != tile)
    z, x, y = db_rows("SELECT z, x, y FROM tiles WHERE id = :t", t=ahead)[0]
    url = f"/tiles/prefetch/image/{z}/{x}/{y}.jpg"
    page.wait_for_function(
        "u => performance.getEntriesByType('resource').some(e => e.name.endsWith(u))", arg=url)
    assert posts == []  # requested before anything was submitted
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    v.wait_task()
    assert v.tile_ids() == [ahead]
    assert held and db_rows("SELECT id FROM labels") == []  # the answer is still held
    assert "next=1" in held[0].request.url and "ahead=1" in held[0].request.url
    held.pop(0).continue_()
    page.wait_for_function("() => localStorage.getItem('crowdsight.outbox') === '[]'")
    assert [(r.tile_id, r.answer) for r in labels_of(db_rows, "Prefetch")] == [(tile, "yes")]
    # the answer brought the task after that: again two leases, the third tile ahead
    assert sorted(r.tile_id for r in db_rows("SELECT tile_id FROM leases")) == sorted(
        t for t in [r.id for r in db_rows("SELECT id FROM tiles")] if t != tile)
