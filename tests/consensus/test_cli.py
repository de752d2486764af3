from __future__ import annotations

import csv
import io
import json

import geojson
from click.testing import CliRunner

from crowdsight.cli import main

from .conftest import replay_csvs


def _write(path, text):
    path.write_text(text)
    return path


GENERIC = ("task,worker,label,extra\n"
           "a,w1,yes,x\na,w2,yes,x\na,w3,no,x\n"
           "b,w1,no,x\nb,w2,no,x\nb,w3,no,x\n")


def test_aggregate_generic_csv(tmp_path):
    votes = _write(tmp_path / "votes.csv", GENERIC)
    out = tmp_path / "res.csv"
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(votes), "--out", str(out),
                                  "--method", "mv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0])[:5] == ["task", "label", "confidence", "p_no", "p_yes"]
    assert [(x["task"], x["label"]) for x in rows] == [("a", "yes"), ("b", "no")]
    assert float(rows[0]["confidence"]) == 2 / 3


def test_aggregate_to_stdout_default_method(tmp_path):
    votes = _write(tmp_path / "v.csv", GENERIC)
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(votes)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("task,label,confidence,p_no,p_yes")
    assert "method spatial" in r.stderr


def test_aggregate_mapswipe_with_geojson_and_volunteers(tmp_path):
    lines = ["task_id,user_id,result"]
    for x in range(4):
        for u in range(3):
            lines.append(f"18-{100 + x}-200,user{u},{1 if x < 2 else 0}")
    lines.append("18-104-200,user0,3")
    lines.append("18-104-200,user1,3")
    lines.append("18-104-200,user2,2")
    votes = _write(tmp_path / "ms.csv", "\n".join(lines) + "\n")
    gj, vol, out = tmp_path / "t.geojson", tmp_path / "vol.csv", tmp_path / "r.csv"
    r = CliRunner(env={"CROWDSIGHT_SECRET_KEY": "k"}).invoke(
        main, ["consensus", "aggregate", str(votes), "-o", str(out), "-m", "ds",
               "--geojson", str(gj), "--volunteers", str(vol), "--project", "demo"])
    assert r.exit_code == 0, r.output
    rows = {x["task"]: x for x in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows["18-100-200"]["label"] == "yes" and rows["18-103-200"]["label"] == "no"
    assert rows["18-104-200"]["label"] == "bad_imagery"
    assert "p_bad_imagery" in rows["18-100-200"]
    fc = geojson.loads(gj.read_text())
    assert fc.is_valid and len(fc["features"]) == 5 and fc["metadata"]["project"] == "demo"
    text = vol.read_text()
    assert "user0" not in text and text.startswith("volunteer,n_labels,accuracy")


def test_volunteers_need_a_secret(tmp_path):
    votes = _write(tmp_path / "v.csv", GENERIC)
    r = CliRunner(env={"CROWDSIGHT_SECRET_KEY": None}).invoke(
        main, ["consensus", "aggregate", str(votes), "--volunteers", str(tmp_path / "x.csv")])
    assert r.exit_code != 0 and "secret" in r.output


def test_bad_input_is_a_clean_error(tmp_path):
    votes = _write(tmp_path / "v.csv", "a,b\n1,2\n")
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(votes)])
    assert r.exit_code == 1 and "Error:" in r.output and "task,worker,label" in r.output
    good = _write(tmp_path / "g.csv", GENERIC)
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(good), "-m", "x"])
    assert r.exit_code == 2 and "choose one of" in r.output
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(good), "-m", "ds",
                                  "--param", "spatial_shrink=2"])
    assert r.exit_code == 1 and "no parameter" in r.output


def test_param_option(tmp_path):
    votes = _write(tmp_path / "v.csv", GENERIC)
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(votes), "-m", "gold",
                                  "--param", "strength=3"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["consensus", "aggregate", str(votes), "--param", "nope"])
    assert r.exit_code == 2


def test_methods_listing():
    r = CliRunner().invoke(main, ["consensus", "methods"])
    assert r.exit_code == 0 and "ds\t" in r.output and "(default)" in r.output


def test_replay(tmp_path):
    votes, tr = replay_csvs(tmp_path, seed=0, per_task=7, accuracy=0.85)
    r = CliRunner().invoke(main, ["consensus", "replay", votes, "--truth", tr,
                                  "--refit-every", "100"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["votes_baseline"] == 600 and 0 < s["votes_used"] < 600
    assert s["retired"] + s["unresolved"] + s["open"] == 120
