"""Labeler service benchmark (issue 3): simulated volunteers against ``crowdsight serve``.

For each backend (SQLite, then PostgreSQL when reachable) this

1. creates a fresh database, migrates it and seeds a live project with many tiles;
2. starts ``crowdsight serve --workers 2`` on loopback;
3. runs N concurrent volunteers (asyncio; one keep-alive connection each) for a fixed time,
   each looping the way the volunteer page does (``--mode page``: ``GET /next?ahead=1`` once,
   then ``POST /labels?next=1&ahead=1`` per task, whose answer brings the next task while a
   second one is held ahead), or ``--mode split`` (``GET /next`` then ``POST /labels``, the
   old page) or ``--mode combined`` (``POST /labels?next=1``, no task ahead);
4. stops the server and checks that every acknowledged label is in the database exactly once,
   that no (tile, volunteer) pair repeats and that no tile exceeds its redundancy target.

In the same run a bare Starlette JSON endpoint is served by uvicorn with the same settings
(2 workers, same loop/http implementation) and driven by the same client as the ceiling;
"ratio" is labels/s divided by the bare endpoint's next+submit pairs/s.

The client speaks minimal HTTP/1.1 over asyncio streams (httpx costs ~1 ms of CPU per request,
which on a 2-core box would be the bottleneck), in ``--client-procs`` processes. The client
competes with the server for the same cores: the figures are a floor, not the server's limit.

    .venv/bin/python bench/service.py                       # defaults: 200 volunteers, 10 s
    .venv/bin/python bench/service.py --duration 5 --volunteers 100 --backends sqlite
    .venv/bin/python bench/service.py --block 3x2            # MapSwipe-style 6-tile tasks
    .venv/bin/python bench/service.py --mode split           # GET /next + POST /labels
    .venv/bin/python bench/service.py --mode combined        # POST /labels?next=1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- bare ceiling app

def bare_app():  # type: ignore[no-untyped-def]
    """The physical ceiling: a Starlette app answering JSON without any work."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def nxt(request: Request) -> JSONResponse:
        return JSONResponse({"task_id": "x", "tiles": [{"tile_id": 1, "x": 1, "y": 2, "z": 18}]})

    async def submit(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"stored": 1, "duplicates": 0, "feedback": []})

    async def session(request: Request) -> JSONResponse:
        return JSONResponse({"csrf_token": "x"})

    return Starlette(routes=[Route("/api/session", session, methods=["POST"]),
                             Route("/api/projects/{slug}/next", nxt),
                             Route("/api/projects/{slug}/labels", submit, methods=["POST"])])


# --------------------------------------------------------------------------- tiny HTTP client

class Http:
    """One keep-alive HTTP/1.1 connection; enough for this benchmark (Content-Length only)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cookie = ""
        self.last_used = 0.0

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request; if the server had closed the idle keep-alive connection (uvicorn
        does after 5 s, e.g. between a paced run's warm-up and its window), reconnect and send
        it again, as a browser would (retried submissions are safe: idempotency keys)."""
        try:
            return await self._request(method, path, body, headers)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not self.was_idle:
                raise
            self.writer.close()
            await self.open()
            return await self._request(method, path, body, headers)

    @property
    def was_idle(self) -> bool:
        """Idle long enough that the server may have dropped the connection."""
        return time.perf_counter() - self.last_used > 1.0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.last_used = time.perf_counter()

    async def _request(self, method: str, path: str, body: bytes = b"",
                       headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        chunked = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "set-cookie" and value.strip().startswith("cs_session="):
                self.cookie = value.strip().split(";")[0]
        self.last_used = time.perf_counter()
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            return status, data
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


async def _volunteer(host: str, port: int, slug: str, stop_at: float, out: dict[str, Any],
                     seed: int, bare: bool, mode: str = "page", interval: float | None = None,
                     start_at: float | None = None) -> None:
    """One simulated volunteer. Closed loop (``interval=None``): the next request goes out as
    soon as the previous answer is in. Paced: task k is due at ``start_at + phase + k *
    interval`` (a random phase per volunteer spreads them evenly); every latency is counted
    from the time the request was DUE, not from when it could finally be sent, so a server
    that falls behind shows it (no coordinated omission)."""
    rng = random.Random(seed)
    http = Http(host, port)
    await http.open()
    try:
        status, body = await http.request("POST", "/api/session", b"{}")
        if status not in (200, 201):
            out["errors"].append(f"session {status} {body[:200]!r}")
            return
        csrf = {"X-CSRF-Token": json.loads(body)["csrf_token"]}
        task = None
        query = {"page": "?next=1&ahead=1", "combined": "?next=1", "split": ""}[mode]
        labels_path = f"/api/projects/{slug}/labels" + ("" if bare else query)
        next_path = f"/api/projects/{slug}/next" + ("?ahead=1" if mode == "page" and not bare else "")
        due = None
        if interval is not None:
            assert start_at is not None
            # Warm-up before the paced window: the page's first GET /next (once per volunteer)
            if not bare and mode == "page":
                status, body = await http.request("GET", next_path)
                if status != 200:
                    out["errors"].append(f"next {status} {body[:200]!r}")
                    return
                task = json.loads(body)
            due = start_at + rng.random() * interval
        while True:
            if due is not None:
                if due >= stop_at:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.001:
                    out["late"] += 1
                t0 = due
                due += interval  # type: ignore[operator]
            else:
                if time.perf_counter() >= stop_at:
                    break
                t0 = time.perf_counter()
            fetched = task is None
            if fetched:
                status, body = await http.request("GET", next_path)
                if status != 200:
                    out["errors"].append(f"next {status} {body[:200]!r}")
                    return
                task = json.loads(body)
            t1 = time.perf_counter()
            if task.get("done"):
                out["done"] += 1
                return
            labels = [{"tile_id": t["tile_id"], "answer": rng.choice(("yes", "no", "maybe")),
                       "idempotency_key": uuid.uuid4().hex, "time_spent_ms": 900}
                      for t in task["tiles"]]
            payload = json.dumps({"task_id": task["task_id"], "labels": labels}).encode()
            # Paced: a submit that was not preceded by a /next was due at t0.
            t2 = time.perf_counter() if (fetched or due is None) else t0
            status, body = await http.request("POST", labels_path, payload, csrf)
            t3 = time.perf_counter()
            if status != 200:
                out["errors"].append(f"labels {status} {body[:200]!r}")
                return
            answer = json.loads(body)
            task = answer.get("next")  # with ?next=1 the following task comes back here
            if fetched and (due is not None or t1 - t0 > 1e-4):
                out["next"].append(t1 - t0)
            out["submit"].append(t3 - t2)
            if t3 <= stop_at:
                out["in_window"] += len(labels)
            if not bare:
                out["acked"].extend(lb["idempotency_key"] for lb in labels)
    except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
        out["errors"].append(f"connection: {exc!r}")
    finally:
        http.close()


def _client_proc(args: tuple[str, int, str, int, float, int, bool, str, float | None]
                 ) -> dict[str, Any]:
    host, port, slug, n, start_at, duration, bare, mode, interval = args
    out: dict[str, Any] = {"next": [], "submit": [], "acked": [], "errors": [], "done": 0,
                           "in_window": 0, "late": 0}

    async def run() -> None:
        # Everyone starts together (the parent sets a common wall-clock start).
        if interval is None:
            delay = start_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stop_at = time.perf_counter() + duration
            await asyncio.gather(*(_volunteer(host, port, slug, stop_at, out,
                                              hash((os.getpid(), i)), bare, mode)
                                   for i in range(n)))
            return
        # Paced: sessions (and the page's first /next) are opened before the window.
        start = time.perf_counter() + (start_at - time.time())
        await asyncio.gather(*(_volunteer(host, port, slug, start + duration, out,
                                          hash((os.getpid(), i)), bare, mode, interval, start)
                               for i in range(n)))

    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return out


def drive(host: str, port: int, slug: str, volunteers: int, duration: int, procs: int,
          bare: bool, mode: str = "page", rate: float | None = None,
          labels_per_task: int = 1, server_sid: int | None = None,
          db_url: str | None = None) -> dict[str, Any]:
    """Run the volunteers; closed loop, or paced so that all of them together offer ``rate``
    labels/s (each volunteer one task every ``volunteers * labels_per_task / rate`` s)."""
    interval = None if not rate else volunteers * labels_per_task / rate
    # Paced runs open every session first (200 sessions take a while on a busy server).
    start_at = time.time() + (1.5 if interval is None else 5.0)
    shares = [volunteers // procs + (1 if i < volunteers % procs else 0) for i in range(procs)]
    window: list[float] = []
    db_window: list[dict[int, float]] = []
    sampler = None
    if server_sid is not None:  # the server's CPU seconds over the load window
        def sample() -> None:
            for t in (start_at, start_at + duration):
                time.sleep(max(0.0, t - time.time()))
                window.append(session_cpu(server_sid))
                if db_url is not None:
                    db_window.append(backend_cpu(db_url))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    with ProcessPoolExecutor(procs) as pool:
        parts = list(pool.map(_client_proc, [(host, port, slug, n, start_at, duration, bare,
                                              mode, interval) for n in shares]))
    if sampler is not None:
        sampler.join()
    merged: dict[str, Any] = {"next": [], "submit": [], "acked": [], "errors": [], "done": 0,
                              "in_window": 0, "late": 0,
                              "server_cpu": window[1] - window[0] if len(window) == 2 else None,
                              "db_cpu": (sum(v - db_window[0].get(pid, 0.0)
                                             for pid, v in db_window[1].items())
                                         if len(db_window) == 2 else None)}
    for p in parts:
        for k in p:
            merged[k] += p[k]
    return merged


# --------------------------------------------------------------------------- servers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not come up")


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/{pid}/stat`` after the command name (None: the process is gone);
    [3] is the session id, [11] and [12] user and system CPU in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(db_url: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving ``db_url``'s database (the
    database server runs on this machine: its work per task is part of the cost)."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(db_url)
    with psycopg.connect(host=url.host or "127.0.0.1", port=url.port or 5432,
                         user=url.username or "postgres", dbname="postgres",
                         autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (url.database,))]
    stats = {pid: _proc_stat(pid) for pid in pids}
    return {pid: _cpu_seconds(f) for pid, f in stats.items() if f is not None}


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of session ``sid`` (the
    server and its workers: it is started with ``start_new_session``). Linux /proc."""
    total = 0.0
    for name in os.listdir("/proc"):
        fields = _proc_stat(name) if name.isdigit() else None
        if fields is not None and int(fields[3]) == sid:
            total += _cpu_seconds(fields)
    return total


@contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, probe: str) -> Iterator[int]:
    # The server's stderr goes to a file, not a pipe: a pipe nobody reads fills up (64 KiB)
    # and blocks the server's next log write, which would freeze the run.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            _wait_http(port, probe, proc)
            yield proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err.seek(0)
            text = err.read().decode(errors="replace")
            if "Traceback" in text or proc.returncode not in (0, -signal.SIGINT, 130):
                sys.stderr.write(text[-4000:])


# --------------------------------------------------------------------------- one backend

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")  # printed as "nan": no such call in this run
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def run_backend(backend: str, a: argparse.Namespace, work: Path,
                rate: float | None = None) -> dict[str, Any]:
    import sqlalchemy as sa

    from labeler.db import make_engine
    from labeler.testing import fresh_database, make_settings, seed_project, upgrade

    cols, rows = (int(v) for v in a.block.lower().split("x"))
    with fresh_database(backend, work / uuid.uuid4().hex[:8]) as url:
        upgrade(url)
        settings = make_settings(work / backend, url)
        fields: dict[str, Any] = {"redundancy": a.redundancy, "gold_rate": a.gold_rate}
        if cols * rows > 1:
            fields["block"] = {"cols": cols, "rows": rows}
        project = seed_project(settings, n_tiles=a.tiles, with_images=False,
                               grid_cols=int(a.tiles ** 0.5) // 6 * 6 or 6, **fields)
        port = _free_port()
        env = {**os.environ, "CROWDSIGHT_DATABASE_URL": url,
               "CROWDSIGHT_DATA_DIR": str(settings.data_dir),
               "CROWDSIGHT_TILE_STORE": str(settings.tile_store_path),
               "CROWDSIGHT_SECRET_KEY": "bench-secret",
               "CROWDSIGHT_RATE_LIMIT_VOLUNTEER": "1000000",
               "CROWDSIGHT_RATE_LIMIT_IP": "100000000"}
        cmd = [str(Path(sys.executable).parent / "crowdsight"), "serve", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(a.workers), "--no-access-log",
               "--log-level", "warning"]
        t0 = time.perf_counter()
        with server(cmd, env, port, "/api/health") as sid:
            res = drive("127.0.0.1", port, project.slug, a.volunteers, a.duration,
                        a.client_procs, bare=False, mode=a.mode, rate=rate,
                        labels_per_task=cols * rows, server_sid=sid,
                        db_url=url if backend == "postgresql" else None)
        res["wall"] = time.perf_counter() - t0
        engine = make_engine(url, pool_size=1)
        try:
            with engine.connect() as conn:
                keys = [r[0] for r in conn.execute(sa.text("SELECT idempotency_key FROM labels"))]
                pairs = conn.execute(sa.text(
                    "SELECT count(*) FROM (SELECT tile_id, volunteer_id FROM labels "
                    "GROUP BY tile_id, volunteer_id HAVING count(*) > 1) d")).scalar_one()
                over = conn.execute(sa.text(
                    "SELECT count(*) FROM (SELECT tile_id FROM labels WHERE NOT is_gold AND NOT skipped "
                    "GROUP BY tile_id HAVING count(*) > :r) d"), {"r": a.redundancy}).scalar_one()
        finally:
            engine.dispose()
        stored = set(keys)
        acked = set(res["acked"])
        res.update(lost=len(acked - stored), duplicated=len(keys) - len(stored) + pairs,
                   unacked_stored=len(stored - acked), over_target=over, stored=len(keys))
        return res


def run_bare(a: argparse.Namespace, rate: float | None = None) -> dict[str, Any]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bench.service:bare_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(a.workers),
           "--no-access-log", "--log-level", "warning", "--no-server-header"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with server(cmd, env, port, "/api/projects/x/next") as sid:
        return drive("127.0.0.1", port, "bare", a.volunteers, a.duration, a.client_procs, bare=True,
                     rate=rate, server_sid=sid)


MODES = {"page": "labels?next=1&ahead=1, one request per task, a task held ahead",
         "combined": "labels?next=1, one request per task",
         "split": "next + labels, two requests per task"}


def _print_table(results: dict[str, dict[str, Any]], a: argparse.Namespace,
                 rate: float | None) -> None:
    bare_rate = len(results["bare"]["submit"]) / a.duration if "bare" in results else 0
    if rate is None:
        print(f"\nsaturation run (closed loop, no think time): {a.volunteers} volunteers, "
              f"{a.duration} s each, server {a.workers} workers, client {a.client_procs} procs, "
              f"block {a.block}, mode {a.mode} ({MODES[a.mode]}), {os.cpu_count()} CPUs shared "
              "by client and server")
    else:
        every = a.volunteers * _tiles_per_task(a) / rate
        print(f"\npaced run: {a.volunteers} volunteers offering {rate:.0f} labels/s together "
              f"(each one task every {every * 1000:.0f} ms), {a.duration} s each, latency "
              "counted from when each request was due; same server, client and mode")
    hdr = (f"{'target':<11}{'labels/s':>10}{'tasks/s':>9}{'next p50':>10}{'next p99':>10}"
           f"{'submit p50':>12}{'submit p99':>12}"
           + (f"{'vs bare':>9}" if rate is None else f"{'late':>7}")
           + f"{'cpu/task':>10}{'db cpu':>8}{'lost':>6}{'dup':>5}{'over':>6}{'errors':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        tasks = len(r["submit"]) / a.duration
        labels = r["in_window"] / a.duration
        ratio = tasks / bare_rate if bare_rate else float("nan")
        lost = "-" if name == "bare" else r["lost"]
        dup = "-" if name == "bare" else r["duplicated"]
        over = "-" if name == "bare" else r["over_target"]
        n_req = len(r["submit"]) + len(r["next"])
        extra = (f"{ratio:>9.2f}" if rate is None
                 else f"{100 * r['late'] / max(n_req, 1):>6.1f}%")
        cpu = (f"{r['server_cpu'] * 1000 / len(r['submit']):>8.2f}ms"
               if r.get("server_cpu") is not None and r["submit"] else f"{'-':>10}")
        cpu += (f"{r['db_cpu'] * 1000 / len(r['submit']):>6.2f}ms"
                if r.get("db_cpu") is not None and r["submit"] else f"{'-':>8}")
        print(f"{name:<11}{labels:>10.0f}{tasks:>9.0f}{_pct(r['next'], .5):>10.1f}"
              f"{_pct(r['next'], .99):>10.1f}{_pct(r['submit'], .5):>12.1f}"
              f"{_pct(r['submit'], .99):>12.1f}{extra}{cpu}{lost!s:>6}{dup!s:>5}{over!s:>6}"
              f"{len(r['errors']):>8}")
    if rate is None:
        print("latencies in ms; 'cpu/task' = server CPU time (all workers) per task over the load "
              "window; 'db cpu' = the PostgreSQL backends' CPU time per task (SQLite runs "
              "inside the server); 'vs bare' = (next+submit pairs/s) / bare endpoint's pairs/s; "
              "'lost' = acknowledged labels missing from the DB; 'dup' = duplicated labels; "
              "'over' = tiles past the redundancy target")
    else:
        print("latencies in ms from the time each request was due (queueing included); 'late' = "
              "requests that could not even be sent on time (the volunteer was still waiting "
              "for the previous answer); the bare endpoint answers next + submit per task")
    for name, r in results.items():
        if r["errors"]:
            print(f"{name}: first errors: {r['errors'][:3]}", file=sys.stderr)
        if name != "bare" and r.get("unacked_stored"):
            print(f"{name}: {r['unacked_stored']} labels stored whose answer arrived after the "
                  "client stopped (not lost)", file=sys.stderr)


def _tiles_per_task(a: argparse.Namespace) -> int:
    cols, rows = (int(v) for v in a.block.lower().split("x"))
    return cols * rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volunteers", type=int, default=200)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per server")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=6000)
    ap.add_argument("--redundancy", type=int, default=5)
    ap.add_argument("--gold-rate", type=float, default=0.0)
    ap.add_argument("--block", default="1x1", help="COLSxROWS tiles per task, e.g. 3x2")
    ap.add_argument("--mode", choices=("page", "combined", "split"), default="page",
                    help="page: next?ahead=1 once, then labels?next=1&ahead=1 (the volunteer "
                         "page); combined: labels?next=1; split: next + labels (two requests "
                         "per task). The bare ceiling is always measured with two requests")
    ap.add_argument("--combined", action="store_const", const="combined", dest="mode",
                    help="same as --mode combined")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="labels/s offered by all volunteers together in the paced run "
                         "(0: saturation run only)")
    ap.add_argument("--runs", default="saturation,paced",
                    help="which runs: saturation (closed loop), paced (at --rate), or both")
    a = ap.parse_args()

    from labeler.testing import postgres_available

    backends = [b for b in a.backends.split(",") if b]
    if "postgresql" in backends and not postgres_available():
        print("PostgreSQL not reachable on 127.0.0.1:5432: skipping it", file=sys.stderr)
        backends.remove("postgresql")
    runs: list[float | None] = []
    if "saturation" in a.runs:
        runs.append(None)
    if "paced" in a.runs and a.rate > 0:
        runs.append(a.rate)
    work = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    tables: dict[float | None, dict[str, dict[str, Any]]] = {rate: {} for rate in runs}
    try:
        # One target at a time, all its runs back to back: a PostgreSQL run leaves the server
        # flushing and vacuuming for a while, which must not land in the next SQLite run.
        for target in ["bare", *backends]:
            for rate in runs:
                what = "closed loop" if rate is None else f"paced at {rate:.0f} labels/s"
                name = "bare Starlette ceiling" if target == "bare" else target
                print(f"{name}, {what}: {a.volunteers} volunteers, {a.duration} s ...",
                      file=sys.stderr)
                tables[rate][target] = (run_bare(a, rate) if target == "bare"
                                        else run_backend(target, a, work, rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for rate, results in tables.items():
        _print_table(results, a, rate)


if __name__ == "__main__":
    main()
