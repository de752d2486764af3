"""Fixtures for the dashboard (analyst + researcher) browser tests.

Inherits the harness of ``tests/browser/conftest.py`` (Debian chromium, ``serve``, the offline
guard, ``labeler_settings`` on SQLite and PostgreSQL, ``shoot``). Adds:

- ``dashboard_url``: the labeler service (with the dashboard routes) on a free port;
- ``tokens``: bearer tokens for the roles ``analyst``, ``researcher`` and ``admin``;
- ``scene_project``: a real project built from the synthetic before/after scene (ingest +
  manifest) with simulated volunteers' votes and one expert decision;
- ``sign_in(page, path, role)``: opens a dashboard page with ``?token=`` (the demo's login link).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa


@pytest.fixture
def dashboard_url(serve: Callable[[Any], str], labeler_settings: Any) -> str:
    from labeler.app import create_app

    return serve(create_app(labeler_settings)).rstrip("/")


@pytest.fixture
def tokens(labeler_settings: Any) -> dict[str, str]:
    from labeler.testing import create_token

    return {role: create_token(labeler_settings, role, f"browser-{role}")
            for role in ("analyst", "researcher", "admin")}


@dataclass
class SceneProject:
    slug: str
    tiles: list[dict[str, Any]]  # id, z, x, y, west, south, east, north
    truth: dict[int, str]  # tile id -> "yes" / "no"
    votes: int
    reviewed_tile: int


@pytest.fixture
def scene_project(labeler_settings: Any, tmp_path: Path) -> SceneProject:
    from labeler.dashboard import analyst_testing as AT
    from labeler.dashboard.researcher_review import decide
    from labeler.db import make_engine
    from labeler.projects import config_from_row, get_row

    slug = "scene"
    engine = make_engine(labeler_settings.resolved_database_url, pool_size=1)
    try:
        info = AT.scene_project(engine, labeler_settings.tile_store_path, tmp_path, slug,
                                size=768, seed=3)
        tiles = AT.tile_ids(engine, slug)
        damaged = AT.damaged_tiles(info["truth"], tiles)
        truth = {t["id"]: ("yes" if t["id"] in damaged else "no") for t in tiles}
        n = AT.simulate_crowd(engine, slug, truth, n_volunteers=9, coverage=0.9, seed=5)
        with engine.begin() as conn:
            # review the most-voted tile, so the panel has votes and a decision to show
            counts = dict(conn.execute(sa.text(
                "SELECT tile_id, COUNT(*) FROM labels GROUP BY tile_id")).all())
            reviewed = max(counts, key=lambda t: (truth[t] == "yes", counts[t], -t))
            decide(conn, config_from_row(get_row(conn, slug)), reviewed, answer="bad_imagery",
                   note="cloud shadow", actor="browser-test")
    finally:
        engine.dispose()
    return SceneProject(slug, tiles, truth, n, reviewed)


@pytest.fixture
def sign_in(dashboard_url: str, tokens: dict[str, str]) -> Callable[..., None]:
    def go(page: Any, path: str, role: str = "analyst") -> None:
        sep = "&" if "?" in path else "?"
        page.goto(f"{dashboard_url}{path}{sep}token={tokens[role]}")

    return go
