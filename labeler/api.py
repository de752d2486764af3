"""JSON API routes (contract: ``docs/api.md``). Thin: parse, authorise, call a service
function in the thread pool, shape the answer."""

from __future__ import annotations

import asyncio
import json
import math
from functools import partial
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from labeler import auth
from labeler.errors import (
    InvalidJSON,
    NotFound,
    ProjectNotLive,
    TutorialRequired,
    ValidationError,
)
from labeler.assign import StateRead, labels_given
from labeler.batchsubmit import FastSubmit
from labeler.db import write_tx
from labeler.labels import parse_submission, submit_in, volunteer_stats
from labeler.manifest import check_min_coverage, load_manifest
from labeler.models import Label, Tile, Volunteer
from labeler.projects import (
    ProjectConfig,
    create_project,
    list_projects,
    set_status,
    update_project,
)
from labeler.security import (
    COOKIE,
    COOKIE_MAX_AGE,
    Principal,
    VolunteerSession,
    clean_display_name,
    create_token,
    insert_volunteer,
    list_tokens,
    revoke_token,
)


def _st(request: Request) -> Any:
    return request.scope["state"]["labeler"]  # (== request.state.labeler, without the wrapper)


async def read_json(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise InvalidJSON("the request needs a JSON object body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJSON("the body must be a JSON object")
    return data


def _iso(dt: Any) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _ip(request: Request) -> str:
    return _st(request).client_ip(request)


# --------------------------------------------------------------------------- volunteer


def _volunteer_json(engine: sa.Engine, vid: int) -> dict[str, Any]:
    v = Volunteer.__table__  # type: ignore[attr-defined]
    lt = Label.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        row = conn.execute(sa.select(v.c.display_name, v.c.tutorials_passed).where(v.c.id == vid)).first()
        if row is None:
            return {}
        n = conn.execute(sa.select(sa.func.count()).select_from(lt).where(lt.c.volunteer_id == vid)).scalar_one()
    return {"display_name": row.display_name, "labels": int(n),
            "tutorials_passed": list(row.tutorials_passed or [])}


def _set_cookie(request: Request, response: Response, session: VolunteerSession) -> None:
    response.set_cookie(COOKIE, _st(request).signer.dumps(session), max_age=COOKIE_MAX_AGE,
                        httponly=True, samesite="lax", secure=_st(request).settings.secure_cookies,
                        path="/")


async def start_session(request: Request) -> Response:
    """Start (or resume) an anonymous volunteer session; sets the cs_session cookie."""
    st = _st(request)
    data = await read_json(request, allow_empty=True)
    name = clean_display_name(data.get("display_name"))
    extra = set(data) - {"display_name"}
    if extra:
        raise ValidationError(f"unknown field '{sorted(extra)[0]}'", field=sorted(extra)[0])
    session = auth.volunteer_session(request)
    volunteer = None
    if session is not None:
        if name is not None:
            v = Volunteer.__table__  # type: ignore[attr-defined]

            def rename() -> None:
                with write_tx(st.engine) as conn:
                    conn.execute(sa.update(v).where(v.c.id == session.id).values(display_name=name))
            await run_in_threadpool(rename)
        volunteer = await run_in_threadpool(_volunteer_json, st.engine, session.id)
    status = 200
    if not volunteer:
        st.ip_limiter.hit("session:" + _ip(request))
        # shares a group-committed write transaction (labeler.batch)
        session = await st.committer.run(partial(insert_volunteer, display_name=name))
        # What _volunteer_json reads back for a volunteer created just now.
        volunteer = {"display_name": name, "labels": 0, "tutorials_passed": []}
        status = 201
    assert session is not None
    response = JSONResponse({"volunteer": volunteer, "csrf_token": st.signer.csrf_token(session)},
                            status_code=status)
    _set_cookie(request, response, session)
    return response


async def get_session(request: Request) -> Response:
    """The current volunteer and the CSRF token for writes; 401 without a session."""
    st = _st(request)
    session = auth.require_volunteer(request)
    volunteer = await run_in_threadpool(_volunteer_json, st.engine, session.id)
    if not volunteer:
        from labeler.errors import NotAuthenticated
        raise NotAuthenticated("this session is no longer valid: POST /api/session")
    return JSONResponse({"volunteer": volunteer, "csrf_token": st.signer.csrf_token(session)})


async def _maybe_principal(request: Request) -> Principal | None:
    if "authorization" not in request.headers:
        return None
    return await run_in_threadpool(auth.bearer_principal, request)


def _summary(st: Any, p: ProjectConfig) -> dict[str, Any]:
    return {"slug": p.slug, "name": p.name, "type": p.type, "question": p.question,
            "status": p.status, "progress": st.projects.progress(p.id)}


async def projects_index(request: Request) -> Response:
    """Live projects (every project for researcher/analyst/admin tokens)."""
    st = _st(request)
    principal = await _maybe_principal(request)
    projects = await run_in_threadpool(list_projects, st.engine, live_only=principal is None)
    if principal is None:  # issue 5: private projects only for invited volunteers
        from labeler.dashboard.researcher_access import volunteer_sees
        projects = await run_in_threadpool(
            lambda: [p for p in projects if volunteer_sees(request, p.id)])
    body = await run_in_threadpool(lambda: [_summary(st, p) for p in projects])
    return JSONResponse({"projects": body})


async def _project(request: Request, principal: Principal | None = None) -> ProjectConfig:
    """The project named in the path (from the per-process cache when fresh: no thread hop)."""
    slug = request.path_params["slug"]
    st = _st(request)
    project = st.projects.peek(slug)
    if project is None or (principal is None and _maybe_private(request, project.id)):
        # The caches went stale: the requests arriving meanwhile share one refresh instead
        # of each taking a thread and a database round trip.
        await _refresh_project(request, slug)
        project = st.projects.peek(slug)
    if project is None or (principal is None and _maybe_private(request, project.id)):
        return await run_in_threadpool(_visible_project, request, slug, principal)
    if project.status == "draft" and principal is None:
        raise NotFound(f"no project '{slug}'", field="slug")
    return project


async def _single_flight(request: Request, key: tuple[Any, ...], fn: Any) -> Any:
    """``fn()`` in the thread pool, once for all the requests of this event loop that ask
    for the same ``key`` while it runs (the others await the same result)."""
    st = _st(request)
    key = (id(asyncio.get_running_loop()), *key)
    fut = st.refreshing.get(key)
    if fut is None:
        fut = asyncio.ensure_future(run_in_threadpool(fn))
        st.refreshing[key] = fut
        fut.add_done_callback(lambda _f: st.refreshing.pop(key, None))
    return await asyncio.shield(fut)


async def _refresh_project(request: Request, slug: str) -> None:
    """Refresh the project cache (and the private-project cache) for ``slug``, once for all
    the requests of this event loop waiting on it. Errors are left to the caller's own
    lookup (``_visible_project``), which raises them for its request."""
    def refresh() -> None:
        try:
            _visible_project(request, slug, None)  # reads both caches through
        except Exception:  # noqa: BLE001 - reported by the caller's own lookup
            pass

    await _single_flight(request, ("project", slug), refresh)


def _maybe_private(request: Request, project_id: int) -> bool:
    """issue 5: private projects take the thread path, where invites are checked."""
    from labeler.dashboard.researcher_access import may_be_private
    return may_be_private(request, project_id)


def _visible_project(request: Request, slug: str, principal: Principal | None) -> ProjectConfig:
    project = _st(request).projects.get(slug)
    if project.status == "draft" and principal is None:
        raise NotFound(f"no project '{slug}'", field="slug")
    if principal is None:  # issue 5: private projects only for invited volunteers
        from labeler.dashboard.researcher_access import volunteer_sees
        if not volunteer_sees(request, project.id):
            raise NotFound(f"no project '{slug}'", field="slug")
    return project


def _project_detail(st: Any, project: ProjectConfig) -> dict[str, Any]:
    t = Tile.__table__  # type: ignore[attr-defined]
    with st.engine.connect() as conn:
        tutorial = conn.execute(sa.select(t.c.id, t.c.z, t.c.x, t.c.y, t.c.layers).where(
            t.c.project_id == project.id, t.c.tutorial.is_(True)).order_by(t.c.id)).all()
        ex_ids = [e["tile_id"] for e in project.examples if "tile_id" in e]
        ex_tiles = {r.id: r for r in conn.execute(sa.select(t.c.id, t.c.z, t.c.x, t.c.y, t.c.layers)
                                                   .where(t.c.id.in_(ex_ids), t.c.project_id == project.id))} if ex_ids else {}
    examples = []
    for e in project.examples:
        if "tile_id" in e:
            r = ex_tiles.get(e["tile_id"])
            if r is None:
                continue
            urls = project.image_urls(r.z, r.x, r.y, r.layers)
        else:
            urls = {"image": e["image_url"]}
        examples.append({"image_urls": urls, "answer": e.get("answer"), "caption": e.get("caption", "")})
    return {
        "slug": project.slug, "name": project.name, "type": project.type, "status": project.status,
        "question": project.question, "help_text": project.help_text, "examples": examples,
        "answers": list(project.answers), "layers": project.layer_names,
        "block": {"cols": project.block_cols, "rows": project.block_rows},
        "context": project.context, "max_points": min(project.max_points, st.settings.max_points_per_tile),
        "tutorial": [{"index": i, "tile_id": r.id,
                      "image_urls": project.image_urls(r.z, r.x, r.y, r.layers)}
                     for i, r in enumerate(tutorial)],
        "progress": st.projects.progress(project.id),
    }


async def project_detail(request: Request) -> Response:
    """Everything the volunteer page needs to show a project (never gold answers)."""
    st = _st(request)
    principal = await _maybe_principal(request)
    project = await _project(request, principal)
    body = await run_in_threadpool(_project_detail, st, project)
    return JSONResponse(body)


def _tutorial_check(st: Any, project: ProjectConfig, session: VolunteerSession,
                    answers: dict[str, Any]) -> dict[str, Any]:
    t = Tile.__table__  # type: ignore[attr-defined]
    with st.engine.connect() as conn:
        items = conn.execute(sa.select(t.c.id, t.c.gold_answer, t.c.gold_explanation).where(
            t.c.project_id == project.id, t.c.tutorial.is_(True)).order_by(t.c.id)).all()
    results = []
    for i, r in enumerate(items):
        given = answers.get(str(i))
        results.append({"index": i, "correct": given == r.gold_answer, "expected": r.gold_answer,
                        "explanation": r.gold_explanation or ""})
    passed = all(x["correct"] for x in results)
    if passed:
        v = Volunteer.__table__  # type: ignore[attr-defined]
        with write_tx(st.engine) as conn:
            done = conn.execute(sa.select(v.c.tutorials_passed).where(v.c.id == session.id)).scalar_one_or_none()
            done = list(done or [])
            if project.slug not in done:
                conn.execute(sa.update(v).where(v.c.id == session.id).values(
                    tutorials_passed=done + [project.slug]))
    return {"passed": passed, "results": results}


async def tutorial(request: Request) -> Response:
    """Check the volunteer's tutorial answers; records the project as passed."""
    st = _st(request)
    session = auth.require_volunteer(request, write=True)
    project = await _project(request)
    data = await read_json(request)
    answers = data.get("answers")
    if not isinstance(answers, dict) or not all(isinstance(v, (str, type(None))) for v in answers.values()):
        raise ValidationError("'answers' must map tutorial item index to an answer value",
                              field="answers")
    body = await run_in_threadpool(_tutorial_check, st, project, session, answers)
    return JSONResponse(body)


def _parse_near(raw: str | None) -> tuple[float, float] | None:
    if raw is None or raw == "":
        return None
    try:
        lon_s, lat_s = raw.split(",")
        lon, lat = float(lon_s), float(lat_s)
    except ValueError:
        raise ValidationError("'near' must be 'lon,lat' in degrees", field="near") from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -85.06 <= lat <= 85.06):
        raise ValidationError("'near' is outside the Web-Mercator world", field="near")
    return lon, lat


def _task_json(project: ProjectConfig, task: Any, prog: dict[str, int]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task.task_id,
        "lease_expires_at": _iso(task.expires_at),
        "tiles": [{"tile_id": t.tile_id, "z": t.z, "x": t.x, "y": t.y, "bounds": list(t.bounds),
                   "image_urls": project.image_urls(t.z, t.x, t.y, t.layers), "row": t.row,
                   "col": t.col} for t in task.tiles],
        "progress": {"labelled_by_you": task.labelled_by_you, "tiles": prog["tiles"],
                     "retired": prog["retired"]},
    }
    if project.context:
        tile = task.tiles[0]
        body["context_urls"] = {
            key: project.image_urls(tile.z, tile.x + int(key.split(",")[0]),
                                    tile.y + int(key.split(",")[1]), layers)
            for key, layers in task.context.items()}
    return body


def _tutorial_pending(st: Any, project: ProjectConfig, vid: int) -> bool:
    """Whether the volunteer must pass the project's tutorial before getting tasks."""
    return st.projects.has_tutorial(project.id) and not st.projects.tutorial_passed(
        vid, project.slug)


def _require_tutorial(st: Any, project: ProjectConfig, vid: int) -> None:
    if _tutorial_pending(st, project, vid):
        raise TutorialRequired(f"pass the tutorial of project '{project.slug}' first: "
                               f"POST /api/projects/{project.slug}/tutorial")


def _next_parts(st: Any, project: ProjectConfig, vid: int, near: tuple[float, float] | None,
                ahead: bool, conn: Any, state: Any = None) -> tuple[list[Any], int]:
    """The database half of ``next``, inside ``conn``'s group-committed write transaction:
    lease the task(s); ``(tasks, labels given when there is none)``. The project's progress
    is added by :func:`_with_progress` and the answer shaped by :func:`_next_body`, both
    after the commit, so neither lengthens the batch (on SQLite it holds the cross-process
    write lock; on a cache miss the progress is an aggregate over the project's tiles)."""
    _require_tutorial(st, project, vid)
    tasks = st.assigner.next_tasks(project, vid, near=near, ahead=1 if ahead else 0, conn=conn,
                                   state=state)
    n = 0 if tasks else labels_given(conn, project.id, vid)
    return tasks, n


async def _with_progress(request: Request, project: ProjectConfig,
                         parts: tuple[list[Any], int] | None
                         ) -> tuple[list[Any], dict[str, int], int] | None:
    """``parts`` with the project's progress: from the per-process cache when fresh, else
    read once in a thread for all the requests of this event loop waiting on it."""
    if parts is None:
        return None
    projects = _st(request).projects
    prog = projects.peek_progress(project.id)
    if prog is None:
        prog = await _single_flight(request, ("progress", project.id),
                                    partial(projects.progress, project.id))
    return parts[0], prog, parts[1]


def _next_body(project: ProjectConfig, parts: tuple[list[Any], dict[str, int], int],
               ahead: bool) -> dict[str, Any]:
    """The answer of ``next`` from :func:`_with_progress` (no database)."""
    tasks, prog, n = parts
    if not tasks:
        body = {"task_id": None, "done": True, "tiles": [],
                "progress": {"labelled_by_you": n, "tiles": prog["tiles"], "retired": prog["retired"]}}
    else:
        body = _task_json(project, tasks[0], prog)
    if ahead:
        body["ahead"] = _task_json(project, tasks[1], prog) if len(tasks) > 1 else None
    return body


def _next_parts_or_none(st: Any, project: ProjectConfig, vid: int,
                        near: tuple[float, float] | None, ahead: bool,
                        conn: Any, state: Any = None) -> tuple[list[Any], int] | None:
    """``next`` after a submission: ``None`` when the project is not live or its tutorial is
    required (the labels are stored either way; ``GET /next`` explains)."""
    if project.status != "live":
        return None
    try:
        return _next_parts(st, project, vid, near, ahead, conn, state)
    except TutorialRequired:
        return None


def _parse_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw in (None, "", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise ValidationError(f"'{name}' must be 0 or 1", field=name)


async def next_task(request: Request) -> Response:
    """Lease the next task (tile or block) for this volunteer; ?near=lon,lat optional;
    ?ahead=1 also leases (or renews) the task after it, under "ahead", for prefetching."""
    st = _st(request)
    session = auth.require_volunteer(request)
    near = _parse_near(request.query_params.get("near"))
    project = await _project(request)
    if project.status != "live":
        raise ProjectNotLive(f"project '{project.slug}' is {project.status}, not live")
    ahead = _parse_flag(request, "ahead")
    # claim inside a group-committed transaction (labeler.batch)
    parts = await st.committer.run(
        lambda conn: _next_parts(st, project, session.id, near, ahead, conn))
    parts = await _with_progress(request, project, parts)
    body = _next_body(project, parts, ahead)  # after the commit, outside the batch
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def submit_labels(request: Request) -> Response:
    """Store this volunteer's labels for tiles of a leased task (idempotent per key)."""
    st = _st(request)
    session = auth.require_volunteer(request, write=True)
    st.volunteer_limiter.hit(f"v:{session.id}")
    st.ip_limiter.hit("labels:" + _ip(request))
    project = await _project(request)
    if project.status == "draft":
        raise ProjectNotLive(f"project '{project.slug}' is a draft")
    data = await read_json(request)
    task_id, labels = parse_submission(project, data, st.settings.max_points_per_tile)
    want_next = _parse_flag(request, "next")
    ahead = _parse_flag(request, "ahead") if want_next else False
    near = _parse_near(request.query_params.get("near")) if want_next else None
    # Store the labels (and claim the next task) in ONE write transaction shared with other
    # volunteers' concurrent requests (labeler.batch: group commit); the answer is sent only
    # after that transaction committed.
    store, fast = submission_work(st, project, session.id, task_id, labels,
                                  want_next=want_next, ahead=ahead, near=near)
    result, parts = await st.committer.run(
        store, locks=[(lb.tile_id, session.id) for lb in labels], fast=fast)
    parts = await _with_progress(request, project, parts)
    # The answer is built after the commit, outside the batch's transaction.
    body = result.to_json()
    if want_next:  # the next task comes back with the answer: one request per task, not two
        body["next"] = None if parts is None else _next_body(project, parts, ahead)
    return JSONResponse(body, headers={"Cache-Control": "no-store"} if want_next else None)


def submission_work(st: Any, project: ProjectConfig, vid: int, task_id: str,
                    labels: list[Any], *, want_next: bool, ahead: bool,
                    near: tuple[float, float] | None) -> tuple[Any, FastSubmit]:
    """What a group-committed batch runs for one ``POST /labels``: ``(work, fast)``, the
    request's own work (store the labels, then claim the next task when ``want_next``:
    ``(SubmitResult, next parts or None)``) and the same described for
    :func:`labeler.batchsubmit.submit_many`, which may store it together with the batch's
    other submissions (PostgreSQL)."""
    key = st.assigner.task_key

    def make_state() -> StateRead | None:
        # the statement storing the labels also reads the state the next task starts from
        if want_next and project.status == "live":
            # (its next task may come with this statement; not for someone who must pass
            # the project's tutorial first: ``next`` then says so and claims nothing)
            return st.assigner.state_read(project, vid, ahead=1 if ahead else 0, near=near,
                                          claim=not _tutorial_pending(st, project, vid))
        return None

    def finish(conn: Any, result: Any, state: StateRead | None) -> tuple[Any, Any]:
        parts = (_next_parts_or_none(st, project, vid, near, ahead, conn, state)
                 if want_next else None)
        return result, parts

    def store(conn: Any) -> tuple[Any, Any]:
        state = make_state()
        result = submit_in(conn, project, vid, task_id, labels, task_key=key, state=state)
        return finish(conn, result, state)

    return store, FastSubmit(project, vid, task_id, labels, key, make_state, finish)


_NEAR = ("string", "lon,lat: start near this place (projects with a task zoom)")
_AHEAD = ("integer", "1: also lease the task after it (answer field 'ahead') for prefetching")
next_task.query_params = {"near": _NEAR, "ahead": _AHEAD}  # type: ignore[attr-defined]
submit_labels.query_params = {  # type: ignore[attr-defined]
    "next": ("integer", "1: the answer also carries the next task (field 'next')"),
    "ahead": _AHEAD, "near": _NEAR}


async def my_stats(request: Request) -> Response:
    """This volunteer's label counts per project and gold score."""
    st = _st(request)
    session = auth.require_volunteer(request)

    def run() -> dict[str, Any]:
        with st.engine.connect() as conn:
            return volunteer_stats(conn, session.id)
    return JSONResponse(await run_in_threadpool(run))


# --------------------------------------------------------------------------- researcher


def _project_json(p: ProjectConfig) -> dict[str, Any]:
    return {"slug": p.slug, "name": p.name, "type": p.type, "status": p.status,
            "question": p.question, "help_text": p.help_text, "answers": list(p.answers),
            "layers": p.layer_names, "redundancy": p.redundancy, "retirement": dict(p.retirement),
            "gold_rate": p.gold_rate, "priority": p.priority,
            "block": {"cols": p.block_cols, "rows": p.block_rows}, "context": p.context,
            "max_points": p.max_points, "task_zoom": p.task_zoom, "examples": list(p.examples)}


async def _role(request: Request, *roles: str) -> Principal:
    return await run_in_threadpool(auth.require_role, request, *roles)


async def create_project_ep(request: Request) -> Response:
    """Create a project (status draft). Role: researcher."""
    st = _st(request)
    who = await _role(request, "researcher")
    data = await read_json(request)
    p = await run_in_threadpool(lambda: create_project(
        st.engine, data, actor=who.actor, max_points_cap=st.settings.max_points_per_tile))
    st.projects.invalidate(p.slug)
    return JSONResponse(_project_json(p), status_code=201)


async def update_project_ep(request: Request) -> Response:
    """Update a project's question, answers, policies... Role: researcher."""
    st = _st(request)
    who = await _role(request, "researcher")
    data = await read_json(request)
    slug = request.path_params["slug"]
    p = await run_in_threadpool(lambda: update_project(
        st.engine, slug, data, actor=who.actor, max_points_cap=st.settings.max_points_per_tile))
    st.projects.invalidate(slug)
    return JSONResponse(_project_json(p))


def _status_endpoint(status: str, doc: str) -> Any:
    async def endpoint(request: Request) -> Response:
        st = _st(request)
        who = await _role(request, "researcher")
        slug = request.path_params["slug"]
        p = await run_in_threadpool(lambda: set_status(st.engine, slug, status, actor=who.actor))
        st.projects.invalidate(slug)
        return JSONResponse(_project_json(p))
    endpoint.__doc__ = doc
    endpoint.__name__ = f"project_{status}"
    return endpoint


async def load_manifest_ep(request: Request) -> Response:
    """Load an ingest manifest (a path inside the tile store) into the project. Role: researcher."""
    st = _st(request)
    who = await _role(request, "researcher")
    data = await read_json(request)
    path = data.get("path")
    if not isinstance(path, str) or not path or len(path) > 1000:
        raise ValidationError("'path' (inside the tile store) is required", field="path")
    slug = request.path_params["slug"]
    min_coverage = check_min_coverage(data.get("min_coverage", st.settings.min_task_coverage))
    result = await run_in_threadpool(lambda: load_manifest(
        st.engine, path, slug, tile_store=st.tile_store, actor=who.actor,
        min_coverage=min_coverage))
    st.projects.invalidate(slug)
    return JSONResponse(result.to_json())


def _mark_gold(st: Any, project: ProjectConfig, items: list[Any], actor: str) -> int:
    t = Tile.__table__  # type: ignore[attr-defined]
    from labeler.db import write_tx
    from labeler.projects import audit
    n = 0
    with write_tx(st.engine) as conn:
        for i, item in enumerate(items):
            f = f"tiles.{i}"
            if not isinstance(item, dict):
                raise ValidationError("each item must be an object", field=f)
            if "tile_id" in item:
                cond = t.c.id == item["tile_id"]
            elif all(k in item for k in ("z", "x", "y")):
                cond = sa.and_(t.c.z == item["z"], t.c.x == item["x"], t.c.y == item["y"])
            else:
                raise ValidationError("give 'tile_id' or 'z','x','y'", field=f)
            answer = item.get("answer")
            if answer is not None and answer not in project.answer_values:
                raise ValidationError(f"'answer' must be one of {', '.join(sorted(project.answer_values))}"
                                      " or null", field=f"{f}.answer")
            expl = item.get("explanation")
            if expl is not None and (not isinstance(expl, str) or len(expl) > 2000):
                raise ValidationError("'explanation' must be text <= 2000 chars", field=f"{f}.explanation")
            tut = item.get("tutorial", False)
            if not isinstance(tut, bool) or (tut and answer is None):
                raise ValidationError("'tutorial' must be true/false and needs an answer",
                                      field=f"{f}.tutorial")
            row = conn.execute(sa.select(t.c.id).where(cond, t.c.project_id == project.id)).first()
            if row is None:
                raise ValidationError("no such tile in this project", field=f)
            conn.execute(sa.update(t).where(t.c.id == row.id).values(
                gold_answer=answer, gold_explanation=expl, tutorial=tut))
            n += 1
        audit(conn, actor, "project.gold", project.slug, {"tiles": n})
    return n


async def mark_gold(request: Request) -> Response:
    """Mark tiles as gold (known answer + explanation) or tutorial examples. Role: researcher."""
    st = _st(request)
    who = await _role(request, "researcher")
    data = await read_json(request)
    items = data.get("tiles")
    if not isinstance(items, list) or not 1 <= len(items) <= 10_000:
        raise ValidationError("'tiles' must be a list of 1-10000 items", field="tiles")
    project = await run_in_threadpool(st.projects.get, request.path_params["slug"])
    n = await run_in_threadpool(_mark_gold, st, project, items, who.actor)
    st.projects.invalidate(project.slug)
    return JSONResponse({"updated": n})


# --------------------------------------------------------------------------- analyst


def agreement(counts: dict[str, int]) -> float | None:
    """MapSwipe agreement: (sum n_i^2 - n) / (n (n - 1))."""
    n = sum(counts.values())
    if n < 2:
        return None
    return (sum(c * c for c in counts.values()) - n) / (n * (n - 1))


def _stats(st: Any, project: ProjectConfig) -> dict[str, Any]:
    with st.engine.connect() as conn:
        tiles = conn.execute(sa.text(
            "SELECT count(*) AS total, "
            "sum(CASE WHEN state = 'live' AND gold_answer IS NULL AND NOT tutorial THEN 1 ELSE 0 END) AS live, "
            "sum(CASE WHEN state = 'retired' THEN 1 ELSE 0 END) AS retired, "
            "sum(CASE WHEN state = 'unresolved' THEN 1 ELSE 0 END) AS unresolved, "
            "sum(CASE WHEN gold_answer IS NOT NULL AND NOT tutorial THEN 1 ELSE 0 END) AS gold, "
            "sum(CASE WHEN tutorial THEN 1 ELSE 0 END) AS tutorial "
            "FROM tiles WHERE project_id = :p"), {"p": project.id}).one()
        labels = conn.execute(sa.text(
            "SELECT count(*) AS n, sum(CASE WHEN skipped THEN 1 ELSE 0 END) AS skips, "
            "sum(CASE WHEN flag_note IS NOT NULL THEN 1 ELSE 0 END) AS flags, "
            "count(DISTINCT volunteer_id) AS volunteers FROM labels WHERE project_id = :p"),
            {"p": project.id}).one()
        answers = conn.execute(sa.text(
            "SELECT answer, count(*) AS n FROM labels WHERE project_id = :p AND answer IS NOT NULL "
            "AND NOT is_gold GROUP BY answer"), {"p": project.id}).all()
    return {
        "project": project.slug, "status": project.status,
        "tiles": {k: int(getattr(tiles, k) or 0) for k in
                  ("total", "live", "retired", "unresolved", "gold", "tutorial")},
        "labels": int(labels.n), "skips": int(labels.skips or 0), "flags": int(labels.flags or 0),
        "volunteers": int(labels.volunteers),
        "answers": {r.answer: int(r.n) for r in answers},
    }


async def project_stats(request: Request) -> Response:
    """Progress statistics. Role: analyst (or researcher)."""
    st = _st(request)
    await _role(request, "analyst", "researcher")
    project = await run_in_threadpool(st.projects.get, request.path_params["slug"])
    return JSONResponse(await run_in_threadpool(_stats, st, project))


def _results(st: Any, project: ProjectConfig, after: int, limit: int) -> dict[str, Any]:
    t = Tile.__table__  # type: ignore[attr-defined]
    with st.engine.connect() as conn:
        rows = conn.execute(sa.select(
            t.c.id, t.c.z, t.c.x, t.c.y, t.c.west, t.c.south, t.c.east, t.c.north, t.c.state,
            t.c.answer_counts, t.c.consensus_answer, t.c.confidence, t.c.label_count).where(
            t.c.project_id == project.id, t.c.id > after, t.c.gold_answer.is_(None),
            t.c.tutorial.is_(False)).order_by(t.c.id).limit(limit)).all()
    results = []
    for r in rows:
        counts = dict(r.answer_counts or {})
        results.append({"tile_id": r.id, "z": r.z, "x": r.x, "y": r.y,
                        "bounds": [r.west, r.south, r.east, r.north], "state": r.state,
                        "answer": r.consensus_answer, "confidence": r.confidence,
                        "counts": counts, "total": int(r.label_count),
                        "agreement": agreement(counts)})
    return {"results": results, "next_after": rows[-1].id if len(rows) == limit else None}


async def project_results(request: Request) -> Response:
    """Per-tile consensus (majority vote or the adaptive posterior). Role: analyst (or researcher)."""
    st = _st(request)
    await _role(request, "analyst", "researcher")
    try:
        after = int(request.query_params.get("after", 0))
        limit = int(request.query_params.get("limit", 1000))
    except ValueError:
        raise ValidationError("'after' and 'limit' must be integers", field="after") from None
    if not 1 <= limit <= 10_000:
        raise ValidationError("'limit' must be from 1 to 10000", field="limit")
    project = await run_in_threadpool(st.projects.get, request.path_params["slug"])
    return JSONResponse(await run_in_threadpool(_results, st, project, after, limit))


# --------------------------------------------------------------------------- admin


async def tokens_create(request: Request) -> Response:
    """Create an API token; the token is shown only in this answer. Role: admin."""
    st = _st(request)
    who = await _role(request, "admin")
    data = await read_json(request)
    role, name = data.get("role"), data.get("name", "")
    tid, token = await run_in_threadpool(lambda: create_token(st.engine, role, name, actor=who.actor))
    return JSONResponse({"id": tid, "token": token, "role": role, "name": name}, status_code=201)


async def tokens_list(request: Request) -> Response:
    """API tokens (never the tokens themselves). Role: admin."""
    st = _st(request)
    await _role(request, "admin")
    return JSONResponse({"tokens": await run_in_threadpool(list_tokens, st.engine)})


async def tokens_revoke(request: Request) -> Response:
    """Revoke an API token. Role: admin."""
    st = _st(request)
    who = await _role(request, "admin")
    tid = request.path_params["token_id"]
    await run_in_threadpool(lambda: revoke_token(st.engine, tid, actor=who.actor))
    st.tokens.clear()
    return JSONResponse({"id": tid, "revoked": True})


def routes() -> list[BaseRoute]:
    return [
        # The volunteer hot path first: Starlette tries routes in order (the paths overlap
        # no other route, so the order changes nothing else).
        Route("/api/projects/{slug}/labels", submit_labels, methods=["POST"]),
        Route("/api/projects/{slug}/next", next_task, methods=["GET"]),
        Route("/api/session", start_session, methods=["POST"]),
        Route("/api/session", get_session, methods=["GET"]),
        Route("/api/projects", projects_index, methods=["GET"]),
        Route("/api/projects", create_project_ep, methods=["POST"]),
        Route("/api/projects/{slug}", project_detail, methods=["GET"]),
        Route("/api/projects/{slug}", update_project_ep, methods=["PATCH"]),
        Route("/api/projects/{slug}/tutorial", tutorial, methods=["POST"]),
        Route("/api/projects/{slug}/publish",
              _status_endpoint("live", "Publish (status live). Role: researcher."), methods=["POST"]),
        Route("/api/projects/{slug}/pause",
              _status_endpoint("paused", "Pause (status paused). Role: researcher."), methods=["POST"]),
        Route("/api/projects/{slug}/finish",
              _status_endpoint("finished", "Finish (status finished). Role: researcher."),
              methods=["POST"]),
        Route("/api/projects/{slug}/manifest", load_manifest_ep, methods=["POST"]),
        Route("/api/projects/{slug}/gold", mark_gold, methods=["POST"]),
        Route("/api/projects/{slug}/stats", project_stats, methods=["GET"]),
        Route("/api/projects/{slug}/results", project_results, methods=["GET"]),
        Route("/api/me/stats", my_stats, methods=["GET"]),
        Route("/api/tokens", tokens_create, methods=["POST"]),
        Route("/api/tokens", tokens_list, methods=["GET"]),
        Route("/api/tokens/{token_id:int}", tokens_revoke, methods=["DELETE"]),
    ]
