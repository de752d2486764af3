"""Browser-test harness: Playwright (pytest-playwright) + Debian chromium + a live uvicorn.

Reusable by every page's tests (volunteer page here, analyst/researcher pages in issue 5);
documented in docs/volunteer.md ("Browser tests"). What it gives a test:

- ``browser_type_launch_args``: Debian's ``/usr/bin/chromium`` with sandbox/GPU/background
  networking off. Browser tests skip with a clear reason when it is missing.
- ``serve(app) -> base_url``: runs any ASGI app on a free loopback port in a uvicorn thread
  (lifespan on) and stops it after the test. ``live_server`` is the real service,
  ``labeler.app.create_app(labeler_settings)``, served that way.
- ``db_backend`` ("sqlite" / "postgresql", PostgreSQL skipped when unreachable) and
  ``labeler_settings``: a fresh, migrated database per test through ``labeler.testing``;
  ``db_rows(sql, **params)`` queries it.
- Offline guard (automatic for every test that uses ``page``/``context``): any request to a
  host other than 127.0.0.1/localhost is aborted and FAILS the test, as do uncaught page
  errors and Content-Security-Policy violations. Proves "no CDN, no runtime downloads".
- ``shoot(page, name)``: writes ``docs/screenshots/<name>.png`` when
  ``CROWDSIGHT_SCREENSHOTS=1`` (keeps the committed ones current without churn on every run).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CROWDSIGHT_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT_DIR = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


# ---------------------------------------------------------------------------------- browser

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch Debian's chromium (Playwright cannot download its own browsers here)."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} "
                    "(`apt-get install chromium`, or set CROWDSIGHT_CHROMIUM)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM),
            "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session", autouse=True)
def _patient_expect() -> None:
    """15 s for ``expect(...)`` assertions (default 5 s): the test machines are shared and slow."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def base_url() -> None:
    """Shadows pytest-playwright's ``base_url`` (an instance-method session fixture that
    pytest 9 deprecates, fatal with warnings as errors). Tests use ``live_server`` URLs."""
    return None


@pytest.fixture
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """English, laptop-sized, reduced motion (no waiting on transitions)."""
    return {**browser_context_args, "locale": "en-US", "viewport": {"width": 1280, "height": 820},
            "reduced_motion": "reduce"}


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error"):
        return True
    return parts.hostname in LOCAL_HOSTS


@dataclass
class PageWatch:
    """Offline guard: blocks and records non-local requests, page errors and CSP violations.

    Attached automatically to the ``context`` fixture; attach contexts you create yourself
    (``new_context(...)``) with ``page_watch.attach(ctx)``.
    """

    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def attach(self, context: Any) -> Any:
        def guard(route: Any) -> None:
            url = route.request.url
            if _is_local(url):
                route.continue_()
            else:
                self.blocked.append(url)
                route.abort("blockedbyclient")

        def on_console(msg: Any) -> None:
            if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
                self.csp_violations.append(msg.text)

        def on_page(page: Any) -> None:
            page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
            page.on("console", on_console)

        context.route("**/*", guard)
        context.on("page", on_page)
        for p in context.pages:
            on_page(p)
        return context

    def problems(self) -> list[str]:
        return ([f"external request blocked: {u}" for u in self.blocked]
                + [f"uncaught page error: {e}" for e in self.page_errors]
                + [f"CSP violation: {c}" for c in self.csp_violations])


@pytest.fixture(autouse=True)
def page_watch(request: pytest.FixtureRequest) -> Iterator[PageWatch]:
    """Offline guard for every test of this directory that uses a browser context."""
    watch = PageWatch()
    if {"page", "context"} & set(request.fixturenames):
        watch.attach(request.getfixturevalue("context"))
    yield watch
    problems = watch.problems()
    assert not problems, "the page misbehaved:\n" + "\n".join(problems)


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path | None:
    """Save docs/screenshots/<name>.png when CROWDSIGHT_SCREENSHOTS=1 (else do nothing)."""
    if os.environ.get("CROWDSIGHT_SCREENSHOTS", "") not in ("1", "true", "yes"):
        return None
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    return path


# ---------------------------------------------------------------------------------- server

class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: Any, *, startup_timeout: float = 30.0) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                     lifespan="on", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)
        self.startup_timeout = startup_timeout
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the live server stopped during startup (see the log above: "
                                   "an unmigrated database or a lifespan error?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the live server did not start within {self.startup_timeout} s")
            time.sleep(0.02)
        sock: socket.socket = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        if self.thread.is_alive():  # pragma: no cover - a hung shutdown is a bug worth seeing
            self.server.force_exit = True
            self.thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """``serve(app)`` -> base URL ("http://127.0.0.1:PORT/"); stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: Any) -> str:
        srv = LiveServer(app)
        servers.append(srv)
        return srv.start()

    yield start
    for srv in reversed(servers):
        srv.stop()


# ---------------------------------------------------------------------------------- database

def _postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not _postgres_up():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    return request.param


@pytest.fixture
def labeler_settings(db_backend: str, tmp_path: Path) -> Iterator[Any]:
    """Settings for a fresh, migrated database of ``db_backend`` and a tile store in tmp_path."""
    from labeler.testing import make_settings, migrated_database

    with migrated_database(db_backend, tmp_path) as url:
        yield make_settings(tmp_path, url)


@pytest.fixture
def live_server(serve: Callable[[Any], str], labeler_settings: Any) -> str:
    """The real labeler service (``labeler.app.create_app``) on a free port; its base URL.

    Seed projects with ``labeler.testing.seed_project(labeler_settings, ...)`` before or after
    starting it (the service reads the database on every request)."""
    from labeler.app import create_app

    return serve(create_app(labeler_settings))


def query(settings: Any, sql: str, **params: Any) -> list[Any]:
    """Run a read-only SQL query against the test database (for asserting what was stored)."""
    import sqlalchemy as sa

    from labeler.db import make_engine

    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


@pytest.fixture
def db_rows(labeler_settings: Any) -> Callable[..., list[Any]]:
    """``db_rows(sql, **params)``: rows of a read-only query on the test database."""
    return lambda sql, **params: query(labeler_settings, sql, **params)


@pytest.fixture
def shoot() -> Callable[..., Path | None]:
    """``shoot(page, name)``: docs/screenshots/<name>.png when CROWDSIGHT_SCREENSHOTS=1."""
    return screenshot
