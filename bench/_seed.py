"""Helpers for the database micro-benchmarks (bench/labels_given.py, bench/claim_queue.py):
a migrated database with one live project, as raw rows (no manifest, no tile images)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa


def bench_project(url: str, now: datetime, *, redundancy: int = 5) -> sa.Engine:
    """Migrate ``url`` and insert project 1 (``bench``, a live find project, no gold); return
    an engine on it (the caller disposes of it)."""
    from labeler.db import make_engine
    from labeler.migrate import upgrade
    from labeler.models import Project

    upgrade(url)
    eng = make_engine(url, pool_size=1)
    with eng.begin() as c:
        c.execute(sa.insert(Project.__table__).values(
            slug="bench", name="bench", type="find", question="", help_text="", examples=[],
            answers=[{"value": "yes", "label": "yes"}], layers=[], redundancy=redundancy,
            retirement={}, gold_rate=0.0, priority="completion", block_cols=1,
            block_rows=1, context=False, max_points=0, status="live", created_at=now,
            updated_at=now))
    return eng
