"""The ``crowdsight`` command line: a thin click layer over the packages.

Each command group lives in its own module under ``crowdsight.cli`` and is loaded
lazily, so ``crowdsight --help`` stays fast and a broken optional dependency only
affects its own command. Results go to stdout, progress and messages to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from crowdsight import __version__

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
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crowdsight")
def main() -> None:
    """crowdsight: crowdsourced analysis of satellite imagery.

    Configuration comes from CROWDSIGHT_* environment variables
    (see the README, "Configuration").
    """

