"""The browser-test harness itself: the offline guard must catch what it promises to catch."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

pytestmark = pytest.mark.browser

BAD_PAGE = """<!doctype html><html><head><title>bad</title>
<link rel="stylesheet" href="https://cdn.example.com/lib.css"></head>
<body><img src="http://203.0.113.7/tile.png" alt="">
<script>document.title = "inline ran";</script>
<script src="/static/boom.js"></script></body></html>"""


async def bad(request: Request) -> Response:
    return HTMLResponse(BAD_PAGE, headers={"Content-Security-Policy": "script-src 'self'"})


async def boom(request: Request) -> Response:
    return Response("throw new Error('boom from the page');", media_type="text/javascript")


def test_offline_guard_catches_external_requests_csp_and_page_errors(
        page: Page, serve: Any, page_watch: Any) -> None:
    base = serve(Starlette(routes=[Route("/", bad), Route("/static/boom.js", boom)]))
    assert base.startswith("http://127.0.0.1:")
    page.goto(base)
    page.wait_for_load_state("load")
    page.wait_for_timeout(200)  # console/pageerror events arrive asynchronously
    assert sorted(page_watch.blocked) == ["http://203.0.113.7/tile.png",
                                          "https://cdn.example.com/lib.css"]
    assert page.title() == "bad", "the inline script ran despite the CSP"
    assert page_watch.csp_violations, "the CSP violation was not noticed"
    assert any("boom from the page" in e for e in page_watch.page_errors)
    problems = page_watch.problems()
    assert len(problems) == 2 + len(page_watch.csp_violations) + len(page_watch.page_errors)
    # everything above was expected: clear it so this test's own teardown check passes
    page_watch.blocked.clear()
    page_watch.csp_violations.clear()
    page_watch.page_errors.clear()


def test_live_server_serves_any_asgi_app(serve: Any) -> None:
    import httpx

    async def hello(request: Request) -> Response:
        return HTMLResponse("hello")

    base = serve(Starlette(routes=[Route("/", hello)]))
    with httpx.Client() as client:
        assert client.get(base).text == "hello"
