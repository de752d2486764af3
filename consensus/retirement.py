"""Retirement: when has a tile been seen enough? Plus a replay simulator to tune the policy.

The scheduler calls :meth:`RetirementPolicy.decide` after each new answer on a tile, with that
tile's posterior. The posterior is cheap to update incrementally with frozen volunteer skills
(:class:`~consensus.aggregate.SkillModel`): one row lookup per answer, see
:func:`tile_posterior`. Skills are re-estimated from time to time with a full
:func:`~consensus.aggregate.aggregate` run, after which :func:`recheck` re-decides every
tile (reopen / retire).

:func:`replay` plays time-stamped answers in order under a policy and reports votes used and
accuracy next to a fixed-redundancy baseline (default: the first 5 answers per tile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol

import numpy as np

from .aggregate import SkillModel, TileResult, aggregate
from .errors import ConsensusError, VotesError
from .votes import Votes, truth_array

Decision = Literal["continue", "retire", "unresolved"]


class Policy(Protocol):
    def decide(self, posterior: np.ndarray, n_votes: int) -> Decision: ...


@dataclass(frozen=True)
class RetirementPolicy:
    """Retire a tile once its leading answer's posterior reaches the threshold with at least
    ``min_votes`` answers; at ``max_votes`` without that, mark it ``unresolved`` (it goes to the
    researchers' review list).

    The threshold is ``threshold`` at ``min_votes`` answers. With ``final_threshold`` (default:
    the same, a constant threshold) it relaxes linearly to ``final_threshold`` at ``max_votes``:
    near the cap one more answer can change the outcome less, so a tile that has been contested
    for a while retires at a lower posterior instead of spending every remaining answer (a
    finite-horizon stopping rule). ``decide`` is O(classes) and deterministic.

    The defaults are the labeler service's adaptive policy (``labeler.retire``), chosen on
    separate tuning crowds by ``python -m bench._replay --tune`` (docs/consensus.md).
    """

    threshold: float = 0.94
    min_votes: int = 2
    max_votes: int = 8
    final_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConsensusError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.final_threshold is not None and not (
                0.0 < self.final_threshold <= self.threshold):
            raise ConsensusError("final_threshold must be in (0, threshold], got "
                                 f"{self.final_threshold} with threshold {self.threshold}")
        if self.min_votes < 1 or self.max_votes < self.min_votes:
            raise ConsensusError("need 1 <= min_votes <= max_votes, got "
                                 f"{self.min_votes}, {self.max_votes}")

    def threshold_at(self, n_votes: int) -> float:
        """The posterior a tile with ``n_votes`` answers needs to retire."""
        if self.final_threshold is None or self.max_votes == self.min_votes:
            return self.threshold
        f = min(max(n_votes - self.min_votes, 0) / (self.max_votes - self.min_votes), 1.0)
        return self.threshold + (self.final_threshold - self.threshold) * f

    def decide(self, posterior: np.ndarray, n_votes: int) -> Decision:
        if n_votes >= self.min_votes and float(np.max(posterior)) >= self.threshold_at(n_votes):
            return "retire"
        if n_votes >= self.max_votes:
            return "unresolved"
        return "continue"

    def as_dict(self) -> dict:
        d = {"policy": "posterior", "threshold": self.threshold,
             "min_votes": self.min_votes, "max_votes": self.max_votes}
        if self.final_threshold is not None:
            d["final_threshold"] = self.final_threshold
        return d


@dataclass(frozen=True)
class FixedPolicy:
    """Fixed redundancy: retire after exactly ``n_votes`` answers, whatever they say."""

    n_votes: int = 5

    def decide(self, posterior: np.ndarray, n_votes: int) -> Decision:
        return "retire" if n_votes >= self.n_votes else "continue"

    def as_dict(self) -> dict:
        return {"policy": "fixed", "n_votes": self.n_votes}


def tile_posterior(skills: SkillModel, workers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One tile's posterior over classes given its answers, with frozen skills (unknown
    volunteers, index -1, count with the population skill)."""
    return skills.posterior(workers, labels)


@dataclass(eq=False)
class ReplayReport:
    """What :func:`replay` measured. ``status`` per task: 0 open (ran out of answers),
    1 retired, 2 unresolved; ``used`` per task: answers consumed."""

    policy: dict
    baseline: dict
    method: str
    votes_used: int
    votes_baseline: int
    accuracy: float
    accuracy_baseline: float
    n_tasks_scored: int
    status: np.ndarray
    used: np.ndarray
    result: TileResult
    result_baseline: TileResult
    n_refits: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def savings(self) -> float:
        """Share of the baseline's answers the policy did not need."""
        return 1.0 - self.votes_used / self.votes_baseline if self.votes_baseline else 0.0

    @property
    def n_retired(self) -> int:
        return int((self.status == 1).sum())

    @property
    def n_unresolved(self) -> int:
        return int((self.status == 2).sum())

    @property
    def n_open(self) -> int:
        return int((self.status == 0).sum())

    def summary(self) -> dict:
        return {"method": self.method, "policy": self.policy, "baseline": self.baseline,
                "votes_used": self.votes_used, "votes_baseline": self.votes_baseline,
                "savings": round(self.savings, 4), "accuracy": round(self.accuracy, 4),
                "accuracy_baseline": round(self.accuracy_baseline, 4),
                "retired": self.n_retired, "unresolved": self.n_unresolved,
                "open": self.n_open, "tasks_scored": self.n_tasks_scored,
                "refits": self.n_refits, "reopened": int(self.extra.get("reopened", 0)),
                "retired_on_refit": int(self.extra.get("rechecked", 0))}


def _order(votes: Votes) -> np.ndarray:
    if votes.time is None:
        return np.arange(votes.n_votes)
    return np.argsort(votes.time, kind="stable")


def first_n_per_task(votes: Votes, n: int) -> np.ndarray:
    """Boolean mask of each task's first ``n`` answers in time order (fixed redundancy)."""
    order = _order(votes)
    t = votes.task[order]
    o2 = np.argsort(t, kind="stable")
    ts = t[o2]
    starts = np.r_[0, np.flatnonzero(np.diff(ts)) + 1]
    rank = np.arange(len(ts)) - np.repeat(starts, np.diff(np.r_[starts, len(ts)]))
    mask = np.zeros(votes.n_votes, dtype=bool)
    mask[order[o2[rank < n]]] = True
    return mask


_CODES = {"continue": 0, "retire": 1, "unresolved": 2}


def _softmax_rows(joint: np.ndarray) -> np.ndarray:
    z = np.exp(joint - joint.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def recheck(policy: Policy, status: np.ndarray, posterior: np.ndarray, n_used: np.ndarray, *,
            reopen: bool = True, retire: bool = True) -> tuple[int, int]:
    """Re-decide tiles after a skill refit, in place on ``status`` (0 open, 1 retired,
    2 unresolved; ``posterior`` (n_tiles, n_classes) under the new skills, ``n_used`` answers per
    tile). This is what the scheduler does after each refit, and what :func:`replay` does:

    * ``reopen``: a retired tile the new skills no longer support goes back into the queue
      (or, at ``max_votes``, to the review list);
    * ``retire``: an open tile with answers that the new skills now support retires without
      waiting for (and spending) its next answer.

    Unresolved tiles stay on the review list. Returns (reopened, retired)."""
    status = np.asarray(status)
    n_back = n_ret = 0
    for cur, on in ((1, reopen), (0, retire)):
        if not on:
            continue
        idx = np.flatnonzero((status == cur) & (n_used > 0))
        if idx.size == 0:
            continue
        new = np.array([_CODES[policy.decide(p, int(n))]
                        for p, n in zip(posterior[idx], n_used[idx].tolist())], dtype=np.int8)
        if cur == 1:
            n_back += int((new == 0).sum())
            status[idx[new != 1]] = new[new != 1]
        else:
            n_ret += int((new == 1).sum())
            status[idx[new != 0]] = new[new != 0]
    return n_back, n_ret


#: Support of the error-rate prior: fine near 0 (near-perfect volunteers), up to 0.998 so that
#: a volunteer who is always wrong stays evidence for the other answer.
_ERR_GRID = np.r_[0.002, 0.005, np.linspace(0.01, 0.99, 99), 0.995, 0.998]


def npmle_skill_model(votes: Votes, fit: TileResult, shrink: float = 2.0) -> SkillModel:
    """Decision skills with a nonparametric empirical-Bayes prior on each volunteer's error
    rate (the default of :func:`replay` and of the labeler service).

    :meth:`SkillModel.from_result` shrinks every confusion row towards the population mean
    with one Dirichlet concentration. With a heavy-tailed crowd (many near-perfect volunteers
    with few answers next to some poor ones) that pulls the near-perfect ones' error rates up
    several-fold, so posteriors are under-confident and tiles take answers they do not need.
    Here the prior of the error rate is instead a discrete distribution on a grid
    (:data:`_ERR_GRID`, 0.2 % to 99.8 %) fitted by maximum marginal likelihood to every
    volunteer's expected errors on corroborated tiles (EM; Koenker and Mizera's NPMLE), and each
    volunteer's error rate is its posterior mean under that prior: a volunteer with 60 answers
    and no error stays near-perfect, a newcomer gets the crowd's mean. The class asymmetry
    (row k's error relative to the mean) and the response-only answers ("maybe") are the
    population's / the fit's.
    """
    base = SkillModel.from_result(fit, shrink)
    K = votes.n_classes
    if K < 2:
        return base
    n_t = np.bincount(votes.task, minlength=votes.n_tasks)
    g = n_t[votes.task] >= 2
    post = fit.posterior[votes.task[g]]                       # (n, K)
    w, lab = votes.worker[g], votes.label[g]
    W = votes.n_workers
    named = lab < K
    correct = np.zeros(W)
    total = np.zeros(W)
    np.add.at(correct, w[named], post[named, lab[named]])
    np.add.at(total, w[named], 1.0)
    err = total - correct
    grid = _ERR_GRID
    # binomial log-likelihood of each volunteer's (expected) errors under each grid rate
    ll = err[:, None] * np.log(grid)[None, :] + correct[:, None] * np.log1p(-grid)[None, :]
    ll -= ll.max(1, keepdims=True)
    lik = np.exp(ll)
    pi = np.full(len(grid), 1.0 / len(grid))
    for _ in range(200):
        r = lik * pi[None, :]
        r /= r.sum(1, keepdims=True)
        pi_new = r.mean(0)
        if np.abs(pi_new - pi).max() < 1e-7:
            pi = pi_new
            break
        pi = pi_new
    r = lik * pi[None, :]
    r /= r.sum(1, keepdims=True)
    e_w = r @ grid                                            # posterior mean error rate
    conf = np.exp(base.log_confusion).copy()                  # (W, K, L)
    # class asymmetry from the population: row k's error relative to the mean error
    pop = np.exp(base.log_population)
    pop_err = 1.0 - pop[np.arange(K), np.arange(K)] / np.maximum(pop[:, :K].sum(1), 1e-12)
    mean_err = float((pop_err * fit.class_prior).sum())
    ratio = pop_err / max(mean_err, 1e-12)
    for k in range(K):
        named_mass = conf[:, k, :K].sum(1)
        e = np.clip(e_w * ratio[k], 1e-4, 0.999)
        other = conf[:, k, :K].copy()
        other[:, k] = 0.0
        osum = other.sum(1, keepdims=True)
        other = np.where(osum > 0, other / np.maximum(osum, 1e-12), 1.0 / max(K - 1, 1))
        other[:, k] = 0.0
        conf[:, k, :K] = named_mass[:, None] * e[:, None] * other
        conf[:, k, k] = named_mass * (1.0 - e)
    conf = np.clip(conf, 1e-6, 1.0)
    conf /= conf.sum(-1, keepdims=True)
    return SkillModel(np.log(conf), base.log_population, base.log_prior, base.worker_ids,
                      base.labels)


def replay(votes: Votes, policy: Policy, truth: Mapping | np.ndarray, *, method: str = "ds",
           baseline: Policy | None = None, skills: SkillModel | None = None,
           refit_every: int | None = 500, shrink: float = 2.0,
           initial_accuracy: float = 0.75, reopen: bool = True, recheck_open: bool = True,
           skill_method: str | None = None, skill_params: dict | None = None,
           skill_prior: str = "npmle",
           **method_params) -> ReplayReport:
    """Replay answers in time order (``votes.time``, else row order) under ``policy``.

    Each tile takes answers until the policy retires it or marks it unresolved; later answers
    for it are dropped (never shown, in a live system). The posterior behind each decision uses
    frozen skills: ``skills`` if given, else a symmetric ``initial_accuracy`` model that is
    re-estimated with ``method`` on the answers accepted so far every ``refit_every`` accepted
    answers (``skill_method``/``skill_params`` estimate them with another method or parameters
    than ``method``; ``skill_prior="npmle"`` puts an empirical-Bayes prior on each volunteer's
    error rate, :func:`npmle_skill_model`, ``"dirichlet"`` uses
    :meth:`SkillModel.from_result`).
    After each refit every tile is re-decided with the new skills
    (:func:`recheck`), as the live scheduler does: with ``reopen``, retired tiles the new skills
    no longer support are reopened (answers that arrived meanwhile are lost); with
    ``recheck_open``, open tiles the new skills now support retire at once instead of taking
    their next answer.

    The accepted answers and the baseline's (first ``n`` answers per tile for a
    :class:`FixedPolicy`, default 5) are both aggregated with ``method`` and scored on ``truth``
    (``{task_id: class}`` or a per-task class index, -1 unknown).
    """
    if votes.n_votes == 0:
        raise VotesError("no votes to replay")
    if skill_prior not in ("npmle", "dirichlet"):
        raise ConsensusError(f"skill_prior must be 'npmle' or 'dirichlet', got {skill_prior!r}")
    baseline = baseline or FixedPolicy(5)
    truth_idx = (np.asarray(truth, dtype=np.int64) if isinstance(truth, np.ndarray)
                 else truth_array(truth, votes))
    if truth_idx.shape != (votes.n_tasks,):
        raise VotesError("truth must give one class index per task")
    T, K = votes.n_tasks, votes.n_classes
    model = skills or SkillModel.symmetric(K, initial_accuracy, votes.n_labels,
                                           n_workers=votes.n_workers)
    fixed_skills = skills is not None
    order = _order(votes)
    acc_ll = np.zeros((T, K))
    n_used = np.zeros(T, dtype=np.int64)
    status = np.zeros(T, dtype=np.int8)
    accepted = np.zeros(votes.n_votes, dtype=bool)
    task, worker, label = votes.task, votes.worker, votes.label
    log_conf = model.log_confusion
    task_prior = np.broadcast_to(model.log_prior, (T, K))
    n_refits = 0
    n_reopened = 0
    n_rechecked = 0
    since = 0
    # refit early and often at first (250, 500, 1000, ...), then every `refit_every` answers
    next_gap = min(250, refit_every) if refit_every else 0
    for i in order.tolist():
        t = task[i]
        if status[t]:
            continue
        accepted[i] = True
        n_used[t] += 1
        acc_ll[t] += log_conf[worker[i], :, label[i]]
        z = task_prior[t] + acc_ll[t]
        z = np.exp(z - z.max())
        decision = policy.decide(z / z.sum(), int(n_used[t]))
        if decision == "retire":
            status[t] = 1
        elif decision == "unresolved":
            status[t] = 2
        since += 1
        if not fixed_skills and refit_every and since >= next_gap:
            since = 0
            next_gap = min(2 * next_gap, refit_every)
            n_refits += 1
            sub = votes.subset(accepted)
            fit = (aggregate(sub, method, **method_params) if skill_method is None
                   else aggregate(sub, skill_method, **(skill_params or {})))
            model = (npmle_skill_model(sub, fit, shrink) if skill_prior == "npmle"
                     else SkillModel.from_result(fit, shrink))
            log_conf = model.log_confusion
            # the spatial model gives each tile its own prior from its neighbours' answers
            task_prior = fit.extra.get("task_log_prior",
                                       np.broadcast_to(model.log_prior, (T, K)))
            # recompute the open tiles' evidence with the new skills (vectorised)
            acc_ll = np.zeros((T, K))
            np.add.at(acc_ll, sub.task, log_conf[sub.worker, :, sub.label])
            # re-decide every tile with the new skills, as the live scheduler does: reopen
            # tiles retired under stale skills, retire open tiles the new skills support
            back, ret = recheck(policy, status, _softmax_rows(acc_ll + task_prior), n_used,
                                reopen=reopen, retire=recheck_open)
            n_reopened += back
            n_rechecked += ret
    used_votes = votes.subset(accepted)
    res = aggregate(used_votes, method, **method_params)
    if isinstance(baseline, FixedPolicy):
        base_mask = first_n_per_task(votes, baseline.n_votes)
        base_votes = votes.subset(base_mask)
        base_res = aggregate(base_votes, method, **method_params)
        base_n = int(base_mask.sum())
    else:
        sub = replay(votes, baseline, truth_idx, method=method, skills=skills,
                     refit_every=refit_every, shrink=shrink, initial_accuracy=initial_accuracy,
                     **method_params)
        base_res, base_n = sub.result, sub.votes_used
    scored = truth_idx >= 0
    # tasks that received at least one answer in both runs
    seen = scored & (n_used > 0)
    acc = float((res.answer[seen] == truth_idx[seen]).mean()) if seen.any() else float("nan")
    acc_b = (float((base_res.answer[seen] == truth_idx[seen]).mean()) if seen.any()
             else float("nan"))
    return ReplayReport(policy=getattr(policy, "as_dict", lambda: {"policy": repr(policy)})(),
                        baseline=getattr(baseline, "as_dict", lambda: {})(), method=method,
                        votes_used=int(accepted.sum()), votes_baseline=base_n, accuracy=acc,
                        accuracy_baseline=acc_b, n_tasks_scored=int(seen.sum()), status=status,
                        used=n_used, result=res, result_baseline=base_res, n_refits=n_refits,
                        extra={"reopened": n_reopened, "rechecked": n_rechecked})
