"""labeler.db.write_tx on SQLite: a nested write transaction in one thread fails loudly."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from labeler.db import make_engine, write_tx


def test_nested_write_tx_raises_instead_of_hanging(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with write_tx(engine) as conn:
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        outcome: list[BaseException] = []

        def nested() -> None:
            with write_tx(engine) as conn:
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                try:
                    with write_tx(engine):
                        pass
                except RuntimeError as exc:
                    outcome.append(exc)
                conn.execute(sa.text("INSERT INTO t VALUES (2)"))

        # in a daemon thread so that the test fails (instead of hanging) without the guard,
        # where the inner write_tx waits forever for the lock its own thread holds
        th = threading.Thread(target=nested, daemon=True)
        th.start()
        th.join(timeout=30)
        assert not th.is_alive(), "nested write_tx deadlocked"
        assert len(outcome) == 1 and "not re-entrant" in str(outcome[0])
        # the outer transaction committed and released the lock: another thread can write
        done = threading.Event()

        def other() -> None:
            with write_tx(engine) as c:
                c.execute(sa.text("INSERT INTO t VALUES (3)"))
            done.set()

        th = threading.Thread(target=other)
        th.start()
        th.join(timeout=30)
        assert done.is_set()
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT x FROM t ORDER BY x")).scalars().all() == [1, 2, 3]
    finally:
        engine.dispose()


def test_sqlite_commits_are_durable_and_checked(tmp_path: Path) -> None:
    """Every connection runs WAL, syncs the WAL at each commit (an acknowledged label survives
    a power loss, not only a crash of the service) and enforces foreign keys."""
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.connect() as conn:
            pragma = conn.connection.driver_connection.execute
            assert pragma("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert pragma("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert pragma("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        engine.dispose()
