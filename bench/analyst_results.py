"""Analyst results benchmark (issue 5): what does a dashboard refresh / export cost?

Seeds a SQLite database with a project of T task tiles (z18 grid) and ~5 simulated votes per
tile, then times each stage of ``labeler.dashboard.results``:

* ``load``      — ``load_project_data`` (all tiles, labels, reviews in one transaction);
* ``compute``   — ``compute_results`` (consensus + villages + volunteer table), per method;
* ``geojson``/``csv``/``gpkg`` — the tile export writers;
* ``sheet``     — the PNG map sheet (no imagery backdrop).

Baseline: ``consensus.aggregate`` alone on the same votes (the unavoidable part). "ratio" is
stage time / baseline, so it says how much the dashboard adds on top of consensus itself.

    .venv/bin/python bench/analyst_results.py                 # 5,000 tiles, mv + spatial
    .venv/bin/python bench/analyst_results.py --tiles 20000 --methods mv
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# bench/consensus.py would shadow the consensus package when run as a script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import sqlalchemy as sa


def seed(url: str, n_tiles: int, votes_per_tile: int, seed: int = 0) -> str:
    import mercantile

    from labeler.db import make_engine
    from labeler.migrate import upgrade
    from labeler.models import Label, Project, Tile, Volunteer

    upgrade(url)
    eng = make_engine(url, pool_size=1)
    rng = np.random.default_rng(seed)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    cols = int(np.ceil(np.sqrt(n_tiles)))
    t0 = mercantile.tile(24.3, 13.4, 18)
    n_vol = max(20, n_tiles // 50)
    acc = rng.uniform(0.6, 0.95, n_vol)
    with eng.begin() as c:
        c.execute(sa.insert(Project.__table__).values(
            slug="bench", name="bench", type="find", question="", help_text="", examples=[],
            answers=[{"value": v, "label": v} for v in ("yes", "no", "maybe", "bad_imagery")],
            layers=[], redundancy=votes_per_tile, retirement={}, gold_rate=0.0,
            priority="completion", block_cols=1, block_rows=1, context=False, max_points=0,
            status="live", created_at=now, updated_at=now))
        pid = c.execute(sa.text("SELECT id FROM projects")).scalar_one()
        rows = []
        for i in range(n_tiles):
            x, y = t0.x + i % cols, t0.y + i // cols
            b = mercantile.bounds(x, y, 18)
            rows.append(dict(project_id=pid, z=18, x=x, y=y, west=b.west, south=b.south,
                             east=b.east, north=b.north, layers=[], state="live",
                             label_count=0, lease_count=0, answer_counts={}))
        c.execute(sa.insert(Tile.__table__), rows)
        c.execute(sa.insert(Volunteer.__table__), [
            dict(public_id=f"b{w}", tutorials_passed=[], created_at=now) for w in range(n_vol)])
        tiles = [r[0] for r in c.execute(sa.text("SELECT id FROM tiles ORDER BY id"))]
        vols = [r[0] for r in c.execute(sa.text("SELECT id FROM volunteers ORDER BY id"))]
        # spatially clustered truth: damaged blobs
        truth = (np.sin(np.arange(n_tiles) % cols / 5.0) + np.cos(np.arange(n_tiles) // cols / 7.0)
                 > 1.2)
        labels = []
        for i, tid in enumerate(tiles):
            for w in rng.choice(n_vol, votes_per_tile, replace=False):
                right = "yes" if truth[i] else "no"
                a = right if rng.random() < acc[w] else ("no" if right == "yes" else "yes")
                labels.append(dict(project_id=pid, tile_id=tid, volunteer_id=vols[w], answer=a,
                                   skipped=False, idempotency_key=f"{tid}-{w}", is_gold=False,
                                   created_at=now + timedelta(seconds=float(rng.uniform(0, 3e5)))))
        c.execute(sa.insert(Label.__table__), labels)
    eng.dispose()
    return "bench"


def timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=5000)
    ap.add_argument("--votes", type=int, default=5)
    ap.add_argument("--methods", default="mv,spatial")
    args = ap.parse_args()

    from consensus import Votes, aggregate
    from labeler.dashboard import results as R
    from labeler.db import make_engine

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        t_seed, slug = timed(lambda: seed(url, args.tiles, args.votes))
        eng = make_engine(url, pool_size=1)

        def load():
            with eng.connect() as c:
                return R.load_project_data(c, slug)

        t_load, data = timed(load, 3)
        n_votes = len(data.labels)
        print(f"{args.tiles} tiles, {n_votes} votes (seeded in {t_seed:.1f} s); SQLite")
        print(f"{'stage':<22}{'seconds':>10}{'baseline':>10}{'ratio':>8}")
        for method in args.methods.split(","):
            task = np.asarray([lab["tile_id"] for lab in data.labels])
            worker = np.asarray([lab["volunteer"] for lab in data.labels])
            label = np.asarray([lab["answer"] for lab in data.labels])

            def base():
                v = Votes.from_arrays(task, worker, label, classes=("yes", "no", "bad_imagery"),
                                      tile_xyz=np.asarray([[18, t, 0] for t in np.unique(task)]))
                return aggregate(v, method)

            t_base, _ = timed(base, 2)
            t_comp, res = timed(lambda: R.compute_results(data, method, secret="bench"), 2)
            rows = [("load", t_load), (f"compute[{method}]", t_comp)]
            for fmt in ("geojson", "csv", "gpkg"):
                rows.append((f"tiles.{fmt}", timed(
                    lambda: R.write_export(res, "tiles", fmt, io.BytesIO()), 2)[0]))
            rows.append(("villages.png sheet", timed(
                lambda: R.write_export(res, "villages", "png", io.BytesIO()), 1)[0]))
            rows.append(("= dashboard refresh", t_load + t_comp))
            print(f"-- method {method}: baseline consensus.aggregate = {t_base:.3f} s")
            for name, t in rows:
                print(f"{name:<22}{t:>10.3f}{t_base:>10.3f}{t / t_base:>8.2f}")
        eng.dispose()


if __name__ == "__main__":
    main()
