from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlmodel import SQLModel
from starlette.testclient import TestClient

import labeler.models  # noqa: F401
from labeler.app import create_app
from labeler.db import make_engine
from labeler.errors import DatabaseNotMigrated
from labeler.migrate import check_migrated, head_revision, upgrade
from labeler.testing import fresh_database, make_settings

OURS = {"projects", "tiles", "volunteers", "labels", "leases", "api_tokens", "audit_log",
        "volunteer_progress"}


def _table_of(diff: tuple) -> str | None:
    for part in diff[1:]:
        name = getattr(part, "name", None)
        table = getattr(part, "table", None)
        if table is not None and getattr(table, "name", None):
            return table.name
        if isinstance(part, str) and part in OURS:
            return part
        if name in OURS:
            return name
    return None


def test_upgrade_from_empty_creates_schema_matching_models(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        assert upgrade(url) == head_revision()
        engine = make_engine(url, pool_size=1)
        try:
            tables = set(sa.inspect(engine).get_table_names())
            assert OURS <= tables
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                meta = sa.MetaData()
                for t in SQLModel.metadata.sorted_tables:
                    if t.name in OURS:
                        t.to_metadata(meta)
                diffs = [d for d in compare_metadata(ctx, meta)
                         if not (isinstance(d, tuple) and d[0] == "remove_table")]
                flat = [d for group in diffs for d in (group if isinstance(group, list) else [group])]
                mine = [d for d in flat if _table_of(d) in OURS]
                assert mine == [], mine
            # A second upgrade is a no-op.
            assert upgrade(url) == head_revision()
            check_migrated(engine)
        finally:
            engine.dispose()


def test_server_refuses_unmigrated_database(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        settings = make_settings(tmp_path, url)
        with pytest.raises(DatabaseNotMigrated, match="crowdsight db upgrade"):
            with TestClient(create_app(settings)):
                pass


def test_server_refuses_outdated_database(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        upgrade(url, "0001")
        if head_revision() == "0001":
            pytest.skip("only one revision exists")
        engine = make_engine(url, pool_size=1)
        try:
            with pytest.raises(DatabaseNotMigrated, match="0001.*crowdsight db upgrade"):
                check_migrated(engine)
        finally:
            engine.dispose()


def test_cli_db_upgrade_and_serve_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdsight.cli import main

    monkeypatch.setenv("CROWDSIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CROWDSIGHT_DATABASE_URL", raising=False)
    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "--port", "1"])
    assert refused.exit_code != 0
    assert "crowdsight db upgrade" in refused.output
    done = runner.invoke(main, ["db", "upgrade"])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().endswith(head_revision())
    assert (tmp_path / "data" / "crowdsight.db").exists()
