"""Re-deciding tiles after a skill refit (consensus.retirement.recheck) and in the replay."""

from __future__ import annotations

import numpy as np

from consensus import RetirementPolicy, replay
from consensus.retirement import recheck
from consensus.simulate import simulate_votes, volunteer_confusions

from .conftest import uniform_crowd


def test_recheck_hand_computed():
    pol = RetirementPolicy(threshold=0.9, min_votes=2, max_votes=4)
    post = np.array([[0.95, 0.05],    # retired, still supported          -> stays retired
                     [0.70, 0.30],    # retired, no longer supported      -> reopened
                     [0.70, 0.30],    # retired at max_votes, unsupported -> review list
                     [0.02, 0.98],    # open with 2 answers, supported    -> retired now
                     [0.02, 0.98],    # open with 1 answer (< min_votes)  -> stays open
                     [0.50, 0.50],    # open, no answers                  -> untouched
                     [0.99, 0.01]])   # unresolved                        -> stays unresolved
    status = np.array([1, 1, 1, 0, 0, 0, 2], dtype=np.int8)
    n_used = np.array([2, 3, 4, 2, 1, 0, 4])
    back, ret = recheck(pol, status, post, n_used)
    assert (back, ret) == (1, 1)
    assert status.tolist() == [1, 0, 2, 1, 0, 0, 2]
    # each half can be switched off
    s2 = np.array([1, 1, 1, 0, 0, 0, 2], dtype=np.int8)
    assert recheck(pol, s2, post, n_used, reopen=False) == (0, 1)
    assert s2.tolist() == [1, 1, 1, 1, 0, 0, 2]
    s3 = np.array([1, 1, 1, 0, 0, 0, 2], dtype=np.int8)
    assert recheck(pol, s3, post, n_used, retire=False) == (1, 0)
    assert s3.tolist() == [1, 0, 2, 0, 0, 0, 2]


def _crowd(seed: int = 0, n_tasks: int = 1200):
    return uniform_crowd(seed, n_tasks)


def test_replay_retires_open_tiles_at_refits():
    # open tiles the refitted skills support retire at the refit instead of taking (and
    # spending) their next answer, as the live scheduler does after a refit
    v, truth = _crowd(3)
    pol = RetirementPolicy(0.95, 2, 7)
    on = replay(v, pol, truth, method="gold", refit_every=250)
    off = replay(v, pol, truth, method="gold", refit_every=250, recheck_open=False)
    assert on.extra["rechecked"] > 0 and off.extra["rechecked"] == 0
    assert on.votes_used < off.votes_used
    assert on.n_retired + on.n_unresolved + on.n_open == v.n_tasks
    assert on.summary()["retired_on_refit"] == on.extra["rechecked"]


def test_replay_both_arms_scored_on_the_same_tiles():
    # tiles with truth but no answer at all are scored in neither arm
    v, truth = _crowd(4, 300)
    v0 = v.subset(v.task != 0)
    rep = replay(v0, RetirementPolicy(), truth, method="gold", refit_every=100)
    assert rep.used[0] == 0 and rep.n_tasks_scored == v0.n_tasks - 1


def _skewed_crowd(seed: int = 5, n_tasks: int = 1500):
    # a heavy-tailed crowd: many occasional near-perfect volunteers (1 % errors) next to a
    # few busier mediocre ones
    rng = np.random.default_rng(seed)
    acc = np.r_[np.full(60, 0.99), rng.uniform(0.7, 0.85, 20)]
    activity = np.r_[np.ones(60), np.full(20, 3.0)]
    conf = volunteer_confusions(acc, 2, n_labels=3, maybe_rate=0.05)
    truth = (rng.random(n_tasks) < 0.3).astype(np.int64)
    v = simulate_votes(truth, conf, 8, seed=seed + 1, classes=("no", "yes"),
                       labels=("no", "yes", "maybe"), activity=activity)
    return v, truth


def _error_rates(sk) -> np.ndarray:
    c = np.exp(sk.log_confusion)[:, 0, :2]          # true "no": P(no), P(yes)
    return c[:, 1] / c.sum(1)


def test_npmle_skills_keep_near_perfect_volunteers_near_perfect():
    from consensus import aggregate
    from consensus.retirement import npmle_skill_model
    v, truth = _skewed_crowd()
    fit = aggregate(v, "gold")
    dir_, eb = fit.skill_model(2.0), npmle_skill_model(v, fit, 2.0)
    assert np.allclose(np.exp(eb.log_confusion).sum(-1), 1.0)
    e_dir, e_eb = _error_rates(dir_), _error_rates(eb)
    # true error 1 %: one Dirichlet concentration for the whole crowd about doubles it, the
    # empirical-Bayes prior fitted to the crowd's error rates keeps it
    assert np.median(e_eb[:60]) < 0.7 * np.median(e_dir[:60])
    assert np.median(e_eb[:60]) < 0.015
    # the mediocre volunteers (true mean error 22 %) are not made better than they are
    assert e_eb[60:].mean() > 0.15


def test_npmle_skills_keep_an_always_wrong_volunteer_as_evidence():
    from consensus import Votes, aggregate
    from consensus.retirement import npmle_skill_model
    t, w, lab = [], [], []
    for i in range(40):
        truth = "yes" if i % 3 else "no"
        for who in ("good1", "good2"):
            t.append(str(i)), w.append(who), lab.append(truth)
        t.append(str(i)), w.append("liar"), lab.append("no" if truth == "yes" else "yes")
    v = Votes.from_arrays(t, w, lab, classes=["yes", "no"], tile_xyz=False)
    eb = npmle_skill_model(v, aggregate(v, "gold"), 2.0)
    liar = list(v.worker_ids).index("liar")
    assert eb.posterior(np.array([liar]), np.array([1]))[0] > 0.9    # "no" -> "yes"


def test_replay_npmle_skills_save_answers_on_a_skewed_crowd():
    v, truth = _skewed_crowd()
    pol = RetirementPolicy()
    eb = replay(v, pol, truth, method="gold", refit_every=250)
    dir_ = replay(v, pol, truth, method="gold", refit_every=250, skill_prior="dirichlet")
    assert eb.votes_used < 0.98 * dir_.votes_used
    assert eb.accuracy >= eb.accuracy_baseline - 0.005


def test_replay_rejects_an_unknown_skill_prior():
    import pytest

    from consensus import ConsensusError
    v, truth = _crowd(1, 100)
    with pytest.raises(ConsensusError, match="skill_prior"):
        replay(v, RetirementPolicy(), truth, skill_prior="beta")
