"""The CLI starts OpenBLAS with one thread for the commands that gain nothing from BLAS
threads (``crowdsight.cli.SINGLE_BLAS``), before their modules import numpy."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from crowdsight.cli import SINGLE_BLAS, main


@pytest.fixture
def no_blas_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "x")  # (so that teardown restores the original)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")


@pytest.mark.parametrize("command", ["ingest", "serve"])
def test_tiling_and_serving_start_openblas_with_one_thread(no_blas_env: None, command: str) -> None:
    assert command in SINGLE_BLAS
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert os.environ.get("OPENBLAS_NUM_THREADS") == "1"


def test_consensus_keeps_openblas_default(no_blas_env: None) -> None:
    result = CliRunner().invoke(main, ["consensus", "--help"])
    assert result.exit_code == 0, result.output
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_a_value_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    result = CliRunner().invoke(main, ["ingest", "--help"])
    assert result.exit_code == 0, result.output
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"
