"""The service's adaptive retirement is the policy the replay benchmark measures."""

from __future__ import annotations

import numpy as np
import pytest

from consensus import Votes, aggregate
from consensus.retirement import RetirementPolicy
from crowdsight.settings import Settings
from labeler import retire
from labeler.testing import create_token, label_for, seed_project, start_volunteer

ANSWERS = ["yes", "no", "maybe"]


def test_service_default_is_the_replay_default() -> None:
    d = RetirementPolicy()
    assert retire.policy_for({"policy": "adaptive"}, redundancy=5) == d
    # a project's own settings win; max_votes without a setting is capped at 2 x redundancy,
    # the most answers the scheduler hands out for an adaptive tile (ProjectConfig.target)
    assert retire.policy_for({"policy": "adaptive"}, redundancy=3).max_votes == \
        min(d.max_votes, 6)
    p = retire.policy_for({"policy": "adaptive", "threshold": 0.97, "min_votes": 3,
                           "max_votes": 9, "final_threshold": 0.8}, redundancy=5)
    assert (p.threshold, p.min_votes, p.max_votes, p.final_threshold) == (0.97, 3, 9, 0.8)


def test_counts_only_two_agreeing_answers_retire_at_min_votes() -> None:
    # equal skills 0.8 (errors spread over the 2 other answers), uniform prior: two "yes" ->
    # .64 / (.64 + 2 * .1^2) = 0.970 >= the default threshold
    state, ans, conf = retire.evaluate({"policy": "adaptive"}, 5, ANSWERS, {"yes": 2})
    assert (state, ans) == ("retired", "yes") and conf == pytest.approx(0.64 / 0.66)
    assert retire.evaluate({"policy": "adaptive"}, 5, ANSWERS, {"yes": 1})[0] == "live"
    # contested up to the default cap -> researchers' review list
    n = RetirementPolicy().max_votes
    state, _, _ = retire.evaluate({"policy": "adaptive"}, 5, ANSWERS,
                                  {"yes": n // 2, "no": n - n // 2})
    assert state == "unresolved"


def _skills():
    # "liar" always answers the opposite of two reliable volunteers on 40 tiles
    t, w, lab = [], [], []
    rng = np.random.default_rng(0)
    for i in range(40):
        truth = "yes" if rng.random() < 0.5 else "no"
        for who in ("good1", "good2"):
            t.append(i), w.append(who), lab.append(truth)
        t.append(i), w.append("liar"), lab.append("no" if truth == "yes" else "yes")
    return retire.fit_skills(t, w, lab, ANSWERS), (t, w, lab)


def test_per_volunteer_skills_weigh_answers() -> None:
    sk, _ = _skills()
    cfg = {"policy": "adaptive"}
    # the liar's two "no"s are evidence for "yes"; counts alone would say "no"
    state, ans, conf = retire.evaluate_answers(cfg, 5, ANSWERS, ["liar", "liar"], ["no", "no"],
                                               skills=sk)
    assert ans == "yes" and conf > 0.9
    assert retire.evaluate(cfg, 5, ANSWERS, {"no": 2})[1] == "no"
    # an unknown volunteer counts with the population skill; "maybe" is no evidence either way
    s1 = retire.evaluate_answers(cfg, 5, ANSWERS, ["good1", "stranger"], ["yes", "yes"],
                                 skills=sk)
    s2 = retire.evaluate_answers(cfg, 5, ANSWERS, ["good1", "stranger", "x"],
                                 ["yes", "yes", "maybe"], skills=sk)
    assert s1[1] == s2[1] == "yes" and s2[2] == pytest.approx(s1[2], abs=0.02)
    # without a skill model (or for a fixed project) it is the counts rule
    assert retire.evaluate_answers(cfg, 5, ANSWERS, ["a", "b"], ["yes", "yes"]) == \
        retire.evaluate(cfg, 5, ANSWERS, {"yes": 2})


def test_skills_are_the_replays_decision_skills() -> None:
    from consensus.retirement import npmle_skill_model
    sk, (t, w, lab) = _skills()
    v = Votes.from_arrays([str(x) for x in t], w, lab, classes=["yes", "no"], tile_xyz=False)
    ref = npmle_skill_model(v, aggregate(v, "gold"), 2.0)
    assert np.allclose(sk.log_confusion, ref.log_confusion)


def test_batch_posteriors_equal_one_tile_at_a_time() -> None:
    # recheck (and evaluate_answers) score tiles in one vectorised pass; it must give exactly
    # SkillModel's per-tile posterior (known and unknown volunteers, "maybe", answers the
    # model lacks, empty tiles)
    sk, _ = _skills()
    rng = np.random.default_rng(3)
    who = ["good1", "good2", "liar", "stranger", "other"]
    tiles = [([], [])]
    for _ in range(60):
        n = int(rng.integers(1, 6))
        tiles.append(([who[i] for i in rng.integers(0, len(who), n)],
                      [["yes", "no", "maybe", "retired-answer"][i]
                       for i in rng.integers(0, 4, n)]))
    batch = retire._posteriors(sk, tiles)
    assert batch.shape == (len(tiles), 2)
    for row, (vols, answers) in zip(batch, tiles):
        # reference: SkillModel.posterior of this tile's known answers alone
        known = [i for i, a in enumerate(answers) if a in sk.labels]
        lab = np.array([sk.labels.index(answers[i]) for i in known], dtype=np.int64)
        w = sk.worker_index([vols[i] for i in known]) if known else np.empty(0, np.int64)
        assert np.allclose(row, sk.posterior(w, lab), rtol=0, atol=1e-12)


def test_recheck_after_refit_reopens_and_retires() -> None:
    sk, _ = _skills()
    cfg = {"policy": "adaptive"}
    tiles = {
        # retired on two "no"s from the liar under equal skills: the new skills say "yes" ->
        # the answer flips but it is still confident: stays retired (no change reported)
        "a": ("retired", ["liar", "liar"], ["no", "no"]),
        # retired on one good "yes" and one liar "no" - both say yes: stays retired
        "b": ("retired", ["good1", "liar"], ["yes", "no"]),
        # retired on a good "yes" and a good "no": contradictory -> reopened
        "c": ("retired", ["good1", "good2"], ["yes", "no"]),
        # live with a good and an unknown "yes": the new skills support it -> retires now
        "d": ("live", ["good1", "good2"], ["yes", "yes"]),
        # unresolved stays on the review list whatever the skills say
        "e": ("unresolved", ["good1", "good2"], ["no", "no"]),
    }
    out = retire.recheck(cfg, 5, tiles, sk)
    assert set(out) == {"c", "d"}
    assert out["c"][0] == "live"
    assert out["d"][:2] == ("retired", "yes") and out["d"][2] >= RetirementPolicy().threshold
    assert retire.recheck({"policy": "fixed"}, 5, tiles, sk) == {}


def _results(client, settings: Settings, slug: str) -> dict[int, dict]:
    token = create_token(settings, "analyst")
    body = client.get(f"/api/projects/{slug}/results",
                      headers={"Authorization": f"Bearer {token}"}).json()
    return {r["tile_id"]: r for r in body["results"]}


def test_adaptive_project_without_settings_uses_the_replay_default(make_client,
                                                                   settings: Settings) -> None:
    # through the labeler: a project that only says "adaptive" retires a tile on two agreeing
    # answers (the default's min_votes 2 and threshold), where min_votes 3 would keep it live
    p = seed_project(settings, n_tiles=1, gold_rate=0, redundancy=5,
                     retirement={"policy": "adaptive"})
    for _ in range(2):
        c = make_client()
        h = start_volunteer(c)
        task = c.get(f"/api/projects/{p.slug}/next").json()
        r = c.post(f"/api/projects/{p.slug}/labels", headers=h, json={
            "task_id": task["task_id"], "labels": [label_for(task["tiles"][0], "yes")]})
        assert r.status_code == 200, r.text
    res = _results(make_client(), settings, p.slug)[p.tile_ids[0]]
    assert res["state"] == "retired" and res["total"] == 2 and res["answer"] == "yes"
    k = len(c.get(f"/api/projects/{p.slug}").json()["answers"])
    assert res["confidence"] == pytest.approx(0.64 / (0.64 + (k - 1) * (0.2 / (k - 1)) ** 2))
    assert res["confidence"] >= RetirementPolicy().threshold
    c = make_client()
    start_volunteer(c)
    assert c.get(f"/api/projects/{p.slug}/next").json()["done"] is True
