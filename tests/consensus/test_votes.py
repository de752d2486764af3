from __future__ import annotations

import io

import numpy as np
import pytest

from consensus import Votes, VotesError, read_truth_csv, read_votes_csv, truth_array
from consensus.votes import natural_key, parse_xyz


def test_from_arrays_factorises_sorted_and_compact():
    v = Votes.from_arrays(["b", "a", "b"], ["w2", "w1", "w1"], ["1", "0", "maybe"])
    assert list(v.task_ids) == ["a", "b"]
    assert list(v.worker_ids) == ["w1", "w2"]
    assert v.classes == ("0", "1") and v.labels == ("0", "1", "maybe")
    assert v.task.dtype == np.int32 and v.worker.dtype == np.int32 and v.label.dtype == np.int8
    assert v.task.tolist() == [1, 0, 1] and v.label.tolist() == [1, 0, 2]
    assert v.label_counts().tolist() == [[1, 0, 0], [0, 1, 1]]


def test_classes_sorted_naturally():
    v = Votes.from_arrays(["a"] * 3, ["x", "y", "z"], ["10", "2", "1"])
    assert v.classes == ("1", "2", "10")
    assert sorted(["b", "10", "2"], key=natural_key) == ["2", "10", "b"]


def test_unknown_label_is_an_error_that_says_what_to_do():
    with pytest.raises(VotesError, match="neither classes"):
        Votes.from_arrays(["a", "a"], ["x", "y"], ["yes", "perhaps"], classes=["yes", "no"])


def test_only_maybe_needs_explicit_classes():
    with pytest.raises(VotesError, match="classes"):
        Votes.from_arrays(["a"], ["x"], ["maybe"])
    v = Votes.from_arrays(["a"], ["x"], ["maybe"], classes=["no", "yes"])
    assert v.labels == ("no", "yes", "maybe")


def test_parse_xyz():
    assert parse_xyz(["18-1-2", "18/3/4"]).tolist() == [[18, 1, 2], [18, 3, 4]]
    assert parse_xyz(["18-1-2", "nope"]) is None
    assert parse_xyz(["2-4-0"]) is None        # x outside the zoom-2 grid


def test_generic_csv_ignores_other_columns():
    text = "id,task,worker,label,comment\n1,t1,w1,yes,x\n2,t1,w2,no,y\n"
    v = read_votes_csv(io.StringIO(text))
    assert v.n_votes == 2 and v.classes == ("no", "yes") and v.tile_xyz is None


def test_mapswipe_csv_maps_codes_and_grid():
    text = ("task_id,user_id,result,timestamp\n"
            "18-5-7,u1,1,2024-01-01T00:00:00Z\n18-5-7,u2,2,2024-01-01T00:00:01Z\n"
            "18-5-8,u1,3,2024-01-01T00:00:02Z\n18-5-8,u2,0,2024-01-01T00:00:03Z\n")
    v = read_votes_csv(io.StringIO(text))
    assert v.classes == ("no", "yes", "bad_imagery")
    assert v.labels == ("no", "yes", "bad_imagery", "maybe")
    assert v.tile_xyz.tolist() == [[18, 5, 7], [18, 5, 8]]
    assert np.all(np.diff(v.time) == 1.0)


def test_mapswipe_bad_code():
    with pytest.raises(VotesError, match="MapSwipe result '7'"):
        read_votes_csv(io.StringIO("task_id,user_id,result\n18-1-1,u,7\n"))


def test_bad_header_and_empty():
    with pytest.raises(VotesError, match="task,worker,label"):
        read_votes_csv(io.StringIO("a,b\n1,2\n"))
    with pytest.raises(VotesError, match="no rows"):
        read_votes_csv(io.StringIO("task,worker,label\n"))
    with pytest.raises(VotesError, match="cannot open"):
        read_votes_csv("/nonexistent/votes.csv")


def test_gold_and_truth_alignment(tmp_path):
    v = Votes.from_arrays(["a", "b", "c"], ["x", "x", "y"], ["yes", "no", "no"],
                          gold={"b": "no", "zzz": "yes"})
    assert v.gold_task.tolist() == [1] and v.gold_class.tolist() == [0]
    assert v.gold_dict() == {"b": "no"}
    with pytest.raises(VotesError, match="not a class"):
        v.with_gold({"a": "perhaps"})
    p = tmp_path / "truth.csv"
    p.write_text("task,label\na,yes\nc,no\nq,no\n")
    assert truth_array(read_truth_csv(p), v).tolist() == [1, -1, 0]


def test_from_indices_validates():
    with pytest.raises(VotesError, match="out of range"):
        Votes.from_indices(np.array([0, 1]), np.array([0, 5]), np.array([0, 1]), n_workers=2)
