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

from sqlalchemy.engine import Connection, CursorResult

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_pg_cache: dict[str, str] = {}


class _Rows:
    """The part of SQLAlchemy's result API the hot path uses, over a raw sqlite3 cursor."""

    _types: dict[tuple[str, ...], Any] = {}

    def __init__(self, cursor: Any) -> None:
        self._cur = cursor
        desc = cursor.description
        if desc:
            names = tuple(d[0] for d in desc)
            self._type = self._types.get(names)
            if self._type is None:
                self._type = self._types.setdefault(
                    names, namedtuple("Row", names, rename=True))  # type: ignore[misc]
        else:
            self._type = None

    def __iter__(self) -> Any:
        return (self._type._make(r) for r in self._cur) if self._type else iter(())

    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        r = self._cur.fetchone() if self._type else None
        return None if r is None else self._type._make(r)

    def one(self) -> Any:
        r = self.first()
        if r is None:
            raise LookupError("expected one row")
        return r

    def scalar_one(self) -> Any:
        return self.one()[0]


def run(conn: Connection, sql: str, params: Any = None) -> CursorResult[Any]:
    """Execute ``sql`` (``:name`` style) with a dict, or a list of dicts for executemany.

    SQLite goes straight to the sqlite3 connection inside the current transaction (SQLAlchemy's
    per-statement bookkeeping is a large share of the time the write lock is held)."""
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        if isinstance(params, list):
            raw.executemany(sql, params)
            return _Rows(raw.execute("SELECT 1 WHERE 0"))  # type: ignore[return-value]
        return _Rows(raw.execute(sql, params or {}))  # type: ignore[return-value]
    if conn.dialect.name == "postgresql":
        pg = _pg_cache.get(sql)
        if pg is None:
            pg = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
            _pg_cache[sql] = pg
        sql = pg
    return conn.exec_driver_sql(sql, params if params is not None else {})


def ts(conn: Connection, value: datetime | None) -> Any:
    """A UTC timestamp as the driver should receive it."""
    if value is None or conn.dialect.name == "postgresql":
        return value
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def js(conn: Connection, value: Any) -> Any:
    """A JSON value as the driver should receive it."""
    if conn.dialect.name == "postgresql":
        from psycopg.types.json import Json

        return Json(value)
    return json.dumps(value)


def unjs(value: Any) -> Any:
    """A JSON column read through the driver: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def id_list(ids: list[int]) -> str:
    """``(1, 2, 3)`` for ids that are already integers (never user text)."""
    return "(" + ", ".join(str(int(i)) for i in ids) + ")"
