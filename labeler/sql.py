"""Hot-path SQL straight to the driver (no SQLAlchemy compilation per call).

Statements are written once with ``:name`` parameters. Values that the two drivers store
differently go through :func:`ts` and :func:`js`, which produce exactly what SQLAlchemy's
column types would (so ORM and raw SQL see the same data).

PostgreSQL: inside a transaction a statement goes through psycopg's libpq layer
(:mod:`psycopg.pq`): rewritten once to ``$n`` placeholders, prepared once per connection (and
parameter types), then executed with one blocking ``PQexecPrepared`` call that releases the
GIL; parameters are dumped and rows loaded by psycopg's own :class:`psycopg.adapt.Transformer`
(the connection's adapters, so values are exactly what a psycopg cursor would give). The
first statement of a transaction is sent together with its ``BEGIN`` (libpq pipeline mode: one
round trip for both). A psycopg cursor's ``execute`` costs about four times the Python CPU
(query conversion, prepared-statement bookkeeping, a non-blocking send and a poll loop per
statement), and the hot path runs several statements per label. Autocommit statements,
connections with transaction settings and ``executemany`` use a psycopg cursor. psycopg's own
statement preparation is off for crowdsight's engines (:func:`labeler.db.make_engine`): it
answers a rollback with ``DEALLOCATE ALL``.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

from weakref import WeakKeyDictionary

from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.rows import tuple_row
from sqlalchemy.engine import Connection, CursorResult

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_pg_cache: dict[str, str] = {}


class _RowsAPI:
    """``one`` / ``scalar_one`` on top of a subclass's ``first``."""

    def first(self) -> Any:
        raise NotImplementedError

    def one(self) -> Any:
        r = self.first()
        if r is None:
            raise LookupError("expected one row")
        return r

    def scalar_one(self) -> Any:
        return self.one()[0]


#: row type per statement text (a statement's columns never change): the names are not
#: rebuilt from ``cursor.description`` for every execution (psycopg builds a ``Column`` per
#: column and call); ``False`` for a statement that returns no rows. One cache per backend:
#: the two may name an unaliased column differently.
_types: dict[str, Any] = {}
_pg_types: dict[str, Any] = {}


def _row_type(cursor: Any, sql: str, cache: dict[str, Any]) -> Any:
    t = cache.get(sql)
    if t is None:
        desc = cursor.description
        t = cache.setdefault(sql, namedtuple("Row", tuple(d[0] for d in desc), rename=True)
                             if desc else False)  # type: ignore[misc]
    return t


class _Rows(_RowsAPI):
    """The part of SQLAlchemy's result API the hot path uses, over a raw sqlite3 cursor."""

    def __init__(self, cursor: Any, sql: str) -> None:
        self._cur = cursor
        self._type = _row_type(cursor, sql, _types)

    def __iter__(self) -> Any:
        return (self._type._make(r) for r in self._cur) if self._type else iter(())

    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        r = self._cur.fetchone() if self._type else None
        return None if r is None else self._type._make(r)


class _PgRows(_RowsAPI):
    """The same API over a psycopg cursor (tuple rows, made named tuples here)."""

    def __init__(self, cursor: Any, sql: str) -> None:
        self._cur = cursor
        self._type = _row_type(cursor, sql, _pg_types)

    def __iter__(self) -> Any:
        return iter(self.all())

    def all(self) -> list[Any]:
        return list(map(self._type._make, self._cur.fetchall())) if self._type else []

    def first(self) -> Any:
        r = self._cur.fetchone() if self._type else None
        return None if r is None else self._type._make(r)


class _ListRows(_RowsAPI):
    """The same API over rows already loaded (the libpq path)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Any:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None


class _NoRows(_RowsAPI):
    """The (empty) result of an executemany."""

    def __iter__(self) -> Any:
        return iter(())

    def all(self) -> list[Any]:
        return []

    def first(self) -> Any:
        return None


_NO_ROWS = _NoRows()


def run(conn: Connection, sql: str, params: Any = None) -> CursorResult[Any]:
    """Execute ``sql`` (``:name`` style) with a dict, or a list of dicts for executemany.

    SQLite goes straight to the sqlite3 connection inside the current transaction (SQLAlchemy's
    per-statement bookkeeping is a large share of the time the write lock is held)."""
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        if isinstance(params, list):
            raw.executemany(sql, params)
            return _NO_ROWS  # type: ignore[return-value]
        return _Rows(raw.execute(sql, params or {}), sql)  # type: ignore[return-value]
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        if type(params) is dict:
            mode = _pq_mode(raw)
            if mode:
                return _pq_run(raw, sql, params, mode == _BEGIN)  # type: ignore[return-value]
        pg = _pg_cache.get(sql)
        if pg is None:
            pg = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
            _pg_cache[sql] = pg
        # Straight to psycopg too, inside the connection's current transaction (or autocommit):
        # SQLAlchemy's per-statement result bookkeeping cost more than the statement.
        cur = raw.cursor(row_factory=tuple_row)
        if isinstance(params, list):
            cur.executemany(pg, params)
            return _NO_ROWS  # type: ignore[return-value]
        cur.execute(pg, params if params is not None else {})
        return _PgRows(cur, sql)  # type: ignore[return-value]
    return conn.exec_driver_sql(sql, params if params is not None else {})


_INTRANS = pq.TransactionStatus.INTRANS
_IDLE = pq.TransactionStatus.IDLE
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TEXT = pq.Format.TEXT
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC


class _PqState:
    """Per psycopg connection: the statements prepared on it and a transformer."""

    __slots__ = ("tx", "prepared", "encoding")

    def __init__(self, raw: Any) -> None:
        self.tx = Transformer(raw)
        self.prepared: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self.encoding = raw.info.encoding


#: per connection; an entry goes with its connection
_pq_states: "WeakKeyDictionary[Any, _PqState]" = WeakKeyDictionary()
#: statement text -> (``$n`` text as bytes, parameter names in ``$n`` order)
_pq_sql: dict[str, tuple[bytes, tuple[str, ...]]] = {}


def _pq_statement(sql: str) -> tuple[bytes, tuple[str, ...]]:
    hit = _pq_sql.get(sql)
    if hit is None:
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            # one placeholder per occurrence, as psycopg does: PostgreSQL infers each one's
            # type from its own context (a name used as text and as varchar would clash)
            names.append(m.group(1))
            return f"${len(names)}"

        hit = _pq_sql[sql] = (_NAMED.sub(number, sql).encode(), tuple(names))
    return hit


#: :func:`_pq_mode`: a psycopg cursor must run the statement; it runs inside the open
#: transaction; it begins one
_CURSOR, _INSIDE, _BEGIN = 0, 1, 2


def _pq_mode(raw: Any) -> int:
    """How a statement runs on ``raw`` through libpq: inside the open transaction, or at its
    start, after the plain ``BEGIN`` psycopg would have sent (sent with it, see
    :func:`_pq_run`). Connections with transaction settings, autocommit ones and failed
    transactions use a psycopg cursor."""
    status = raw.pgconn.transaction_status
    if status == _INTRANS:
        return _INSIDE
    if (status != _IDLE or raw.autocommit or raw.isolation_level is not None
            or raw.read_only is not None or raw.deferrable is not None):
        return _CURSOR
    return _BEGIN


def _pq_check(res: Any, encoding: str) -> None:
    """Raise the psycopg error of a failed libpq result."""
    if res.status not in (_TUPLES_OK, _COMMAND_OK):
        raise pg_errors.error_from_result(res, encoding=encoding)


def _pq_run(raw: Any, sql: str, params: dict[str, Any], begin: bool = False) -> _RowsAPI:
    """``sql`` inside the connection's open transaction through libpq (see the module doc);
    ``begin``: open the transaction first, in the same round trip."""
    state = _pq_states.get(raw)
    if state is None:
        state = _pq_states[raw] = _PqState(raw)
    text, names = _pq_statement(sql)
    tx = state.tx
    values = tx.dump_sequence([params[n] for n in names], [PyFormat.AUTO] * len(names))
    types, formats = tuple(tx.types or ()), tx.formats
    pgconn = raw.pgconn
    key = (sql, types)
    name = state.prepared.get(key)
    if name is None:
        name = f"_cs{len(state.prepared)}".encode()
        _pq_check(pgconn.prepare(name, text, types), state.encoding)
        state.prepared[key] = name
    if begin:
        res = _begin_and_exec(pgconn, name, values, formats, state.encoding)
    else:
        res = pgconn.exec_prepared(name, values, param_formats=formats, result_format=_TEXT)
    _pq_check(res, state.encoding)
    if not res.nfields:
        return _NO_ROWS
    row_type = _pg_types.get(sql)
    if row_type is None:
        row_type = _pg_types.setdefault(sql, namedtuple(  # type: ignore[misc]
            "Row", tuple(res.fname(i).decode(state.encoding) for i in range(res.nfields)),
            rename=True))
    tx.set_pgresult(res)
    return _ListRows(tx.load_rows(0, res.ntuples, row_type._make))


def commit_now(conn: Connection) -> None:
    """PostgreSQL: commit the driver connection's open transaction with one blocking libpq
    call (psycopg's ``commit`` then finds nothing to do; SQLAlchemy's bookkeeping is
    unchanged). Elsewhere, or outside a transaction, nothing happens here."""
    if conn.dialect.name != "postgresql":
        return
    raw = conn.connection.driver_connection
    if raw.pgconn.transaction_status == _INTRANS:
        _pq_check(raw.pgconn.exec_(b"COMMIT"), raw.info.encoding)


def _begin_and_exec(pgconn: Any, name: bytes, values: Any, formats: Any, encoding: str) -> Any:
    """``BEGIN`` and a prepared statement in one round trip (libpq's pipeline mode: both
    sent, then one sync); the statement's result. The first statement of every transaction
    (a group-committed batch's lock statement) saves the round trip of its ``BEGIN``."""
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(b"BEGIN", None)
        pgconn.send_query_prepared(name, values, param_formats=formats, result_format=_TEXT)
        pgconn.pipeline_sync()
        began = _pipeline_result(pgconn)
        res = _pipeline_result(pgconn)
        sync = pgconn.get_result()
        if sync is None or sync.status != _PIPELINE_SYNC:  # pragma: no cover - libpq's contract
            raise pg_errors.InternalError("no pipeline sync after BEGIN and a statement")
    finally:
        pgconn.exit_pipeline_mode()
    _pq_check(began, encoding)  # (then the statement was not run)
    return res


def _pipeline_result(pgconn: Any) -> Any:
    """The result of the next query of a pipeline (and the ``NULL`` that ends it)."""
    res = pgconn.get_result()
    if res is None:  # pragma: no cover - libpq's contract
        raise pg_errors.InternalError("a pipelined query returned no result")
    if pgconn.get_result() is not None:  # pragma: no cover - one statement, one result
        raise pg_errors.InternalError("a pipelined query returned more than one result")
    return res


def ts(conn: Connection, value: datetime | None) -> Any:
    """A UTC timestamp as the driver should receive it."""
    if value is None or conn.dialect.name == "postgresql":
        return value
    return ts_text(value)


def ts_text(value: datetime) -> str:
    """The text SQLAlchemy's DateTime stores on SQLite for an aware UTC ``value``
    (== ``strftime("%Y-%m-%d %H:%M:%S.%f")``, 4x faster)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def from_ts_text(text: str) -> datetime:
    """:func:`ts_text` reversed: the aware UTC datetime of a SQLite timestamp text."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def js(conn: Connection, value: Any) -> Any:
    """A JSON value as the driver should receive it."""
    if conn.dialect.name == "postgresql":
        from psycopg.types.json import Json

        return Json(value)
    return json.dumps(value)


def unjs(value: Any) -> Any:
    """A JSON column read through the driver: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


_layers: dict[str, list[str]] = {}


def layer_list(value: Any) -> list[str]:
    """A tile's ``layers`` column as a list (JSON text on SQLite; the few distinct texts are
    decoded once per process). The list is shared: do not modify it."""
    if not isinstance(value, str):
        return list(value or [])
    hit = _layers.get(value)
    if hit is None:
        hit = list(json.loads(value) or [])
        if len(_layers) < 1000:
            _layers[value] = hit
    return hit


def id_params(ids: list[int], prefix: str = "i") -> tuple[str, dict[str, int]]:
    """``("(:i0, :i1)", {"i0": 5, "i1": 7})``: an IN list as bound parameters, so the
    statement text (and the driver's prepared-statement cache) depends only on its length."""
    names = [f"{prefix}{n}" for n in range(len(ids))]
    return "(" + ", ".join(":" + n for n in names) + ")", dict(zip(names, (int(i) for i in ids)))


def id_list(ids: list[int]) -> str:
    """``(1, 2, 3)`` for ids that are already integers (never user text)."""
    return "(" + ", ".join(str(int(i)) for i in ids) + ")"
