"""Group commit for SQLite's hot path: many volunteers' writes in one transaction.

SQLite serialises writers; every hot-path request (store labels, claim the next task) used to
take the cross-process write lock, ``BEGIN IMMEDIATE``, and commit on its own — and hop to a
thread on its own. Under load most of a task's cost was that per-transaction overhead and
the lock hand-over between the uvicorn workers, not the statements.

:class:`GroupCommitter` queues those requests in the event loop; one batch at a time runs in
a worker thread inside ONE :func:`labeler.db.write_tx`: each request in its own
``SAVEPOINT`` (so a request that fails — a validation error, an expired lease — is rolled
back alone and gets its exception), then a single ``COMMIT``. Every request's future is
resolved only after that commit returned, so nothing is acknowledged before it is durable;
if the commit fails, every request of the batch gets the error and nothing of it is stored
(clients retry; idempotency keys make retries safe).

Requests of one batch run one after another in the same transaction, so later ones see the
earlier ones' writes exactly as if they had been separate transactions in that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from sqlalchemy.engine import Connection, Engine

from labeler.db import write_tx

#: Most requests committed together; bounds the latency one batch adds to its first member.
MAX_BATCH = 64

Work = Callable[[Connection], Any]


class GroupCommitter:
    """Per-process batcher of write transactions on one SQLite engine (see module doc)."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._leader: asyncio.Task[None] | None = None

    async def run(self, work: Work) -> Any:
        """Run ``work(conn)`` inside a shared write transaction; return its result once the
        transaction is committed (or raise its exception, or the commit's)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((work, fut))
        leader = self._leader
        if leader is None or leader.done() or leader.get_loop() is not loop:
            self._leader = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            try:
                outcomes = await anyio.to_thread.run_sync(self._run_batch, batch)
            except BaseException as exc:  # the commit (or BEGIN) failed: nobody is stored
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception)
                                          else RuntimeError("the write batch was interrupted"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, fut), (ok, value) in zip(batch, outcomes):
                if fut.done():  # the request went away (client disconnected)
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with write_tx(self.engine) as conn:
            raw = conn.connection.driver_connection
            for work, _ in batch:
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
