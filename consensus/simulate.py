"""Simulated volunteers, for the replay simulator, tests and benchmarks.

Volunteers are confusion matrices P(answer | true class); answers arrive at random times so
tiles' streams interleave as they would in a live project.
"""

from __future__ import annotations

import numpy as np

from .errors import ConsensusError
from .votes import Votes


def volunteer_confusions(accuracies: np.ndarray, n_classes: int, *, n_labels: int | None = None,
                         maybe_rate: float = 0.0, class_bias: np.ndarray | None = None
                         ) -> np.ndarray:
    """(W, K, L) confusions from per-volunteer accuracies: correct with P=accuracy, errors
    spread over the other classes (weighted by ``class_bias`` if given), and, when
    ``n_labels > n_classes``, a ``maybe_rate`` share of answers on the first response-only label
    (taken proportionally from correct and wrong answers)."""
    acc = np.clip(np.asarray(accuracies, dtype=np.float64), 0.0, 1.0)
    K = n_classes
    L = n_labels or K
    W = acc.shape[0]
    bias = np.ones(K) if class_bias is None else np.asarray(class_bias, dtype=np.float64)
    conf = np.zeros((W, K, L))
    for k in range(K):
        other = bias.copy()
        other[k] = 0.0
        other = other / other.sum() if other.sum() > 0 else other
        conf[:, k, :K] = (1 - acc)[:, None] * other[None, :]
        conf[:, k, k] = acc
    if L > K and maybe_rate > 0:
        conf[:, :, :K] *= 1 - maybe_rate
        conf[:, :, K] = maybe_rate
    elif K == 1:
        conf[:, 0, 0] = 1.0
    return conf


def simulate_votes(truth: np.ndarray, confusions: np.ndarray, votes_per_task: int, *,
                   seed: int = 0, classes: tuple[str, ...] | None = None,
                   labels: tuple[str, ...] | None = None, tile_xyz: np.ndarray | None = None,
                   activity: np.ndarray | None = None) -> Votes:
    """Draw ``votes_per_task`` answers per task from distinct random volunteers.

    ``truth`` holds each task's true class index; ``confusions`` is (W, K, L). ``activity``
    (W,) weights how often each volunteer shows up (default uniform). Every answer gets a
    uniform random time in [0, 1), so replaying by time interleaves the tiles.
    """
    rng = np.random.default_rng(seed)
    truth = np.asarray(truth, dtype=np.int64)
    W, K, L = confusions.shape
    T = truth.shape[0]
    if votes_per_task > W:
        raise ConsensusError(f"{votes_per_task} votes per task need at least that many "
                             f"volunteers, got {W}")
    p = None if activity is None else np.asarray(activity, float) / np.sum(activity)
    # distinct volunteers per task: Gumbel top-k over log(activity)
    logits = np.log(p) if p is not None else np.zeros(W)
    workers = np.empty((T, votes_per_task), dtype=np.int64)
    chunk = max(1, 2_000_000 // max(W, 1))
    for s in range(0, T, chunk):
        g = logits[None, :] + rng.gumbel(size=(min(chunk, T - s), W))
        workers[s:s + chunk] = np.argpartition(-g, votes_per_task - 1, axis=1)[:, :votes_per_task]
    task = np.repeat(np.arange(T), votes_per_task)
    worker = workers.reshape(-1)
    cdf = np.cumsum(confusions[worker, truth[task], :], axis=1)
    u = rng.random(task.shape[0])[:, None]
    label = np.minimum((u > cdf).sum(1), L - 1)
    time = rng.random(task.shape[0])
    cls = classes or tuple(str(k) for k in range(K))
    return Votes.from_indices(task, worker, label, n_tasks=T, n_workers=W, classes=cls,
                              labels=labels or cls + tuple(f"r{j}" for j in range(L - K)),
                              tile_xyz=tile_xyz, time=time)
