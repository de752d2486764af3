"""``crowdsight consensus replay``: the default policy and --final-threshold."""

from __future__ import annotations

import json

from click.testing import CliRunner

from consensus import RetirementPolicy
from crowdsight.cli import main

from .conftest import replay_csvs


def _files(tmp_path):
    return replay_csvs(tmp_path, seed=1, per_task=8, accuracy=0.8)


def _run(args):
    r = CliRunner().invoke(main, ["consensus", "replay", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_replay_defaults_to_the_service_policy(tmp_path):
    v, t = _files(tmp_path)
    s = _run([v, "--truth", t, "--refit-every", "100"])
    assert s["policy"] == RetirementPolicy().as_dict()
    assert s["method"] == "spatial" and "retired_on_refit" in s


def test_replay_final_threshold(tmp_path):
    v, t = _files(tmp_path)
    base = ["--truth", t, "--refit-every", "100", "--threshold", "0.97", "--max-votes", "8"]
    const = _run([v, *base])
    relax = _run([v, *base, "--final-threshold", "0.6"])
    assert relax["policy"]["final_threshold"] == 0.6 and "final_threshold" not in const["policy"]
    assert relax["policy"]["threshold"] == 0.97 and relax["policy"]["max_votes"] == 8
    # a relaxing threshold never asks for more answers, and here it saves some
    assert relax["votes_used"] < const["votes_used"]
    r = CliRunner().invoke(main, ["consensus", "replay", v, *base, "--final-threshold", "0.99"])
    assert r.exit_code != 0 and "final_threshold" in r.output
