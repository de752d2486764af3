"""``crowdsight ingest``, ``crowdsight tiles`` and ``crowdsight scene``: a thin click layer over
the ``ingest`` and ``tiles`` packages. Results on stdout, progress and errors on stderr."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def scene() -> None:
    """Synthetic before/after scenes for demos and tests."""


@scene.command("generate")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=2048, show_default=True, type=click.IntRange(64, 16384),
              help="Edge of the square 'before' image in pixels (0.5 m each).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
def scene_generate(out_dir: Path, size: int, seed: int) -> None:
    """Write before.tif, after.tif and truth.geojson into OUT_DIR."""
    from ingest.synthetic import generate_scene

    s = generate_scene(out_dir, size=size, seed=seed)
    counts = ", ".join(f"{k} {v}" for k, v in s.counts.items())
    click.echo(f"scene {size}x{size} seed {seed}: {s.before} ({s.crs}), {s.after} "
               f"({s.after_crs}), {s.truth} ({counts})")


@click.command()
def ingest() -> None:
    """Ingest GeoTIFF/COG imagery into XYZ tiles (being built: issue 2)."""
    raise click.ClickException("ingest is not implemented yet")


@click.group()
def tiles() -> None:
    """Tile store utilities."""
