"""``crowdsight ingest``, ``crowdsight tiles`` and ``crowdsight scene``: a thin click layer over
the ``ingest`` and ``tiles`` packages. Results on stdout; progress and errors on stderr."""

from __future__ import annotations

import glob
import json
from pathlib import Path
import click

GLOB_CHARS = set("*?[")


def _files(values: tuple[str, ...], what: str) -> list[Path]:
    """Comma lists and (quoted) glob patterns -> a list of paths, in the order given."""
    out: list[Path] = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if GLOB_CHARS & set(item) and "://" not in item and not item.startswith("/vsi"):
                matches = sorted(glob.glob(item))
                if not matches:
                    raise click.BadParameter(f"no files match {item!r}", param_hint=what)
                out.extend(Path(m) for m in matches)
            else:
                out.append(Path(item))
    return out


def _parse_layers(layer: tuple[str, ...], before: tuple[str, ...], after: tuple[str, ...],
                  files: tuple[str, ...]) -> dict[str, list[Path]]:
    layers: dict[str, list[Path]] = {}
    for spec in layer:
        name, eq, rest = spec.partition("=")
        if not eq or not name or not rest:
            raise click.BadParameter(f"{spec!r}: expected NAME=FILE[,FILE...]",
                                     param_hint="--layer")
        layers.setdefault(name.strip(), []).extend(_files((rest,), "--layer"))
    if before or after:
        if files:
            raise click.UsageError(
                "extra file arguments next to --before/--after; give several files as "
                "--before a.tif --before b.tif, a comma list, or a quoted glob "
                "(--before 'pre/*.tif')")
        if not (before and after):
            raise click.UsageError("--before and --after go together")
        layers["before"] = _files(before, "--before")
        layers["after"] = _files(after, "--after")
    elif files:
        layers.setdefault("image", []).extend(_files(files, "FILES"))
    if not layers:
        raise click.UsageError("no input: give FILES, --before/--after, or --layer NAME=FILE")
    return layers


def _bands(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected band numbers like 3,2,1",
                                 param_hint="--bands") from None


class _Progress:
    """The ingest's ``progress(done, total, stage)`` as one rich bar on stderr with tiles/s."""

    def __init__(self, quiet: bool) -> None:
        from crowdsight.cli._progress import Bars

        self.bars = Bars(quiet=quiet, unit="tiles", rate=True)

    def __enter__(self) -> "_Progress":
        self.bars.__enter__()
        self.bars.update("ingest", 0, None, "checking")
        return self

    def __call__(self, done: int, total: int, stage: str) -> None:
        self.bars.update("ingest", done, total, stage)

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)


def _fail(exc: Exception) -> click.ClickException:
    msg = str(exc).replace("\n", " ").strip() or type(exc).__name__
    return click.ClickException(msg)


@click.command()
@click.option("--project", required=True, help="Project slug: [a-z0-9][a-z0-9-]{0,62}.")
@click.option("--layer", "layer", multiple=True, metavar="NAME=FILE[,FILE...]",
              help="A named layer (repeatable). Several files form one mosaic.")
@click.option("--before", multiple=True, metavar="FILES",
              help="'Before' layer: repeat, comma-separate or quote a glob.")
@click.option("--after", multiple=True, metavar="FILES", help="'After' layer (see --before).")
@click.argument("files", nargs=-1)
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Tile store folder [default: CROWDSIGHT_TILE_STORE or DATA_DIR/tiles].")
@click.option("--zoom", type=click.IntRange(0, 24), default=None,
              help="Task zoom [default: from the source resolution].")
@click.option("--min-zoom", type=click.IntRange(0, 24), default=None,
              help="Lowest pyramid zoom [default: where the data fits in about one tile].")
@click.option("--tile-size", type=click.Choice(["256", "512"]), default="256",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["jpg", "webp", "png"]), default="jpg",
              show_default=True, help="png/webp keep transparency; jpg fills it with black.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="JPEG/WebP quality [default: 85 / 80].")
@click.option("--bands", default=None, metavar="B[,G,R]",
              help="Band numbers to show: 1 (grey) or 3 (red,green,blue), e.g. 3,2,1.")
@click.option("--resampling", type=click.Choice(["bilinear", "cubic", "lanczos", "nearest",
                                                  "average"]), default="bilinear",
              show_default=True)
@click.option("--aoi", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="GeoJSON polygon(s) in lon/lat limiting the work.")
@click.option("--jobs", type=click.IntRange(1, 512), default=None,
              help="Worker processes [default: all cores].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the work on a dask.distributed scheduler (e.g. tcp://host:8786).")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Reject rasters with more width*height*bands values "
                   "[default: CROWDSIGHT_MAX_RASTER_PIXELS].")
@click.option("--pmtiles", "want_pmtiles", is_flag=True,
              help="Also pack each layer into {store}/{project}/{layer}.pmtiles.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def ingest(project: str, layer: tuple[str, ...], before: tuple[str, ...],
           after: tuple[str, ...], files: tuple[str, ...], store: Path | None,
           zoom: int | None, min_zoom: int | None, tile_size: str, fmt: str,
           quality: int | None, bands: str | None, resampling: str, aoi: Path | None,
           jobs: int | None, scheduler: str | None, max_pixels: int | None,
           want_pmtiles: bool, quiet: bool) -> None:
    """Tile GeoTIFF/COG imagery (any CRS) into Web-Mercator XYZ tiles plus a manifest.

    \b
    Examples:
      crowdsight ingest --project joplin --before 'pre/*.tif' --after 'post/*.tif'
      crowdsight ingest --project bahamas landsat.tif --format png
      crowdsight ingest --project p --layer image=a.tif,b.tif --bands 3,2,1
    """
    from crowdsight.settings import Settings
    from ingest.errors import IngestError
    from ingest.pipeline import ingest as run_ingest
    from tiles.errors import TilesError

    settings = Settings.from_env()
    layers = _parse_layers(layer, before, after, files)
    aoi_obj = None
    if aoi is not None:
        try:
            aoi_obj = json.loads(aoi.read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{aoi}: not readable JSON ({exc})", param_hint="--aoi")
    store = store or settings.tile_store_path
    try:
        with _Progress(quiet) as progress:
            manifest = run_ingest(
                layers, store, project, zoom=zoom, min_zoom=min_zoom, tile_size=int(tile_size),
                fmt=fmt, quality=quality, bands=_bands(bands), aoi=aoi_obj, jobs=jobs,
                scheduler=scheduler, max_pixels=max_pixels or settings.max_raster_pixels,
                resampling=resampling, progress=progress)
        packed = []
        if want_pmtiles:
            from tiles.pmtiles import pack

            for name in manifest["layers"]:
                out = Path(store) / project / f"{name}.pmtiles"
                packed.append(pack(Path(store), project, name, out)["path"])
    except (IngestError, TilesError) as exc:
        raise _fail(exc) from None
    click.echo(summary(manifest, Path(store), packed))


def summary(manifest: dict, store: Path, packed: list[str] | None = None) -> str:
    """The one-line result of an ingest."""
    layers = manifest["layers"]
    st = manifest.get("ingest_stats", {})
    per = ", ".join(f"{n} {v['tile_count']}" for n, v in layers.items())
    total = sum(v["tile_count"] for v in layers.values())
    secs = st.get("seconds") or 0.0
    rate = st.get("tiles_written", 0) / secs if secs else 0.0
    pair = (f", {manifest['complete_task_count']} with all layers" if len(layers) > 1 else "")
    line = (f"{manifest['project']}: {total} tiles ({per}), zooms {manifest['min_zoom']}-"
            f"{manifest['task_zoom']}, {manifest['task_count']} task tiles at z"
            f"{manifest['task_zoom']}{pair}; {st.get('tiles_written', 0)} written, "
            f"{st.get('tiles_skipped_existing', 0)} reused in {secs:.1f} s ({rate:,.0f} tiles/s)"
            f" -> {store / manifest['project'] / 'manifest.json'}")
    if packed:
        line += " + " + ", ".join(packed)
    return line


@click.group()
def tiles() -> None:
    """Tile store utilities."""


@tiles.command("pmtiles")
@click.option("--project", required=True)
@click.option("--layer", required=True)
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Tile store folder [default: CROWDSIGHT_TILE_STORE or DATA_DIR/tiles].")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output .pmtiles file.")
def tiles_pmtiles(project: str, layer: str, store: Path | None, out: Path) -> None:
    """Pack a layer's tile pyramid into one PMTiles archive."""
    from crowdsight.settings import Settings
    from tiles.errors import TilesError
    from tiles.pmtiles import pack

    store = store or Settings.from_env().tile_store_path
    try:
        info = pack(store, project, layer, out)
    except TilesError as exc:
        raise _fail(exc) from None
    click.echo(f"{info['path']}: {info['tiles']} {info['format']} tiles, zooms "
               f"{info['min_zoom']}-{info['max_zoom']}, {info['bytes']:,} bytes")


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
