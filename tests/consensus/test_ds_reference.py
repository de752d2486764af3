"""The vectorised EM (gather + bincount over flat indices, K - 1 bincounts per step) against a
plain loop-over-answers implementation of the same model, written from the docstring of
``consensus.aggregate._em``: majority-vote start, population confusion with 10 pseudo-answers
of mean ``prior_accuracy``, Dirichlet(strength * pop) per confusion row (``ds``: row k gets
strength * K * class prior[k]), only tasks with >= 2 answers (or gold) grade volunteers,
Dirichlet(1, ..., 1) class prior over answered tasks."""

from __future__ import annotations

import numpy as np
import pytest

from consensus import Votes, aggregate


def _reference(task, worker, label, T, W, K, L, *, strength=0.3, prior_accuracy=0.8,
               gold=None, data_like=False, max_iter=100, tol=1e-5):
    counts = np.zeros((T, L))
    for t, lab in zip(task, label):
        counts[t, lab] += 1
    n = counts.sum(1)
    c = counts[:, :K]
    glob = c.sum(0) / c.sum() if c.sum() > 0 else np.full(K, 1.0 / K)
    post = np.array([c[t] / c[t].sum() if c[t].sum() > 0 else glob for t in range(T)])
    gold = gold or {}
    for t, k in gold.items():
        post[t] = np.eye(K)[k]
    graded = (n >= 2) | np.isin(np.arange(T), list(gold))
    pop_mean = np.full((K, L), (1 - prior_accuracy) / (L - 1))
    pop_mean[np.arange(K), np.arange(K)] = prior_accuracy
    voted = n > 0
    ll_prev, ll, it = -np.inf, np.nan, 0
    for it in range(1, max_iter + 1):
        C = np.zeros((W, K, L))
        for t, w, lab in zip(task, worker, label):
            if graded[t]:
                C[w, :, lab] += post[t]
        prior = (post[voted].sum(0) + 1) / (voted.sum() + K)
        pop = C.sum(0) + 10 * pop_mean
        pop /= pop.sum(1, keepdims=True)
        # ds: strength * K imaginary answers per volunteer spread over the rows by the class
        # mix (row k: strength * K * prior[k]); gold: strength per row
        row = strength * K * prior if data_like else np.full(K, strength)
        conf = C + row[None, :, None] * pop[None]
        conf /= conf.sum(2, keepdims=True)
        J = np.tile(np.log(prior), (T, 1))
        for t, w, lab in zip(task, worker, label):
            J[t] += np.log(conf[w, :, lab])
        m = J.max(1, keepdims=True)
        P = np.exp(J - m)
        Z = P.sum(1, keepdims=True)
        post = P / Z
        for t, k in gold.items():
            post[t] = np.eye(K)[k]
        ll = float((np.log(Z) + m).sum())
        if abs(ll - ll_prev) <= tol * max(1.0, abs(ll)):
            break
        ll_prev = ll
    return post, conf, prior, it, ll


@pytest.mark.parametrize("seed,K,L", [(0, 2, 2), (1, 2, 3), (2, 3, 3), (3, 3, 4), (4, 4, 5)])
def test_vectorised_em_matches_a_loop_over_answers(seed, K, L):
    rng = np.random.default_rng(seed)
    T, W, N = 40, 7, 150
    task = rng.integers(0, T - 2, N)          # the last two tasks get no answers
    worker = rng.integers(0, W, N)
    truth = rng.integers(0, K, T)
    label = np.where(rng.random(N) < 0.75, truth[task], rng.integers(0, L, N))
    task[:3] = 5                              # a duplicated answer: counted twice
    worker[:3] = 2
    label[:3] = 1
    v = Votes.from_indices(task, worker, label, n_tasks=T, n_workers=W,
                           classes=K, labels=[str(i) for i in range(L)])
    post, conf, prior, it, ll = _reference(task, worker, label, T, W, K, L, data_like=True)
    r = aggregate(v, "ds")
    assert r.n_iter == it
    assert np.allclose(r.posterior, post, atol=1e-10, rtol=0)
    assert np.allclose(r.confusion, conf, atol=1e-10, rtol=0)
    assert np.allclose(r.class_prior, prior, atol=1e-12, rtol=0)
    assert r.log_likelihood == pytest.approx(ll, rel=1e-12)
    assert r.n_votes.tolist() == np.bincount(task, minlength=T).tolist()
    assert r.worker_n_labels.tolist() == np.bincount(worker, minlength=W).tolist()


def test_gold_clamped_em_matches_a_loop_over_answers():
    rng = np.random.default_rng(7)
    T, W, N, K = 30, 5, 90, 2
    task = rng.integers(0, T, N)
    worker = rng.integers(0, W, N)
    label = rng.integers(0, K, N)
    v = Votes.from_indices(task, worker, label, n_tasks=T, n_workers=W, classes=K)
    gold = {int(task[0]): 1, int(task[1]): 0} if task[0] != task[1] else {int(task[0]): 1}
    v = v.with_gold({v.task_ids[t]: str(k) for t, k in gold.items()})
    post, conf, _, it, ll = _reference(task, worker, label, T, W, K, K, strength=1.5,
                                       gold=gold)
    r = aggregate(v, "gold", strength=1.5)
    assert r.n_iter == it
    assert np.allclose(r.posterior, post, atol=1e-10, rtol=0)
    assert np.allclose(r.confusion, conf, atol=1e-10, rtol=0)
    assert r.log_likelihood == pytest.approx(ll, rel=1e-12)


def test_exact_ties_go_to_the_more_common_class_then_the_lower_index():
    # two tasks split 1-1 between two equally reliable volunteers, one unanimous "b" task
    v = Votes.from_arrays(["t1", "t1", "t2", "t2", "t3", "t3"], ["x", "y", "x", "y", "x", "y"],
                          ["a", "b", "b", "a", "b", "b"], classes=["a", "b"])
    r = aggregate(v, "mv")
    assert r.answer_labels().tolist() == ["b", "b", "b"]    # "b" is the overall majority
    v2 = Votes.from_arrays(["t1", "t1"], ["x", "y"], ["a", "b"], classes=["a", "b"])
    assert aggregate(v2, "mv").answer_labels().tolist() == ["a"]   # equal shares: lower index


def test_ds_prior_is_spread_over_the_rows_by_the_class_mix():
    # 1 "yes" task in 10: the rare row gets few pseudo-answers, as it gets few real ones
    rng = np.random.default_rng(11)
    T, W = 200, 8
    truth = (np.arange(T) % 10 == 0).astype(int)
    task = np.repeat(np.arange(T), 3)
    worker = rng.integers(0, W, task.size)
    label = np.where(rng.random(task.size) < 0.9, truth[task], 1 - truth[task])
    r = aggregate(Votes.from_indices(task, worker, label, classes=2), "ds", strength=0.5)
    assert r.extra["strength"] == [0.5, 0.5]
    assert np.allclose(r.extra["row_pseudo_answers"], 0.5 * 2 * r.class_prior)
    assert r.extra["row_pseudo_answers"][1] < 0.15
    g = aggregate(Votes.from_indices(task, worker, label, classes=2), "gold", strength=0.5)
    assert g.extra["row_pseudo_answers"] == [0.5, 0.5]       # gold shrinks every row alike
