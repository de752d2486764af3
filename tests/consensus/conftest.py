"""Fixtures for the consensus tests: tiny hand-made vote tables."""

from __future__ import annotations

import numpy as np
import pytest

from consensus import Votes


@pytest.fixture
def adversary_votes() -> tuple[Votes, np.ndarray]:
    """20 tasks; three volunteers always right, one always wrong; task 't99' only has the
    always-wrong volunteer's answer."""
    truth = {f"t{i:02d}": ("yes" if i % 3 == 0 else "no") for i in range(20)}
    rows = []
    for t, lab in truth.items():
        for w in ("good1", "good2", "good3"):
            rows.append((t, w, lab))
        rows.append((t, "liar", "no" if lab == "yes" else "yes"))
    rows.append(("t99", "liar", "no"))
    truth["t99"] = "yes"
    v = Votes.from_arrays(*zip(*rows))
    t_idx = np.array([v.classes.index(truth[str(t)]) for t in v.task_ids])
    return v, t_idx


def grid_votes(pattern: list[str], *, z: int = 18, x0: int = 61000, y0: int = 101000,
               ambiguous: dict[tuple[int, int], list[str]] | None = None,
               n_workers: int = 3) -> Votes:
    """Votes on a square grid of tiles; ``pattern`` rows of 'y'/'n' give every worker's answer,
    ``ambiguous`` overrides a cell's answers."""
    rows = []
    for r, line in enumerate(pattern):
        for c, ch in enumerate(line):
            tid = f"{z}-{x0 + c}-{y0 + r}"
            answers = (ambiguous or {}).get((r, c)) or [("yes" if ch == "y" else "no")] * n_workers
            for w, a in enumerate(answers):
                rows.append((tid, f"w{w}", a))
    return Votes.from_arrays(*zip(*rows))


def uniform_crowd(seed: int = 0, n_tasks: int = 1500) -> tuple[Votes, np.ndarray]:
    """80 volunteers with accuracy uniform in 0.75-0.95 ("maybe" 5 %), 30 % "yes" tiles,
    8 answers per tile: the retirement tests' crowd."""
    from consensus.simulate import simulate_votes, volunteer_confusions

    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.75, 0.95, 80)
    conf = volunteer_confusions(acc, 2, n_labels=3, maybe_rate=0.05)
    truth = (rng.random(n_tasks) < 0.3).astype(np.int64)
    v = simulate_votes(truth, conf, 8, seed=seed + 1, classes=("no", "yes"),
                       labels=("no", "yes", "maybe"))
    return v, truth


def replay_csvs(tmp_path, *, seed: int, per_task: int, accuracy: float) -> tuple[str, str]:
    """``votes.csv`` (task,worker,label,time) and ``truth.csv`` for the replay CLI: 120 binary
    tasks (40 % "1"), ``per_task`` of 20 workers each, each right with ``accuracy``."""
    rng = np.random.default_rng(seed)
    lines, truth = ["task,worker,label,time"], ["task,label"]
    for t in range(120):
        lab = int(rng.random() < 0.4)
        truth.append(f"t{t},{lab}")
        for w in rng.choice(20, per_task, replace=False):
            ans = lab if rng.random() < accuracy else 1 - lab
            lines.append(f"t{t},w{w},{ans},{rng.random():.6f}")
    (tmp_path / "v.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "t.csv").write_text("\n".join(truth) + "\n")
    return str(tmp_path / "v.csv"), str(tmp_path / "t.csv")
