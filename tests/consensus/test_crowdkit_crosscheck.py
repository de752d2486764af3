"""Our Dawid-Skene vs crowd-kit's on every shared crowd dataset (skips without ../shared)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from consensus import aggregate, read_truth_csv, read_votes_csv, truth_array

DATASETS = ["snow2008_rte", "snow2008_temp", "snow2008_wsd", "welinder2010_bluebirds",
            "zhang2014_web", "zheng2017_d_jn-product", "zheng2017_s4_Dog_data"]

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _load(crowd_dir: Path, name: str):
    d = crowd_dir / name
    if not (d / "votes.csv").exists():
        pytest.skip(f"{name} not in {crowd_dir}")
    votes = read_votes_csv(d / "votes.csv", tile_xyz=False)
    truth = truth_array(read_truth_csv(d / "truth.csv"), votes)
    return votes, truth


def _acc(answer: np.ndarray, truth: np.ndarray) -> float:
    m = truth >= 0
    return float((answer[m] == truth[m]).mean())


def test_every_dataset_is_covered(crowd_dir):
    present = sorted(p.name for p in crowd_dir.iterdir() if (p / "votes.csv").exists())
    assert set(present) <= set(DATASETS), f"new datasets to add to DATASETS: {present}"


@pytest.mark.parametrize("name", DATASETS)
def test_dawid_skene_matches_crowdkit(crowd_dir, name):
    pd = pytest.importorskip("pandas")
    from crowdkit.aggregation import DawidSkene

    votes, truth = _load(crowd_dir, name)
    ours = aggregate(votes, "ds")
    df = pd.DataFrame({"task": votes.task_ids[votes.task], "worker": votes.worker_ids[votes.worker],
                       "label": np.asarray(votes.labels)[votes.label]})
    with warnings.catch_warnings():      # crowd-kit's own pandas deprecations, not ours
        warnings.simplefilter("ignore")
        ck = DawidSkene(n_iter=100).fit_predict(df)
    ck_ans = np.array([votes.classes.index(str(ck[t])) for t in votes.task_ids])
    a_ours, a_ck = _acc(ours.answer, truth), _acc(ck_ans, truth)
    assert a_ours >= a_ck - 0.005, f"{name}: ours {a_ours:.4f} vs crowd-kit {a_ck:.4f}"
    assert abs(a_ours - a_ck) <= 0.005 or a_ours > a_ck
    # and it beats (or ties) the majority vote, as Dawid-Skene should on these sets
    assert a_ours >= _acc(aggregate(votes, "mv").answer, truth) - 0.005


@pytest.mark.parametrize("name", DATASETS)
def test_every_method_beats_chance_and_is_valid(crowd_dir, name):
    votes, truth = _load(crowd_dir, name)
    for m in ("mv", "ds", "gold", "spatial"):
        r = aggregate(votes, m)
        assert np.allclose(r.posterior.sum(1), 1.0)
        assert _acc(r.answer, truth) > 1.0 / votes.n_classes + 0.1, m
