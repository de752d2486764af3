"""Group commit for SQLite's hot path: many volunteers' writes in one transaction, run on
the event loop.

SQLite serialises writers; every hot-path request (store labels, claim the next task) used to
take the cross-process write lock, ``BEGIN IMMEDIATE``, and commit on its own. Under load most
of a task's cost was that per-transaction overhead and the lock hand-over between the uvicorn
workers, not the statements.

:class:`GroupCommitter` queues those requests per event loop; a drain task takes whatever is
queued (up to ``max_batch``) and runs it inside ONE write transaction on a connection it keeps,
then a single ``COMMIT``. A request that fails — a validation error, an expired lease — is
rolled back alone and gets its exception: the batch runs optimistically without savepoints,
and when one of its requests fails it is rolled back and run again with a ``SAVEPOINT`` per
request. Every
request's future is resolved only after that commit returned, so nothing is acknowledged
before it is durable; if the commit fails, every request of the batch gets the error and
nothing of it is stored (clients retry; idempotency keys make retries safe).

The batch runs on the event loop thread itself, synchronously (a batch of SQLite statements
takes a few milliseconds; the loop has nothing better to do with the GIL meanwhile). An
earlier version ran batches on a writer thread per process: the loop and that thread then
fought over the GIL for every statement, which cost more CPU per label than the statements.
The writer lock (:class:`labeler.db.WriterLock`: this process's threads, then an ``flock``
across the uvicorn workers) is taken without blocking when free; when another writer holds it,
the drain task waits for it in a worker thread, so the loop keeps reading requests (which join
the next batch) while the other process commits.

Requests of one batch run one after another in the same transaction, so later ones see the
earlier ones' writes exactly as if they had been separate transactions in that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy.engine import Connection, Engine

from labeler.db import writer_lock

#: Most requests committed together; bounds the latency one batch adds to its first member
#: (and how long the event loop is busy with one batch).
MAX_BATCH = 64

Work = Callable[[Connection], Any]
_Item = tuple[Work, "asyncio.Future[Any]"]


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the request went away (client disconnected)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class GroupCommitter:
    """Per-engine batcher of SQLite write transactions (see the module doc).

    ``await run(work)`` queues ``work(conn)``; one drain task per event loop (started on
    demand, ended when the queue is empty) runs queued work in shared transactions."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._lock = writer_lock(engine)
        self._queues: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._conn: Connection | None = None  # kept across batches

    async def run(self, work: Work) -> Any:
        """Run ``work(conn)`` inside a shared write transaction; return its result once the
        transaction is committed (or raise its exception, or the commit's)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = []
            loop.create_task(self._drain(loop, queue))
        queue.append((work, fut))
        return await fut

    def close(self) -> None:
        """Close the kept connection (idempotent; call when no request is in flight)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _drain(self, loop: asyncio.AbstractEventLoop, queue: list[_Item]) -> None:
        try:
            while queue:
                # let the requests read in this loop iteration reach the queue first
                await asyncio.sleep(0)
                await self._acquire()
                try:
                    batch = queue[:self.max_batch]
                    del queue[:len(batch)]
                    try:
                        outcomes = self._run_batch(batch)
                    except Exception as exc:  # BEGIN or COMMIT failed: nothing is stored
                        outcomes = [(False, exc)] * len(batch)
                finally:
                    self._lock.release()
                for (_, fut), (ok, value) in zip(batch, outcomes):
                    _resolve(fut, ok, value)
        finally:
            if self._queues.get(loop) is queue:
                del self._queues[loop]
            for _, fut in queue:  # cancelled (the loop is closing): nobody is served
                _resolve(fut, False, RuntimeError("the server is shutting down"))

    async def _acquire(self) -> None:
        """Hold the writer lock: at once when free, else after waiting in a worker thread."""
        if self._lock.try_acquire():
            return
        got: list[bool] = []

        def wait() -> None:
            self._lock.acquire()
            got.append(True)

        try:
            await anyio.to_thread.run_sync(wait)
        except BaseException:
            if got:  # cancelled once the thread had the lock
                self._lock.release()
            raise
        self._lock.adopt()

    def _run_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        # One connection for the committer's life (no pool checkout and return per batch);
        # a batch whose BEGIN or COMMIT fails closes it, the next one opens a new one.
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            return self._run_batch_on(self._conn, batch)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run_batch_on(conn: Connection, batch: list[_Item]) -> list[tuple[bool, Any]]:
        # Optimistically without savepoints (two statements per request saved): requests
        # rarely fail. When one does, the transaction is rolled back and the batch runs again
        # with a savepoint per request, so only the failed one loses its writes.
        outcomes = _attempt(conn, batch, savepoints=False)
        if outcomes is None:
            outcomes = _attempt(conn, batch, savepoints=True)
        return outcomes  # type: ignore[return-value]


class _Retry(Exception):
    """A request failed in an optimistic batch: roll it all back and run it again."""


def _attempt(conn: Connection, batch: list[_Item], *,
             savepoints: bool) -> list[tuple[bool, Any]] | None:
    """Run ``batch`` in one ``BEGIN IMMEDIATE`` transaction; its outcomes, or ``None`` when
    (without savepoints) a request of a batch of several failed and nothing was kept."""
    outcomes: list[tuple[bool, Any]] = []
    conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
    try:
        with conn.begin():
            raw = conn.connection.driver_connection
            for work, _ in batch:
                if savepoints:
                    raw.execute("SAVEPOINT cs_req")
                try:
                    value = work(conn)
                except Exception as exc:
                    outcomes.append((False, exc))
                    if not savepoints:  # its writes (and the batch's) go with the rollback
                        raise _Retry() from exc
                    raw.execute("ROLLBACK TO cs_req")
                    raw.execute("RELEASE cs_req")
                else:
                    if savepoints:
                        raw.execute("RELEASE cs_req")
                    outcomes.append((True, value))
    except _Retry:
        return outcomes if len(batch) == 1 else None
    return outcomes
