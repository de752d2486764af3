"""The labeler Starlette application: ``create_app(settings)``.

The lifespan opens the engine, refuses to start on an unmigrated/outdated database, and
yields the typed state every request sees (``request.state.engine``, ``.settings``,
``.labeler``...). Routes, middleware and exception handlers are declarative.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import anyio
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from crowdsight.settings import Settings
from labeler import api, tilesrv
from labeler.assign import Assigner
from labeler.auth import TokenCache
from labeler.batch import GroupCommitter
from labeler.batchsubmit import submit_many
from labeler.db import make_engine
from labeler.errors import LabelerError, RateLimited, status_for
from labeler.labels import lock_tiles
from labeler.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from labeler.migrate import check_migrated
from labeler.projects import ProjectCache
from labeler.security import RateLimiter, Signer, client_ip

log = logging.getLogger("crowdsight.labeler")

HERE = Path(__file__).resolve().parent
VOLUNTEER_PAGE = HERE / "web" / "volunteer.html"
STATIC_DIR = HERE / "static"

PLACEHOLDER = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>crowdsight</title></head><body><h1>crowdsight</h1>
<p>The volunteer page is not installed. The API is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>
</body></html>"""

ERROR_CODES = {400: "bad_request", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "body_too_large", 429: "rate_limited"}


@dataclass
class LabelerState:
    settings: Settings
    engine: Engine
    tile_store: Path
    signer: Signer
    projects: ProjectCache
    assigner: Assigner
    tokens: TokenCache
    volunteer_limiter: RateLimiter
    ip_limiter: RateLimiter
    trusted_proxies: frozenset[str]
    #: Hot-path writes of concurrent requests share one transaction (group commit).
    committer: GroupCommitter
    #: Project-cache refreshes in flight (one per slug and event loop; see ``api._project``).
    refreshing: dict[tuple[int, str], "asyncio.Future[None]"] = field(default_factory=dict)

    def client_ip(self, request: Request) -> str:
        return client_ip(request.scope.get("client"), request.headers.get("x-forwarded-for"),
                         self.trusted_proxies)


class State(TypedDict):
    labeler: LabelerState
    engine: Engine
    settings: Settings
    projects: ProjectCache


def build_state(settings: Settings, engine: Engine) -> LabelerState:
    return LabelerState(
        settings=settings, engine=engine, tile_store=settings.tile_store_path.resolve(),
        signer=Signer(settings.resolved_secret_key()), projects=ProjectCache(engine),
        assigner=Assigner(engine, settings.lease_seconds,
                          task_key=hashlib.sha256(
                              b"crowdsight.task:" + settings.resolved_secret_key().encode()).digest()),
        tokens=TokenCache(),
        volunteer_limiter=RateLimiter(settings.rate_limit_volunteer),
        ip_limiter=RateLimiter(settings.rate_limit_ip),
        trusted_proxies=frozenset(h.strip() for h in settings.forwarded_allow_ips.split(",")
                                  if h.strip()),
        committer=GroupCommitter(engine, lock_rows=lock_tiles, fast=submit_many),
    )


async def labeler_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LabelerError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return JSONResponse(exc.to_json(), status_code=status_for(exc), headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 304:
        return Response(status_code=304, headers=exc.headers)
    code = ERROR_CODES.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail), "field": None}},
                        status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"code": "internal_error",
                                   "message": "the server failed; the error was logged",
                                   "field": None}}, status_code=500)


async def home(request: Request) -> Response:
    """The volunteer page."""
    if VOLUNTEER_PAGE.is_file():
        return FileResponse(VOLUNTEER_PAGE, media_type="text/html",
                            headers={"Cache-Control": "no-cache"})
    return HTMLResponse(PLACEHOLDER)


async def health(request: Request) -> Response:
    """Liveness probe."""
    return JSONResponse({"ok": True})


def _routes() -> list[BaseRoute]:
    from labeler.dashboard import routes as dashboard_routes

    routes: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        *api.routes(),
        Route("/tiles/{root}/{layer}/tilejson.json", tilesrv.tilejson, methods=["GET"]),
        Route("/tiles/{root}/{layer}/{z:int}/{x:int}/{name}", tilesrv.serve_tile, methods=["GET"]),
        *dashboard_routes(),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    from labeler import openapi

    schema_holder: dict[str, Any] = {}

    async def openapi_json(request: Request) -> Response:
        """This OpenAPI document."""
        if "doc" not in schema_holder:
            schema_holder["doc"] = openapi.build(request.app.routes)
        return JSONResponse(schema_holder["doc"])

    routes.insert(2, Route("/api/openapi.json", openapi_json, methods=["GET"]))
    return routes


def create_app(settings: Settings, *, engine: Engine | None = None,
               freeze_gc: bool = False) -> Starlette:
    """Build the app. ``engine`` may be passed in (tests); otherwise the lifespan creates it
    from ``settings`` and disposes of it on shutdown.

    ``freeze_gc`` (the server process, :func:`app_from_env`): once started, move every object
    alive then (≈ 110,000: modules, SQLAlchemy, the app) out of the garbage collector's reach
    with :func:`gc.freeze`; a full collection otherwise walks them all (≈ 25-50 ms here), a
    pause every request in flight waits for — worse while the worker holds the write lock."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        own = engine is None
        eng = engine if engine is not None else make_engine(settings.resolved_database_url)
        state: LabelerState | None = None
        stop_refits = None
        try:
            check_migrated(eng)
            state = build_state(settings, eng)
            if settings.skill_refit_interval > 0:
                from labeler.refit import start_refresher

                # every worker starts one; the flock lets one of them refit (labeler.refit)
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                stop_refits = start_refresher(eng, interval=settings.skill_refit_interval,
                                              lock_path=settings.data_dir / "skill-refit.lock")
            if freeze_gc:
                gc.collect()
                gc.freeze()
            yield {"labeler": state, "engine": eng, "settings": settings,
                   "projects": state.projects}
        finally:
            if stop_refits is not None:
                await anyio.to_thread.run_sync(stop_refits)
            if state is not None:
                state.committer.close()
            if own:
                eng.dispose()

    return Starlette(
        debug=settings.debug,
        routes=_routes(),
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(BodyLimitMiddleware, max_body=settings.max_body_bytes,
                       max_upload=settings.max_upload_bytes),
        ],
        exception_handlers={LabelerError: labeler_error, HTTPException: http_error,
                            Exception: server_error},
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory labeler.app:app_from_env`` (multi-worker serving)."""
    import sys

    # Thread-pool threads (the SQLite writer-lock wait, other endpoints' calls) and the loop
    # hand the GIL back and forth after every driver call; a short switch interval keeps a
    # thread from waiting milliseconds for the loop to let go (chosen for the earlier writer
    # thread; 5 ms measured the same since). This process serves only the labeler.
    sys.setswitchinterval(0.0005)
    return create_app(Settings.from_env(), freeze_gc=True)
