"""``crowdsight db | serve | project | token``: thin click layer over ``labeler``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from crowdsight.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


@contextmanager
def _database() -> Iterator[tuple[Settings, Any]]:
    """Settings and a one-connection engine for a command; the engine is disposed afterwards
    and a LabelerError becomes a one-line click error (no traceback)."""
    from labeler.db import make_engine
    from labeler.errors import LabelerError

    s = _settings()
    engine = make_engine(s.resolved_database_url, pool_size=1)
    try:
        yield s, engine
    except LabelerError as exc:
        _fail(exc)
    finally:
        engine.dispose()


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def _out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- db

@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or update the schema in CROWDSIGHT_DATABASE_URL (default: SQLite in the data dir)."""
    from labeler.migrate import upgrade

    s = _settings()
    url = s.resolved_database_url
    try:
        rev = upgrade(url, revision)
    except Exception as exc:  # alembic/sqlalchemy errors: show them plainly
        _fail(exc)
    click.echo(f"database at revision {rev}", err=True)
    click.echo(rev)


@db.command("current")
def db_current() -> None:
    """Print the database's schema revision and the one this software needs."""
    from labeler.migrate import current_revision, head_revision

    with _database() as (_, engine):
        _out({"current": current_revision(engine), "head": head_revision()})


# --------------------------------------------------------------------------- serve

@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=True, show_default=True)
def serve(host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    """Run the labeler web service (uvicorn). Refuses to start on an unmigrated database."""
    import uvicorn

    from labeler.migrate import check_migrated

    with _database() as (s, engine):
        check_migrated(engine)
    s.resolved_secret_key()  # create the shared secret once, before workers start
    proxies = s.forwarded_allow_ips or None
    uvicorn.run("labeler.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, proxy_headers=bool(proxies),
                forwarded_allow_ips=proxies, server_header=False)


# --------------------------------------------------------------------------- project

@click.group()
def project() -> None:
    """Create projects, load manifests, change status."""


@project.command("create")
@click.argument("slug")
@click.option("--type", "ptype", type=click.Choice(["find", "compare", "mark"]), default="find",
              show_default=True)
@click.option("--name")
@click.option("--question")
@click.option("--help-text")
@click.option("--redundancy", type=int)
@click.option("--gold-rate", type=float)
@click.option("--block", help="COLSxROWS, e.g. 3x2")
def project_create(slug: str, ptype: str, **opts: Any) -> None:
    """Create a draft project."""
    from labeler.projects import create_project

    with _database() as (s, engine):
        p = create_project(engine, {"slug": slug, "type": ptype, **_fields(opts)}, actor="cli",
                           max_points_cap=s.max_points_per_tile)
        _out({"slug": p.slug, "type": p.type, "status": p.status})


def _fields(opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("name", "question", "help_text", "redundancy", "gold_rate"):
        if opts.get(key) is not None:
            out[key] = opts[key]
    if opts.get("block"):
        try:
            c, r = (int(v) for v in opts["block"].lower().split("x"))
        except ValueError:
            raise click.BadParameter("use COLSxROWS, e.g. 3x2", param_hint="--block") from None
        out["block"] = {"cols": c, "rows": r}
    return out


@project.command("load-manifest")
@click.option("--project", "slug", required=True, help="project slug")
@click.option("--create", is_flag=True, help="create the project if it does not exist")
@click.option("--type", "ptype", type=click.Choice(["find", "compare", "mark"]), default="find",
              show_default=True, help="with --create")
@click.option("--name")
@click.option("--question")
@click.option("--help-text")
@click.option("--redundancy", type=int)
@click.option("--gold-rate", type=float)
@click.option("--block", help="COLSxROWS, e.g. 3x2")
@click.option("--min-coverage", type=click.FloatRange(0.0, 1.0), default=None,
              help="skip tasks whose tiles hold less than this fraction of data (0-1; default "
                   "CROWDSIGHT_MIN_TASK_COVERAGE, 0.5; 0 loads every task)")
@click.argument("manifest", type=click.Path(path_type=Path))
def project_load_manifest(slug: str, create: bool, ptype: str, manifest: Path,
                          min_coverage: float | None, **opts: Any) -> None:
    """Load an ingest MANIFEST (inside the tile store) into a project. Idempotent.

    Nearly-empty tasks (mostly no-data, at the edges of the imagery) are skipped; re-loading
    with a higher --min-coverage also removes such tiles if nobody has labelled them."""
    from rich.progress import Progress

    from labeler.manifest import load_manifest

    with _database() as (s, engine):
        with Progress(console=_stderr_console(), transient=True) as bar:
            task = bar.add_task("loading tiles", total=None)
            result = load_manifest(
                engine, manifest.resolve() if manifest.exists() else manifest, slug,
                tile_store=s.tile_store_path, create=create,
                project_fields={"type": ptype, **_fields(opts)}, actor="cli",
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                min_coverage=s.min_task_coverage if min_coverage is None else min_coverage)
        if result.tiles_skipped or result.tiles_removed:
            _stderr_console().print(
                f"skipped {result.tiles_skipped} nearly-empty task(s) with coverage < "
                f"{result.min_coverage:g}"
                + (f"; removed {result.tiles_removed} unlabelled tile(s) loaded earlier"
                   if result.tiles_removed else ""), highlight=False)
        _out(result.to_json())


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


def _status_cmd(status: str, help_text: str) -> click.Command:
    @click.command(status_name(status), help=help_text)
    @click.argument("slug")
    def cmd(slug: str) -> None:
        from labeler.projects import set_status

        with _database() as (_, engine):
            p = set_status(engine, slug, status, actor="cli")
            _out({"slug": p.slug, "status": p.status})
    return cmd


def status_name(status: str) -> str:
    return {"live": "publish", "paused": "pause", "finished": "finish"}[status]


project.add_command(_status_cmd("live", "Publish a project (volunteers can see it)."))
project.add_command(_status_cmd("paused", "Pause a project (no new tasks)."))
project.add_command(_status_cmd("finished", "Finish a project."))


@project.command("refit-skills")
@click.argument("slug")
@click.option("--min-labels", type=click.IntRange(1), default=None,
              help="refit only with at least this many stored answers (default 50)")
def project_refit_skills(slug: str, min_labels: int | None) -> None:
    """Refit an adaptive project's volunteer skills now and re-decide its tiles (retired tiles
    the skills no longer support reopen, live tiles they support retire). Prints the report."""
    from labeler.refit import MIN_LABELS, refit_project

    with _database() as (_, engine):
        rep = refit_project(engine, slug, min_labels=MIN_LABELS if min_labels is None
                            else min_labels)
        _out(rep.to_json())


@project.command("list")
def project_list() -> None:
    """All projects with their status and progress."""
    from labeler.projects import list_projects, progress

    with _database() as (_, engine):
        out = []
        for p in list_projects(engine, live_only=False):
            with engine.connect() as conn:
                out.append({"slug": p.slug, "type": p.type, "status": p.status,
                            "progress": progress(conn, p.id)})
        _out(out)


# --------------------------------------------------------------------------- token

@click.group()
def token() -> None:
    """API tokens for researchers, analysts and admins."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["researcher", "analyst", "admin"]))
@click.option("--name", default="", help="who it is for (shown in listings)")
def token_create(role: str, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from labeler.security import create_token

    with _database() as (_, engine):
        tid, tok = create_token(engine, role, name, actor="cli")
    click.echo(f"token {tid} ({role}) created; it is shown only now", err=True)
    click.echo(tok)


@token.command("list")
def token_list() -> None:
    """Tokens (id, role, name, prefix, revoked) — never the secrets."""
    from labeler.security import list_tokens

    with _database() as (_, engine):
        _out(list_tokens(engine))


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke a token by id."""
    from labeler.security import revoke_token

    with _database() as (_, engine):
        revoke_token(engine, token_id, actor="cli")
    click.echo(f"token {token_id} revoked", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(db())
