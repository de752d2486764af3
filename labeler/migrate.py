"""Alembic helpers: upgrade a database, and check that it is at the head revision.

The script location is inside the installed package, so this works from a wheel too.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from labeler.db import make_engine
from labeler.errors import DatabaseNotMigrated

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> str:
    """Bring the database at ``url`` up to ``revision``; returns the new revision."""
    command.upgrade(alembic_config(url), revision)
    engine = make_engine(url, pool_size=1)
    try:
        return current_revision(engine) or ""
    finally:
        engine.dispose()


def check_migrated(engine: Engine) -> None:
    """Raise :class:`DatabaseNotMigrated` unless the database is at the head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise DatabaseNotMigrated(
            f"the database {where} has no crowdsight schema: run `crowdsight db upgrade` "
            "(with the same CROWDSIGHT_DATABASE_URL / CROWDSIGHT_DATA_DIR) first"
        )
    raise DatabaseNotMigrated(
        f"the database {where} is at schema revision {current} but this crowdsight needs "
        f"{head}: run `crowdsight db upgrade`"
    )
