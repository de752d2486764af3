"""``labeler.sql.run``: the hot path's straight-to-the-driver statements. On PostgreSQL they go
through libpq (prepared once per connection, executed with ``PQexecPrepared``); these tests
pin what that path must keep from a psycopg cursor: the transaction (``BEGIN`` sent when the
transaction starts), the values, the errors, and prepared statements that outlive a rollback."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa

from labeler.db import make_engine
from labeler.sql import js, run, ts


@pytest.fixture
def eng(db_url: str):  # type: ignore[no-untyped-def]
    e = make_engine(db_url, pool_size=2)
    with e.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE kv (k VARCHAR(20) PRIMARY KEY, v INTEGER, doc TEXT)")
    yield e
    e.dispose()


def _count(e: sa.Engine) -> int:
    with e.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM kv").scalar_one())


def test_statements_belong_to_the_callers_transaction(eng: sa.Engine) -> None:
    with eng.connect() as conn:
        with pytest.raises(RuntimeError):
            with conn.begin():
                run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "a", "v": 1})
                assert run(conn, "SELECT v FROM kv WHERE k = :k", {"k": "a"}).scalar_one() == 1
                raise RuntimeError("roll back")
        assert _count(eng) == 0  # not autocommitted: BEGIN went first
        with conn.begin():
            run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "b", "v": 2})
    assert _count(eng) == 1


def test_rows_and_values(eng: sa.Engine) -> None:
    when = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)
    with eng.begin() as conn:
        for i in range(3):  # the same statement, prepared once, run with other values
            run(conn, "INSERT INTO kv (k, v, doc) VALUES (:k, :v, :d)",
                {"k": f"k{i}", "v": 70000 * i, "d": None if i == 1 else f"d{i}"})
        rows = run(conn, "SELECT k, v, doc FROM kv WHERE v >= :lo ORDER BY k", {"lo": 0}).all()
        assert [(r.k, r.v, r.doc) for r in rows] == [("k0", 0, "d0"), ("k1", 70000, None),
                                                      ("k2", 140000, "d2")]
        # a name used twice is two parameters, each typed by its own context (as psycopg does)
        r = run(conn, "SELECT :a + :a AS s, :t AS t", {"a": 21, "t": ts(conn, when)}).one()
        assert r.s == 42
        if conn.dialect.name == "postgresql":
            assert r.t == when
            got = run(conn, "SELECT CAST(:j AS JSON) AS j", {"j": js(conn, {"x": [1, 2]})}).one()
            assert got.j == {"x": [1, 2]}
        assert run(conn, "UPDATE kv SET v = v + 1 WHERE k = :k", {"k": "nope"}).first() is None
        assert run(conn, "SELECT k FROM kv WHERE k = :k", {"k": "nope"}).first() is None
        with pytest.raises(LookupError):
            run(conn, "SELECT k FROM kv WHERE k = :k", {"k": "nope"}).one()


@pytest.mark.postgres
def test_postgres_errors_keep_their_sqlstate(eng: sa.Engine, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's libpq path")
    with eng.connect() as conn:
        with conn.begin():
            run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "a", "v": 1})
        with pytest.raises(Exception) as caught:
            with conn.begin():
                run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "x", "v": 1})
                try:
                    run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "a", "v": 2})
                except psycopg.errors.UniqueViolation as exc:
                    assert exc.sqlstate == "23505"
                    # the transaction is failed now, as after a psycopg cursor's error
                    run(conn, "SELECT v FROM kv WHERE k = :k", {"k": "a"})
                raise AssertionError("the duplicate key was not refused")
        assert isinstance(caught.value, psycopg.errors.InFailedSqlTransaction)
        with conn.begin():  # the connection works again after the rollback
            assert run(conn, "SELECT count(*) AS n FROM kv", {}).scalar_one() == 1


@pytest.mark.postgres
def test_prepared_statements_outlive_a_rollback(eng: sa.Engine, backend: str) -> None:
    """psycopg answers a rollback with DEALLOCATE ALL once it prepared a statement itself
    (after 5 runs of one): crowdsight's engines switch that off, or the hot path's own
    prepared statements would be gone after any rollback on a pooled connection."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    q = "SELECT v FROM kv WHERE k = :k"
    with eng.connect() as conn:
        with conn.begin():
            run(conn, "INSERT INTO kv (k, v) VALUES (:k, :v)", {"k": "a", "v": 7})
        with conn.begin():
            assert run(conn, q, {"k": "a"}).scalar_one() == 7
        raw = conn.connection.driver_connection
        with pytest.raises(RuntimeError):
            with conn.begin():
                for _ in range(8):  # what psycopg would prepare after 5 runs
                    raw.execute("SELECT v FROM kv WHERE k = %s", ("a",)).fetchall()
                raise RuntimeError("roll back")
        with conn.begin():
            assert run(conn, q, {"k": "a"}).scalar_one() == 7


class _CountingPgconn:
    """A psycopg ``pgconn`` that counts the round trips the libpq path starts."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.trips: list[str] = []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._real, name)
        if name in ("exec_", "exec_prepared", "pipeline_sync", "prepare"):
            def counted(*a: object, **kw: object) -> object:
                self.trips.append(name)
                return attr(*a, **kw)
            return counted
        return attr


@pytest.mark.postgres
def test_postgres_the_first_statement_brings_its_begin(eng: sa.Engine, backend: str) -> None:
    """A transaction's first statement is sent with its BEGIN (one round trip); it still
    belongs to the transaction, and its error still leaves the transaction failed."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's libpq path")
    q = "INSERT INTO kv (k, v) VALUES (:k, :v)"
    with eng.connect() as conn:
        with conn.begin():
            run(conn, q, {"k": "a", "v": 1})  # (prepares the statement)
        raw = conn.connection.driver_connection
        counting = _CountingPgconn(raw.pgconn)
        with pytest.raises(RuntimeError):
            with conn.begin():
                raw.pgconn = counting  # (psycopg's own calls need the real one back)
                try:
                    run(conn, q, {"k": "b", "v": 2})
                    assert counting.trips == ["pipeline_sync"]  # BEGIN + INSERT, one trip
                    run(conn, q, {"k": "c", "v": 3})
                    assert counting.trips == ["pipeline_sync", "exec_prepared"]
                finally:
                    raw.pgconn = counting._real
                raise RuntimeError("roll back")
        assert _count(eng) == 1  # both inserts were inside the transaction
        with pytest.raises(Exception) as caught:
            with conn.begin():
                try:
                    run(conn, q, {"k": "a", "v": 9})  # the first statement fails
                except psycopg.errors.UniqueViolation as exc:
                    assert exc.sqlstate == "23505"
                    run(conn, "SELECT v FROM kv WHERE k = :k", {"k": "a"})
                raise AssertionError("the duplicate key was not refused")
        assert isinstance(caught.value, psycopg.errors.InFailedSqlTransaction)
        with conn.begin():
            assert run(conn, "SELECT count(*) AS n FROM kv", {}).scalar_one() == 1
