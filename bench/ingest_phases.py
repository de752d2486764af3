"""Where an ingest's time goes: per-phase thread time of warm in-process runs.

Not a test. Run from the repository root (needs ../shared, or CROWDSIGHT_SHARED_DIR):

    .venv/bin/python bench/ingest_phases.py                       # WebP, 2 threads
    .venv/bin/python bench/ingest_phases.py --format png --runs 9 --workdir /dev/shm

Runs ``ingest()`` on the Joplin "before" mosaic (z14-18) ``--runs`` times in this process
after ``--warm`` untimed runs, with the main steps wrapped by timers (``time.thread_time``
per call, so a thread waiting for the GIL or the disk is not charged), and prints the median
per run of each step's thread time and call count, the wall time, and how long each thread
was busy. The wrappers cost a few microseconds per call (~1 % of a run). Used for the
"Where a warm WebP run's time goes" paragraphs of docs/ingest.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import pkgutil
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the ingest package, not bench/ingest.py next to this script
SHARED = Path(os.environ.get("CROWDSIGHT_SHARED_DIR", ROOT.parent / "shared")) / "data"

#: (module, attribute, label): the steps timed; nested steps are charged to both
STEPS = [
    ("ingest.pipeline", "prehash", "hash sources (this thread waits)"),
    ("ingest.sources", "_cached_sha256", "  sha256 of a file (hash threads)"),
    ("ingest.pipeline", "describe", "describe sources"),
    ("ingest.pipeline", "plan_block", "plan blocks (PROJ)"),
    ("ingest.render", "_read_window", "  read window"),
    ("ingest.render", "remap_into", "  warp"),
    ("ingest.render", "_clip_affine", "    clip edges"),
    ("ingest.render", "_reduce_drawn", "  reduce level"),
    ("ingest.render", "tile_alpha_sums", "  tile alpha sums"),
    ("ingest.render.BlockWork", "__init__", "block (render + levels)"),
    ("ingest.render", "encode_tile", "  encode"),
    ("ingest.render", "unpremultiply", "    unpremultiply"),
    ("tiles.store", "_atomic_write_in", "  write file"),
    ("ingest.render.BlockWork", "write_tile", "tile (encode + write)"),
    ("ingest.pipeline._Pyramid", "_make", "pyramid above blocks"),
    ("ingest.pipeline", "_manifest", "manifest"),
    ("ingest.pipeline", "atomic_write_json", "json files"),
]


def instrument(events: list) -> None:
    """Wrap every step of :data:`STEPS`; each call appends (thread, label, cpu s)."""
    for owner_path, attr, label in STEPS:
        owner = pkgutil.resolve_name(owner_path)
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*a, __fn=fn, __label=label, **k):
            c0 = time.thread_time()
            try:
                return __fn(*a, **k)
            finally:
                events.append((threading.get_ident(), __label, time.thread_time() - c0))

        setattr(owner, attr, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", default="webp", choices=["webp", "png", "jpg"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warm", type=int, default=2, help="untimed runs first")
    ap.add_argument("--workdir", default=None, help="where the tiles go (default: temp dir)")
    args = ap.parse_args()
    files = sorted((SHARED / "imagery" / "joplin_tornado" / "pre").glob("*.tif"))
    if not files:
        raise SystemExit("shared data not found (set CROWDSIGHT_SHARED_DIR)")
    events: list = []
    instrument(events)
    from ingest.pipeline import ingest

    quality = 75 if args.format == "webp" else None
    per_run: list[dict] = []
    walls, cpus = [], []
    for r in range(args.warm + args.runs):
        events.clear()
        store = Path(tempfile.mkdtemp(prefix="phases-", dir=args.workdir))
        t0, c0 = time.perf_counter(), time.process_time()
        ingest({"before": files}, store, "bench", zoom=18, min_zoom=14, fmt=args.format,
               quality=quality, jobs=args.jobs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        shutil.rmtree(store)
        if r < args.warm:
            continue
        walls.append(wall)
        cpus.append(cpu)
        agg: dict = defaultdict(lambda: [0, 0.0])
        threads: dict = defaultdict(float)
        for tid, label, dt in events:
            agg[label][0] += 1
            agg[label][1] += dt
            if not label.startswith(" "):
                threads[tid] += dt
        agg["(threads busy, top-level steps)"] = [len(threads), sum(threads.values())]
        per_run.append(agg)
    print(f"Joplin before, z14-18, {args.format}, jobs={args.jobs}: {args.runs} timed runs "
          f"after {args.warm} untimed ({'warm' if args.warm else 'the first is fresh'}); "
          f"wall median {statistics.median(walls) * 1e3:.0f} ms "
          f"({min(walls) * 1e3:.0f}-{max(walls) * 1e3:.0f}), process CPU median "
          f"{statistics.median(cpus) * 1e3:.0f} ms")
    print(f"  {'step':<34} {'calls':>6} {'thread ms (median per run)':>27}")
    for label in [s[2] for s in STEPS] + ["(threads busy, top-level steps)"]:
        rows = [run[label] for run in per_run if label in run]
        if not rows:
            continue
        print(f"  {label:<34} {statistics.median(r[0] for r in rows):6.0f} "
              f"{statistics.median(r[1] for r in rows) * 1e3:27.1f}")


if __name__ == "__main__":
    main()
