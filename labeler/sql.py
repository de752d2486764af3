"""Hot-path SQL straight to the driver (no SQLAlchemy compilation per call).

Statements are written once with ``:name`` parameters; for PostgreSQL (psycopg, ``pyformat``)
they are rewritten to ``%(name)s`` once and cached. Values that the two drivers store
differently go through :func:`ts` and :func:`js`, which produce exactly what SQLAlchemy's
column types would (so ORM and raw SQL see the same data).
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

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
        pg = _pg_cache.get(sql)
        if pg is None:
            pg = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
            _pg_cache[sql] = pg
        # Straight to psycopg too, inside the connection's current transaction (or autocommit):
        # SQLAlchemy's per-statement result bookkeeping cost more than the statement.
        cur = conn.connection.driver_connection.cursor(row_factory=tuple_row)
        if isinstance(params, list):
            cur.executemany(pg, params)
            return _NO_ROWS  # type: ignore[return-value]
        cur.execute(pg, params if params is not None else {})
        return _PgRows(cur, sql)  # type: ignore[return-value]
    return conn.exec_driver_sql(sql, params if params is not None else {})


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
