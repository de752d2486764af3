"""A project's retirement settings: validation and the scheduler's per-tile target."""

from __future__ import annotations

import pytest

from consensus.retirement import RetirementPolicy
from labeler.errors import ValidationError
from labeler.projects import ProjectConfig, validate_fields


def _config(retirement: dict, redundancy: int = 5) -> ProjectConfig:
    return ProjectConfig(
        id=1, slug="p", name="P", type="find", status="live", question="?", help_text="",
        answers=({"value": "yes"}, {"value": "no"}), layers=(), redundancy=redundancy,
        retirement=retirement, gold_rate=0.0, priority="completion", block_cols=1, block_rows=1,
        context=False, max_points=0, task_zoom=None)


def test_adaptive_target_is_where_the_policy_gives_up() -> None:
    # the scheduler must not hand out more answers than the policy can use: a tile goes
    # unresolved at max_votes, so leases beyond it would be wasted volunteer time
    default = RetirementPolicy()
    assert _config({"policy": "adaptive"}, redundancy=5).target == min(default.max_votes, 10)
    assert _config({"policy": "adaptive"}, redundancy=2).target == min(default.max_votes, 4)
    assert _config({"policy": "adaptive", "max_votes": 9}).target == 9
    assert _config({"policy": "fixed"}, redundancy=3).target == 3


def test_validation_keeps_final_threshold() -> None:
    out = validate_fields({"retirement": {"policy": "adaptive", "threshold": 0.95,
                                          "final_threshold": 0.8}}, "find", 50)
    assert out["retirement"] == {"policy": "adaptive", "threshold": 0.95, "final_threshold": 0.8}
    for bad in (0.3, 1.5, True, "0.8"):
        with pytest.raises(ValidationError, match="final_threshold"):
            validate_fields({"retirement": {"policy": "adaptive", "final_threshold": bad}},
                            "find", 50)
