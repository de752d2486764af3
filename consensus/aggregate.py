"""Votes -> per-tile answers with posteriors, and per-volunteer skills.

Methods live in a name -> :class:`Method` registry (:data:`METHODS`) with declared default
parameters, like Zooniverse's panoptes_aggregation reducers:

* ``mv``       majority vote (MapSwipe-style shares; ties broken by the overall class share)
* ``ds``       Dawid-Skene: one full confusion matrix per volunteer, EM
* ``onecoin``  one-coin Dawid-Skene: one accuracy per volunteer
* ``gold``     Dawid-Skene with gold tiles clamped and volunteer confusions shrunk towards a
               population confusion (Dirichlet prior) seeded from gold answers
* ``spatial``  ``gold`` plus a spatial class prior from the 8 neighbouring tiles' evidence,
               with a mixing weight learned by maximum (pseudo-)likelihood (docs/spatial-model.md)

All EM methods work on flat per-answer indices (task, and the volunteer-answer cell
``worker * L + label``): each iteration is a gather plus :func:`numpy.bincount` per class in
each step (K - 1 of them: class 0 / the last class follow from per-cell totals), no Python loop
over votes, no sorting and no sparse matrix to build. Posteriors are kept as (K, T) so every
per-class operation is on a contiguous row. Work is in log space; initialisation is the
majority vote, so results are deterministic, and independent of row order up to floating-point
rounding of the sums (~1e-15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from .errors import MethodError, VotesError
from .votes import Votes

Progress = Callable[[int, int], None]

_TINY = 1e-300

#: Pseudo-answers per row of the population confusion's diagonal-dominant Dirichlet prior.
#: Negligible next to a real project's pooled answers; decisive when there are a handful.
_POP_STRENGTH = 10.0


@dataclass(eq=False)
class TileResult:
    """Outcome of :func:`aggregate`.

    Per task (aligned with ``task_ids``): ``answer`` (class index), ``posterior``
    (n_tasks x n_classes, rows sum to 1), ``n_votes`` (all answers incl. response-only),
    ``agreement`` (MapSwipe: (sum n_i^2 - n) / (n (n - 1)), NaN below 2 votes), ``counts``
    (n_tasks x n_labels answer counts).
    Per worker (aligned with ``worker_ids``): ``confusion`` (n_workers x n_classes x n_labels,
    P(answer | true class)), ``accuracy`` (P(correct | the volunteer named a class), weighted by
    the class prior) and ``n_labels``.
    """

    method: str
    params: dict[str, Any]
    classes: tuple[str, ...]
    labels: tuple[str, ...]
    task_ids: np.ndarray
    worker_ids: np.ndarray
    answer: np.ndarray
    posterior: np.ndarray
    n_votes: np.ndarray
    agreement: np.ndarray
    counts: np.ndarray
    confusion: np.ndarray
    accuracy: np.ndarray
    worker_n_labels: np.ndarray
    class_prior: np.ndarray
    tile_xyz: np.ndarray | None = None
    n_iter: int = 0
    converged: bool = True
    log_likelihood: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> np.ndarray:
        """Posterior probability of the chosen answer."""
        return self.posterior[np.arange(len(self.answer)), self.answer]

    def answer_labels(self) -> np.ndarray:
        """Answers as class names."""
        return np.asarray(self.classes, dtype=object)[self.answer]

    def shares(self) -> np.ndarray:
        """MapSwipe ``<answer>_share``: counts / total votes (0 where a task has no votes)."""
        tot = np.maximum(self.n_votes, 1)[:, None]
        return self.counts / tot

    def skill_model(self, shrink: float = 2.0) -> "SkillModel":
        """Frozen volunteer skills for the retirement policy's one-tile posterior."""
        return SkillModel.from_result(self, shrink)

    def to_rows(self) -> list[dict[str, Any]]:
        """``task, label, confidence, p_<class>..., n_votes, agreement`` dict rows."""
        rows = []
        post = self.posterior
        conf = self.confidence
        names = self.answer_labels()
        for i, tid in enumerate(self.task_ids.tolist()):
            row: dict[str, Any] = {"task": tid, "label": names[i], "confidence": float(conf[i])}
            for k, c in enumerate(self.classes):
                row[f"p_{c}"] = float(post[i, k])
            row["n_votes"] = int(self.n_votes[i])
            ag = self.agreement[i]
            row["agreement"] = None if np.isnan(ag) else float(ag)
            rows.append(row)
        return rows


@dataclass(frozen=True)
class SkillModel:
    """Fixed volunteer skills: enough to update one tile's posterior after each new answer.

    ``log_confusion`` is (n_workers, n_classes, n_labels); unknown volunteers (index -1 or out
    of range) get ``log_population``, the label-weighted average confusion.
    """

    log_confusion: np.ndarray
    log_population: np.ndarray
    log_prior: np.ndarray
    worker_ids: np.ndarray | None = None
    labels: tuple[str, ...] = ()

    @classmethod
    def from_result(cls, result: TileResult, shrink: float = 2.0) -> "SkillModel":
        """Skills from an aggregation. Each volunteer's confusion row is shrunk towards the
        population (label-weighted mean) by ``shrink`` pseudo-answers, so a newcomer starts at
        the population skill: neither trusted nor ignored."""
        conf = result.confusion
        n = result.worker_n_labels.astype(np.float64)
        if n.sum() > 0:
            pop = (conf * n[:, None, None]).sum(0) / n.sum()
        else:
            pop = np.full(conf.shape[1:], 1.0 / conf.shape[2])
        rows = (n[:, None] * result.class_prior[None, :])[:, :, None]
        mixed = (conf * rows + shrink * pop[None]) / np.maximum(rows + shrink, 1e-12)
        mixed = np.clip(mixed, 1e-6, 1.0)
        mixed /= mixed.sum(-1, keepdims=True)
        return cls(np.log(mixed), np.log(np.clip(pop, 1e-6, 1.0)),
                   np.log(np.clip(result.class_prior, 1e-6, 1.0)), result.worker_ids,
                   tuple(result.labels))

    def worker_index(self, ids: Sequence[Any]) -> np.ndarray:
        """Indices of volunteer ids in this model (-1 for volunteers it has not seen)."""
        if self.worker_ids is None or len(self.worker_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        known = self.worker_ids
        q = np.asarray(list(ids), dtype=known.dtype if known.dtype.kind in "iu" else object)
        if known.dtype.kind in "US" or q.dtype == object:
            known = known.astype(str)
            q = q.astype(str)
        pos = np.searchsorted(known, q)
        pos_c = np.minimum(pos, len(known) - 1)
        return np.where((pos < len(known)) & (known[pos_c] == q), pos_c, -1)

    def posterior_for(self, worker_ids: Sequence[Any], answers: Sequence[str]) -> np.ndarray:
        """One tile's posterior from raw volunteer ids and answer names (the scheduler's view):
        ``skills.posterior_for(["u17", "u4"], ["yes", "maybe"])``."""
        try:
            lab = np.array([self.labels.index(str(a)) for a in answers], dtype=np.int64)
        except ValueError as exc:
            raise VotesError(f"unknown answer: {exc}; known answers {list(self.labels)}") from None
        return self.posterior(self.worker_index(worker_ids), lab)

    @classmethod
    def symmetric(cls, n_classes: int, accuracy: float = 0.8, n_labels: int | None = None,
                  prior: np.ndarray | None = None, n_workers: int = 0) -> "SkillModel":
        """Everyone equally skilled: P(correct) = accuracy, errors spread evenly."""
        L = n_labels or n_classes
        pop = np.full((n_classes, L), (1 - accuracy) / max(L - 1, 1))
        pop[np.arange(n_classes), np.arange(n_classes)] = accuracy
        pr = np.full(n_classes, 1.0 / n_classes) if prior is None else np.asarray(prior, float)
        return cls(np.broadcast_to(np.log(pop), (n_workers, n_classes, L)).copy(), np.log(pop),
                   np.log(pr))

    def log_likelihood(self, workers: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(n_classes,) log P(answers | class) for one tile's answers."""
        workers = np.asarray(workers, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        known = (workers >= 0) & (workers < self.log_confusion.shape[0])
        ll = self.log_confusion[workers[known], :, labels[known]].sum(0)
        if (~known).any():
            ll = ll + self.log_population[:, labels[~known]].sum(1)
        return ll

    def posterior(self, workers: np.ndarray, labels: np.ndarray,
                  log_prior: np.ndarray | None = None) -> np.ndarray:
        """One tile's posterior over classes given its answers so far (O(answers))."""
        lp = self.log_prior if log_prior is None else log_prior
        z = lp + self.log_likelihood(workers, labels)
        z = z - z.max()
        p = np.exp(z)
        return p / p.sum()


@dataclass(frozen=True)
class Method:
    """A registered aggregation method with its declared default parameters."""

    name: str
    func: Callable[..., TileResult]
    defaults: Mapping[str, Any]
    description: str


# --------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Design:
    """The vote table as flat indices, built once per call (no sorting, no sparse matrices).

    Every EM step is a gather plus :func:`numpy.bincount` over the answers: the E-step sums
    log P(answer | class) per task (``bincount(task, weights=...)``), the M-step sums
    posteriors per (volunteer, answer) cell (``bincount(wl, weights=...)``).
    """

    task: np.ndarray         # (N,) intp task index of each answer
    wl: np.ndarray           # (N,) intp flat (volunteer, answer) cell: worker * L + label
    n_wl: np.ndarray         # (W*L,) float64 answers per cell
    counts: np.ndarray       # (T, L) int64
    n_votes: np.ndarray      # (T,) int64 answers per task
    n_labels_w: np.ndarray   # (W,) int64
    T: int
    W: int
    K: int
    L: int


def _design(votes: Votes) -> _Design:
    T, W, K, L = votes.n_tasks, votes.n_workers, votes.n_classes, votes.n_labels
    task = votes.task.astype(np.intp)
    wl = votes.worker.astype(np.intp)
    wl *= L
    wl += votes.label
    n_wl_i = np.bincount(wl, minlength=W * L)
    flat = task * L
    flat += votes.label
    counts = np.bincount(flat, minlength=T * L).reshape(T, L)
    del flat
    n_votes = counts[:, 0].copy()
    for j in range(1, L):
        n_votes += counts[:, j]
    n_w = n_wl_i.reshape(W, L).sum(1).astype(np.int64)
    return _Design(task, wl, n_wl_i.astype(np.float64), counts, n_votes, n_w, T, W, K, L)


def _agreement(counts: np.ndarray, n_votes: np.ndarray) -> np.ndarray:
    n = n_votes.astype(np.float64)
    s2 = np.zeros(counts.shape[0])
    for j in range(counts.shape[1]):
        c = counts[:, j].astype(np.float64)
        s2 += c * c
    with np.errstate(invalid="ignore", divide="ignore"):
        ag = (s2 - n) / (n * (n - 1))
    ag[n < 2] = np.nan
    return ag


def _mv_posterior(counts: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, T) vote shares over classes (response-only answers ignored); the overall shares
    where a task has no class answers. Returns (shares, overall shares)."""
    T = counts.shape[0]
    c = counts[:, :K]
    glob = c.sum(0).astype(np.float64)
    glob = glob / glob.sum() if glob.sum() > 0 else np.full(K, 1.0 / K)
    tot = c[:, 0].astype(np.float64)
    for k in range(1, K):
        tot += c[:, k]
    none = tot == 0
    tot[none] = 1.0
    postT = np.empty((K, T))
    for k in range(K):
        np.divide(c[:, k], tot, out=postT[k])
        postT[k][none] = glob[k]
    return postT, glob


def _argmax_tiebreak(postT: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """argmax over the classes of a (K, T) posterior, with exact ties (within 1e-12 relative)
    broken by the larger class prior, then the lower index. Row loops: K is tiny, T huge."""
    K = postT.shape[0]
    order = np.argsort(-prior, kind="stable")        # classes, most likely first
    top = postT[0].copy()
    for k in range(1, K):
        np.maximum(top, postT[k], out=top)
    tol = 1e-15 + 1e-12 * np.abs(top)
    ans = np.zeros(postT.shape[1], dtype=np.int64)
    for k in order[::-1]:                             # the most likely class is written last
        ans[np.abs(postT[k] - top) <= tol] = k
    return ans


def _log_normalise(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the classes of a (K, T) log array (one contiguous row per class), in
    place; returns (posterior (K, T), log-normaliser (T,)).

    Row loops instead of axis reductions and scipy's logsumexp: K is tiny and T huge, and this
    is the hot spot of every EM iteration.
    """
    K = joint.shape[0]
    m = joint[0].copy()
    for k in range(1, K):
        np.maximum(m, joint[k], out=m)
    joint -= m
    np.exp(joint, out=joint)
    s = joint[0].copy()
    for k in range(1, K):
        s += joint[k]
    joint /= s
    np.log(s, out=s)
    s += m
    return joint, s


def _m_step_counts(d: _Design, postT: np.ndarray, total: np.ndarray | None = None
                   ) -> np.ndarray:
    """Expected counts (W, K, L): sum over answers of P(task's class = k).

    ``postT`` is (K, T) (rows may be pre-multiplied by a per-task weight); ``total`` (W*L,)
    is the same sum over all classes (the per-cell answer count when ``postT`` columns sum to
    one). The last class is ``total`` minus the others, so a binary model costs one bincount.
    """
    K, WL = postT.shape[0], d.W * d.L
    c = np.empty((K, WL))
    if total is None:
        for k in range(K):
            c[k] = np.bincount(d.wl, weights=postT[k].take(d.task), minlength=WL)
    else:
        for k in range(K - 1):
            c[k] = np.bincount(d.wl, weights=postT[k].take(d.task), minlength=WL)
        last = total - c[:K - 1].sum(0)
        np.maximum(last, 0.0, out=last)     # rounding only: true counts are >= 0
        c[K - 1] = last
    return c.reshape(K, d.W, d.L).transpose(1, 0, 2)


def _e_step_loglik(d: _Design, log_conf: np.ndarray) -> tuple[np.ndarray, float]:
    """(K, T) sum over each task's answers of log P(answer | class k) - the same for class 0,
    and the class-0 term summed over every answer (so the total log-likelihood is exact):
    row 0 is zero, and a binary model costs one gather and one bincount per iteration."""
    W, K, L = log_conf.shape
    lc = np.ascontiguousarray(log_conf.transpose(1, 0, 2).reshape(K, W * L))
    out = np.zeros((K, d.T))
    base = lc[0]
    for k in range(1, K):
        out[k] = np.bincount(d.task, weights=(lc[k] - base).take(d.wl), minlength=d.T)
    return out, float(d.n_wl @ base)


#: Candidate strengths for ``strength="auto"`` (pseudo-answers per confusion row).
_STRENGTH_GRID = np.geomspace(0.25, 20.0, 13)


def _eb_strength(counts: np.ndarray, pop: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Empirical-Bayes Dirichlet concentration: the ``s`` in ``grid`` maximising the
    Dirichlet-multinomial evidence of every volunteer's (expected) answer counts, summed over
    the rows of their confusion, under the prior Dirichlet(s * pop[k]) (Minka 2000).
    Volunteers who clearly differ -> small s (each judged on their own answers); too few
    answers to tell them apart -> large s (everyone near the population). One s for all rows:
    rare-class rows have too few answers to choose their own. Returns it repeated (K,)."""
    n = counts.sum(-1)                                         # (W, K)
    p = np.maximum(pop, 1e-12)                                 # (K, L)
    score = np.empty((len(grid), pop.shape[0]))
    for i, g in enumerate(grid):
        a = g * p
        score[i] = (gammaln(g) - gammaln(g + n)).sum(0) + \
            (gammaln(a[None] + counts) - gammaln(a)[None]).sum((0, 2))
    return np.full(pop.shape[0], grid[score.sum(1).argmax()])


def _normalise_rows(c: np.ndarray) -> np.ndarray:
    s = c.sum(-1, keepdims=True)
    return np.where(s > 0, c / np.where(s > 0, s, 1), 1.0 / c.shape[-1])


def _accuracy(conf: np.ndarray, prior: np.ndarray) -> np.ndarray:
    K = conf.shape[1]
    diag = conf[:, np.arange(K), np.arange(K)]             # (W, K)
    named = conf[:, :, :K].sum(-1)                         # P(answer is a class | k)
    num = (diag * prior[None, :]).sum(1)
    den = (named * prior[None, :]).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _finish(votes: Votes, d: _Design, method: str, params: dict, postT: np.ndarray,
            conf: np.ndarray, prior: np.ndarray, n_iter: int, converged: bool, ll: float,
            extra: dict | None = None) -> TileResult:
    """Package a (K, T) posterior into a :class:`TileResult` (posterior as (T, K))."""
    np.clip(postT, 0.0, 1.0, out=postT)            # postT is the caller's own scratch array
    tot = postT[0].copy()
    for k in range(1, postT.shape[0]):
        tot += postT[k]
    postT /= tot
    answer = _argmax_tiebreak(postT, prior)
    post = np.ascontiguousarray(postT.T)
    return TileResult(method=method, params=dict(params), classes=votes.classes,
                      labels=votes.labels, task_ids=votes.task_ids, worker_ids=votes.worker_ids,
                      answer=answer, posterior=post, n_votes=d.n_votes,
                      agreement=_agreement(d.counts, d.n_votes), counts=d.counts,
                      confusion=conf, accuracy=_accuracy(conf, prior),
                      worker_n_labels=d.n_labels_w, class_prior=prior,
                      tile_xyz=votes.tile_xyz, n_iter=n_iter, converged=converged,
                      log_likelihood=ll, extra=extra or {})


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------

def majority_vote(votes: Votes, *, progress: Progress | None = None) -> TileResult:
    """Plain majority vote with MapSwipe outputs; skills = agreement with the majority."""
    d = _design(votes)
    postT, glob = _mv_posterior(d.counts, d.K)
    conf = _normalise_rows(_m_step_counts(d, postT, d.n_wl))
    if progress:
        progress(1, 1)
    return _finish(votes, d, "mv", {}, postT, conf, glob, 1, True, float("nan"))


def _neighbour_matrix(xyz: np.ndarray) -> sp.csr_array:
    """Row-normalised 8-neighbour adjacency between tasks on the same zoom level."""
    T = xyz.shape[0]
    z, x, y = (xyz[:, i].astype(np.int64) for i in range(3))
    key = (z << 58) | (x << 29) | y
    order = np.argsort(key, kind="stable")
    skey = key[order]
    rows, cols = [], []
    n = np.int64(1) << z
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == 0 and dy == 0:
                continue
            nx = (x + dx) % n          # wrap across the antimeridian
            ny = y + dy
            ok = (ny >= 0) & (ny < n)
            nk = (z << 58) | (nx << 29) | np.clip(ny, 0, None)
            pos = np.searchsorted(skey, nk)
            pos_c = np.minimum(pos, T - 1)
            hit = ok & (pos < T) & (skey[pos_c] == nk)
            src = np.nonzero(hit)[0]
            rows.append(src)
            cols.append(order[pos_c[hit]])
    r = np.concatenate(rows) if rows else np.empty(0, np.int64)
    c = np.concatenate(cols) if cols else np.empty(0, np.int64)
    deg = np.bincount(r, minlength=T).astype(np.float64)
    w = 1.0 / deg[r] if r.size else np.empty(0)
    M = sp.coo_array((w, (r, c)), shape=(T, T)).tocsr()
    M.sort_indices()
    return M


def _population_mean(K: int, L: int, accuracy: float) -> np.ndarray:
    """(K, L) diagonal-dominant prior mean confusion: P(correct) = ``accuracy``, the rest spread
    evenly over the other answers (response-only answers included)."""
    if L == 1:
        return np.ones((K, L))
    m = np.full((K, L), (1.0 - accuracy) / (L - 1))
    m[np.arange(K), np.arange(K)] = accuracy
    return m


def _em(votes: Votes, *, method: str, params: dict, one_coin: bool, strength: float | str,
        prior_accuracy: float, use_gold: bool, spatial: bool, spatial_shrink: float,
        max_iter: int, tol: float, progress: Progress | None,
        data_like_prior: bool = False) -> TileResult:
    """EM shared by every model-based method.

    Priors (all conjugate, so the M-step stays closed-form and vectorised):

    * population confusion ``pop`` (K, L) = pooled expected answer counts of every volunteer
      + :data:`_POP_STRENGTH` pseudo-answers per row with mean ``prior_accuracy`` on the
      diagonal: the crowd is assumed better than chance until the data says otherwise;
    * each volunteer's confusion row: Dirichlet(``strength`` * pop row), i.e. shrunk towards the
      population by ``strength`` pseudo-answers: a newcomer is neither trusted nor ignored, a
      volunteer with hundreds of answers is judged on them. With ``data_like_prior`` (``ds``)
      row k gets ``strength * K * prior[k]`` pseudo-answers instead: ``strength * K``
      imaginary answers per volunteer spread over the rows as real answers are (by the class
      mix), so the weak prior perturbs every row by the same fraction of its data; the same as
      the plain prior when classes are balanced. ``gold``/``spatial`` keep equal rows: there
      shrinking the rare-class row, which has the fewest answers, is the point;
    * class prior: Dirichlet(1, ..., 1) over the tasks that have answers (tasks without answers
      are not evidence about the class mix; their posterior is the prior).

    Initialisation is the majority vote and the priors keep the diagonal dominant, so EM does
    not wander into the label-switched solution on small data.
    """
    d = _design(votes)
    T, W, K, L = d.T, d.W, d.K, d.L
    if T == 0:
        raise VotesError("no votes to aggregate")
    if not 0.0 < prior_accuracy < 1.0:
        raise MethodError(f"prior_accuracy must be in (0, 1), got {prior_accuracy}")
    auto = isinstance(strength, str)
    if auto and strength != "auto":
        raise MethodError(f"strength must be a number >= 0 or 'auto', got {strength!r}")
    if one_coin and auto:
        raise MethodError("onecoin needs a numeric strength")
    if (not auto and float(strength) < 0) or spatial_shrink < 0:
        raise MethodError("strength and spatial_shrink must be >= 0")
    postT, glob = _mv_posterior(d.counts, K)      # (K, T): one contiguous row per class
    voted = d.n_votes > 0
    n_voted = int(voted.sum())
    gold_t = votes.gold_task if use_gold else np.empty(0, np.int32)
    gold_c = votes.gold_class if use_gold else np.empty(0, np.int16)
    gold_onehotT = np.zeros((K, len(gold_t)))
    gold_onehotT[gold_c, np.arange(len(gold_t))] = 1.0
    if len(gold_t):
        postT[:, gold_t] = gold_onehotT
    pop_prior = _POP_STRENGTH * _population_mean(K, L, prior_accuracy)
    diag = (np.arange(K), np.arange(K))

    nbr = _neighbour_matrix(votes.tile_xyz) if (spatial and votes.tile_xyz is not None) else None
    lam_grid = np.linspace(0.0, 0.95, 20)
    lam = 0.0
    prior = glob.copy()
    ll_prev = -np.inf
    converged = False
    it = 0
    ll = float("nan")
    # Only corroborated answers grade a volunteer: a tile answered once carries no information
    # about its volunteer's skill beyond the prior, and counting it would let a lone
    # volunteer's answers confirm themselves (EM then drifts to whatever the class prior likes).
    graded = (d.n_votes >= 2).astype(np.float64)
    if len(gold_t):
        graded[gold_t] = 1.0
    all_graded = bool(graded.all())
    # answers per (volunteer, answer) cell that grade a volunteer (the M-step's row totals)
    n_graded = d.n_wl if all_graded else \
        np.bincount(d.wl, weights=graded.take(d.task), minlength=W * L)
    for it in range(1, max_iter + 1):
        # ---- M-step -------------------------------------------------------------------
        counts = _m_step_counts(d, postT if all_graded else postT * graded, n_graded)
        psum = (postT[:, voted] if n_voted < T else postT).sum(1)
        prior = (psum + 1.0) / (n_voted + K)
        if one_coin:
            n_w = counts.sum((1, 2))
            correct = counts[:, diag[0], diag[1]].sum(1)
            acc_pop = (correct.sum() + _POP_STRENGTH * prior_accuracy) / (n_w.sum() + _POP_STRENGTH)
            acc = (correct + strength * acc_pop) / (n_w + strength)   # Beta shrinkage
            conf = np.empty((W, K, L))
            conf[:] = ((1 - acc) / max(L - 1, 1))[:, None, None]
            conf[:, diag[0], diag[1]] = acc[:, None]
        else:
            pop = _normalise_rows(counts.sum(0) + pop_prior)
            s_k = (_eb_strength(counts, pop, _STRENGTH_GRID) if auto
                   else np.full(K, float(strength)))
            strength_used = s_k.tolist()
            if data_like_prior:
                # ``strength`` * K imaginary answers per volunteer, spread over the rows like
                # real answers (in proportion to the class prior), each answered like the
                # population: equal to ``strength`` per row when the classes are balanced
                s_k = s_k * (K * prior)
            conf = _normalise_rows(counts + (s_k[:, None] * pop)[None])
        log_conf = np.log(np.maximum(conf, _TINY))
        # ---- E-step -------------------------------------------------------------------
        # log P(answers | class k) relative to class 0 (row 0 is 0) plus the class-0 total
        jointT, ll0 = _e_step_loglik(d, log_conf)            # (K, T)
        if nbr is not None:
            logp, lam = _spatial_log_prior(jointT.T, prior, nbr, lam_grid, spatial_shrink)
            jointT += logp.T
        else:
            jointT += np.log(prior)[:, None]
        postT, norm = _log_normalise(jointT)
        if len(gold_t):
            postT[:, gold_t] = gold_onehotT
        ll = float(norm.sum()) + ll0
        if progress:
            progress(it, max_iter)
        if abs(ll - ll_prev) <= tol * max(1.0, abs(ll)):
            converged = True
            break
        ll_prev = ll
    extra: dict[str, Any] = {} if one_coin else {"strength": strength_used,
                                                 "row_pseudo_answers": s_k.tolist()}
    if nbr is not None:
        extra.update(spatial_weight=float(lam), task_log_prior=np.broadcast_to(logp, (T, K)))
    return _finish(votes, d, method, params, postT, conf, prior, it, converged, ll, extra)


def _spatial_log_prior(loglik: np.ndarray, prior: np.ndarray, nbr: sp.csr_array,
                       lam_grid: np.ndarray, shrink: float) -> tuple[np.ndarray, float]:
    """Per-task log prior (1 - lam) * global + lam * mean of neighbours' data posteriors.

    Neighbours' posteriors use only their own answers (global prior x likelihood), so a tile's
    evidence never echoes back to itself. lam maximises the pseudo-likelihood of the answers
    plus a Beta(1, 1 + shrink) log prior on lam, which pulls it towards 0 when there are few
    answers to learn it from (the data term grows with the number of tiles, the prior does not).
    """
    qT, _ = _log_normalise(loglik.T + np.log(prior)[:, None])  # data-only posteriors (K, T)
    nb = nbr @ qT.T                                              # (T, K); zero rows if isolated
    has = nb.sum(1) > 0.5
    nb[~has] = prior
    # the mixture is linear in lam: sum_k prior_t(lam)[k] L_t[k] = (1 - lam) a_t + lam b_t,
    # so each grid point costs one log over T (likelihoods scaled by their row maximum, a
    # constant that does not move the argmax)
    lr = np.exp(loglik - loglik.max(1, keepdims=True))
    a = lr @ prior
    b = np.einsum("tk,tk->t", nb, lr)
    best, best_ll = 0.0, -np.inf
    for lam in lam_grid:
        v = float(np.log((1 - lam) * a + lam * b).sum()) + shrink * float(np.log1p(-lam))
        if v > best_ll + 1e-9:
            best, best_ll = float(lam), v
    return np.log((1 - best) * prior[None, :] + best * nb), best


def dawid_skene(votes: Votes, *, strength: float | str = 0.3, prior_accuracy: float = 0.8,
                max_iter: int = 100, tol: float = 1e-5,
                progress: Progress | None = None) -> TileResult:
    """Dawid-Skene (full confusion per volunteer), close to the textbook estimator: each
    volunteer's confusion gets only ``strength`` * K pseudo-answers answered like the
    population confusion (which has a diagonal-dominant prior, mean accuracy
    ``prior_accuracy``), spread over the rows like real answers (row k: ``strength`` * K *
    class prior[k]; ``strength`` per row when the classes are balanced), and only
    corroborated answers (tiles with >= 2 answers) grade a volunteer. The reference for
    comparisons with the literature and crowd-kit; ``gold`` and ``spatial`` are the methods
    for live projects (``strength="auto"``)."""
    params = {"strength": strength, "prior_accuracy": prior_accuracy, "max_iter": max_iter,
              "tol": tol}
    return _em(votes, method="ds", params=params, one_coin=False, strength=strength,
               prior_accuracy=prior_accuracy, use_gold=False, spatial=False, spatial_shrink=0.0,
               max_iter=max_iter, tol=tol, progress=progress, data_like_prior=True)


def one_coin(votes: Votes, *, strength: float = 2.0, prior_accuracy: float = 0.8,
             max_iter: int = 100, tol: float = 1e-5,
             progress: Progress | None = None) -> TileResult:
    """One-coin Dawid-Skene: one accuracy per volunteer, errors spread evenly; each accuracy is
    shrunk towards the population's by ``strength`` pseudo-answers (Beta prior)."""
    params = {"strength": strength, "prior_accuracy": prior_accuracy, "max_iter": max_iter,
              "tol": tol}
    return _em(votes, method="onecoin", params=params, one_coin=True, strength=strength,
               prior_accuracy=prior_accuracy, use_gold=False, spatial=False, spatial_shrink=0.0,
               max_iter=max_iter, tol=tol, progress=progress)


def gold_seeded(votes: Votes, *, strength: float | str = "auto", prior_accuracy: float = 0.8,
                max_iter: int = 100, tol: float = 1e-5,
                progress: Progress | None = None) -> TileResult:
    """Dawid-Skene with gold tiles clamped to their known answer (so they seed the population
    confusion and every volunteer's skill) and each volunteer's confusion rows shrunk towards
    the population confusion: a new volunteer starts at the population skill, neither trusted
    nor ignored. ``strength="auto"`` learns how far to shrink (pseudo-answers per row) from how
    much the volunteers' records differ (empirical Bayes); a number fixes it."""
    params = {"strength": strength, "prior_accuracy": prior_accuracy, "max_iter": max_iter,
              "tol": tol}
    return _em(votes, method="gold", params=params, one_coin=False, strength=strength,
               prior_accuracy=prior_accuracy, use_gold=True, spatial=False, spatial_shrink=0.0,
               max_iter=max_iter, tol=tol, progress=progress)


def spatial(votes: Votes, *, strength: float | str = "auto", prior_accuracy: float = 0.8,
            spatial_shrink: float = 4.0, max_iter: int = 100, tol: float = 1e-5,
            progress: Progress | None = None) -> TileResult:
    """``gold`` with a spatial class prior from the 8 neighbouring tiles (docs/spatial-model.md);
    the neighbours' weight is learned with a Beta(1, 1 + ``spatial_shrink``) prior towards 0.
    Without a tile grid (no ``tile_xyz``) it is exactly ``gold``."""
    params = {"strength": strength, "prior_accuracy": prior_accuracy,
              "spatial_shrink": spatial_shrink, "max_iter": max_iter, "tol": tol}
    return _em(votes, method="spatial", params=params, one_coin=False, strength=strength,
               prior_accuracy=prior_accuracy, use_gold=True, spatial=True,
               spatial_shrink=spatial_shrink, max_iter=max_iter, tol=tol, progress=progress)


def _defaults(func: Callable) -> dict[str, Any]:
    import inspect
    return {n: p.default for n, p in inspect.signature(func).parameters.items()
            if p.kind is p.KEYWORD_ONLY and n != "progress"}


METHODS: dict[str, Method] = {
    m.name: m for m in (
        Method("mv", majority_vote, _defaults(majority_vote), "majority vote (MapSwipe shares)"),
        Method("ds", dawid_skene, _defaults(dawid_skene), "Dawid-Skene, full confusion per volunteer"),
        Method("onecoin", one_coin, _defaults(one_coin), "one-coin Dawid-Skene"),
        Method("gold", gold_seeded, _defaults(gold_seeded),
               "Dawid-Skene, gold-seeded Dirichlet priors on volunteer skills"),
        Method("spatial", spatial, _defaults(spatial),
               "gold-seeded Dawid-Skene with a neighbour-aware class prior"),
    )
}

#: The method used when none is named (the most accurate overall on the shared datasets).
DEFAULT_METHOD = "spatial"


def aggregate(votes: Votes, method: str = DEFAULT_METHOD, *, progress: Progress | None = None,
              **params: Any) -> TileResult:
    """Aggregate ``votes`` with a registered method; unknown parameters are an error.

    The returned :class:`TileResult` carries ``params`` with every default filled in, ready to
    stamp into export metadata.
    """
    try:
        m = METHODS[method]
    except KeyError:
        raise MethodError(f"unknown method {method!r}; choose one of {sorted(METHODS)}") from None
    unknown = set(params) - set(m.defaults)
    if unknown:
        raise MethodError(f"method {method!r} has no parameter(s) {sorted(unknown)}; "
                          f"valid: {sorted(m.defaults)}")
    if votes.n_votes == 0:
        raise VotesError("no votes to aggregate")
    return m.func(votes, progress=progress, **params)
