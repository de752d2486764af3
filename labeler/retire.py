"""Per-tile consensus and retirement decision after each new answer.

``fixed``: retire after ``redundancy`` answers; the consensus answer is the majority and the
confidence its share. ``adaptive``: the consensus module's posterior retirement rule
(:class:`consensus.retirement.RetirementPolicy`) with equally-skilled volunteers
(:meth:`consensus.aggregate.SkillModel.symmetric`), so a tile retires as soon as its answers
agree enough and goes ``unresolved`` at ``max_votes`` without agreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ADAPTIVE_DEFAULTS = {"threshold": 0.95, "min_votes": 3, "accuracy": 0.8}


def majority(counts: Mapping[str, int], order: Sequence[str]) -> tuple[str | None, float | None]:
    total = sum(counts.values())
    if total == 0:
        return None, None
    best = max(order, key=lambda v: (counts.get(v, 0), -order.index(v)))
    return best, counts.get(best, 0) / total


def evaluate(retirement: Mapping[str, Any], redundancy: int, answer_values: Sequence[str],
             counts: Mapping[str, int]) -> tuple[str, str | None, float | None]:
    """``(state, consensus_answer, confidence)`` for a tile with these answer counts."""
    order = list(answer_values) + sorted(set(counts) - set(answer_values))
    n = sum(counts.values())
    if retirement.get("policy") != "adaptive":
        answer, share = majority(counts, order)
        return ("retired" if n >= redundancy else "live"), answer, share
    from consensus.aggregate import SkillModel
    from consensus.retirement import RetirementPolicy

    params = {**ADAPTIVE_DEFAULTS, **retirement}
    max_votes = int(params.get("max_votes", 2 * redundancy))
    min_votes = min(int(params["min_votes"]), max_votes)
    policy = RetirementPolicy(threshold=float(params["threshold"]), min_votes=min_votes,
                              max_votes=max_votes)
    if n == 0:
        return "live", None, None
    k = len(order)
    labels = np.repeat(np.arange(k), [counts.get(v, 0) for v in order])
    skills = SkillModel.symmetric(k, accuracy=float(params["accuracy"]))
    post = np.asarray(skills.posterior(np.full(len(labels), -1), labels), dtype=float)
    best = int(np.argmax(post))
    decision = policy.decide(post, n)
    state = {"retire": "retired", "unresolved": "unresolved"}.get(decision, "live")
    return state, order[best], float(post[best])
