"""``crowdsight.__version__`` is read from the installed distribution when first used (not at
import: ``importlib.metadata`` would cost every command ~25-30 ms of start-up)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
from click.testing import CliRunner

import crowdsight
from crowdsight.cli import main


def test_version_is_the_distribution_s() -> None:
    assert crowdsight.__version__ == version("crowdsight")
    from crowdsight import __version__  # the from-import form goes through __getattr__ too

    assert __version__ == version("crowdsight")


def test_cli_version() -> None:
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == f"crowdsight, version {version('crowdsight')}"


def test_other_names_are_still_missing() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        crowdsight.nope  # noqa: B018


def test_importing_the_cli_does_not_read_the_version() -> None:
    code = ("import crowdsight, crowdsight.cli; "
            "print('__version__' in vars(crowdsight))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
