"""``crowdsight demo``: a complete campaign on this machine, offline, in one command.

A thin layer over :func:`labeler.dashboard.researcher_demo.setup_demo`, then the web service
(uvicorn). Progress goes to stderr; the URLs (with a demo researcher token) to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

STAGES = {"scene": "scene", "ingest": "tiles", "database": "database",
          "volunteers": "volunteers"}


class _Progress:
    """The demo's ``progress(stage, done, total)`` as rich bars on stderr, one per stage."""

    def __init__(self) -> None:
        from crowdsight.cli._progress import Bars

        self.bars = Bars(label_width=11)

    def __enter__(self) -> "_Progress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:  # the setup finished: every stage is done
            for key in self.bars.keys():
                self.bars.finish(key)
        self.bars.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        name = STAGES.get(stage, stage)
        for key in self.bars.keys():  # stages run one after another
            if key != name:
                self.bars.finish(key)
        self.bars.update(name, done, total)


@click.command()
@click.option("--before", "before", multiple=True, metavar="FILES",
              help="'Before' GeoTIFF(s): repeat, comma-separate or quote a glob "
                   "(as for crowdsight ingest). Default: a generated synthetic scene.")
@click.option("--after", "after", multiple=True, metavar="FILES",
              help="'After' GeoTIFF(s) (with --before).")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="GeoJSON points with properties.state intact|damaged|destroyed for gold "
                   "tiles and --simulate with your own imagery.")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(64, 8192),
              help="Edge of the synthetic scene in pixels (0.5 m each).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--simulate", "simulate_n", default=0, show_default=True,
              type=click.IntRange(0, 500), help="Simulated volunteers labelling the project.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where everything lives [CROWDSIGHT_DATA_DIR, default ./crowdsight-data].")
@click.option("--no-serve", is_flag=True, help="Only set up; do not start the server.")
def demo(before: tuple[str, ...], after: tuple[str, ...], truth: Path | None, size: int,
         seed: int, simulate_n: int, host: str, port: int, data_dir: Path | None,
         no_serve: bool) -> None:
    """Build a demo project and serve it: volunteer page, analyst dashboard, researcher pages.

    Offline and idempotent: re-running reuses the data directory.
    """
    from crowdsight.cli.ingest_cmd import _files
    from crowdsight.settings import Settings
    from labeler.dashboard.researcher_demo import setup_demo

    if bool(before) != bool(after):
        raise click.UsageError("--before and --after go together")
    before_files = _files(before, "--before") if before else None
    after_files = _files(after, "--after") if after else None
    overrides = {"data_dir": data_dir} if data_dir else {}
    settings = Settings.from_env(**overrides)
    started = time.perf_counter()
    try:
        with _Progress() as progress:
            result = setup_demo(settings, before=before_files, after=after_files, truth=truth, size=size, seed=seed,
                                simulate_n=simulate_n, progress=progress)
    except Exception as exc:  # noqa: BLE001 - domain errors from ingest/labeler: one clear line
        from ingest.errors import IngestError
        from labeler.errors import LabelerError

        if isinstance(exc, (IngestError, LabelerError, ValueError)):
            raise click.ClickException(str(exc)) from exc
        raise
    setup_s = time.perf_counter() - started
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    click.echo(f"[demo] setup took {setup_s:.1f} s ({parts}); project '{result.slug}': "
               f"{result.tiles} tiles, {result.gold} gold, {result.tutorial} tutorial"
               + (f", {result.simulated_volunteers} simulated volunteers added "
                  f"{result.labels} labels" if result.simulated_volunteers else ""), err=True)
    if simulate_n and before_files and truth is None:
        click.echo("[demo] --simulate needs ground truth for your imagery (--truth POINTS.geojson "
                   "with properties.state intact|damaged|destroyed); no volunteers simulated",
                   err=True)
    if no_serve:
        _print_urls(host, port, result.slug, result.token)
        return
    _serve(settings, host, port, result.slug, result.token)


def _print_urls(host: str, port: int, slug: str, token: str) -> None:
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    click.echo(f"volunteer page:    {base}/")
    click.echo(f"analyst dashboard: {base}/analyst/{slug}?token={token}")
    click.echo(f"researcher pages:  {base}/researcher/?token={token}#p={slug}")
    sys.stdout.flush()


def _serve(settings, host: str, port: int, slug: str, token: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import uvicorn

    from labeler.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            server_header=False)
    server = uvicorn.Server(config)

    async def run() -> None:
        serve = asyncio.create_task(server.serve())
        while not server.started:
            if serve.done():
                try:
                    await serve  # uvicorn logged the reason (e.g. address already in use)
                except SystemExit:
                    pass
                raise click.ClickException(
                    f"the server could not start on {host}:{port} (see the message above); "
                    "try another --port (0 picks a free one)")
            await asyncio.sleep(0.05)
        bound = port
        for s in (server.servers or []):
            for sock in s.sockets:
                bound = sock.getsockname()[1]
                break
        _print_urls(host, bound, slug, token)
        click.echo("[demo] serving; press Ctrl+C to stop", err=True)
        await serve

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # uvicorn exits on startup failures (it logged the reason)
        if server.started:
            raise
        raise click.ClickException(
            f"the server could not start on {host}:{port} (see the message above); try "
            "another --port (0 picks a free one)") from exc
    finally:
        runner = getattr(app.state, "researcher_job_runner", None)
        if runner is not None:
            runner.shutdown(wait=False)
