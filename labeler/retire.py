"""Per-tile consensus and retirement decision after each new answer.

``fixed``: retire after ``redundancy`` answers; the consensus answer is the majority and the
confidence its share.

``adaptive``: the consensus module's posterior retirement rule with the **same default policy
the replay benchmark measures** (:class:`consensus.retirement.RetirementPolicy` defaults,
``python -m bench._replay``, docs/consensus.md); a project may override ``threshold``,
``min_votes``, ``max_votes`` and ``final_threshold`` in its ``retirement`` settings. A tile
retires once its leading answer's posterior passes the threshold with at least ``min_votes``
answers and goes ``unresolved`` (researchers' review list) at ``max_votes`` without that.

The posterior, as in the replay:

* with a skill model (:func:`fit_skills` on the project's answers, refreshed every few hundred
  answers), each answer counts with its volunteer's estimated confusion and the class base rate
  is the prior (:func:`evaluate_answers`); after each refresh :func:`recheck` re-decides every
  tile: retired tiles the new skills no longer support reopen, open tiles they now support
  retire;
* without one (:func:`evaluate` on answer counts, e.g. before the first refit) every volunteer
  counts as equally skilled (``accuracy``, default 0.8) with a uniform prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Symmetric skill used before a project has a fitted skill model.
DEFAULT_ACCURACY = 0.8

_STATE = {"retire": "retired", "unresolved": "unresolved", "continue": "live"}
_CODE_STATE = {0: "live", 1: "retired", 2: "unresolved"}
_STATE_CODE = {v: k for k, v in _CODE_STATE.items()}


def majority(counts: Mapping[str, int], order: Sequence[str]) -> tuple[str | None, float | None]:
    total = sum(counts.values())
    if total == 0:
        return None, None
    best, top = None, -1
    for v in order:  # the most frequent answer; the first in ``order`` on a tie
        n = counts.get(v, 0)
        if n > top:
            best, top = v, n
    return best, top / total


def adaptive_defaults() -> dict[str, Any]:
    """The adaptive policy's parameters when a project sets none: the replay's default."""
    from consensus.retirement import RetirementPolicy

    p = RetirementPolicy()
    return {"threshold": p.threshold, "min_votes": p.min_votes, "max_votes": p.max_votes,
            "final_threshold": p.final_threshold, "accuracy": DEFAULT_ACCURACY}


def policy_for(retirement: Mapping[str, Any], redundancy: int):
    """The :class:`~consensus.retirement.RetirementPolicy` of an adaptive project. Without an
    explicit ``max_votes`` it is the default's, capped at ``2 * redundancy`` (the most answers
    the scheduler hands out for such a tile, :attr:`labeler.projects.ProjectConfig.target`)."""
    from consensus.retirement import RetirementPolicy

    params = {**adaptive_defaults(), **retirement}
    max_votes = int(retirement["max_votes"]) if "max_votes" in retirement else \
        max(1, min(int(params["max_votes"]), 2 * int(redundancy)))
    min_votes = min(int(params["min_votes"]), max_votes)
    threshold = float(params["threshold"])
    final = params.get("final_threshold")
    final = None if final is None else min(float(final), threshold)
    return RetirementPolicy(threshold=threshold, min_votes=min_votes, max_votes=max_votes,
                            final_threshold=final)


def _order(answer_values: Sequence[str], counts: Mapping[str, int]) -> list[str]:
    return list(answer_values) + sorted(set(counts) - set(answer_values))


def evaluate(retirement: Mapping[str, Any], redundancy: int, answer_values: Sequence[str],
             counts: Mapping[str, int]) -> tuple[str, str | None, float | None]:
    """``(state, consensus_answer, confidence)`` for a tile with these answer counts (every
    volunteer equally skilled; see :func:`evaluate_answers` for per-volunteer skills)."""
    order = _order(answer_values, counts)
    n = sum(counts.values())
    if retirement.get("policy") != "adaptive":
        answer, share = majority(counts, order)
        return ("retired" if n >= redundancy else "live"), answer, share
    from consensus.aggregate import SkillModel

    policy = policy_for(retirement, redundancy)
    if n == 0:
        return "live", None, None
    k = len(order)
    labels = np.repeat(np.arange(k), [counts.get(v, 0) for v in order])
    accuracy = float(retirement.get("accuracy", DEFAULT_ACCURACY))
    skills = SkillModel.symmetric(k, accuracy=accuracy)
    post = np.asarray(skills.posterior(np.full(len(labels), -1), labels), dtype=float)
    best = int(np.argmax(post))
    return _STATE[policy.decide(post, n)], order[best], float(post[best])


def fit_skills(tile_ids: Sequence[Any], volunteer_ids: Sequence[Any], answers: Sequence[str],
               answer_values: Sequence[str], *, gold: Mapping[Any, str] | None = None,
               method: str = "gold", shrink: float = 2.0):
    """Volunteer skills from a project's answers (one entry per answer), as the replay refits
    them: ``method`` (gold-seeded Dawid-Skene by default; ``gold`` = known answers of gold
    tiles), then each volunteer's error rate under an empirical-Bayes prior fitted to the crowd
    (:func:`consensus.retirement.npmle_skill_model`).
    Response-only answers (``maybe``) count as evidence, never as a class."""
    from consensus.aggregate import aggregate
    from consensus.retirement import npmle_skill_model
    from consensus.votes import RESPONSE_ONLY, Votes

    classes = [a for a in answer_values if a not in RESPONSE_ONLY]
    v = Votes.from_arrays([str(t) for t in tile_ids], [str(w) for w in volunteer_ids],
                          [str(a) for a in answers], classes=classes, tile_xyz=False,
                          gold={str(t): c for t, c in (gold or {}).items()} or None)
    return npmle_skill_model(v, aggregate(v, method), shrink)


def _posteriors(skills, tiles: Sequence[tuple[Sequence[Any], Sequence[str]]]) -> np.ndarray:
    """(n_tiles, n_classes) posteriors of tiles given as ``(volunteer_ids, answers)``: row i is
    ``skills.posterior`` of tile i's answers (answers the model does not know are ignored)."""
    n_classes = skills.log_prior.shape[0]
    label_of = {name: i for i, name in enumerate(skills.labels)}
    tile_idx: list[int] = []
    vols: list[str] = []
    labs: list[int] = []
    for i, (volunteer_ids, answers) in enumerate(tiles):
        for v, a in zip(volunteer_ids, answers):
            lab = label_of.get(str(a))
            if lab is not None:
                tile_idx.append(i)
                vols.append(str(v))
                labs.append(lab)
    z = np.tile(np.asarray(skills.log_prior, dtype=float), (len(tiles), 1))
    if labs:
        t = np.asarray(tile_idx, dtype=np.int64)
        lab_a = np.asarray(labs, dtype=np.int64)
        w = np.asarray(skills.worker_index(vols), dtype=np.int64)
        known = (w >= 0) & (w < skills.log_confusion.shape[0])
        ll = np.empty((len(labs), n_classes))
        ll[known] = skills.log_confusion[w[known], :, lab_a[known]]
        ll[~known] = skills.log_population[:, lab_a[~known]].T
        for k in range(n_classes):
            z[:, k] += np.bincount(t, weights=ll[:, k], minlength=len(tiles))
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def evaluate_answers(retirement: Mapping[str, Any], redundancy: int,
                     answer_values: Sequence[str], volunteer_ids: Sequence[Any],
                     answers: Sequence[str], skills=None
                     ) -> tuple[str, str | None, float | None]:
    """``(state, consensus_answer, confidence)`` for a tile from its answers and who gave them.
    With ``skills`` (:func:`fit_skills`) an adaptive project weighs each answer by its
    volunteer's estimated confusion (unknown volunteers: the population's); without, this is
    :func:`evaluate` on the counts."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[str(a)] = counts.get(str(a), 0) + 1
    if skills is None or retirement.get("policy") != "adaptive" or not answers:
        return evaluate(retirement, redundancy, answer_values, counts)
    post = _posteriors(skills, [(volunteer_ids, answers)])[0]
    classes = skills.labels[:len(post)]
    best = int(np.argmax(post))
    state = _STATE[policy_for(retirement, redundancy).decide(post, len(answers))]
    return state, classes[best], float(post[best])


def recheck(retirement: Mapping[str, Any], redundancy: int,
            tiles: Mapping[Any, tuple[str, Sequence[Any], Sequence[str]]],
            skills) -> dict[Any, tuple[str, str | None, float | None]]:
    """After a skill refresh, re-decide an adaptive project's tiles as the replay does
    (:func:`consensus.retirement.recheck`): ``tiles`` maps tile id -> ``(state, volunteer_ids,
    answers)``; returns ``{tile_id: (new_state, answer, confidence)}`` for the tiles whose
    state changes (``retired`` -> ``live`` reopens, ``live`` -> ``retired`` retires).
    Unresolved tiles stay on the review list."""
    from consensus.retirement import recheck as _recheck

    if retirement.get("policy") != "adaptive" or not tiles:
        return {}
    ids = list(tiles)
    posts = _posteriors(skills, [(tiles[t][1], tiles[t][2]) for t in ids])
    status = np.array([_STATE_CODE[tiles[t][0]] for t in ids], dtype=np.int8)
    before = status.copy()
    n_used = np.array([len(tiles[t][2]) for t in ids], dtype=np.int64)
    _recheck(policy_for(retirement, redundancy), status, posts, n_used)
    classes = skills.labels[:posts.shape[1]]
    out = {}
    for i in np.flatnonzero(status != before).tolist():
        best = int(np.argmax(posts[i]))
        out[ids[i]] = (_CODE_STATE[int(status[i])], classes[best], float(posts[i, best]))
    return out
