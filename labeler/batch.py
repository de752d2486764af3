"""Group commit for SQLite's hot path: many volunteers' writes in one transaction.

SQLite serialises writers; every hot-path request (store labels, claim the next task) used to
take the cross-process write lock, ``BEGIN IMMEDIATE``, and commit on its own — and hop to a
thread on its own. Under load most of a task's cost was that per-transaction overhead and
the lock hand-over between the uvicorn workers, not the statements.

:class:`GroupCommitter` queues those requests for one writer thread per process, which runs
whatever is queued (up to ``MAX_BATCH``) inside ONE write transaction
(:func:`labeler.db.sqlite_write_tx_on`, on a connection the writer thread keeps): each
request in its own ``SAVEPOINT`` (so a request that fails — a validation error, an expired
lease — is rolled back alone and gets its exception), then a single ``COMMIT``. Every request's future is
resolved only after that commit returned, so nothing is acknowledged before it is durable;
if the commit fails, every request of the batch gets the error and nothing of it is stored
(clients retry; idempotency keys make retries safe).

Requests of one batch run one after another in the same transaction, so later ones see the
earlier ones' writes exactly as if they had been separate transactions in that order.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection, Engine

from labeler.db import sqlite_write_tx_on

#: Most requests committed together; bounds the latency one batch adds to its first member.
MAX_BATCH = 64

Work = Callable[[Connection], Any]
_Item = tuple[Work, asyncio.Future[Any], asyncio.AbstractEventLoop]


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the request went away (client disconnected)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class GroupCommitter:
    """Per-process batcher of write transactions on one SQLite engine (see module doc).

    One daemon writer thread (started on first use, stopped by :meth:`close`) takes whatever
    requests are queued, up to ``max_batch``, and runs them in one transaction; results go
    back to each request's event loop with ``call_soon_threadsafe``."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._conn: Connection | None = None  # the writer thread's own, kept across batches

    async def run(self, work: Work) -> Any:
        """Run ``work(conn)`` inside a shared write transaction; return its result once the
        transaction is committed (or raise its exception, or the commit's)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    t = threading.Thread(target=self._writer, name="crowdsight-group-commit",
                                         daemon=True)
                    t.start()
                    self._thread = t
        self._queue.put((work, fut, loop))
        return await fut

    def close(self) -> None:
        """Stop the writer thread after the queued requests (idempotent)."""
        with self._start_lock:
            t, self._thread = self._thread, None
        if t is not None:
            self._queue.put(None)
            t.join()

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drop_conn()
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                outcomes = self._run_batch(batch)
            except Exception as exc:  # BEGIN or COMMIT failed: nothing of the batch is stored
                outcomes = [(False, exc)] * len(batch)
            for (_, fut, loop), (ok, value) in zip(batch, outcomes):
                try:
                    loop.call_soon_threadsafe(_resolve, fut, ok, value)
                except RuntimeError:  # that event loop is closed: nobody is waiting
                    pass
            if stop:
                self._drop_conn()
                return

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _run_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        # One connection for the writer thread's life (no pool checkout and return per
        # batch); a batch whose BEGIN or COMMIT fails closes it, the next one opens a new one.
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            return self._run_batch_on(self._conn, batch)
        except BaseException:
            self._drop_conn()
            raise

    def _run_batch_on(self, conn: Connection, batch: list[_Item]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with sqlite_write_tx_on(conn):
            raw = conn.connection.driver_connection
            for work, _, _ in batch:
                raw.execute("SAVEPOINT cs_req")
                try:
                    value = work(conn)
                except Exception as exc:
                    raw.execute("ROLLBACK TO cs_req")
                    raw.execute("RELEASE cs_req")
                    outcomes.append((False, exc))
                else:
                    raw.execute("RELEASE cs_req")
                    outcomes.append((True, value))
        return outcomes
