"""Test helpers shared by every test package (labeler, volunteer page, dashboard, integration).

Typical use::

    @pytest.fixture(params=database_urls())
    def settings(request, tmp_path):
        with migrated_database(request.param, tmp_path) as url:
            yield make_settings(tmp_path, url)

    def test_something(settings):
        project = seed_project(settings, type="find", n_tiles=6, gold=1)
        with TestClient(create_app(settings)) as client:
            csrf = start_volunteer(client)
            ...

``database_urls()`` names the backends to run on: ``"sqlite"`` always, ``"postgresql"`` when
something answers on 127.0.0.1:5432 (override the server with
``CROWDSIGHT_TEST_POSTGRES_URL``; set ``CROWDSIGHT_TEST_POSTGRES=0`` to skip it).
"""

from __future__ import annotations

import atexit
import io
import json
import math
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mercantile
import sqlalchemy as sa

from crowdsight.settings import Settings
from labeler.db import make_engine
from labeler.migrate import head_revision
from labeler.migrate import upgrade as _upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TEST_SECRET = "crowdsight-test-secret-not-for-production"
# Joplin, Missouri: the shared test imagery's area.
ORIGIN_LONLAT = (-94.4935, 37.0700)
TASK_ZOOM = 18


_T = TypeVar("_T")


def run_async(fn: Callable[[], Awaitable[_T]]) -> _T:
    """``asyncio.run(fn())`` on a thread of its own. A test cannot call ``asyncio.run`` in the
    main thread once a Playwright (sync API) test has run on the same pytest-xdist worker: that
    leaves an event loop running there for the rest of the session."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def main() -> _T:
        return await fn()

    with ThreadPoolExecutor(1, thread_name_prefix="test-run-async") as pool:
        return pool.submit(asyncio.run, main()).result()


def postgres_url() -> str:
    return os.environ.get("CROWDSIGHT_TEST_POSTGRES_URL", DEFAULT_PG)


def postgres_available() -> bool:
    if os.environ.get("CROWDSIGHT_TEST_POSTGRES", "1").lower() in {"0", "false", "no", "off"}:
        return False
    u = sa.make_url(postgres_url())
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def database_urls() -> list[str]:
    """Backends to run tests on: ``["sqlite"]`` plus ``"postgresql"`` when reachable."""
    return ["sqlite", "postgresql"] if postgres_available() else ["sqlite"]


def _admin_engine() -> sa.Engine:
    return sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def _pg_url(name: str) -> str:
    return sa.make_url(postgres_url()).set(database=name).render_as_string(hide_password=False)


def _drop_pg(name: str) -> None:
    eng = _admin_engine()
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        eng.dispose()


@contextmanager
def fresh_database(backend: str, tmp_path: Path, *, template: str | None = None) -> Iterator[str]:
    """An empty (unmigrated) database; yields its URL and removes it afterwards.

    ``backend`` is ``"sqlite"`` (a file under ``tmp_path``) or ``"postgresql"`` (a new,
    uniquely named database on the test server, dropped afterwards)."""
    if backend == "sqlite":
        path = Path(tmp_path) / f"cs-{uuid.uuid4().hex[:8]}.db"
        if template:
            shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r} (sqlite or postgresql)")
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    eng = _admin_engine()
    try:
        with eng.connect() as conn:
            extra = ""
            if template:
                # FILE_COPY clones a tiny template several times faster than WAL_LOG (PG >= 15).
                version = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
                extra = f' TEMPLATE "{template}"' + (" STRATEGY FILE_COPY" if version >= 150000 else "")
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{extra}')
    finally:
        eng.dispose()
    try:
        yield _pg_url(name)
    finally:
        _drop_pg(name)


_templates: dict[str, str] = {}
_templates_lock = threading.Lock()
_template_dir: list[Path] = []


def _template(backend: str) -> str:
    """A migrated template database per backend and process (cloned per test)."""
    with _templates_lock:
        key = f"{backend}:{head_revision()}"
        if key in _templates:
            return _templates[key]
        if backend == "sqlite":
            if not _template_dir:
                import tempfile
                d = Path(tempfile.mkdtemp(prefix="cs-tpl-"))
                _template_dir.append(d)
                atexit.register(shutil.rmtree, d, True)
            path = _template_dir[0] / "template.db"
            url = f"sqlite:///{path}"
            _upgrade(url)
            eng = make_engine(url, pool_size=1)
            with eng.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            eng.dispose()
            _templates[key] = str(path)
        else:
            name = f"cs_tpl_{uuid.uuid4().hex[:12]}"
            eng = _admin_engine()
            with eng.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            eng.dispose()
            atexit.register(_drop_pg, name)
            _upgrade(_pg_url(name))
            _templates[key] = name
        return _templates[key]


@contextmanager
def migrated_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Like :func:`fresh_database` but already at the head revision (cloned from a template,
    so it costs a file copy / ``CREATE DATABASE ... TEMPLATE``)."""
    with fresh_database(backend, tmp_path, template=_template(backend)) as url:
        yield url


def upgrade(url: str) -> str:
    return _upgrade(url)


def make_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    """Settings for a test: data and tile store under ``tmp_path``, fixed secret."""
    base: dict[str, Any] = dict(
        data_dir=Path(tmp_path) / "data", database_url=db_url,
        tile_store=str(Path(tmp_path) / "tiles"), secret_key=TEST_SECRET,
    )
    base.update(overrides)
    return Settings(**base)


# --- seeding ----------------------------------------------------------------------------

@dataclass
class SeededProject:
    slug: str
    type: str
    manifest_path: Path
    tile_ids: list[int]          # normal (queue) tiles
    gold_ids: list[int] = field(default_factory=list)
    tutorial_ids: list[int] = field(default_factory=list)
    gold_answers: dict[int, str] = field(default_factory=dict)
    tiles: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {z,x,y,bounds}


def _jpeg(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), rgb)
    ImageDraw.Draw(img).rectangle([size // 4, size // 4, size // 2, size // 2], fill=(240, 240, 240))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_manifest(tile_store: Path, root: str, *, n_tiles: int, layers: list[str],
                   grid_cols: int | None = None, with_images: bool = True,
                   origin: tuple[float, float] = ORIGIN_LONLAT, zoom: int = TASK_ZOOM) -> Path:
    """A small ``crowdsight-manifest/1`` folder with ``n_tiles`` task tiles in a grid."""
    cols = grid_cols or max(1, math.ceil(math.sqrt(n_tiles)))
    t0 = mercantile.tile(origin[0], origin[1], zoom)
    # Start on a multiple of 6 so 2x2/3x2 blocks line up with the grid in tests.
    x0, y0 = t0.x - t0.x % 6, t0.y - t0.y % 6
    tasks = []
    root_dir = Path(tile_store) / root
    for i in range(n_tiles):
        x, y = x0 + i % cols, y0 + i // cols
        b = mercantile.bounds(x, y, zoom)
        tasks.append({"z": zoom, "x": x, "y": y,
                      "bounds": [round(v, 7) for v in (b.west, b.south, b.east, b.north)],
                      "layers": sorted(layers)})
        if with_images:
            for j, layer in enumerate(layers):
                p = root_dir / layer / str(zoom) / str(x) / f"{y}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_jpeg(((37 * i) % 200, 80 + 60 * j, 120)))
    ws = [t["bounds"] for t in tasks]
    bounds = [min(b[0] for b in ws), min(b[1] for b in ws), max(b[2] for b in ws), max(b[3] for b in ws)]
    manifest = {
        "format": "crowdsight-manifest/1", "project": root, "created": "2026-11-27T00:00:00Z",
        "software_version": "test", "tile_size": 256, "task_zoom": zoom, "min_zoom": zoom,
        "layers": {layer: {"ext": "jpg", "media_type": "image/jpeg",
                           "path_template": f"{layer}/{{z}}/{{x}}/{{y}}.jpg", "sources": [],
                           "bands": [1, 2, 3], "stretch": None, "bounds": bounds,
                           "zooms": [zoom, zoom], "tile_count": n_tiles,
                           "tile_counts": {str(zoom): n_tiles}} for layer in layers},
        "tasks": tasks,
    }
    root_dir.mkdir(parents=True, exist_ok=True)
    path = root_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def seed_project(settings: Settings, *, type: str = "find", slug: str | None = None,
                 n_tiles: int = 6, with_images: bool = True, gold: int = 0, tutorial: int = 0,
                 status: str = "live", grid_cols: int | None = None,
                 gold_answer: str | None = None, **fields: Any) -> SeededProject:
    """Create a small real project: manifest + JPEG tiles in the tile store, loaded with
    :func:`labeler.manifest.load_manifest`, the first ``tutorial`` tiles made tutorial items and
    the next ``gold`` tiles gold, then set to ``status``. Extra ``fields`` go to the project
    (``redundancy=3``, ``block={"cols": 3, "rows": 2}``, ``gold_rate=0.5``...)."""
    from labeler.manifest import load_manifest
    from labeler.projects import set_status

    slug = slug or f"{type}-{uuid.uuid4().hex[:6]}"
    layers = ["after", "before"] if type == "compare" else ["image"]
    total = n_tiles + gold + tutorial
    store = settings.tile_store_path
    mpath = write_manifest(store, slug, n_tiles=total, layers=layers, grid_cols=grid_cols,
                           with_images=with_images)
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        fields.setdefault("question", "Do you see buildings?")
        fields.setdefault("name", f"Test {type} project")
        load_manifest(engine, mpath, slug, tile_store=store, create=True,
                      project_fields={"type": type, **fields})
        with engine.begin() as conn:
            rows = conn.execute(sa.text(
                "SELECT t.id, t.z, t.x, t.y, t.west, t.south, t.east, t.north FROM tiles t "
                "JOIN projects p ON p.id = t.project_id WHERE p.slug = :s ORDER BY t.id"),
                {"s": slug}).all()
            ids = [r.id for r in rows]
            tut_ids, gold_ids = ids[:tutorial], ids[tutorial:tutorial + gold]
            answer = gold_answer or ("marked" if type == "mark" else "yes")
            answers: dict[int, str] = {}
            for i, tid in enumerate(tut_ids + gold_ids):
                a = answer if i % 2 == 0 or type == "mark" else "no"
                answers[tid] = a
                conn.execute(sa.text(
                    "UPDATE tiles SET gold_answer = :a, gold_explanation = :e, tutorial = :t "
                    "WHERE id = :id"),
                    {"a": a, "e": f"This tile shows '{a}'.", "t": tid in tut_ids, "id": tid})
        if status != "draft":
            set_status(engine, slug, "live", actor="test")
            if status != "live":
                set_status(engine, slug, status, actor="test")
    finally:
        engine.dispose()
    return SeededProject(
        slug=slug, type=type, manifest_path=mpath, tile_ids=ids[tutorial + gold:],
        gold_ids=gold_ids, tutorial_ids=tut_ids,
        gold_answers={k: v for k, v in answers.items() if k in gold_ids},
        tiles={r.id: {"z": r.z, "x": r.x, "y": r.y, "bounds": [r.west, r.south, r.east, r.north]}
               for r in rows})


def assert_counters_consistent(settings: Settings) -> None:
    """The tiles' derived counters (labels, leases, answer counts) and the volunteers' label
    counters equal a recount from scratch (:func:`labeler.assign.recount` and
    :func:`labeler.assign.recount_volunteers` find no drift)."""
    from labeler.assign import recount, recount_volunteers
    from labeler.db import make_engine

    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        assert recount(engine) == []
        assert recount_volunteers(engine) == []
    finally:
        engine.dispose()


def create_token(settings: Settings, role: str, name: str = "test") -> str:
    """A bearer token with ``role`` (researcher/analyst/admin) for ``settings``' database."""
    from labeler.security import create_token as _create

    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        return _create(engine, role, name, actor="test")[1]
    finally:
        engine.dispose()


def start_volunteer(client: Any, display_name: str | None = None) -> dict[str, str]:
    """POST /api/session on a TestClient/httpx client; returns the headers for writes
    (``{"X-CSRF-Token": ...}``). The session cookie stays in the client's cookie jar."""
    body = {"display_name": display_name} if display_name else {}
    r = client.post("/api/session", json=body)
    assert r.status_code in (200, 201), r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


def label_for(task_tile: dict[str, Any], answer: str = "yes", **extra: Any) -> dict[str, Any]:
    """One label item for a tile from ``/next`` with a fresh idempotency key."""
    return {"tile_id": task_tile["tile_id"], "answer": answer,
            "idempotency_key": uuid.uuid4().hex, **extra}
