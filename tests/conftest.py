"""Fixtures shared by every test package.

Sub-packages (tests/tiles, tests/ingest, tests/consensus, tests/labeler, tests/integration)
keep their own conftest.py for their own fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``../shared`` beside the project (override with CROWDSIGHT_SHARED_DIR)."""
    env = os.environ.get("CROWDSIGHT_SHARED_DIR")
    return Path(env) if env else ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "data").is_dir():
        pytest.skip(f"shared data not found at {root}/data (set CROWDSIGHT_SHARED_DIR); "
                    "this test needs the real imagery / crowd datasets")
    return root / "data"


@pytest.fixture(scope="session")
def imagery_dir(shared_dir: Path) -> Path:
    return shared_dir / "imagery"


@pytest.fixture(scope="session")
def crowd_dir(shared_dir: Path) -> Path:
    return shared_dir / "crowd"
