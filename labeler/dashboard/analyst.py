"""Analyst dashboard: the page and its JSON API (results, progress, volunteers, exports).

Everything the page shows is also reachable through the API (``/api/analyst/...``), with a bearer
token of role ``analyst``, ``researcher`` or ``admin``; volunteers and anonymous callers get
401/403. Results come from :mod:`labeler.dashboard.results` (one code path for the map, the
tables, the downloads and ``crowdsight export``), computed in a worker thread and cached per
project/method until a vote, a retirement or an expert decision changes them.

Routes (``{slug}`` = project slug, ``?method=`` = consensus method, default the project's):

=========================================================  =================================
``GET /analyst/`` , ``GET /analyst/{slug}``                the dashboard page (HTML)
``GET /api/analyst/projects``                              projects with progress
``GET /api/analyst/projects/{slug}``                       summary, imagery layers, exports
``GET /api/analyst/projects/{slug}/map/{layer}``           GeoJSON for the map (tiles, ...)
``GET /api/analyst/projects/{slug}/tiles/{tile_id}``       a tile: votes, imagery, history
``GET /api/analyst/projects/{slug}/progress``              time series (``?bucket=day|hour``)
``GET /api/analyst/projects/{slug}/charts/{name}.svg``     labelled | votes | volunteers | agreement
``GET /api/analyst/projects/{slug}/volunteers``            pseudonymised volunteer table
``GET /api/analyst/projects/{slug}/export/{layer}.{fmt}``  downloads (+ villages.png/pdf sheet)
=========================================================  =================================
"""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from labeler.dashboard import analyst_charts as charts
from labeler.dashboard import app_object
from labeler.dashboard import results as R
from labeler.errors import Forbidden, NotFound

TEMPLATES = Path(__file__).parent / "templates"
ROLES = ("analyst", "researcher", "admin")
CHARTS = ("labelled", "votes", "volunteers", "agreement")
CACHE_SIZE = 8

EXPORT_CATALOGUE = [
    {"layer": "tiles", "title": "Tiles", "formats": ["geojson", "csv", "gpkg"],
     "description": "Every task tile: consensus answer, confidence, posteriors, votes, "
                    "agreement, retirement and expert decisions."},
    {"layer": "structures", "title": "Structures", "formats": ["geojson", "csv", "gpkg"],
     "description": "Points volunteers marked, clustered into structures (mark projects)."},
    {"layer": "villages", "title": "Villages", "formats": ["geojson", "csv", "gpkg"],
     "description": "Neighbouring damaged tiles and structures grouped into villages with "
                    "their damage figures."},
    {"layer": "villages", "title": "Map sheet", "formats": ["png", "pdf"],
     "description": "A printable A4 map of the villages for reports."},
    {"layer": "volunteers", "title": "Volunteers", "formats": ["csv"],
     "description": "Pseudonymised per-volunteer statistics and skill estimates."},
]


# ------------------------------------------------------------------------------------ plumbing


def _engine(request: Request) -> sa.Engine:
    return request.state.labeler.engine


def _settings(request: Request) -> Any:
    return request.state.labeler.settings


def _role(request: Request) -> str:
    """The caller's bearer role: 401 without a token, 403 for volunteers and other roles."""
    from labeler.auth import require_role

    return require_role(request, *ROLES).role


async def _auth(request: Request) -> str:
    return await run_in_threadpool(_role, request)


class _ResultsCache:
    """Small LRU of computed results keyed by project, method and a data fingerprint."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.items: OrderedDict[tuple, tuple[R.ProjectData, R.ProjectResults]] = OrderedDict()
        self.lock = threading.Lock()
        self.building: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, build: Callable[[], tuple[R.ProjectData, R.ProjectResults]]):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            key_lock = self.building.setdefault(key, threading.Lock())
        with key_lock:  # one computation per key even when the page asks 8 things at once
            with self.lock:
                if key in self.items:
                    return self.items[key]
            try:
                value = build()
            finally:
                with self.lock:
                    self.building.pop(key, None)
            with self.lock:
                self.items[key] = value
                self.items.move_to_end(key)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return value


def _cache(request: Request) -> _ResultsCache:
    return app_object(request, "analyst_results_cache", _ResultsCache)


def _method(request: Request) -> str | None:
    m = request.query_params.get("method") or None
    if m is not None and m not in R.methods():
        raise R.ResultsError(f"unknown consensus method {m!r}; choose one of {R.methods()}",
                             field="method")
    return m


def _results_sync(engine: sa.Engine, settings: Any, cache: _ResultsCache, slug: str,
                  method: str | None) -> tuple[R.ProjectData, R.ProjectResults]:
    with engine.connect() as conn:
        fp = R.fingerprint(conn, slug)
    key = (slug, method or R.default_method(), fp)

    def build() -> tuple[R.ProjectData, R.ProjectResults]:
        with engine.connect() as conn:
            data = R.load_project_data(conn, slug)
        return data, R.compute_results(data, method, secret=settings.resolved_secret_key())

    return cache.get(key, build)


async def _results(request: Request) -> tuple[R.ProjectData, R.ProjectResults]:
    slug = request.path_params["slug"]
    method = _method(request)
    return await run_in_threadpool(_results_sync, _engine(request), _settings(request),
                                   _cache(request), slug, method)


GZIP_ABOVE = 8 * 1024  # bytes


def _geojson(request: Request, body: dict[str, Any]) -> Response:
    """GeoJSON for the map, gzip-compressed when the client accepts it (tile layers of large
    projects run to megabytes; the app has no compression middleware)."""
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    headers = {"Vary": "Accept-Encoding", "Cache-Control": "no-store"}
    if len(data) > GZIP_ABOVE and "gzip" in request.headers.get("accept-encoding", ""):
        data = gzip.compress(data, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type="application/geo+json", headers=headers)


# ------------------------------------------------------------------------------------ page


async def page(request: Request) -> Response:
    """The analyst dashboard page (HTML); it signs in with a bearer token, then uses the API."""
    if request.url.path == "/analyst":
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse("/analyst/" + query, status_code=307)
    return FileResponse(TEMPLATES / "analyst.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------ API


async def list_projects(request: Request) -> Response:
    """Projects with tile/retired/label counts. Role: analyst, researcher or admin."""
    await _auth(request)

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return R.project_list(conn)

    return JSONResponse({"projects": await run_in_threadpool(run)})


async def project_summary(request: Request) -> Response:
    """A project's summary: answers, imagery layers, bounds, totals, methods, exports.

    Role: analyst, researcher or admin."""
    role = await _auth(request)
    slug = request.path_params["slug"]
    settings = _settings(request)

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            summary = R.project_summary(conn, slug, tile_store=settings.tile_store_path)
            summary["exports_allowed"] = R.exports_allowed(conn, summary["project"]["id"], role)
        return summary

    body = await run_in_threadpool(run)
    body["exports"] = EXPORT_CATALOGUE
    body["methods"] = R.methods()
    body["default_method"] = R.default_method()
    body["role"] = role
    return JSONResponse(body)


async def map_layer(request: Request) -> Response:
    """A result layer (tiles, structures, villages) as GeoJSON for the map (?method=).

    Role: analyst, researcher or admin."""
    await _auth(request)
    layer = request.path_params["layer"]
    if layer not in ("tiles", "structures", "villages"):
        raise NotFound(f"no map layer {layer!r}; use tiles, structures or villages", field="layer")
    _, res = await _results(request)
    return _geojson(request, R.feature_collection(res, layer))


async def tile_detail(request: Request) -> Response:
    """One tile: result, posteriors, pseudonymised votes, imagery URLs and history.

    Role: analyst, researcher or admin."""
    await _auth(request)
    data, res = await _results(request)
    tile_id = request.path_params["tile_id"]
    settings = _settings(request)
    return JSONResponse(R.tile_detail(data, res, tile_id, secret=settings.resolved_secret_key()))


async def progress(request: Request) -> Response:
    """Progress time series (?bucket=day|hour|auto) and the agreement histogram.

    Role: analyst, researcher or admin."""
    await _auth(request)
    data, res = await _results(request)
    bucket = request.query_params.get("bucket", "auto")
    return JSONResponse(R.progress_stats(data, res, bucket=bucket))


def render_chart(name: str, stats: dict[str, Any]) -> str:
    labels = stats["labels"]
    unit = "hour" if stats["bucket"] == "hour" else "day"
    if name == "labelled":
        return charts.line_chart(labels, [charts.Series("labelled", stats["tiles_labelled"]),
                                          charts.Series("retired", stats["tiles_retired"])],
                                 title="Tiles labelled and retired", y_label="tiles", area=True)
    if name == "votes":
        return charts.bar_chart(labels, stats["votes"], title=f"Votes per {unit}", y_label="votes")
    if name == "volunteers":
        return charts.bar_chart(labels, stats["active_volunteers"],
                                title=f"Active volunteers per {unit}", y_label="volunteers",
                                color=charts.PALETTE[2])
    if name == "agreement":
        bins = stats["agreement_bins"]
        lab = [f"{bins[i]:.1f}–{bins[i + 1]:.1f}" for i in range(len(bins) - 1)]
        return charts.bar_chart(lab, stats["agreement_hist"], title="Agreement across tiles",
                                y_label="tiles", color=charts.PALETTE[3])
    raise NotFound(f"no chart {name!r}; charts: {', '.join(CHARTS)}", field="chart")


async def chart(request: Request) -> Response:
    """A progress chart as SVG: labelled, votes, volunteers or agreement.

    Role: analyst, researcher or admin."""
    await _auth(request)
    name = request.path_params["name"]
    if name not in CHARTS:
        raise NotFound(f"no chart {name!r}; charts: {', '.join(CHARTS)}", field="chart")
    data, res = await _results(request)
    stats = R.progress_stats(data, res, bucket=request.query_params.get("bucket", "auto"))
    return Response(render_chart(name, stats), media_type="image/svg+xml",
                    headers={"Cache-Control": "no-store"})


async def volunteers(request: Request) -> Response:
    """Pseudonymised volunteer table with skill estimates and confusion matrices.

    Role: analyst, researcher or admin."""
    await _auth(request)
    _, res = await _results(request)
    secret = _settings(request).resolved_secret_key()
    return JSONResponse({"method": res.method, "volunteers": R.volunteer_table(res, secret)})


async def export(request: Request) -> Response:
    """Download an export: {tiles,structures,villages}.{geojson,csv,gpkg}, villages.{png,pdf}
    (map sheet), volunteers.csv. Role: analyst (unless the project restricts exports to
    researchers), researcher or admin."""
    role = await _auth(request)
    slug = request.path_params["slug"]
    layer, fmt = request.path_params["layer"], request.path_params["fmt"]
    R.check_export(layer, fmt)

    def allowed() -> bool:
        with _engine(request).connect() as conn:
            project = R.find_project(conn, slug)
            return R.exports_allowed(conn, project["id"], role)

    if not await run_in_threadpool(allowed):
        raise Forbidden("exports of this project are restricted to researchers")
    _, res = await _results(request)
    settings = _settings(request)

    def render() -> bytes:
        buf = io.BytesIO()
        R.write_export(res, layer, fmt, buf, tile_store=settings.tile_store_path,
                       secret=settings.resolved_secret_key())
        return buf.getvalue()

    body = await run_in_threadpool(render)
    name = R.export_filename(res, layer, fmt)
    return Response(body, media_type=R.MEDIA_TYPES[fmt], headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    })


def routes() -> list[BaseRoute]:
    p = "/api/analyst/projects/{slug:str}"
    return [
        Route("/analyst", page, methods=["GET"], name="analyst_index_noslash"),
        Route("/analyst/", page, methods=["GET"], name="analyst_index"),
        Route("/analyst/{slug:str}", page, methods=["GET"], name="analyst_page"),
        Route("/api/analyst/projects", list_projects, methods=["GET"], name="analyst_projects"),
        Route(p, project_summary, methods=["GET"], name="analyst_project"),
        Route(p + "/map/{layer:str}", map_layer, methods=["GET"], name="analyst_map"),
        Route(p + "/tiles/{tile_id:int}", tile_detail, methods=["GET"], name="analyst_tile"),
        Route(p + "/progress", progress, methods=["GET"], name="analyst_progress"),
        Route(p + "/charts/{name:str}.svg", chart, methods=["GET"], name="analyst_chart"),
        Route(p + "/volunteers", volunteers, methods=["GET"], name="analyst_volunteers"),
        Route(p + "/export/{layer:str}.{fmt:str}", export, methods=["GET"],
              name="analyst_export"),
    ]
