"""Group commit for the hot path: many volunteers' writes in one transaction, run on the
event loop (SQLite and PostgreSQL).

Every hot-path request (store labels, claim the next task) used to run its own transaction:
on SQLite the cross-process write lock, ``BEGIN IMMEDIATE`` and a commit each; on PostgreSQL a
thread-pool hop, ``BEGIN``, four statements and a ``COMMIT`` (a WAL flush) each, with the
worker threads and the event loop handing the GIL back and forth after every round trip.
Under load most of a task's cost was that per-transaction and per-hop overhead, not the
statements.

:class:`GroupCommitter` queues those requests per event loop; a drain task takes whatever is
queued (up to ``max_batch``) and runs it inside ONE transaction on a connection it keeps,
then a single ``COMMIT``. A request that fails — a validation error, an expired lease — is
rolled back alone and gets its exception: the batch runs optimistically without savepoints,
and when one of its requests fails it is rolled back and run again with a ``SAVEPOINT`` per
request. Every request's future is resolved only after that commit returned, so nothing is
acknowledged before it is durable; if the commit fails, every request of the batch gets the
error and nothing of it is stored (clients retry; idempotency keys make retries safe).

The batch runs on the event loop thread itself, synchronously: a batch of statements takes a
few milliseconds and the loop has nothing better to do with the GIL meanwhile (requests
arriving in that time join the next batch). An earlier version ran batches on a writer thread
per process: the loop and that thread then fought over the GIL for every statement, which
cost more CPU per label than the statements.

SQLite: the writer lock (:class:`labeler.db.WriterLock`: this process's threads, then an
``flock`` across the uvicorn workers) is taken without blocking when free; when another writer
holds it, the drain task waits for it in a worker thread, so the loop keeps reading requests
while the other process commits.

PostgreSQL: the workers' batches run concurrently, kept apart by row locks. A request may name
the rows it will lock (``run(work, locks=...)``, e.g. the tiles a submission labels). A batch
first locks all of them in one statement, in key order, with ``SKIP LOCKED``: the requests
whose rows it got run now; those whose rows another worker's batch holds go back to the front
of the queue for the next batch (at most ``MAX_DEFER`` times; then the batch waits for their
rows in a worker thread, the loop still reading requests). So the two workers run their
batches side by side on different tiles instead of one after the other, and never wait for
each other while holding rows (no deadlocks). Claims lock with ``SKIP LOCKED`` too. Should a
deadlock or a serialization failure happen anyway, the whole batch runs again (at most
``TRANSIENT_TRIES`` times).

Requests of one batch run one after another in the same transaction, so later ones see the
earlier ones' writes exactly as if they had been separate transactions in that order.

PostgreSQL: a request may also describe its work for the committer's ``fast`` runner
(``run(work, fast=...)``; :func:`labeler.batchsubmit.submit_many` for submissions). When a
batch holds at least ``FAST_MIN`` of them, the runner takes them together first, with a few
set-based statements instead of one (or more) per request; the requests it leaves run their
own work after it. Its errors are treated like a request's in an optimistic batch: the
transaction is rolled back and the batch runs again one request at a time, with savepoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from sqlalchemy.engine import Connection, Engine

from labeler.db import is_sqlite, writer_lock
from labeler.sql import commit_now

#: Most requests committed together; bounds the latency one batch adds to its first member
#: (and how long the event loop is busy with one batch).
MAX_BATCH = 64
#: PostgreSQL: runs of a batch that hit a deadlock or serialization failure before its
#: requests get that error.
TRANSIENT_TRIES = 3
#: PostgreSQL: batches a request may be put off to because another worker's batch holds its
#: rows; the next one waits for them.
MAX_DEFER = 3

#: PostgreSQL: fewest requests with a ``fast`` description that the committer's ``fast``
#: runner takes together; fewer run one by one. (labeler.batchsubmit's four set-based
#: statements cost the database more than two or three submissions' single statements: in
#: the paced service benchmark, 0.93-0.97 ms of PostgreSQL CPU per task from 2, 0.76-0.84 ms
#: from 4.)
FAST_MIN = 4

#: ``conn.info`` key of a dict that lives for one transaction of a batch (created before
#: ``lock_rows`` runs, removed when the transaction ends): what ``lock_rows`` read with the
#: locks, for the batch's requests (:func:`keep_rows`).
BATCH_INFO = "cs_batch"


def keep_rows(conn: Connection, rows: dict[tuple[Any, ...], Any]) -> None:
    """From ``lock_rows``: keep the rows it read with its locks, by lock key (a tuple whose
    first element is the row's id), for the requests of this batch (:func:`kept_rows`).
    Outside a batch's transaction, nothing is kept."""
    scratch = conn.info.get(BATCH_INFO)
    if scratch is not None:
        scratch["rows"] = rows


def kept_rows(conn: Connection) -> dict[tuple[Any, ...], Any] | None:
    """The rows :func:`keep_rows` kept in this transaction and nobody changed since, or None."""
    scratch = conn.info.get(BATCH_INFO)
    return scratch.get("rows") if scratch is not None else None


def forget_rows(conn: Connection, ids: Iterable[Any] | None = None, *,
                only: Any = None) -> None:
    """The transaction is about to change these rows (all, with ``None``): what
    :func:`keep_rows` kept of them is stale from now on; with ``only``, just the keys whose
    second element is ``only`` (what was read with those rows for them). Every statement of
    a batch's requests that writes what ``lock_rows`` read must call this first — or bring
    the kept rows up to date itself (see :func:`labeler.labels.submit_in`); a request that
    fails in a batch with savepoints forgets them all (its writes are rolled back)."""
    rows = kept_rows(conn)
    if not rows:
        return
    if ids is None:
        rows.clear()
        return
    gone = set(ids)
    for key in [k for k in rows if k[0] in gone and (only is None or k[1] == only)]:
        del rows[key]

Work = Callable[[Connection], Any]
#: ``lock_rows(conn, keys, wait)``: lock the rows named by ``keys`` (sorted, distinct) for the
#: rest of the transaction and return the keys locked (PostgreSQL batches, see the module
#: doc); without ``wait``, rows another transaction holds are skipped (``SKIP LOCKED``).
LockRows = Callable[[Connection, list[Any], bool], Iterable[Any]]


#: ``fast(conn, [descriptor, ...])``: run several requests' work at once, set-based
#: (PostgreSQL, see :mod:`labeler.batchsubmit`); ``{index: value}`` of those it ran.
Fast = Callable[[Connection, list[Any]], dict[int, Any]]


class _Item:
    __slots__ = ("work", "fut", "keys", "deferred", "fast")

    def __init__(self, work: Work, fut: "asyncio.Future[Any]", keys: tuple[Any, ...],
                 fast: Any = None) -> None:
        self.work = work
        self.fut = fut
        self.keys = keys
        self.deferred = 0
        self.fast = fast


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the request went away (client disconnected)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class GroupCommitter:
    """Per-engine batcher of write transactions (see the module doc).

    ``await run(work)`` queues ``work(conn)``; one drain task per event loop (started on
    demand, ended when the queue is empty) runs queued work in shared transactions.

    ``lock_rows``: how a PostgreSQL batch locks the rows its requests name (``run(...,
    locks=)``) before running them; unused on SQLite, whose writers are serialised."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH,
                 lock_rows: LockRows | None = None, fast: Fast | None = None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.sqlite = is_sqlite(engine)
        self._lock = writer_lock(engine) if self.sqlite else None
        self._lock_rows = None if self.sqlite else lock_rows
        self._fast = None if self.sqlite else fast
        self._queues: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        # one connection per event loop, kept across batches
        self._conns: dict[asyncio.AbstractEventLoop, Connection] = {}

    async def run(self, work: Work, *, locks: Iterable[Any] = (), fast: Any = None) -> Any:
        """Run ``work(conn)`` inside a shared write transaction; return its result once the
        transaction is committed (or raise its exception, or the commit's). ``locks``: keys
        of rows ``work`` will lock (PostgreSQL: locked up front, with the batch's others).
        ``fast``: the same work described for the committer's ``fast`` runner, which may
        run it together with the batch's other such requests instead of ``work``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = []
            loop.create_task(self._drain(loop, queue))
        queue.append(_Item(work, fut, tuple(locks), fast))
        return await fut

    def close(self) -> None:
        """Close the kept connections (idempotent; call when no request is in flight)."""
        for loop in list(self._conns):
            self._close(loop)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        conn = self._conns.pop(loop, None)
        if conn is not None:
            conn.close()

    async def _drain(self, loop: asyncio.AbstractEventLoop, queue: list[_Item]) -> None:
        try:
            while queue:
                # let the requests read in this loop iteration reach the queue first
                await asyncio.sleep(0)
                if self._lock is not None:
                    await self._acquire(self._lock)
                try:
                    batch = queue[:self.max_batch]
                    del queue[:len(batch)]
                    try:
                        batch, outcomes, later = await self._run_batch(loop, batch)
                        queue[:0] = later  # their rows were taken: first in the next batch
                    except Exception as exc:  # BEGIN or COMMIT failed: nothing is stored
                        outcomes = [(False, exc)] * len(batch)
                finally:
                    if self._lock is not None:
                        self._lock.release()
                for item, (ok, value) in zip(batch, outcomes):
                    _resolve(item.fut, ok, value)
        finally:
            if self._queues.get(loop) is queue:
                del self._queues[loop]
            for item in queue:  # cancelled (the loop is closing): nobody is served
                _resolve(item.fut, False, RuntimeError("the server is shutting down"))

    @staticmethod
    async def _acquire(lock: Any) -> None:
        """Hold the writer lock: at once when free, else after waiting in a worker thread."""
        if lock.try_acquire():
            return
        got: list[bool] = []

        def wait() -> None:
            lock.acquire()
            got.append(True)

        try:
            await anyio.to_thread.run_sync(wait)
        except BaseException:
            if got:  # cancelled once the thread had the lock
                lock.release()
            raise
        lock.adopt()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]
                         ) -> tuple[list[_Item], list[tuple[bool, Any]], list[_Item]]:
        """``(items run, their outcomes, items put off to the next batch)``."""
        # One connection for the committer's life in this loop (no pool checkout and return
        # per batch); a batch whose BEGIN or COMMIT fails closes it, the next one opens anew.
        conn = self._conns.get(loop)
        if conn is None:
            conn = self._conns[loop] = self.engine.connect()
        try:
            return await self._run_batch_on(conn, batch)
        except BaseException:
            # (the info dict is the pooled driver connection's: it would outlive the batch)
            conn.info.pop(BATCH_INFO, None)
            self._close(loop)
            raise

    async def _run_batch_on(self, conn: Connection, batch: list[_Item]
                            ) -> tuple[list[_Item], list[tuple[bool, Any]], list[_Item]]:
        # Optimistically without savepoints (two statements per request saved): requests
        # rarely fail. When one does, the transaction is rolled back and the batch runs again
        # with a savepoint per request, so only the failed one loses its writes.
        later: list[_Item] = []
        for tries in range(1, TRANSIENT_TRIES + 1):
            try:
                outcomes = None
                for savepoints in (False, True):
                    batch, put_off = await self._lock_first(conn, batch)
                    later += put_off
                    outcomes = self._attempt(conn, batch, savepoints=savepoints)
                    if outcomes is not None:
                        break
                return batch, outcomes, later  # type: ignore[return-value]
            except Exception as exc:
                if tries == TRANSIENT_TRIES or not _transient(exc):
                    raise
        raise AssertionError("unreachable")

    async def _lock_first(self, conn: Connection, batch: list[_Item]
                          ) -> tuple[list[_Item], list[_Item]]:
        """Open the batch's transaction by locking the rows its requests name (PostgreSQL);
        ``(requests to run now, requests put off)``. Rows no other transaction holds are
        taken at once, on the loop; a request whose rows are held elsewhere is put off to the
        next batch, unless it was put off ``MAX_DEFER`` times already or nothing else could
        run: then the rows are waited for in a worker thread, so this loop keeps reading
        requests meanwhile. The transaction is the driver's implicit one, which
        :meth:`_attempt` continues."""
        keys = sorted({k for item in batch for k in item.keys}) if self._lock_rows else []
        if not keys:
            return batch, []
        lock_rows: LockRows = self._lock_rows  # type: ignore[assignment]
        conn.info[BATCH_INFO] = {}  # (what lock_rows keeps, it keeps anew on each call)
        if all(item.deferred < MAX_DEFER for item in batch):
            got = set(lock_rows(conn, keys, False))
            if len(got) == len(keys):
                return batch, []
            now = [item for item in batch if got.issuperset(item.keys)]
            if now:
                later = [item for item in batch if not got.issuperset(item.keys)]
                for item in later:
                    item.deferred += 1
                return now, later
            conn.connection.driver_connection.rollback()  # nothing could run: wait instead
        await anyio.to_thread.run_sync(lock_rows, conn, keys, True)
        return batch, []

    def _attempt(self, conn: Connection, batch: list[_Item], *,
                 savepoints: bool) -> list[tuple[bool, Any]] | None:
        """Run ``batch`` in one transaction (``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL the
        one :meth:`_lock_first` may have opened); its outcomes, or ``None`` when (without
        savepoints) a request of a batch of several failed and nothing was kept. A deadlock
        or serialization failure is raised (the caller runs the batch again)."""
        outcomes: list[tuple[bool, Any]] = []
        if self.sqlite:
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
        try:
            return self._attempt_tx(conn, batch, savepoints, outcomes)
        finally:
            conn.info.pop(BATCH_INFO, None)  # the transaction is over

    def _attempt_tx(self, conn: Connection, batch: list[_Item], savepoints: bool,
                    outcomes: list[tuple[bool, Any]]) -> list[tuple[bool, Any]] | None:
        try:
            with conn.begin():
                raw = conn.connection.driver_connection
                done = self._run_fast(conn, batch) if not savepoints else {}
                for k, item in enumerate(batch):
                    if k in done:
                        outcomes.append((True, done[k]))
                        continue
                    if savepoints:
                        raw.execute("SAVEPOINT cs_req")
                    try:
                        value = item.work(conn)
                    except Exception as exc:
                        if _transient(exc):
                            raise  # the transaction is lost: the whole batch runs again
                        outcomes.append((False, exc))
                        if not savepoints:  # its writes (and the batch's) go with the rollback
                            raise _Retry() from exc
                        raw.execute("ROLLBACK TO cs_req")
                        raw.execute("RELEASE cs_req")
                        forget_rows(conn)  # it may have updated kept rows it had written
                    else:
                        if savepoints:
                            raw.execute("RELEASE cs_req")
                        outcomes.append((True, value))
                # (the commit itself: one libpq call instead of psycopg's machinery)
                commit_now(conn)
        except _Retry:
            return outcomes if len(batch) == 1 else None
        return outcomes

    def _run_fast(self, conn: Connection, batch: list[_Item]) -> dict[int, Any]:
        """The values of the batch's requests that ``fast`` ran together (by position in
        ``batch``), before the others run one by one. Any error of it, or of one of its
        requests, makes the optimistic transaction roll back (:class:`_Retry`): the batch
        then runs again one request at a time, where each gets its own answer."""
        if self._fast is None:
            return {}
        at = [k for k, item in enumerate(batch) if item.fast is not None]
        if len(at) < FAST_MIN:
            return {}
        try:
            got = self._fast(conn, [batch[k].fast for k in at])
        except Exception as exc:
            if _transient(exc):
                raise
            raise _Retry() from exc
        return {at[j]: value for j, value in got.items()}


class _Retry(Exception):
    """A request failed in an optimistic batch: roll it all back and run it again."""


def _transient(exc: BaseException) -> bool:
    """A PostgreSQL deadlock or serialization failure: the transaction may succeed if run
    again (SQLSTATE class 40)."""
    while exc is not None:
        code = getattr(exc, "sqlstate", None)
        if isinstance(code, str) and code.startswith("40"):
            return True
        exc = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
    return False
