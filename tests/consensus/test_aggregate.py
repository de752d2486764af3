from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from consensus import METHODS, MethodError, Votes, VotesError, aggregate

from .conftest import grid_votes

ALL = sorted(METHODS)


def test_registry_declares_defaults():
    assert set(METHODS) >= {"mv", "ds", "onecoin", "gold", "spatial"}
    assert METHODS["ds"].defaults["max_iter"] == 100
    res = aggregate(Votes.from_arrays(["a"], ["x"], ["yes"]), "ds")
    assert res.params == dict(METHODS["ds"].defaults)


def test_unknown_method_and_parameter():
    v = Votes.from_arrays(["a"], ["x"], ["yes"])
    with pytest.raises(MethodError, match="choose one of"):
        aggregate(v, "glad")
    with pytest.raises(MethodError, match="no parameter"):
        aggregate(v, "ds", spatial_shrink=2)


def test_no_votes():
    v = Votes.from_indices(np.empty(0), np.empty(0), np.empty(0), n_tasks=0, n_workers=0)
    with pytest.raises(VotesError, match="no votes"):
        aggregate(v, "ds")


@pytest.mark.parametrize("method", ALL)
def test_one_voter(method):
    v = Votes.from_arrays(["a"], ["x"], ["yes"], classes=["no", "yes"])
    r = aggregate(v, method)
    assert r.answer_labels().tolist() == ["yes"]
    assert r.n_votes.tolist() == [1]
    assert np.isnan(r.agreement[0])
    assert r.posterior[0, 1] > 0.5
    if method == "mv":
        assert r.posterior.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("method", ALL)
def test_unanimous(method):
    v = Votes.from_arrays(["a"] * 3 + ["b"] * 3, ["x", "y", "z"] * 2, ["yes"] * 3 + ["no"] * 3)
    r = aggregate(v, method)
    assert r.answer_labels().tolist() == ["yes", "no"]
    assert r.agreement.tolist() == [1.0, 1.0]
    assert (r.confidence > 0.9).all()


def test_mv_mapswipe_outputs_hand_computed():
    # task a: yes, yes, no, maybe -> shares .5 .25 .25; agreement (4+1+1-4)/(4*3) = 1/6
    v = Votes.from_arrays(["a"] * 4, ["w1", "w2", "w3", "w4"], ["yes", "yes", "no", "maybe"])
    r = aggregate(v, "mv")
    assert r.labels == ("no", "yes", "maybe")
    assert r.counts.tolist() == [[1, 2, 1]]
    assert r.shares().tolist() == [[0.25, 0.5, 0.25]]
    assert r.agreement[0] == pytest.approx(1 / 6)
    # maybe counts in n_votes but not in the class posterior
    assert r.n_votes.tolist() == [4]
    assert r.posterior[0].tolist() == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("method", ALL)
def test_all_abstain(method):
    # task 'q' has only "maybe" answers: no class evidence -> low confidence, never certain
    rows = [("q", "w1", "maybe"), ("q", "w2", "maybe")]
    rows += [(f"t{i}", w, "yes" if i % 2 else "no") for i in range(6) for w in ("w1", "w2")]
    v = Votes.from_arrays(*zip(*rows))
    r = aggregate(v, method)
    q = list(v.task_ids).index("q")
    assert r.n_votes[q] == 2
    assert r.confidence[q] < 0.75
    if method == "mv":
        assert r.posterior[q].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("method", ["ds", "gold", "spatial"])
def test_always_wrong_volunteer_is_inverted(method, adversary_votes):
    v, truth = adversary_votes
    r = aggregate(v, method)
    assert (r.answer == truth).all()          # including t99, answered only by the liar
    liar = list(v.worker_ids).index("liar")
    # 21 answers, all wrong: clearly inverted, though the diagonal-dominant prior (3
    # pseudo-answers per row towards the population) keeps it off exactly 0
    assert r.accuracy[liar] < 0.25
    assert r.confusion[liar, 1, 0] > 0.7      # says "no" when the truth is "yes"
    good = list(v.worker_ids).index("good1")
    assert r.accuracy[good] > 0.9


def test_mv_is_fooled_by_the_liar_where_it_is_alone(adversary_votes):
    v, truth = adversary_votes
    r = aggregate(v, "mv")
    t99 = list(v.task_ids).index("t99")
    assert r.answer_labels()[t99] == "no" and truth[t99] == 1


def test_bad_imagery_is_its_own_outcome():
    v = Votes.from_arrays(["a"] * 3 + ["b"] * 3, ["x", "y", "z"] * 2,
                          ["bad_imagery", "bad_imagery", "no", "yes", "yes", "maybe"],
                          classes=["no", "yes", "bad_imagery"])
    for m in ALL:
        r = aggregate(v, m)
        assert r.answer_labels().tolist() == ["bad_imagery", "yes"]
        assert r.posterior.shape == (2, 3)


def test_gold_tasks_are_clamped_and_shift_skills(adversary_votes):
    v, truth = adversary_votes
    gold = {str(t): v.classes[truth[i]] for i, t in enumerate(v.task_ids) if i < 5}
    r = aggregate(v.with_gold(gold), "gold")
    assert np.array_equal(r.posterior[:5], np.eye(2)[truth[:5]])
    assert (r.answer == truth).all()


def test_gold_shrinks_newcomers_towards_population():
    # newcomer with a single (correct) answer: with little shrinkage it is trusted almost
    # blindly; a stronger prior keeps its confusion near the population's
    rows = [(f"t{i}", w, "yes" if i % 2 else "no") for i in range(30) for w in ("a", "b", "c")]
    rows += [(f"t{i}", "d", "no" if i % 2 else "yes") for i in range(0, 30, 3)]   # a poor one
    rows.append(("t1", "new", "yes"))
    v = Votes.from_arrays(*zip(*rows))
    new = list(v.worker_ids).index("new")
    weak = aggregate(v, "gold", strength=0.1)
    g = aggregate(v, "gold", strength=4.0)
    pop = np.average(g.accuracy, weights=g.worker_n_labels)
    assert weak.accuracy[new] > 0.93                 # one right answer: nearly blind trust
    assert g.accuracy[new] < weak.accuracy[new]
    assert abs(g.accuracy[new] - pop) < 0.05


def test_spatial_uses_neighbours():
    # a 5x5 block of damaged tiles with a split vote in the middle, inside a sea of "no"
    pattern = ["nnnnnnn", "nyyyyyn", "nyyyyyn", "nyyyyyn", "nyyyyyn", "nyyyyyn", "nnnnnnn"]
    v = grid_votes(pattern, ambiguous={(3, 3): ["yes", "no", "maybe"]})
    mid = list(v.task_ids).index("18-61003-101003")
    ds = aggregate(v, "gold")
    sp = aggregate(v, "spatial")
    assert sp.extra["spatial_weight"] > 0
    assert sp.answer_labels()[mid] == "yes"
    assert sp.posterior[mid, 1] > ds.posterior[mid, 1]
    # and equals gold when there is no tile grid
    v2 = Votes.from_arrays(v.task_ids[v.task], v.worker_ids[v.worker],
                           np.asarray(v.labels)[v.label], tile_xyz=False)
    a, b = aggregate(v2, "spatial"), aggregate(v2, "gold")
    assert np.array_equal(a.posterior, b.posterior)


@pytest.mark.parametrize("method", ALL)
def test_deterministic(method, adversary_votes):
    v, _ = adversary_votes
    a, b = aggregate(v, method), aggregate(v, method)
    assert np.array_equal(a.posterior, b.posterior) and np.array_equal(a.confusion, b.confusion)


def test_progress_callback():
    seen = []
    v = Votes.from_arrays(["a", "a", "b"], ["x", "y", "x"], ["yes", "no", "no"])
    aggregate(v, "ds", progress=lambda i, n: seen.append((i, n)))
    assert seen and seen[0] == (1, 100)


def test_to_rows():
    v = Votes.from_arrays(["a", "a"], ["x", "y"], ["yes", "yes"])
    rows = aggregate(v, "mv").to_rows()
    assert rows == [{"task": "a", "label": "yes", "confidence": 1.0, "p_yes": 1.0,
                     "n_votes": 2, "agreement": 1.0}]


vote_tables = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 4), st.sampled_from(["no", "yes", "bad", "maybe"])),
    min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(rows=vote_tables, method=st.sampled_from(ALL), seed=st.integers(0, 2**16))
def test_posteriors_valid_and_row_order_free(rows, method, seed):
    classes = ["bad", "no", "yes"]
    t, w, lab = zip(*rows)
    v = Votes.from_arrays([f"t{i}" for i in t], [f"w{i}" for i in w], lab, classes=classes)
    r = aggregate(v, method)
    assert r.posterior.shape == (v.n_tasks, 3)
    assert np.isfinite(r.posterior).all()
    assert (r.posterior >= 0).all() and (r.posterior <= 1).all()
    assert np.allclose(r.posterior.sum(1), 1.0)
    assert np.isfinite(r.confusion).all() and np.allclose(r.confusion.sum(-1), 1.0)
    perm = np.random.default_rng(seed).permutation(len(rows))
    rows2 = [rows[i] for i in perm]
    t2, w2, l2 = zip(*rows2)
    v2 = Votes.from_arrays([f"t{i}" for i in t2], [f"w{i}" for i in w2], l2, classes=classes)
    r2 = aggregate(v2, method)
    assert np.allclose(r.posterior, r2.posterior, atol=1e-12, rtol=0)
    assert np.array_equal(r.answer, r2.answer)
    assert np.array_equal(r.counts, r2.counts)


def test_spatial_weight_is_learned_not_forced():
    # a checkerboard: neighbours disagree, so borrowing from them can only hurt -> weight ~ 0
    rng = np.random.default_rng(3)
    pattern = ["".join("y" if (r + c) % 2 else "n" for c in range(10)) for r in range(10)]
    amb = {(r, c): ["yes", "no", "yes" if rng.random() < .5 else "no"]
           for r in range(10) for c in range(10) if rng.random() < 0.2}
    checker = aggregate(grid_votes(pattern, ambiguous=amb), "spatial")
    blocks = aggregate(grid_votes(["yyyyynnnnn"] * 10, ambiguous=amb), "spatial")
    assert checker.extra["spatial_weight"] <= 0.1
    assert blocks.extra["spatial_weight"] >= 0.5


grid_tables = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
              st.sampled_from(["no", "yes", "maybe"])), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None)
@given(rows=grid_tables, seed=st.integers(0, 2**16))
def test_spatial_valid_and_row_order_free_on_a_grid(rows, seed):
    def build(rs):
        return Votes.from_arrays([f"18-{100 + x}-{200 + y}" for x, y, _, _ in rs],
                                 [f"w{w}" for _, _, w, _ in rs], [a for *_, a in rs],
                                 classes=["no", "yes"])
    v = build(rows)
    assert v.tile_xyz is not None
    r = aggregate(v, "spatial")
    assert np.isfinite(r.posterior).all() and np.allclose(r.posterior.sum(1), 1.0)
    assert 0.0 <= r.extra["spatial_weight"] <= 0.95
    perm = np.random.default_rng(seed).permutation(len(rows))
    r2 = aggregate(build([rows[i] for i in perm]), "spatial")
    assert np.allclose(r.posterior, r2.posterior, atol=1e-12, rtol=0)
