"""Engine factory and transaction helpers for SQLite (embedded default) and PostgreSQL.

SQLite: WAL journal synced at every commit (``synchronous=FULL``), ``busy_timeout``,
``foreign_keys=ON``; pysqlite's own transaction
handling is switched off (SQLAlchemy docs, "Serializable isolation / Savepoints /
Transactional DDL") so that :func:`write_tx` can start with ``BEGIN IMMEDIATE`` and
writers never interleave. PostgreSQL: psycopg 3, READ COMMITTED, row locks
(``FOR UPDATE SKIP LOCKED``) in the claiming transaction.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
_sqlite_locks: dict[str, "WriterLock"] = {}


def is_sqlite(engine_or_url: Engine | str | sa.URL) -> bool:
    if isinstance(engine_or_url, Engine):
        return engine_or_url.dialect.name == "sqlite"
    return sa.make_url(str(engine_or_url)).get_backend_name() == "sqlite"


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """Create an engine for ``url`` with the pragmas/pooling crowdsight relies on."""
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            u,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            pool_pre_ping=False,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy emit BEGIN itself (see the module docstring).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: the WAL is synced at every commit, so an acknowledged label survives a
            # power loss too (NORMAL only a crash of the process). The group committer
            # (labeler.batch) makes that one sync per batch of requests: no throughput
            # difference measured (docs/labeler.md, "Durability").
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.info.pop("sqlite_begin", "BEGIN")
            # straight to the driver: SQLAlchemy's statement path for this one BEGIN cost
            # about as much as the rest of a small write transaction
            conn.connection.driver_connection.execute(mode)

        return engine
    if u.get_backend_name() == "postgresql" and u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return sa.create_engine(
        u, echo=echo, pool_size=pool_size, max_overflow=2 * pool_size,
        # No pre-ping (a round trip per checkout on the hot path); recycle instead.
        pool_pre_ping=False, pool_recycle=1800,
        # psycopg's own prepared statements off: the hot path prepares its statements itself
        # (labeler.sql), and psycopg answers every rollback of a connection on which it
        # prepared something with DEALLOCATE ALL, which would drop those too.
        connect_args={"prepare_threshold": None},
    )


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A transaction for claims and label writes: ``BEGIN IMMEDIATE`` on SQLite (takes the
    write lock up front, so read-then-write cannot race), plain ``BEGIN`` on PostgreSQL
    (callers lock rows with ``FOR UPDATE``). Not re-entrant on SQLite: opening one inside
    another in the same thread raises ``RuntimeError`` (it would wait for itself forever)."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:
            with conn.begin():
                yield conn
        return
    # One writer per process at a time: threads queue on a lock instead of spinning in
    # SQLite's busy handler (which sleeps in growing steps and ruins tail latency);
    # BEGIN IMMEDIATE still serialises writers across processes.
    with writer_lock(engine):
        with engine.connect() as conn:
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
            with conn.begin():
                yield conn


def writer_lock(engine: Engine) -> "WriterLock":
    """The process-wide SQLite writer lock of ``engine``'s database file (see
    :class:`WriterLock`); :func:`write_tx` takes it, the group committer
    (:mod:`labeler.batch`) takes it without blocking its event loop."""
    key = engine.url.database or ""
    lock = _sqlite_locks.get(key)
    if lock is None:
        lock = _sqlite_locks.setdefault(key, WriterLock(engine.url.database))
    return lock


class WriterLock:
    """Threads of this process queue on a lock; processes (uvicorn workers) queue on an
    ``flock`` of ``{db}.writelock`` — both block in the kernel, in order, instead of polling
    SQLite's busy handler (whose growing sleeps wreck tail latency).

    ``with lock:`` blocks; :meth:`try_acquire` does not (an event loop tries that first and
    waits in a worker thread only when another writer holds the lock); :meth:`release`
    may be called from another thread than the one that acquired."""

    def __init__(self, database: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = (database + ".writelock") if database and database != ":memory:" else None
        self._fd: int | None = None
        self._owner: int | None = None

    def __enter__(self) -> None:
        if self._owner == threading.get_ident():
            # a nested write transaction in the same thread would wait for itself forever
            raise RuntimeError("write_tx is not re-entrant: this thread already holds the "
                               "SQLite writer lock (do not write to the database from inside "
                               "another write transaction, e.g. from a progress callback)")
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._owner is not None

    def acquire(self) -> None:
        """Block until this thread holds the lock."""
        self._thread_lock.acquire()
        try:
            self._flock(blocking=True)
        except BaseException:
            self._thread_lock.release()
            raise
        self._owner = threading.get_ident()

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never blocks."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        try:
            got = self._flock(blocking=False)
        except BaseException:
            self._thread_lock.release()
            raise
        if not got:
            self._thread_lock.release()
            return False
        self._owner = threading.get_ident()
        return True

    def adopt(self) -> None:
        """The calling thread now owns the lock another thread acquired for it."""
        self._owner = threading.get_ident()

    def release(self) -> None:
        try:
            self._close()
        finally:
            self._owner = None
            self._thread_lock.release()

    def _flock(self, *, blocking: bool) -> bool:
        if self._path is None:
            return True
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it
            self._close()
            return False
        except OSError:  # no flock here: SQLite's own locking still keeps writes correct
            self._close()
        return True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing also releases the flock
            self._fd = None


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn
