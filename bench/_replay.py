"""Helpers for bench/consensus.py: realistic simulated volunteers and the Joplin tile truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from consensus import aggregate
from consensus.simulate import simulate_votes, volunteer_confusions

from ._crowd import crowd_root, datasets, load

BINARY = ("snow2008_rte", "snow2008_temp", "welinder2010_bluebirds", "zheng2017_d_jn-product")


def skill_pool(min_labels: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, n_labels) of every volunteer with >= min_labels answers, as estimated by our
    Dawid-Skene on the shared binary crowd datasets."""
    accs, ns = [], []
    for name in datasets():
        if name not in BINARY:
            continue
        v, _, _ = load(name)
        r = aggregate(v, "ds")
        m = r.worker_n_labels >= min_labels
        accs.append(r.accuracy[m])
        ns.append(r.worker_n_labels[m])
    if not accs:
        raise FileNotFoundError(f"no shared crowd datasets under {crowd_root()}")
    return np.concatenate(accs), np.concatenate(ns)


def volunteers(n: int, seed: int, pool: tuple[np.ndarray, np.ndarray], *, n_classes: int = 2,
               maybe_rate: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """n simulated volunteers drawn from the pool: confusions (n, K, K+1 with 'maybe') and an
    activity weight (their answer counts in the source data: a heavy-tailed crowd)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pool[0]), n)
    acc = np.clip(pool[0][idx], 0.5, 0.995)
    conf = volunteer_confusions(acc, n_classes, n_labels=n_classes + 1, maybe_rate=maybe_rate)
    return conf, pool[1][idx].astype(np.float64)


def joplin_truth(shared: Path, zoom: int = 19, damaged_from: int = 3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Tiles at ``zoom`` over the Joplin scene and their pseudo-truth: 1 ("yes", damaged) when a
    building footprint in the tile is covered by an xView2 damage polygon with dmg >=
    ``damaged_from`` (3 = major, 4 = destroyed), else 0. Returns (xyz (n, 3), truth (n,))."""
    import mercantile
    import shapely
    vec = shared / "imagery" / "joplin_tornado" / "vectors"
    dmg = json.loads((vec / "xview2_model_damage.geojson").read_text())["features"]
    fp = json.loads((vec / "joplin_building_footprints.geojson").read_text())["features"]
    dgeom = shapely.from_geojson([json.dumps(f["geometry"]) for f in dmg])
    dval = np.array([f["properties"]["dmg"] for f in dmg])
    fgeom = shapely.from_geojson([json.dumps(f["geometry"]) for f in fp])
    damaged = dgeom[dval >= damaged_from]
    # footprints hit by a damaged polygon, plus damaged polygons themselves (2011 buildings
    # that were gone by 2020)
    tree = shapely.STRtree(damaged)
    hit = np.unique(tree.query(fgeom, predicate="intersects")[0])
    dam_geoms = np.concatenate([fgeom[hit], damaged])
    w, s, e, n = -94.5003, 37.0663, -94.4862, 37.0776
    tiles = list(mercantile.tiles(w, s, e, n, zooms=[zoom]))
    xyz = np.array([(t.z, t.x, t.y) for t in tiles], dtype=np.int64)
    boxes = shapely.box(*np.array([list(mercantile.bounds(t)) for t in tiles]).T)
    t2 = shapely.STRtree(boxes)
    ti = np.unique(t2.query(dam_geoms, predicate="intersects")[1])
    truth = np.zeros(len(tiles), dtype=np.int64)
    truth[ti] = 1
    return xyz, truth


def simulate(truth: np.ndarray, conf: np.ndarray, activity: np.ndarray, per_task: int,
             seed: int, xyz: np.ndarray | None = None):
    return simulate_votes(truth, conf, per_task, seed=seed, classes=("no", "yes"),
                          labels=("no", "yes", "maybe"), tile_xyz=xyz, activity=activity)


# ---------------------------------------------------------------------------------------------
# held-out evaluation of the default retirement policy (python -m bench._replay)
# ---------------------------------------------------------------------------------------------

#: Crowds the default policy was chosen on; evaluation seeds are 1..999, never these.
TUNING_SEEDS = (1000, 1001, 1002, 1003, 1004)
#: (threshold, min_votes, max_votes, final_threshold) candidates; None = constant threshold.
GRID = tuple((th, 2, mx, fin) for th in (0.9, 0.92, 0.93, 0.94, 0.95) for mx in (7, 8)
             for fin in (None, 0.75))
#: The method both arms are aggregated with and skills are refitted with (the service default;
#: without a tile grid it is exactly ``gold``).
METHOD = "spatial"


def scenes(shared: Path | None = None) -> dict:
    """name -> (crowd(seed, pool) -> (votes, truth), refit_every). The simulated crowd and the
    Joplin z19 scene exactly as in ``bench/consensus.py --only replay``, plus a guard scene: a
    plain crowd of 80 equally active volunteers with accuracies uniform in [0.75, 0.95] (the
    unit tests' crowd), where the posteriors are well calibrated, so that the default is not
    tuned to one crowd's miscalibration."""
    shared = shared or crowd_root().parent
    out: dict = {}

    def plain(seed, pool):
        from consensus.simulate import volunteer_confusions
        rng = np.random.default_rng(2000 + seed)
        conf = volunteer_confusions(rng.uniform(0.75, 0.95, 80), 2, n_labels=3,
                                    maybe_rate=0.05)
        tr = (rng.random(1500) < 0.3).astype(int)
        return simulate(tr, conf, np.ones(80), 10, 200 + seed), tr

    out["plain crowd (1500 tiles, 30% yes, 80 volunteers U(.75,.95))"] = (plain, 250)

    def sim(seed, pool):
        rng = np.random.default_rng(1000 + seed)
        tr = (rng.random(3000) < 0.3).astype(int)
        conf, act = volunteers(300, seed, pool)
        return simulate(tr, conf, act, 10, 100 + seed), tr

    out = {"simulated crowd (3000 tiles, 30% yes, 300 volunteers)": (sim, 250), **out}
    try:
        xyz, jtruth = joplin_truth(shared)
    except (FileNotFoundError, OSError):
        return out

    def jop(seed, pool):
        conf, act = volunteers(60, seed, pool)
        return simulate(jtruth, conf, act, 10, 100 + seed, xyz), jtruth

    out["Joplin z19 (xView2 damage truth, 60 volunteers)"] = (jop, 200)
    return out


def run_policy(policy, seeds, pool, scene_map: dict, **replay_kw) -> dict:
    """Per scene: per-seed (savings, accuracy, fixed-5 accuracy, answers per tile, unresolved)
    and their mean / standard deviation / min / max."""
    from consensus import replay
    out = {}
    for name, (crowd, refit) in scene_map.items():
        rows = []
        for s in seeds:
            v, tr = crowd(s, pool)
            r = replay(v, policy, tr, method=METHOD, refit_every=refit, **replay_kw)
            rows.append((r.savings, r.accuracy, r.accuracy_baseline, r.votes_used / len(r.used),
                         r.n_unresolved))
        a = np.array(rows)
        d = a[:, 1] - a[:, 2]
        out[name] = {"per_seed": a.tolist(), "savings": a[:, 0].mean(),
                     "savings_sd": a[:, 0].std(ddof=1) if len(a) > 1 else 0.0,
                     "savings_min": a[:, 0].min(), "savings_max": a[:, 0].max(),
                     "accuracy": a[:, 1].mean(), "accuracy_fixed5": a[:, 2].mean(),
                     "delta": d.mean(), "delta_sd": d.std(ddof=1) if len(a) > 1 else 0.0,
                     "delta_min": d.min(), "delta_max": d.max(),
                     "votes_per_tile": a[:, 3].mean(), "unresolved": a[:, 4].mean()}
    return out


def tune(pool, scene_map: dict, log=None) -> tuple[tuple, list]:
    """The grid policy whose smallest mean savings over the scenes is largest among those with
    mean accuracy >= fixed-5's in every scene (guard scene included), on the tuning crowds."""
    from consensus import RetirementPolicy
    table = []
    for params in GRID:
        res = run_policy(RetirementPolicy(*params), TUNING_SEEDS, pool, scene_map)
        ok = all(r["delta"] >= 0 for r in res.values())
        worst = min(r["savings"] for r in res.values())
        table.append((params, ok, worst, res))
        if log:
            log(f"{_pstr(params):16s} " + "  ".join(
                f"{r['savings']:6.1%} {100 * r['delta']:+.2f}" for r in res.values())
                + ("" if ok else "  (below fixed 5)"))
    feasible = [t for t in table if t[1]]
    if feasible:
        best = max(feasible, key=lambda t: t[2])
    else:   # none keeps fixed-5 accuracy everywhere: the one that comes closest
        best = max(table, key=lambda t: min(r["delta"] for r in t[3].values()))
    return best[0], table


def _pstr(p) -> str:
    th, mn, mx, fin = p
    return f"{th}/{mn}/{mx}" + (f">{fin}" if fin is not None else "")


def _main() -> None:
    import argparse
    import sys

    from consensus import RetirementPolicy

    ap = argparse.ArgumentParser(description="Retirement: the default policy on held-out "
                                 "simulated crowds vs fixed 5 answers per tile")
    ap.add_argument("--seeds", type=int, default=10, help="evaluation crowds 1..N (< 1000)")
    ap.add_argument("--policy", metavar="TH/MIN/MAX[>FINAL]",
                    help="evaluate this policy instead of the default, e.g. 0.95/2/7")
    ap.add_argument("--before", action="store_true",
                    help="also run the policy as the replay did before (no retiring of open "
                    "tiles at refits, Dirichlet-shrunk decision skills)")
    ap.add_argument("--tune", action="store_true",
                    help=f"first re-run the {len(GRID)}-policy grid on the tuning crowds "
                    f"{list(TUNING_SEEDS)} and report its pick")
    args = ap.parse_args()
    if not 1 <= args.seeds < min(TUNING_SEEDS):
        raise SystemExit(f"--seeds must be from 1 to {min(TUNING_SEEDS) - 1}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    pool = skill_pool()
    sc = scenes()
    pol = RetirementPolicy()
    if args.policy:
        head, _, fin = args.policy.partition(">")
        th, mn, mx = head.split("/")
        pol = RetirementPolicy(float(th), int(mn), int(mx), float(fin) if fin else None)
    if args.tune:
        log(f"tuning on crowds {list(TUNING_SEEDS)} (savings, accuracy - fixed 5 in points, "
            "per scene):")
        best, _ = tune(pool, sc, log)
        log(f"pick: {_pstr(best)}; default: {_pstr(_params(pol))}")
    seeds = list(range(1, args.seeds + 1))
    runs = [("", {})] + ([(" (before: no retiring at refits, Dirichlet skills)",
                           {"recheck_open": False, "skill_prior": "dirichlet"})]
                         if args.before else [])
    for label, kw in runs:
        res = run_policy(pol, seeds, pool, sc, **kw)
        print(f"policy {_pstr(_params(pol))}{label}, method {METHOD}, held-out crowds "
              f"1..{args.seeds} (mean ± sd, min..max over crowds); baseline: fixed 5 answers "
              "per tile, same method")
        print(f"{'scene':60s} {'ans/tile':>8s} {'savings':>22s} {'acc':>7s} {'fixed5':>7s} "
              f"{'acc - fixed5 (points)':>26s} {'unres':>6s}")
        for name, r in res.items():
            print(f"{name:60s} {r['votes_per_tile']:8.2f} "
                  f"{r['savings']:6.1%} ±{r['savings_sd']:5.1%} "
                  f"{r['savings_min']:4.1%}..{r['savings_max']:4.1%} "
                  f"{r['accuracy']:7.4f} {r['accuracy_fixed5']:7.4f} "
                  f"{100 * r['delta']:+6.2f} ±{100 * r['delta_sd']:4.2f} "
                  f"{100 * r['delta_min']:+5.2f}..{100 * r['delta_max']:+5.2f} "
                  f"{r['unresolved']:6.1f}")


def _params(p) -> tuple:
    return (p.threshold, p.min_votes, p.max_votes, p.final_threshold)


if __name__ == "__main__":
    _main()
