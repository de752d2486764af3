"""Fixtures for the labeler tests: every test that takes ``settings`` runs on SQLite and,
when it answers on 127.0.0.1:5432, PostgreSQL (a fresh database cloned from a migrated
template per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from crowdsight.settings import Settings
from labeler.app import create_app
from labeler.testing import database_urls, make_settings, migrated_database


def _params() -> list:
    return [pytest.param(b, marks=[pytest.mark.postgres] if b == "postgresql" else [], id=b)
            for b in database_urls()]


@pytest.fixture(params=_params())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with migrated_database(backend, tmp_path) as url:
        yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def make_client(settings: Settings) -> Iterator:
    """Factory for extra clients (other volunteers) on the same app settings."""
    opened: list[TestClient] = []

    def make(s: Settings | None = None) -> TestClient:
        c = TestClient(create_app(s or settings))
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)
