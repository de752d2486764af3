"""Helpers for bench/consensus.py: load the shared crowd datasets (votes + truth)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from consensus.votes import Votes, read_truth_csv, read_votes_csv, truth_array

ROOT = Path(__file__).resolve().parents[1]


def crowd_root() -> Path:
    env = os.environ.get("CROWDSIGHT_SHARED_DIR")
    return (Path(env) if env else ROOT.parent / "shared") / "data" / "crowd"


def datasets() -> list[str]:
    root = crowd_root()
    return sorted(p.name for p in root.iterdir() if (p / "votes.csv").exists()) \
        if root.is_dir() else []


def load(name: str) -> tuple[Votes, np.ndarray, dict]:
    """Votes, per-task truth index (-1 unknown) and the raw truth dict."""
    d = crowd_root() / name
    truth = read_truth_csv(d / "truth.csv")
    votes = read_votes_csv(d / "votes.csv", tile_xyz=False)
    return votes, truth_array(truth, votes), truth


def accuracy(answer: np.ndarray, truth_idx: np.ndarray) -> float:
    m = truth_idx >= 0
    return float((answer[m] == truth_idx[m]).mean())
