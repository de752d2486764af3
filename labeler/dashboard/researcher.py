"""Researcher pages and their JSON API (issue 5).

The page ``/researcher/`` is a static shell (``templates/researcher.html`` +
``static/dashboard/researcher.js``); everything it shows comes from the JSON API below and from
the labeler's own researcher endpoints (project create/update/publish/pause/finish, gold).
All routes need a bearer token with the ``researcher`` role (``admin`` works too), except
``POST /api/invites/redeem`` which a volunteer calls with the session cookie.

| method | path | what |
|---|---|---|
| PUT | ``/api/projects/{slug}/uploads/{layer}?filename=`` | raw GeoTIFF body, streamed to disk |
| GET/DELETE | ``/api/projects/{slug}/uploads[/{id}]`` | pending uploads |
| POST | ``/api/projects/{slug}/ingest-jobs`` | ``{"uploads": {layer: [id]}, "options": {}}`` -> 202 |
| GET | ``/api/projects/{slug}/ingest-jobs[/{id}]`` | job progress (polled by the page) |
| GET | ``/api/projects/{slug}/review?queue=&limit=&seed=`` | review queue + counts |
| POST/DELETE | ``/api/projects/{slug}/review/{tile_id}`` | decide / withdraw |
| POST | ``/api/projects/{slug}/gold/promote`` | confident or reviewed tiles -> gold |
| GET | ``/api/projects/{slug}/researcher/tiles?which=gold|retired|all`` | tiles with gold info |
| POST | ``/api/projects/{slug}/researcher/gold`` | mark/unmark one tile as gold |
| GET/PATCH | ``/api/projects/{slug}/access`` | private / exports_restricted |
| GET/POST | ``/api/projects/{slug}/invites``, DELETE ``.../{id}`` | invite links |
| POST | ``/api/invites/redeem`` | volunteer joins a private project |
| GET | ``/join#<invite code>`` | the invite link's page (redeems, then opens the project) |
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from labeler.dashboard import researcher_access as access
from labeler.dashboard import researcher_jobs as jobs
from labeler.dashboard import researcher_review as review
from labeler.dashboard.researcher_errors import JobConflict, http_status
from labeler.dashboard.researcher_uploads import StoredUpload, receive_upload
from labeler.db import read_tx, write_tx
from labeler.errors import Forbidden, LabelerError, NotAuthenticated, NotFound, ValidationError
from labeler.projects import ProjectConfig, audit, config_from_row, get_row

TEMPLATES = Path(__file__).resolve().parent / "templates"
T = TypeVar("T")
#: uploads not used by an ingest job within this time are deleted
UPLOAD_MAX_AGE_S = 24 * 3600
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
LAYER_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
JOB_OPTIONS = {"task_zoom": (12, 21), "min_zoom": (0, 21)}


# --------------------------------------------------------------------------- glue to labeler


def _st(request: Request) -> Any:
    """The labeler's per-app state (``labeler.app.LabelerState``)."""
    return request.state.labeler


def _engine(request: Request) -> sa.Engine:
    return _st(request).engine


def _settings(request: Request) -> Any:
    return _st(request).settings


def _researcher_sync(request: Request) -> str:
    from labeler import auth

    principal = auth.bearer_principal(request)
    if principal is None:
        raise NotAuthenticated(
            "this needs an API token: send 'Authorization: Bearer <token>' "
            "(create one with: crowdsight token create --role researcher)")
    if not principal.allows("researcher"):
        raise Forbidden(f"role {principal.role!r} cannot manage projects; the researcher "
                        "(or admin) role is needed")
    return principal.actor


async def _researcher(request: Request) -> str:
    """401 without a valid bearer token, 403 unless its role is researcher/admin; returns the
    actor name for the audit log."""
    return await run_in_threadpool(_researcher_sync, request)


def _read(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """Run ``fn(conn, ...)`` in a read transaction, in the thread pool."""
    engine = _engine(request)

    def run() -> T:
        with read_tx(engine) as conn:
            return fn(conn, *args, **kwargs)

    return run_in_threadpool(run)


def _write(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """Run ``fn(conn, ...)`` in a write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
    engine = _engine(request)

    def run() -> T:
        with write_tx(engine) as conn:
            return fn(conn, *args, **kwargs)

    return run_in_threadpool(run)


def _project(conn: sa.Connection, slug: str) -> ProjectConfig:
    return config_from_row(get_row(conn, slug))


def _error(exc: LabelerError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=http_status(exc))


async def _json_body(request: Request, limit: int = 64 * 1024) -> dict[str, Any]:
    body = await request.body()
    if len(body) > limit:
        from labeler.errors import BodyTooLarge

        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        from labeler.errors import InvalidJSON

        raise InvalidJSON(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        from labeler.errors import InvalidJSON

        raise InvalidJSON("the body must be a JSON object")
    return data


def _api(handler):  # type: ignore[no-untyped-def]
    """Render LabelerErrors (incl. ours with a 415) as the API's error JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except LabelerError as exc:
            return _error(exc)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


# --------------------------------------------------------------------------- pages


async def researcher_page(request: Request) -> Response:
    return FileResponse(TEMPLATES / "researcher.html", media_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def researcher_redirect(request: Request) -> Response:
    return RedirectResponse("/researcher/", status_code=308)


async def join_page(request: Request) -> Response:
    """Invite links (``/join#<code>``): the page redeems the code for the volunteer session."""
    return FileResponse(TEMPLATES / "researcher-join.html", media_type="text/html",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@_api
async def researcher_config(request: Request) -> Response:
    """Limits the page shows before an upload starts."""
    await _researcher(request)
    from crowdsight import __version__

    settings = _settings(request)
    return JSONResponse({"max_upload_bytes": settings.max_upload_bytes,
                         "max_raster_pixels": settings.max_raster_pixels,
                         "version": __version__})


# --------------------------------------------------------------------------- uploads


def _upload_dir(request: Request, slug: str) -> Path:
    return Path(_settings(request).data_dir) / "uploads" / slug


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _prune_stale_uploads(upload_dir: Path, max_age_s: float = UPLOAD_MAX_AGE_S) -> None:
    """Uploads never turned into an ingest job (and ``.part`` files of dropped connections)
    are removed after ``max_age_s``."""
    if not upload_dir.is_dir():
        return
    cutoff = time.time() - max_age_s
    for p in upload_dir.iterdir():
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
        except OSError:
            pass


def _pending_uploads(upload_dir: Path) -> list[dict[str, Any]]:
    out = []
    if upload_dir.is_dir():
        for side in sorted(upload_dir.glob("*.json")):
            data = _read_sidecar(side)
            if data and (upload_dir / f"{data['id']}.tif").exists():
                out.append(data)
    return out


@_api
async def put_upload(request: Request) -> Response:
    """Stream one GeoTIFF (raw request body) to disk; 201 with its id and raster summary."""
    actor = await _researcher(request)
    slug = request.path_params["slug"]
    layer = request.path_params["layer"]
    if not LAYER_RE.match(layer):
        raise ValidationError("layer names are 1-32 characters of a-z, 0-9, _ and -",
                              field="layer")
    cfg = await _read(request, _project, slug)
    settings = _settings(request)
    declared = request.headers.get("content-length")
    try:
        declared_length = int(declared) if declared is not None else None
    except ValueError:
        raise ValidationError("bad Content-Length header", field="file") from None
    upload_dir = _upload_dir(request, cfg.slug)
    await run_in_threadpool(_prune_stale_uploads, upload_dir)
    stored: StoredUpload = await receive_upload(
        request.stream(), upload_dir, filename=request.query_params.get("filename"),
        max_bytes=settings.max_upload_bytes, max_pixels=settings.max_raster_pixels,
        declared_length=declared_length,
    )
    upload_id = stored.path.stem
    info = {"id": upload_id, "layer": layer, "uploaded_by": actor, **stored.to_json()}
    side = upload_dir / f"{upload_id}.json"
    side.write_text(json.dumps(info), encoding="utf-8")
    return JSONResponse(info, status_code=201)


@_api
async def list_uploads(request: Request) -> Response:
    await _researcher(request)
    cfg = await _read(request, _project, request.path_params["slug"])
    uploads = await run_in_threadpool(_pending_uploads, _upload_dir(request, cfg.slug))
    return JSONResponse({"uploads": uploads})


@_api
async def delete_upload(request: Request) -> Response:
    await _researcher(request)
    upload_id = request.path_params["upload_id"]
    cfg = await _read(request, _project, request.path_params["slug"])
    if not UPLOAD_ID.match(upload_id):
        raise NotFound("no such upload", field="upload_id")
    d = _upload_dir(request, cfg.slug)
    found = (d / f"{upload_id}.tif").exists()
    (d / f"{upload_id}.tif").unlink(missing_ok=True)
    (d / f"{upload_id}.json").unlink(missing_ok=True)
    if not found:
        raise NotFound("no such upload", field="upload_id")
    return JSONResponse({"id": upload_id, "deleted": True})


# --------------------------------------------------------------------------- ingest jobs


def _job_runner(request: Request) -> jobs.JobRunner:
    """The app's worker pool, created on first use and kept on the app's state."""
    app_state = request.app.state
    runner = getattr(app_state, "researcher_job_runner", None)
    if runner is None:
        runner = jobs.JobRunner(max_workers=1)
        app_state.researcher_job_runner = runner
    return runner


def _job_options(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError("'options' must be an object", field="options")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in JOB_OPTIONS:
            raise ValidationError(f"unknown ingest option '{key}' (allowed: "
                                  f"{', '.join(JOB_OPTIONS)})", field=f"options.{key}")
        if value is None:
            continue
        lo, hi = JOB_OPTIONS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValidationError(f"'{key}' must be an integer from {lo} to {hi}",
                                  field=f"options.{key}")
        out[key] = value
    return out


def _resolve_uploads(cfg: ProjectConfig, upload_dir: Path, uploads: Any
                     ) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    if not isinstance(uploads, dict) or not uploads:
        raise ValidationError("'uploads' must map layer names to lists of upload ids",
                              field="uploads")
    layers: dict[str, list[str]] = {}
    described: dict[str, list[dict[str, Any]]] = {}
    for layer, ids in uploads.items():
        if not isinstance(layer, str) or not LAYER_RE.match(layer):
            raise ValidationError(f"bad layer name '{layer}'", field="uploads")
        if not isinstance(ids, list) or not ids:
            raise ValidationError(f"layer '{layer}' needs a list of upload ids",
                                  field=f"uploads.{layer}")
        for i, upload_id in enumerate(ids):
            ok = isinstance(upload_id, str) and UPLOAD_ID.match(upload_id)
            info = _read_sidecar(upload_dir / f"{upload_id}.json") if ok else None
            tif = upload_dir / f"{upload_id}.tif"
            if info is None or not tif.exists():
                raise ValidationError(f"upload '{upload_id}' does not exist (already ingested "
                                      "or deleted?); upload the file again",
                                      field=f"uploads.{layer}.{i}")
            layers.setdefault(layer, []).append(str(tif.resolve()))
            described.setdefault(layer, []).append(
                {"filename": info["filename"], "size": info["size"], "sha256": info["sha256"]})
    if cfg.type == "compare" and len(layers) != 2:
        raise ValidationError("a compare project needs imagery for two layers (before and after)",
                              field="uploads")
    want = cfg.layer_names
    if want and set(layers) != set(want):
        raise ValidationError(f"this project's imagery has layers {', '.join(want)}; upload "
                              "files for exactly those", field="uploads")
    return layers, described


@_api
async def start_job(request: Request) -> Response:
    """Start ingesting uploaded files: ``{"uploads": {"before": [id], "after": [id]}}``."""
    actor = await _researcher(request)
    slug = request.path_params["slug"]
    data = await _json_body(request)
    options = _job_options(data.get("options"))
    settings = _settings(request)
    cfg = await _read(request, _project, slug)
    upload_dir = _upload_dir(request, cfg.slug)
    layers, described = await run_in_threadpool(_resolve_uploads, cfg, upload_dir,
                                                data.get("uploads"))

    def create(conn: sa.Connection) -> Any:
        # one job per project: SQLite's write_tx already holds the write lock; on PostgreSQL
        # lock the project row so two requests cannot both see "no active job"
        if conn.dialect.name == "postgresql":
            from labeler.models import Project

            pt = Project.__table__
            conn.execute(sa.select(pt.c.id).where(pt.c.id == cfg.id).with_for_update())
        if jobs.active_job(conn, cfg.id) is not None:
            raise JobConflict("an ingest for this project is still running; wait for it to "
                              "finish before starting another")
        job_id = jobs.create_job(conn, project_id=cfg.id, created_by=actor,
                                 request={"layers": described, "options": options})
        return conn.execute(sa.select(jobs.IngestJob.__table__).where(
            jobs.IngestJob.__table__.c.id == job_id)).one()

    row = await _write(request, create)
    # the uploads now belong to the job: they are no longer "pending"
    for paths in layers.values():
        for tif in paths:
            Path(tif).with_suffix(".json").unlink(missing_ok=True)
    spec = jobs.IngestJobSpec(
        job_id=row.id, project_id=cfg.id, slug=cfg.slug,
        database_url=settings.resolved_database_url,
        tile_store=str(_st(request).tile_store), layers=layers,
        options=options, max_raster_pixels=settings.max_raster_pixels,
        min_coverage=settings.min_task_coverage, actor=actor,
    )
    _job_runner(request).submit(spec)
    return JSONResponse(jobs.job_json(row), status_code=202,
                        headers={"Location": f"/api/projects/{cfg.slug}/ingest-jobs/{row.id}"})


@_api
async def list_jobs(request: Request) -> Response:
    await _researcher(request)
    t = jobs.IngestJob.__table__

    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        cfg = _project(conn, request.path_params["slug"])
        rows = conn.execute(sa.select(t).where(t.c.project_id == cfg.id)
                            .order_by(t.c.created_at.desc()).limit(50)).all()
        return [jobs.job_json(r) for r in rows]

    return JSONResponse({"jobs": await _read(request, run)},
                        headers={"Cache-Control": "no-store"})


@_api
async def get_job(request: Request) -> Response:
    await _researcher(request)
    t = jobs.IngestJob.__table__

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        row = conn.execute(sa.select(t).where(t.c.project_id == cfg.id,
                                              t.c.id == request.path_params["job_id"])).first()
        if row is None:
            raise NotFound("no such ingest job in this project", field="job_id")
        return jobs.job_json(row)

    return JSONResponse(await _read(request, run), headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- project view


def _project_view(conn: sa.Connection, slug: str) -> dict[str, Any]:
    from labeler.projects import progress

    cfg = _project(conn, slug)
    return {
        "slug": cfg.slug, "name": cfg.name, "type": cfg.type, "status": cfg.status,
        "question": cfg.question, "help_text": cfg.help_text, "answers": list(cfg.answers),
        "layers": cfg.layer_names, "redundancy": cfg.redundancy,
        "retirement": dict(cfg.retirement), "gold_rate": cfg.gold_rate,
        "priority": cfg.priority, "block": {"cols": cfg.block_cols, "rows": cfg.block_rows},
        "context": cfg.context, "max_points": cfg.max_points, "task_zoom": cfg.task_zoom,
        "examples": _examples_with_urls(conn, cfg), "progress": progress(conn, cfg.id),
        "access": access.get_access(conn, cfg.id),
        "review": review.queue_counts(conn, cfg),
    }


def _examples_with_urls(conn: sa.Connection, cfg: ProjectConfig) -> list[dict[str, Any]]:
    t = review.TILES
    ids = [e["tile_id"] for e in cfg.examples if "tile_id" in e]
    tiles = {r.id: r for r in conn.execute(sa.select(t.c.id, t.c.z, t.c.x, t.c.y, t.c.layers)
                                           .where(t.c.id.in_(ids), t.c.project_id == cfg.id))}
    out = []
    for e in cfg.examples:
        item = dict(e)
        r = tiles.get(e.get("tile_id"))  # type: ignore[arg-type]
        if r is not None:
            item["image_urls"] = cfg.image_urls(r.z, r.x, r.y, list(r.layers or []))
        elif "image_url" in e:
            item["image_urls"] = {"image": e["image_url"]}
        out.append(item)
    return out


@_api
async def project_view(request: Request) -> Response:
    """The full configuration of a project as the researcher page shows it."""
    await _researcher(request)
    return JSONResponse(await _read(request, _project_view, request.path_params["slug"]),
                        headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- review + gold


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValidationError(f"'{name}' must be an integer", field=name) from None
    if not lo <= v <= hi:
        raise ValidationError(f"'{name}' must be from {lo} to {hi}", field=name)
    return v


@_api
async def get_review(request: Request) -> Response:
    await _researcher(request)
    kind = request.query_params.get("queue", "unresolved")
    limit = _int_param(request, "limit", 20, 1, 200)
    seed = _int_param(request, "seed", 0, 0, 2**31)

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        items = review.review_queue(conn, cfg, kind, limit=limit, seed=seed)
        return {"queue": kind, "items": items, "counts": review.queue_counts(conn, cfg),
                "answers": list(cfg.answers)}

    return JSONResponse(await _read(request, run), headers={"Cache-Control": "no-store"})


def _tile_id(request: Request) -> int:
    try:
        return int(request.path_params["tile_id"])
    except ValueError:
        raise NotFound("no such tile", field="tile_id") from None


@_api
async def post_decision(request: Request) -> Response:
    """The expert's answer for a tile: overrides the crowd in exports (audited)."""
    actor = await _researcher(request)
    data = await _json_body(request)
    make_gold = data.get("make_gold", False)
    if not isinstance(make_gold, bool):
        raise ValidationError("'make_gold' must be true or false", field="make_gold")
    tile_id = _tile_id(request)

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        return review.decide(conn, cfg, tile_id, answer=data.get("answer"),
                             note=data.get("note"), source=str(data.get("source", "manual")),
                             actor=actor, make_gold=make_gold,
                             explanation=data.get("explanation"))

    item = await _write(request, run)
    _invalidate(request, request.path_params["slug"])
    return JSONResponse(item)


@_api
async def delete_decision(request: Request) -> Response:
    actor = await _researcher(request)
    tile_id = _tile_id(request)

    def run(conn: sa.Connection) -> None:
        cfg = _project(conn, request.path_params["slug"])
        review.withdraw(conn, cfg, tile_id, actor=actor)

    await _write(request, run)
    return JSONResponse({"tile_id": tile_id, "decision": None})


@_api
async def promote_gold(request: Request) -> Response:
    """Confident consensus tiles (or the given reviewed tiles) become gold."""
    actor = await _researcher(request)
    data = await _json_body(request)
    min_conf = data.get("min_confidence", 0.9)
    if isinstance(min_conf, bool) or not isinstance(min_conf, (int, float)):
        raise ValidationError("'min_confidence' must be a number", field="min_confidence")
    limit = data.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
        raise ValidationError("'limit' must be an integer from 1 to 500", field="limit")
    explanation = data.get("explanation")
    if explanation is not None and (not isinstance(explanation, str) or len(explanation) > 500):
        raise ValidationError("'explanation' must be text of at most 500 characters",
                              field="explanation")

    slug = request.path_params["slug"]

    def run(conn: sa.Connection) -> list[int]:
        cfg = _project(conn, slug)
        return review.promote_to_gold(conn, cfg, actor=actor, tile_ids=data.get("tile_ids"),
                                      min_confidence=float(min_conf), limit=limit,
                                      explanation=explanation or None)

    promoted = await _write(request, run)
    _invalidate(request, request.path_params["slug"])
    return JSONResponse({"promoted": promoted, "count": len(promoted)})


@_api
async def post_gold(request: Request) -> Response:
    """Mark (``answer``) or unmark (``answer: null``) one tile as gold/tutorial."""
    actor = await _researcher(request)
    data = await _json_body(request)
    tile_id = data.get("tile_id")
    if isinstance(tile_id, bool) or not isinstance(tile_id, int):
        raise ValidationError("'tile_id' must be an integer", field="tile_id")
    tutorial = data.get("tutorial")
    if tutorial is not None and not isinstance(tutorial, bool):
        raise ValidationError("'tutorial' must be true or false", field="tutorial")

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        review.set_gold(conn, cfg, tile_id, data.get("answer"), data.get("explanation"),
                        actor=actor, tutorial=tutorial)
        page = review.list_tiles(conn, cfg, which="all", after=tile_id - 1, limit=1)
        return page["tiles"][0]

    item = await _write(request, run)
    _invalidate(request, request.path_params["slug"])
    return JSONResponse(item)


@_api
async def get_tiles(request: Request) -> Response:
    await _researcher(request)
    which = request.query_params.get("which", "gold")
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 48, 1, 200)

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        page = review.list_tiles(conn, cfg, which=which, after=after, limit=limit)
        page["answers"] = list(cfg.answers)
        return page

    return JSONResponse(await _read(request, run), headers={"Cache-Control": "no-store"})


def _invalidate(request: Request, slug: str) -> None:
    cache = getattr(_st(request), "projects", None)
    if cache is not None and hasattr(cache, "invalidate"):
        cache.invalidate(slug)


# --------------------------------------------------------------------------- access + invites


@_api
async def get_access(request: Request) -> Response:
    await _researcher(request)

    def run(conn: sa.Connection) -> dict[str, bool]:
        return access.get_access(conn, _project(conn, request.path_params["slug"]).id)

    return JSONResponse(await _read(request, run))


@_api
async def patch_access(request: Request) -> Response:
    """``{"private": bool, "exports_restricted": bool}`` (either or both)."""
    actor = await _researcher(request)
    data = await _json_body(request)
    for key in data:
        if key not in ("private", "exports_restricted"):
            raise ValidationError(f"unknown field '{key}'", field=key)
        if not isinstance(data[key], bool):
            raise ValidationError(f"'{key}' must be true or false", field=key)

    def run(conn: sa.Connection) -> dict[str, bool]:
        cfg = _project(conn, request.path_params["slug"])
        result = access.set_access(conn, cfg.id, private=data.get("private"),
                                   exports_restricted=data.get("exports_restricted"))
        audit(conn, actor, "project.access", cfg.slug, result)
        return result

    result = await _write(request, run)
    _invalidate(request, request.path_params["slug"])
    access.invalidate_private(request)
    return JSONResponse(result)


@_api
async def get_invites(request: Request) -> Response:
    await _researcher(request)

    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        return access.list_invites(conn, _project(conn, request.path_params["slug"]).id)

    return JSONResponse({"invites": await _read(request, run)})


@_api
async def post_invite(request: Request) -> Response:
    """A new invite link for the project; the token is in the answer only this once."""
    actor = await _researcher(request)
    data = await _json_body(request)
    label = data.get("label", "")
    if not isinstance(label, str) or len(label) > 200:
        raise ValidationError("'label' must be text of at most 200 characters", field="label")

    def run(conn: sa.Connection) -> dict[str, Any]:
        cfg = _project(conn, request.path_params["slug"])
        invite = access.create_invite(conn, cfg.id, label=label, created_by=actor)
        audit(conn, actor, "project.invite", cfg.slug, {"invite": invite["prefix"]})
        return invite

    invite = await _write(request, run)
    invite["url"] = f"/join#{invite['token']}"
    return JSONResponse(invite, status_code=201)


@_api
async def delete_invite(request: Request) -> Response:
    actor = await _researcher(request)
    try:
        invite_id = int(request.path_params["invite_id"])
    except ValueError:
        raise NotFound("no such invite", field="invite_id") from None

    def run(conn: sa.Connection) -> None:
        cfg = _project(conn, request.path_params["slug"])
        access.revoke_invite(conn, cfg.id, invite_id)
        audit(conn, actor, "project.invite_revoke", cfg.slug, {"invite": invite_id})

    await _write(request, run)
    return JSONResponse({"id": invite_id, "revoked": True})


@_api
async def redeem(request: Request) -> Response:
    """A volunteer (session cookie + ``X-CSRF-Token``) joins the private project of an invite."""
    from labeler.auth import require_volunteer

    session = require_volunteer(request, write=True)
    data = await _json_body(request)
    token = data.get("token")
    if not isinstance(token, str) or not 8 <= len(token) <= 100:
        raise ValidationError("'token' must be the invite code from the link", field="token")
    slug = await _write(request, access.redeem_invite, token, _volunteer_id(session))
    return JSONResponse({"slug": slug})


def _volunteer_id(session: Any) -> int:
    return int(session.id)


def routes() -> list[BaseRoute]:
    p = "/api/projects/{slug}"
    return [
        Route("/researcher", researcher_redirect, methods=["GET"]),
        Route("/researcher/", researcher_page, methods=["GET"]),
        Route("/join", join_page, methods=["GET"]),
        Route("/api/researcher/config", researcher_config, methods=["GET"]),
        Route(p + "/researcher", project_view, methods=["GET"]),
        Route(p + "/uploads", list_uploads, methods=["GET"]),
        Route(p + "/uploads/{layer}", put_upload, methods=["PUT"]),
        Route(p + "/uploads/{upload_id}", delete_upload, methods=["DELETE"]),
        Route(p + "/ingest-jobs", start_job, methods=["POST"]),
        Route(p + "/ingest-jobs", list_jobs, methods=["GET"]),
        Route(p + "/ingest-jobs/{job_id}", get_job, methods=["GET"]),
        Route(p + "/review", get_review, methods=["GET"]),
        Route(p + "/review/{tile_id}", post_decision, methods=["POST"]),
        Route(p + "/review/{tile_id}", delete_decision, methods=["DELETE"]),
        Route(p + "/gold/promote", promote_gold, methods=["POST"]),
        Route(p + "/researcher/gold", post_gold, methods=["POST"]),
        Route(p + "/researcher/tiles", get_tiles, methods=["GET"]),
        Route(p + "/access", get_access, methods=["GET"]),
        Route(p + "/access", patch_access, methods=["PATCH"]),
        Route(p + "/invites", get_invites, methods=["GET"]),
        Route(p + "/invites", post_invite, methods=["POST"]),
        Route(p + "/invites/{invite_id}", delete_invite, methods=["DELETE"]),
        Route("/api/invites/redeem", redeem, methods=["POST"]),
    ]
