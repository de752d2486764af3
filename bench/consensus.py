"""Benchmark for consensus/: accuracy, speed, memory, retirement savings.

    .venv/bin/python bench/consensus.py                      # everything, bounded (~5 min)
    .venv/bin/python bench/consensus.py --only accuracy --glad-max-labels 30000
    .venv/bin/python bench/consensus.py --only speed --sizes 100000,1000000,10000000
    .venv/bin/python bench/consensus.py --only speed --sizes 100000000 --ck-max-labels 0
    .venv/bin/python bench/consensus.py --only replay --seeds 3

Sections (baselines named in every table):
1. accuracy on every dataset in ../shared/data/crowd: our mv/ds/onecoin/gold/spatial next to
   crowd-kit's MajorityVote, DawidSkene, OneCoinDawidSkene, GLAD and MACE;
2. speed and peak memory of our Dawid-Skene vs crowd-kit's DawidSkene on synthetic sets
   (each run in a fresh subprocess so peak RSS is its own);
3. retirement replay vs fixed 5 answers per tile: simulated volunteers with skills drawn from
   the shared datasets, and the Joplin before/after scene (tile truth from the xView2 damage
   polygons + building footprints on the z19 grid).

Results are printed and written to bench/out/consensus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OURS = ["mv", "ds", "onecoin", "gold", "spatial"]
CK = ["MajorityVote", "DawidSkene", "OneCoinDawidSkene", "GLAD", "MACE"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. accuracy
# ---------------------------------------------------------------------------------------------

def _ck_answers(name: str, votes, glad_ok: bool) -> dict[str, tuple[np.ndarray, float]]:
    import pandas as pd
    from crowdkit import aggregation as agg

    df = pd.DataFrame({"task": votes.task_ids[votes.task],
                       "worker": votes.worker_ids[votes.worker],
                       "label": np.asarray(votes.labels)[votes.label]})
    out = {}
    for m in CK:
        if m == "GLAD" and not glad_ok:
            continue
        algo = {"MajorityVote": agg.MajorityVote, "DawidSkene": lambda: agg.DawidSkene(n_iter=100),
                "OneCoinDawidSkene": agg.OneCoinDawidSkene, "GLAD": agg.GLAD,
                "MACE": lambda: agg.MACE(random_state=0)}[m]()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = algo.fit_predict(df)
        dt = time.perf_counter() - t0
        pm = {str(k): str(v) for k, v in pred.items()}
        ans = np.array([votes.classes.index(pm[str(t)]) if pm.get(str(t)) in votes.classes
                        else -2 for t in votes.task_ids])
        out[f"ck_{m}"] = (ans, dt)
    return out


def bench_accuracy(args) -> dict:
    from bench._crowd import accuracy, datasets, load
    from consensus import aggregate

    names = datasets()
    if not names:
        log("accuracy: no shared crowd datasets found, skipped")
        return {}
    results: dict = {}
    for name in names:
        votes, truth, _ = load(name)
        row: dict = {"labels": votes.n_votes, "tasks": votes.n_tasks, "workers": votes.n_workers,
                     "classes": votes.n_classes, "scored": int((truth >= 0).sum())}
        for m in OURS:
            t0 = time.perf_counter()
            r = aggregate(votes, m)
            row[m] = (accuracy(r.answer, truth), time.perf_counter() - t0)
        if not args.no_crowdkit:
            glad_ok = votes.n_votes <= args.glad_max_labels
            log(f"accuracy: {name} ({votes.n_votes} labels) crowd-kit"
                f"{' incl. GLAD' if glad_ok else ''} ...")
            for k, (ans, dt) in _ck_answers(name, votes, glad_ok).items():
                row[k] = (accuracy(ans, truth), dt)
        results[name] = row
    _print_accuracy(results)
    return results


def _print_accuracy(results: dict) -> None:
    cols = OURS + [f"ck_{m}" for m in CK]
    short = {"ck_MajorityVote": "ck_MV", "ck_DawidSkene": "ck_DS",
             "ck_OneCoinDawidSkene": "ck_1coin", "ck_GLAD": "ck_GLAD", "ck_MACE": "ck_MACE"}
    print("\n## Accuracy on the shared crowd datasets (fraction of tasks with truth answered "
          "correctly; baseline: crowd-kit)")
    hdr = f"{'dataset':26s} {'labels':>7s} " + " ".join(f"{short.get(c, c):>8s}" for c in cols)
    print(hdr + f" {'best ours':>10s} {'best ck':>8s}")
    n_ok = 0
    for name, row in results.items():
        cells = []
        for c in cols:
            cells.append(f"{row[c][0]:8.4f}" if c in row else f"{'-':>8s}")
        best_o = max(row[m][0] for m in OURS)
        cks = [row[c][0] for c in cols if c.startswith("ck_") and c in row]
        best_c = max(cks) if cks else float("nan")
        ok = best_o >= best_c - 1e-12
        n_ok += ok
        print(f"{name:26s} {row['labels']:7d} " + " ".join(cells)
              + f" {best_o:10.4f} {best_c:8.4f} {'OK' if ok else 'BELOW'}")
    means = {c: np.mean([r[c][0] for r in results.values() if c in r]) for c in cols
             if all(c in r for r in results.values())}
    print(f"{'mean (all datasets)':26s} {'':7s} " + " ".join(
        f"{means[c]:8.4f}" if c in means else f"{'-':>8s}" for c in cols))
    print(f"our best >= crowd-kit's best on {n_ok}/{len(results)} datasets")
    t_ours = sum(r["ds"][1] for r in results.values())
    t_ck = sum(r["ck_DawidSkene"][1] for r in results.values() if "ck_DawidSkene" in r)
    if t_ck:
        print(f"time, all datasets: our ds {t_ours:.2f} s vs crowd-kit DawidSkene {t_ck:.2f} s")


# ---------------------------------------------------------------------------------------------
# 2. speed and memory
# ---------------------------------------------------------------------------------------------

def synth(n_labels: int, n_classes: int = 2, per_task: int = 5, seed: int = 0):
    """Synthetic crowd: n/5 tasks, 5 answers each, n/250 volunteers (min 100) with accuracies
    uniform in [0.55, 0.95]; compact dtypes (int32 indices, int8 labels)."""
    from consensus import Votes

    rng = np.random.default_rng(seed)
    T = n_labels // per_task
    W = max(100, T // 50)
    truth = rng.integers(0, n_classes, T, dtype=np.int8)
    task = np.repeat(np.arange(T, dtype=np.int32), per_task)
    worker = rng.integers(0, W, n_labels, dtype=np.int32)
    acc = rng.uniform(0.55, 0.95, W).astype(np.float32)
    correct = rng.random(n_labels, dtype=np.float32) < acc[worker]
    wrong = (truth[task] + rng.integers(1, n_classes, n_labels, dtype=np.int8)) % n_classes
    label = np.where(correct, truth[task], wrong).astype(np.int8)
    del correct, wrong
    v = Votes.from_indices(task, worker, label, n_tasks=T, n_workers=W, classes=n_classes)
    return v, truth


def _worker(impl: str, n: int, ids: str, repeat: int) -> None:
    """Child process: build the data, run one implementation ``repeat`` times (best time),
    print JSON. Both timings start from plain arrays and include building each library's input
    (our ``Votes``, crowd-kit's DataFrame). ``ids="int"`` hands over integer codes (the
    database path: ``Votes.from_indices``); ``ids="str"`` string ids ("t123", "w45") as a CSV
    export would, and our timing then includes factorising them (crowd-kit works on the
    strings directly)."""
    v, truth = synth(n)
    if ids == "str":
        tid = np.char.add("t", v.task.astype(str))
        wid = np.char.add("w", v.worker.astype(str))
        lab = v.label.astype(str)
    times, cpu = [], []
    if impl == "ours":
        from consensus import Votes, aggregate
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            vv = (Votes.from_arrays(tid, wid, lab, tile_xyz=False) if ids == "str" else
                  Votes.from_indices(v.task, v.worker, v.label, n_tasks=v.n_tasks,
                                     n_workers=v.n_workers, classes=v.classes))
            r = aggregate(vv, "ds")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        ans = r.answer
        if ids == "str":   # map back to task order t0, t1, ...
            order = np.array([int(t[1:]) for t in vv.task_ids.tolist()])
            ans = np.empty_like(r.answer)
            ans[order] = r.answer
        acc = float((ans == truth).mean())
        it = r.n_iter
    else:
        import pandas as pd
        from crowdkit.aggregation import DawidSkene
        cols = ({"task": tid, "worker": wid, "label": lab} if ids == "str" else
                {"task": v.task, "worker": v.worker, "label": v.label})
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            df = pd.DataFrame(cols)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                algo = DawidSkene(n_iter=100)
                pred = algo.fit_predict(df)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            del df
        if ids == "str":
            pred.index = [int(t[1:]) for t in pred.index]
            pred = pred.astype(int)
        acc = float((pred.sort_index().to_numpy() == truth).mean())
        it = len(algo.loss_history_)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": impl, "n": n, "ids": ids, "seconds": min(times),
                      "all_seconds": times, "cpu_seconds": min(cpu), "accuracy": acc, "iterations": it,
                      "peak_rss": rss1, "rss_before": rss0}))


def _run_child(impl: str, n: int, timeout: float, ids: str = "int",
               repeat: int = 1) -> dict | None:
    cmd = [sys.executable, __file__, "--_worker", impl, str(n), ids, str(repeat)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"speed: {impl} at {n:,} labels exceeded {timeout:.0f} s, skipped")
        return {"impl": impl, "n": n, "timeout": timeout}
    if p.returncode != 0:
        log(f"speed: {impl} at {n:,} failed: {p.stderr[-500:]}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_speed(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    out: dict = {}
    for ids in args.ids.split(","):
        for n in sizes:
            if ids == "str" and n > args.str_max_labels:
                continue
            rep = args.repeat if n <= 1_000_000 else 1
            log(f"speed: our ds at {n:,} labels ({ids} ids, best of {rep}) ...")
            ours = _run_child("ours", n, args.timeout, ids, rep)
            ck = None
            if not args.no_crowdkit and n <= args.ck_max_labels:
                log(f"speed: crowd-kit DawidSkene at {n:,} labels ({ids} ids, best of {rep}) ...")
                ck = _run_child("crowdkit", n, args.timeout, ids, rep)
            out[f"{ids}:{n}"] = {"ours": ours, "crowdkit": ck}
    _print_speed(out)
    return out


def _gib(b: float) -> str:
    return f"{b / 2**30:5.2f} GiB"


def _print_speed(out: dict) -> None:
    print("\n## Dawid-Skene speed and peak memory, synthetic binary labels (5 per task)"
          "\n   baseline: crowd-kit DawidSkene(n_iter=100); peak RSS of a fresh process "
          "(data included)")
    print("   wall = best wall-clock seconds; cpu = CPU seconds of that process (robust when the "
          "shared machine is busy)")
    print("   both timings include building the library's input from plain arrays (our Votes, "
          "crowd-kit's DataFrame); str ids: ours includes factorising them; iters = EM "
          "iterations (ours: relative log-likelihood change <= 1e-5; crowd-kit: ELBO per label "
          "change < 1e-5)")
    print(f"{'ids':>4s} {'labels':>12s} {'ours wall':>9s} {'ours cpu':>8s} {'iters':>5s} "
          f"{'ours peak':>10s} {'ck wall':>8s} {'ck cpu':>8s} {'ck iters':>8s} {'ck peak':>10s} "
          f"{'x wall':>7s} {'x cpu':>7s} {'acc ours/ck':>12s}")
    ints = [(int(k.split(":")[1]), r["ours"]) for k, r in out.items()
            if k.startswith("int:") and r["ours"] and "peak_rss" in r["ours"]]
    for key, r in out.items():
        ids, n = key.split(":")
        o, c = r["ours"], r["crowdkit"]
        if not o or "timeout" in o:
            print(f"{ids:>4s} {int(n):12,d} {'-':>8s}")
            continue
        cs = (f"{c['seconds']:8.2f} {c['cpu_seconds']:8.2f} {c['iterations']:8d} "
              f"{_gib(c['peak_rss']):>10s} {c['seconds'] / o['seconds']:6.1f}x "
              f"{c['cpu_seconds'] / o['cpu_seconds']:6.1f}x "
              f"{o['accuracy']:.4f}/{c['accuracy']:.4f}"
              if c and "timeout" not in c else
              (f"{'>' + str(int(c['timeout'])):>8s}" if c else f"{'-':>8s}"))
        print(f"{ids:>4s} {int(n):12,d} {o['seconds']:9.2f} {o['cpu_seconds']:8.2f} "
              f"{o['iterations']:5d} {_gib(o['peak_rss']):>10s} {cs}")
    if len(ints) >= 2:
        ints.sort()
        (n1, o1), (n2, o2) = ints[-2], ints[-1]
        marginal = (o2["peak_rss"] - o1["peak_rss"]) / (n2 - n1)
        est = o2["peak_rss"] + marginal * (1e8 - n2)
        print(f"peak memory grows by {marginal:.0f} bytes per label ({n1:,} -> {n2:,}); "
              f"100M labels ~ {_gib(est).strip()} (machine: 24 GiB)")


# ---------------------------------------------------------------------------------------------
# 3. retirement replay
# ---------------------------------------------------------------------------------------------

# (threshold, min_votes, max_votes, final_threshold); None = constant threshold
POLICY_GRID = ([(th, 2, mx, None) for th in (0.88, 0.9, 0.92, 0.95) for mx in (7, 8)]
               + [(th, 2, mx, f) for th in (0.93, 0.95) for mx in (7, 8) for f in (0.7, 0.75)])
# Tuning crowds are drawn with these seeds and never with an evaluation seed (1..--seeds, and
# --seeds is capped below 1000), so a tuned policy is never chosen on the numbers it is
# evaluated on.
TUNING_SEEDS = (1000, 1001, 1002, 1003, 1004)


def _replay_one(v, truth, policy, method, refit):
    from consensus import replay
    return replay(v, policy, truth, method=method, refit_every=refit)


def _tune(crowds, method, refit):
    """Pick, on the tuning crowds, the policy with the most mean savings whose mean accuracy is
    at least the fixed-5 baseline's (fallback: the most accurate)."""
    from consensus import RetirementPolicy
    best, best_key = None, None
    for th, mn, mx, fin in POLICY_GRID:
        pol = RetirementPolicy(th, mn, mx, fin)
        reps = [_replay_one(v, truth, pol, method, refit) for v, truth in crowds]
        acc = float(np.mean([r.accuracy for r in reps]))
        acc_b = float(np.mean([r.accuracy_baseline for r in reps]))
        sav = float(np.mean([r.savings for r in reps]))
        ok = acc >= acc_b
        key = (ok, sav if ok else acc)
        if best_key is None or key > best_key:
            best, best_key = pol, key
    return best


def bench_replay(args) -> dict:
    from bench._crowd import crowd_root
    from bench._replay import joplin_truth, simulate, skill_pool, volunteers
    from consensus import RetirementPolicy

    try:
        pool = skill_pool()
    except FileNotFoundError as exc:
        log(f"replay: {exc}; skipped")
        return {}
    log(f"replay: skill pool of {len(pool[0])} volunteers, median accuracy "
        f"{np.median(pool[0]):.3f}")
    if not 1 <= args.seeds < min(TUNING_SEEDS):
        raise SystemExit(f"--seeds must be from 1 to {min(TUNING_SEEDS) - 1}")
    seeds = list(range(1, args.seeds + 1))
    default = RetirementPolicy()
    out: dict = {}
    shared = crowd_root().parent
    scenes = {
        "simulated crowd (3000 tiles, 30% yes, 300 volunteers)": None,
        "Joplin z19 (xView2 damage truth, 60 volunteers)": "joplin",
    }
    for scene, kind in scenes.items():
        if kind == "joplin":
            try:
                xyz, truth_fixed = joplin_truth(shared)
            except (FileNotFoundError, OSError) as exc:
                log(f"replay: Joplin vectors not found ({exc}); skipped")
                continue
            n_vol, refit, methods = 60, 200, ("gold", "spatial")
        else:
            xyz, truth_fixed = None, None
            n_vol, refit, methods = 300, 250, ("gold",)

        def crowd(seed):
            rng = np.random.default_rng(1000 + seed)
            tr = truth_fixed if truth_fixed is not None else (rng.random(3000) < 0.3).astype(int)
            conf, act = volunteers(n_vol, seed, pool)
            return simulate(tr, conf, act, 10, 100 + seed, xyz), tr

        for method in methods:
            log(f"replay: {scene} / {method}: tuning on seeds {list(TUNING_SEEDS)} ...")
            tuned = _tune([crowd(s) for s in TUNING_SEEDS], method, refit)
            rows = {}
            for label, pol in (("default", default), ("tuned", tuned)):
                reps = [_replay_one(*crowd(s), pol, method, refit) for s in seeds]
                rows[label] = {
                    "policy": pol.as_dict(),
                    "savings": float(np.mean([r.savings for r in reps])),
                    "accuracy": float(np.mean([r.accuracy for r in reps])),
                    "accuracy_fixed5": float(np.mean([r.accuracy_baseline for r in reps])),
                    "votes_per_tile": float(np.mean([r.votes_used / len(r.used) for r in reps])),
                    "unresolved": float(np.mean([r.n_unresolved for r in reps])),
                    "per_seed": [r.summary() for r in reps],
                }
            out[f"{scene} / {method}"] = rows
    _print_replay(out, seeds)
    return out


def _print_replay(out: dict, seeds: list[int]) -> None:
    print(f"\n## Retirement replay vs fixed 5 answers per tile (same method for both; mean over "
          f"{len(seeds)} crowds; tuned = best of a {len(POLICY_GRID)}-policy grid on "
          f"{len(TUNING_SEEDS)} separate tuning crowds)")
    print(f"{'scene / method':62s} {'policy':22s} {'votes/tile':>10s} {'savings':>8s} "
          f"{'acc':>7s} {'acc fixed5':>10s} {'unresolved':>10s}")
    for scene, rows in out.items():
        for label, r in rows.items():
            p = r["policy"]
            ps = f"{label} {p['threshold']}/{p['min_votes']}/{p['max_votes']}"
            if "final_threshold" in p:
                ps += f">{p['final_threshold']}"
            print(f"{scene:62s} {ps:22s} {r['votes_per_tile']:10.2f} {r['savings']:8.1%} "
                  f"{r['accuracy']:7.4f} {r['accuracy_fixed5']:10.4f} {r['unresolved']:10.1f}")


# ---------------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--_worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["accuracy", "speed", "replay"], action="append")
    ap.add_argument("--sizes", default="100000,1000000,10000000",
                    help="comma-separated synthetic label counts for the speed section")
    ap.add_argument("--ck-max-labels", type=int, default=1_000_000,
                    help="run crowd-kit DawidSkene only up to this many labels")
    ap.add_argument("--glad-max-labels", type=int, default=9000,
                    help="run crowd-kit GLAD only on datasets up to this many labels "
                         "(it needs ~70 s per 13k labels; 0 skips it)")
    ap.add_argument("--ids", default="int,str",
                    help="int: integer-coded input (the database path); str: string ids as in "
                         "a CSV export, our time includes factorising them")
    ap.add_argument("--str-max-labels", type=int, default=1_000_000,
                    help="largest size for the string-id runs")
    ap.add_argument("--repeat", type=int, default=3,
                    help="best of N runs up to 1M labels (the machine is shared)")
    ap.add_argument("--no-crowdkit", action="store_true", help="skip every crowd-kit baseline")
    ap.add_argument("--timeout", type=float, default=300, help="per speed run, seconds")
    ap.add_argument("--seeds", type=int, default=3, help="simulated crowds per replay scene")
    args = ap.parse_args()
    sections = args.only or ["accuracy", "speed", "replay"]
    res: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    if "accuracy" in sections:
        res["accuracy"] = bench_accuracy(args)
    if "speed" in sections:
        res["speed"] = bench_speed(args)
    if "replay" in sections:
        res["replay"] = bench_replay(args)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "consensus.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\n(total {time.perf_counter() - t0:.0f} s; JSON in bench/out/consensus.json)")


if __name__ == "__main__":
    main()
