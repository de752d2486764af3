"""Background ingest of browser uploads in a worker PROCESS.

The web process only records a job row and hands a plain :class:`IngestJobSpec` to a
``ProcessPoolExecutor`` (``spawn`` context: no forked event loop, DB connections or GDAL
state). The worker

1. ingests the uploaded GeoTIFFs into a private staging tile store
   (``{store}/.staging/{job_id}``), reporting progress into the job row (throttled);
2. moves the new tiles into ``{store}/{slug}/`` — layer directories are swapped in whole
   with ``os.replace``, so a layer is either the old one or the new one, never a mix;
3. loads the manifest into the project in ONE database transaction.

If any step fails, the staging store is deleted, swapped layers are restored, the job row
says what went wrong in plain words, and the project keeps the tiles it had before.
The page polls ``GET /api/projects/{slug}/ingest-jobs/{id}`` for the progress bar.

Several web processes (or machines) may run jobs: the job table is the only shared state,
and the upload directory and tile store must be on storage all of them see.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from labeler.dashboard.models import iso, IngestJob
from labeler.db import write_tx
from labeler.models import utcnow

log = logging.getLogger("crowdsight.ingest_jobs")

#: A running job whose worker has not reported for this long is considered dead.
STALE_AFTER = timedelta(minutes=5)
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class IngestJobSpec:
    """Everything a worker process needs; plain picklable values only."""

    job_id: str
    project_id: int
    slug: str
    database_url: str
    tile_store: str
    layers: dict[str, list[str]]  # layer name -> absolute paths of uploaded GeoTIFFs
    options: dict[str, Any] = field(default_factory=dict)
    max_raster_pixels: int = 2_000_000_000
    min_coverage: float = 0.5  # Settings.min_task_coverage: skip nearly-empty task tiles
    actor: str = "researcher"
    delete_sources: bool = True  # remove the uploaded files once the job is over


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- job rows


def create_job(conn: sa.Connection, *, project_id: int, request: dict[str, Any],
               created_by: str) -> str:
    job_id = new_job_id()
    now = utcnow()
    conn.execute(
        sa.insert(IngestJob.__table__).values(
            id=job_id, project_id=project_id, status="queued", stage="queued", progress=0.0,
            message="waiting for a worker", request=request, created_by=created_by,
            created_at=now, heartbeat_at=now,
        )
    )
    return job_id


def _update(engine: Engine, job_id: str, **values: Any) -> None:
    values.setdefault("heartbeat_at", utcnow())
    # write_tx (not engine.begin): on SQLite a plain BEGIN can starve in the busy handler
    # behind labeler writes and fail with "database is locked". Only the UPDATE runs inside;
    # never call this while the same thread holds write_tx (the writer lock is not
    # re-entrant) — e.g. not as load_manifest's progress callback.
    with write_tx(engine) as conn:
        conn.execute(
            sa.update(IngestJob.__table__).where(IngestJob.__table__.c.id == job_id).values(**values)
        )


def job_json(row: Any, *, now: Any = None) -> dict[str, Any]:
    """The API shape of a job row; a silent ``running`` job is reported as interrupted."""
    now = now or utcnow()
    status, error_code, error_message = row.status, row.error_code, row.error_message
    if status in ("running", "queued") and _aware(row.heartbeat_at) < now - STALE_AFTER:
        status, error_code = "failed", "interrupted"
        error_message = ("the ingest stopped without finishing (the server was restarted?); "
                         "the project was left unchanged — upload the files again")
    return {
        "id": row.id,
        "status": status,
        "stage": row.stage,
        "progress": round(float(row.progress), 4),
        "message": row.message,
        "error": None if status != "failed" else {"code": error_code, "message": error_message},
        "request": row.request,
        "result": row.result,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
    }


def active_job(conn: sa.Connection, project_id: int) -> Any | None:
    """The project's queued/running job that is still alive, if any."""
    t = IngestJob.__table__
    rows = conn.execute(
        sa.select(t).where(t.c.project_id == project_id, t.c.status.in_(("queued", "running")))
    ).all()
    cutoff = utcnow() - STALE_AFTER
    for row in rows:
        if _aware(row.heartbeat_at) >= cutoff:
            return row
    return None


# --------------------------------------------------------------------------- the runner


class JobRunner:
    """Owns the worker pool of one app instance.

    The pool is created on the first job and shut down when the last running job ends, so an
    idle server holds no worker process (and no GDAL memory) between uploads.
    """

    def __init__(self, max_workers: int = 1) -> None:
        self.max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.futures: dict[str, Future[Any]] = {}

    def submit(self, spec: IngestJobSpec) -> Future[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.max_workers, mp_context=get_context("spawn")
                )
            fut = self._pool.submit(run_ingest_job, spec)
            self.futures[spec.job_id] = fut
        fut.add_done_callback(lambda f, s=spec: self._done(s, f))
        return fut

    def _done(self, spec: IngestJobSpec, fut: Future[Any]) -> None:
        job_id = spec.job_id
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            # the worker process died (killed, out of memory, pool shut down): record it
            log.error("ingest job %s: worker failed: %r", job_id, exc)
            _mark_worker_failure(spec, exc)
        with self._lock:
            self.futures.pop(job_id, None)
            if not self.futures and self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)


def _mark_worker_failure(spec: IngestJobSpec, exc: BaseException | None) -> None:
    from labeler.db import make_engine

    engine = make_engine(spec.database_url, pool_size=1)
    try:
        t = IngestJob.__table__
        with write_tx(engine) as conn:
            conn.execute(sa.update(t).where(t.c.id == spec.job_id,
                                            t.c.status.in_(("queued", "running"))).values(
                status="failed", stage="failed", error_code="worker_died",
                error_message=("the ingest worker process stopped unexpectedly "
                               f"({type(exc).__name__ if exc else 'cancelled'}); the project "
                               "was left unchanged — try again, or ingest on the server with "
                               "`crowdsight ingest`"),
                message="failed; the project was left unchanged", finished_at=utcnow(),
                heartbeat_at=utcnow()))
    except Exception:  # pragma: no cover - DB gone
        log.exception("could not record the failure of job %s", spec.job_id)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- in the worker


class _Reporter:
    """Progress callback writing into the job row at most every HEARTBEAT_SECONDS."""

    def __init__(self, engine: Engine, job_id: str, *, start: float, span: float) -> None:
        self.engine, self.job_id = engine, job_id
        self.start, self.span = start, span
        self._last = 0.0

    def __call__(self, done: float, total: float | None = None, message: str = "") -> None:
        frac = (done / total) if total else float(done)
        frac = min(max(frac, 0.0), 1.0)
        now = time.monotonic()
        if now - self._last < HEARTBEAT_SECONDS and frac < 1.0:
            return
        self._last = now
        values: dict[str, Any] = {"progress": self.start + self.span * frac}
        if message:
            values["message"] = message[:500]
        _update(self.engine, self.job_id, **values)


def _error_message(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(code), str(message)


def run_ingest_job(spec: IngestJobSpec) -> dict[str, Any]:
    """Worker-process entry point. Never raises for a domain error: the job row records it."""
    from labeler.db import make_engine

    engine = make_engine(spec.database_url, pool_size=1)
    store = Path(spec.tile_store)
    staging = store / ".staging" / spec.job_id
    try:
        _update(engine, spec.job_id, status="running", stage="ingest", progress=0.0,
                message="reading the imagery")
        reporter = _Reporter(engine, spec.job_id, start=0.0, span=0.9)
        manifest = ingest_to_staging(spec, staging, reporter)
        _update(engine, spec.job_id, stage="loading", progress=0.9,
                message="adding the tiles to the project")
        # no progress callback here: load_manifest holds a write transaction (on SQLite the
        # whole database), so the job row cannot be updated until it commits
        result = publish_staging(spec, engine, staging, manifest)
        # consumed before the job says it is done: a client that sees "succeeded" finds
        # the uploads gone (they were deleted after the status, in ``finally``: a race)
        _delete_sources(spec)
        _update(engine, spec.job_id, status="succeeded", stage="done", progress=1.0,
                message="finished", result=result, finished_at=utcnow())
        return result
    except BaseException as exc:  # noqa: BLE001 - recorded in the job row
        code, message = _error_message(exc)
        from labeler.errors import LabelerError

        known = isinstance(exc, LabelerError) or type(exc).__module__.startswith("ingest")
        if not known:
            log.error("ingest job %s failed:\n%s", spec.job_id, traceback.format_exc())
            code, message = "ingest_failed", f"the ingest failed unexpectedly: {message}"
        _delete_sources(spec)
        try:
            _update(engine, spec.job_id, status="failed", stage="failed", error_code=code[:64],
                    error_message=message, message="failed; the project was left unchanged",
                    finished_at=utcnow())
        except Exception:  # pragma: no cover - DB gone
            log.exception("could not record the failure of job %s", spec.job_id)
        if not isinstance(exc, Exception):
            raise
        return {"error": {"code": code, "message": message}}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _delete_sources(spec)  # (already done unless the job was interrupted)
        engine.dispose()


def _delete_sources(spec: IngestJobSpec) -> None:
    """Remove the job's uploaded files when it owns them (idempotent)."""
    if spec.delete_sources:
        for paths in spec.layers.values():
            for p in paths:
                try:
                    Path(p).unlink(missing_ok=True)
                except OSError as exc:  # never mask the job's own outcome
                    log.warning("could not remove upload %s: %s", p, exc)


# The two steps below are the glue to ``ingest`` and the labeler's manifest loader.

IngestFn = Callable[..., Any]


def ingest_to_staging(spec: IngestJobSpec, staging: Path,
                      progress: Callable[..., None]) -> Path:
    """Run ``ingest.ingest`` (the same code as ``crowdsight ingest``) into the staging store;
    return the manifest path."""
    from ingest.pipeline import ingest as ingest_fn

    staging.mkdir(parents=True, exist_ok=True)
    ingest_fn(
        {name: [Path(p) for p in paths] for name, paths in spec.layers.items()},
        staging,
        spec.slug,
        zoom=spec.options.get("task_zoom"),
        min_zoom=spec.options.get("min_zoom"),
        max_pixels=spec.max_raster_pixels,
        jobs=1,
        progress=lambda done, total, stage: progress(
            done, total, f"cutting tiles ({stage})" if total else f"{stage}"),
    )
    manifest = staging / spec.slug / "manifest.json"
    if not manifest.is_file():
        from labeler.errors import ManifestError

        raise ManifestError("the ingest finished without writing a manifest")
    return manifest


def publish_staging(spec: IngestJobSpec, engine: Engine, staging: Path,
                    manifest: Path, progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Merge the staged tiles into ``{store}/{slug}`` and load the manifest (one transaction).

    Tile files that already exist are kept (tiles already in the project keep the imagery
    their labels were given on); only new files are added, plus the new ``manifest.json``.
    If loading the manifest fails, the added files are removed and the previous manifest is
    restored, so the project and its folder are exactly as before.

    ``progress`` runs inside load_manifest's write transaction: it must not write to the
    database (e.g. not a :class:`_Reporter`; on SQLite the writer lock is not re-entrant).
    """
    from labeler.manifest import load_manifest

    store = Path(spec.tile_store)
    target = store / spec.slug
    src_root = staging / spec.slug
    added: list[Path] = []
    old_manifest = target / "manifest.json"
    manifest_backup = staging / "manifest.previous.json"
    had_manifest = old_manifest.exists()
    try:
        for dirpath, _dirs, files in os.walk(src_root):
            rel_dir = Path(dirpath).relative_to(src_root)
            for name in files:
                if rel_dir == Path(".") and name == "manifest.json":
                    continue
                dst = target / rel_dir / name
                if dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(dirpath) / name, dst)
                added.append(dst)
        if had_manifest:
            shutil.copy2(old_manifest, manifest_backup)
        target.mkdir(parents=True, exist_ok=True)
        os.replace(src_root / "manifest.json", old_manifest)
        result = load_manifest(engine, old_manifest, spec.slug, tile_store=store,
                               actor=spec.actor, progress=progress,
                               min_coverage=spec.min_coverage)
    except BaseException:
        for dst in added:
            dst.unlink(missing_ok=True)
        if had_manifest and manifest_backup.exists():
            os.replace(manifest_backup, old_manifest)
        elif not had_manifest:
            old_manifest.unlink(missing_ok=True)
        _prune_empty_dirs(target)
        raise
    out = result.to_json()
    out["files_added"] = len(added)
    return out


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        try:
            p.rmdir()  # only succeeds when empty
        except OSError:
            pass
