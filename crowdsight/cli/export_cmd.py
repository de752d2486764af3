"""``crowdsight export``: a project's results as GeoJSON / CSV / GeoPackage, or a map sheet.

A thin layer over :mod:`labeler.dashboard.results` — the same code path as the analyst
dashboard's download buttons, so a file from the CLI and one from the browser agree.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

LAYERS = ("tiles", "structures", "villages", "volunteers")
FORMATS = ("geojson", "csv", "gpkg", "png", "pdf")


def _infer_format(out: str) -> str | None:
    ext = Path(out).suffix.lower().lstrip(".")
    return {"json": "geojson", "geojson": "geojson", "csv": "csv", "gpkg": "gpkg",
            "png": "png", "pdf": "pdf"}.get(ext)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", "slug", required=True, help="Project slug.")
@click.option("--layer", type=click.Choice(LAYERS), default="tiles", show_default=True,
              help="What to export (png/pdf map sheets are of the villages).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="File format (default: from the --out extension; geojson on stdout, "
                   "csv for volunteers).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Output file ('-' for stdout).")
@click.option("--method", default=None,
              help="Consensus method (mv, ds, onecoin, gold, spatial; default: spatial).")
def export(slug: str, layer: str, fmt: str | None, out: str, method: str | None) -> None:
    """Export a project's consensus results.

    \b
    Examples:
      crowdsight export --project demo --layer tiles --out tiles.geojson
      crowdsight export --project demo --layer villages --format gpkg --out villages.gpkg
      crowdsight export --project demo --layer villages --format pdf --out sheet.pdf
      crowdsight export --project demo --layer volunteers --out volunteers.csv
    """
    from rich.console import Console

    from crowdsight.settings import Settings, SettingsError

    err = Console(stderr=True)
    fmt = fmt or (_infer_format(out) if out != "-" else None)
    if fmt is None and (layer == "volunteers" or out == "-"):
        fmt = "csv" if layer == "volunteers" else "geojson"
    if fmt is None:
        raise click.UsageError("say which format with --format (geojson, csv, gpkg, png, pdf) "
                               "or give --out a known extension")
    if fmt in ("png", "pdf") and layer == "tiles":
        layer = "villages"  # a map sheet is always of the villages
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc

    from consensus.errors import ConsensusError
    from labeler.dashboard import results as R
    from labeler.db import make_engine
    from labeler.errors import LabelerError
    from labeler.migrate import check_migrated

    try:
        R.check_export(layer, fmt)
    except LabelerError as exc:
        raise click.UsageError(exc.message) from exc
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with err.status(f"reading project {slug!r}…"):
            check_migrated(engine)
            with engine.connect() as conn:
                data = R.load_project_data(conn, slug)
        with err.status(f"computing consensus ({method or R.default_method()})…"):
            secret = settings.resolved_secret_key()
            res = R.compute_results(data, method, secret=secret)
        if fmt != "png" and fmt != "pdf" and layer != "volunteers" and \
                not getattr(res, layer):
            err.print(f"[yellow]note:[/] the {layer} layer of {slug!r} is empty")
        with err.status(f"writing {layer} as {fmt}…"):
            if out == "-":
                R.write_export(res, layer, fmt, sys.stdout.buffer,
                               tile_store=settings.tile_store_path, secret=secret)
                sys.stdout.buffer.flush()
            else:
                path = Path(out)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        R.write_export(res, layer, fmt, fh, tile_store=settings.tile_store_path,
                                       secret=secret)
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
    except (LabelerError, ConsensusError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from exc
    finally:
        engine.dispose()
    if out != "-":
        n = {"tiles": len(res.tiles), "structures": len(res.structures),
             "villages": len(res.villages), "volunteers": len(res.volunteers)}[layer]
        err.print(f"[green]wrote[/] {out} ({layer}, {fmt}, {n} features, method {res.method})")
        click.echo(str(Path(out).resolve()))
