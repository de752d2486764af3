"""The ``crowdsight`` command line: a thin click layer over the packages.

Each command group lives in its own module under ``crowdsight.cli`` and is loaded
lazily, so ``crowdsight --help`` stays fast and a broken optional dependency only
affects its own command. Results go to stdout, progress and messages to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import click


# command name -> "module:attribute" (all modules live in crowdsight.cli)
COMMANDS: dict[str, str] = {
    "ingest": "crowdsight.cli.ingest_cmd:ingest",
    "tiles": "crowdsight.cli.ingest_cmd:tiles",
    "scene": "crowdsight.cli.ingest_cmd:scene",
    "db": "crowdsight.cli.labeler_cmd:db",
    "serve": "crowdsight.cli.labeler_cmd:serve",
    "project": "crowdsight.cli.labeler_cmd:project",
    "token": "crowdsight.cli.labeler_cmd:token",
    "consensus": "crowdsight.cli.consensus_cmd:consensus",
    "export": "crowdsight.cli.export_cmd:export",
    "demo": "crowdsight.cli.demo_cmd:demo",
}


#: Commands whose numpy/OpenCV work gains nothing from BLAS threads (tile rendering and
#: encoding, the web service): OpenBLAS is started with one thread for them. With its
#: default of one thread per core, numpy's and OpenCV's OpenBLAS each start a pool at import
#: whose threads spin for a while: about 0.15-0.25 s of CPU per process here (`crowdsight
#: ingest` on Joplin: 1.2 -> 1.0 s of CPU), every uvicorn worker and ingest process alike.
#: A value the user set is kept; the consensus commands keep OpenBLAS's default.
SINGLE_BLAS = frozenset({"ingest", "tiles", "scene", "serve", "demo", "db", "project", "token"})


def _single_blas() -> None:
    """Start OpenBLAS with one thread (before numpy is first imported; see SINGLE_BLAS)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = []
        for name in COMMANDS:
            module, _ = COMMANDS[name].split(":")
            if importlib.util.find_spec(module) is not None:
                names.append(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        if cmd_name in SINGLE_BLAS:
            _single_blas()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crowdsight", prog_name="crowdsight")
def main() -> None:
    """crowdsight: crowdsourced analysis of satellite imagery.

    Configuration comes from CROWDSIGHT_* environment variables
    (see the README, "Configuration").
    """

