"""``ingest()``: layers of GeoTIFFs -> XYZ tile pyramid + manifest (see docs/ingest.md)."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import queue
import shutil
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import rasterio

from crowdsight import __version__
from ingest.errors import (BandError, BusyError, IngestError, NoOverlapError, OptionError,
                           StoreNotWritableError, store_writes)
from ingest.render import (BlockJob, BlockResult, BlockWork, LayerSpec, SharedSources, block_dir,
                           block_levels, cv2_single_threaded, downsample2, encode_tile,
                           open_sources, plan_block, preload, record_path, render_block,
                           render_block_in_worker, work_dir)
from ingest.sources import (GDAL_ENV, SourceInfo, check_bands, describe, percentile_stretch,
                            prehash, with_digest)
from tiles.encode import check_format, media_type
from tiles.errors import InvalidTileError, StoreError, TilesError
from tiles.grid import (MAX_ZOOM, TILE_SIZES, morton, rounded, tile_bounds, tiles_in_bounds,
                        zoom_for_resolution)
from tiles.store import TileStore, atomic_write_json, check_layer, check_project

ProgressFn = Callable[[int, int, str], None]
MANIFEST_FORMAT = "crowdsight-manifest/1"
RENDER_VERSION = 6  # bump when tile rendering changes, so old tiles are re-rendered
DEFAULT_MAX_PIXELS = 2_000_000_000
RESAMPLINGS = ("nearest", "bilinear", "cubic", "lanczos", "average")


def ingest(layers: dict[str, list[Path]], store: Path, project: str, *,
           zoom: int | None = None, min_zoom: int | None = None, tile_size: int = 256,
           fmt: str = "jpg", quality: int | None = None, bands: list[int] | None = None,
           aoi: dict | None = None, jobs: int | None = None, scheduler: str | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS, resampling: str = "bilinear",
           block: int | None = None, progress: ProgressFn | None = None,
           workers: str = "auto") -> dict:
    """Tile every layer into ``{store}/{project}/{layer}/{z}/{x}/{y}.{fmt}``; return the manifest.

    ``layers`` maps layer names to GeoTIFF/COG paths (several files = one mosaic), e.g.
    ``{"before": [...], "after": [...]}`` or ``{"image": [...]}``. All layers share one task
    zoom (computed from the finest source unless ``zoom`` is given) and one pyramid down to
    ``min_zoom``. Re-running with the same sources and options skips finished work.
    ``progress(done, total, stage)`` counts task-zoom tiles considered. ``workers``: how a
    local run with ``jobs`` > 1 is parallel — ``"threads"``, ``"processes"``, or ``"auto"``
    (threads for runs of at most ``THREADS_UP_TO_BLOCKS_PER_JOB`` blocks per job, else
    processes; see docs/ingest.md).

    Raises an :class:`~ingest.errors.IngestError` subclass naming the file and the problem;
    on error no manifest is written or changed.
    """
    started = time.perf_counter()
    report = progress or (lambda done, total, stage: None)
    try:
        check_project(project)
    except InvalidTileError as exc:
        raise OptionError(f"--project: {exc}") from None
    if not layers:
        raise OptionError("no input: give at least one layer with GeoTIFF files")
    for name, files in layers.items():
        try:
            check_layer(name)
        except InvalidTileError as exc:
            raise OptionError(str(exc)) from None
        if not files:
            raise OptionError(f"layer {name!r} has no files")
    if tile_size not in TILE_SIZES:
        raise OptionError(f"--tile-size {tile_size}: choose 256 or 512")
    if workers not in WORKERS:
        raise OptionError(f"workers={workers!r}: choose one of {', '.join(WORKERS)}")
    try:
        ext = check_format(fmt)
    except TilesError as exc:
        raise OptionError(f"--format: {exc}") from None
    if resampling not in RESAMPLINGS:
        raise OptionError(f"resampling {resampling!r}: choose one of {', '.join(RESAMPLINGS)}")
    if zoom is not None and not 0 <= zoom <= MAX_ZOOM:
        raise OptionError(f"--zoom {zoom}: must be between 0 and {MAX_ZOOM}")
    if min_zoom is not None and not 0 <= min_zoom <= MAX_ZOOM:
        raise OptionError(f"--min-zoom {min_zoom}: must be between 0 and {MAX_ZOOM}")
    aoi_geom = _parse_aoi(aoi) if aoi is not None else None

    # the sources stay open from their description to the end of the run: the render
    # threads borrow them (see SharedSources). Every open and read of a source sets GDAL_ENV
    # where it happens (open_raster, the stretch's sample, the render); this thread's run
    # keeps one GDAL environment up so that those nested ones are cheap to enter (without
    # it each sets up and tears down its own: ~0.3 ms per open, measured)
    with SharedSources() as shared, rasterio.Env(**GDAL_ENV):
        # 1. open, validate and describe every source (nothing written yet) ------------------
        infos: dict[str, list[SourceInfo]] = {}
        hash_cache_path = Path(store) / project / ".crowdsight" / "sha256-cache.json"
        hash_cache = _read_json(hash_cache_path)
        for name, files in layers.items():
            # every file validated before any is hashed: one refused (not a GeoTIFF, too
            # large, no georeferencing) is not read in full first
            infos[name] = [describe(Path(f), max_pixels, keep=shared.keep, digest=False)
                           for f in files]
            report(0, 0, f"checked {name}")
        prehash([Path(i.path) for li in infos.values() for i in li], hash_cache,
                _jobs(jobs) if scheduler is None else 1)
        infos = {name: [with_digest(i, hash_cache) for i in li] for name, li in infos.items()}
        layer_bands = {name: _layer_bands(name, li, bands) for name, li in infos.items()}

        footprints = {name: _union_bounds(i.bounds_lonlat for i in li)
                      for name, li in infos.items()}
        names = list(infos)
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                if _intersection(footprints[a], footprints[b]) is None:
                    raise NoOverlapError(
                        f"layers {a!r} ({_fmt_bounds(footprints[a])}) and {b!r} "
                        f"({_fmt_bounds(footprints[b])}) do not overlap; check that the files "
                        "show the same place", None)

        # 2. zooms ------------------------------------------------------------------------
        if zoom is None:
            merc = min(i.merc_res for li in infos.values() for i in li)
            zoom = zoom_for_resolution(merc, 0.0, tile_size)  # Mercator metres: latitude 0
        all_bounds = _union_bounds(footprints.values())
        if min_zoom is None:
            min_zoom = _default_min_zoom(all_bounds, zoom)
        if min_zoom > zoom:
            raise OptionError(f"--min-zoom {min_zoom} is above the task zoom {zoom}")

        # 3. task tiles per layer (footprint of each source, clipped to the AOI) -------------
        candidates: dict[str, set[tuple[int, int]]] = {}
        for name, li in infos.items():
            cand: set[tuple[int, int]] = set()
            for i in li:
                cand.update(tiles_in_bounds(i.bounds_lonlat, zoom))
            if aoi_geom is not None:
                cand = _clip_to_aoi(cand, zoom, aoi_geom)
                if not cand:
                    raise NoOverlapError(f"the area of interest does not overlap layer {name!r} "
                                         f"({_fmt_bounds(footprints[name])})")
            candidates[name] = cand
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                if not candidates[a] & candidates[b]:
                    raise NoOverlapError(f"layers {a!r} and {b!r} share no z{zoom} tile"
                                         f"{' inside the area of interest' if aoi_geom else ''}; "
                                         "check that the files show the same place")

        # 4. store, fingerprints, jobs -----------------------------------------------------
        ts = TileStore(store)
        try:
            ts.check_writable(project)
        except StoreError as exc:
            raise StoreNotWritableError(str(exc)) from None
        with _project_lock(ts, project):
            B = block or max(1, min(2048 // tile_size, 1 << zoom))
            B = 1 << int(math.log2(B))
            specs: dict[str, LayerSpec] = {}
            jobs_by_layer: dict[str, list[BlockJob]] = {}
            stretches: dict[str, dict | None] = {}
            fresh: set[str] = set()
            for name, li in infos.items():
                stretch = percentile_stretch(li, layer_bands[name])
                stretches[name] = stretch
                spec = LayerSpec(
                    name=name, sources=tuple(li), bands=layer_bands[name],
                    stretch_low=tuple(stretch["low"]) if stretch else None,
                    stretch_high=tuple(stretch["high"]) if stretch else None,
                    ext=ext, quality=quality, tile_size=tile_size, task_zoom=zoom,
                    min_zoom=min_zoom, resampling=resampling,
                    store_root=str(Path(store).absolute()), project=project)
                specs[name] = spec
                if not ts.layer_dir(project, name).exists():
                    fresh.add(name)  # no tile of this layer on disk yet: nothing to prune later
                resume = _prepare_layer_dir(ts, project, name, _fingerprint(spec, B, aoi_geom))
                blocks: dict[tuple[int, int], set[tuple[int, int]]] = defaultdict(set)
                for x, y in candidates[name]:
                    blocks[(x // B, y // B)].add((x, y))
                ordered = sorted(blocks, key=lambda k: morton(*k))
                jobs_by_layer[name] = [
                    BlockJob(layer=spec, bx=bx, by=by, size=B,
                             allowed=None if aoi_geom is None and len(blocks[(bx, by)]) == B * B
                             else frozenset(blocks[(bx, by)]),
                             skip_existing=resume)
                    for bx, by in ordered]

            # 5. render (task zoom + in-block pyramid), then the pyramid above the blocks -----
            total = sum(len(c) for c in candidates.values())
            done = 0
            written: dict[str, dict[int, set[tuple[int, int]]]] = {n: defaultdict(set)
                                                                   for n in specs}
            coverage: dict[str, dict[tuple[int, int], float]] = {n: {} for n in specs}
            stats = {"written": 0, "skipped": 0, "resumed_blocks": 0}
            all_jobs = [j for n in names for j in jobs_by_layer[n]]
            pyramids = {n: _Pyramid(specs[n], ts, jobs_by_layer[n],
                                    resume=bool(jobs_by_layer[n])
                                    and jobs_by_layer[n][0].skip_existing)
                        for n in names}
            report(0, total, "render")
            early: set[tuple[str, int, int]] = set()  # blocks whose top reached the pyramid

            def top_ready(res: BlockResult) -> None:
                pyramids[res.layer].add(res)
                early.add((res.layer, res.bx, res.by))

            results = _run(all_jobs, jobs, scheduler, workers, top_ready, shared)
            try:
                for res in results:
                    for z, xy in res.tiles.items():
                        written[res.layer][z].update(xy)
                    coverage[res.layer].update(res.coverage)
                    stats["written"] += res.written
                    stats["skipped"] += res.skipped
                    stats["resumed_blocks"] += int(res.resumed)
                    if (res.layer, res.bx, res.by) not in early:
                        pyramids[res.layer].add(res)
                    done += res.candidates
                    report(done, total, res.layer)
            finally:
                results.close()  # stops the pool / dask client at once, also on errors
            for name, pyr in pyramids.items():
                for z, xy in pyr.finish().items():
                    written[name][z].update(xy)
                stats["written"] += pyr.written
                stats["skipped"] += pyr.skipped

            # 6. prune stale tiles (other options / zooms), write the manifest ----------------
            for name in names:
                if name not in fresh:
                    _prune(ts, project, name, written[name], ext)
            manifest = _manifest(project, specs, infos, stretches, footprints, written, coverage,
                                 zoom, min_zoom, tile_size, aoi)
            manifest["ingest_stats"] = {
                "seconds": round(time.perf_counter() - started, 3),
                "tiles_written": stats["written"], "tiles_skipped_existing": stats["skipped"],
                "blocks_resumed": stats["resumed_blocks"],
                "jobs": _jobs(jobs) if scheduler is None else None, "scheduler": scheduler}
            try:
                atomic_write_json(hash_cache_path, dict(list(hash_cache.items())[-10_000:]))
                atomic_write_json(ts.manifest_path(project), manifest)
            except OSError as exc:
                raise StoreNotWritableError(
                    f"cannot write {ts.manifest_path(project)}: {exc}") from exc
            return manifest


# ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def _project_lock(ts: TileStore, project: str) -> Iterator[None]:
    """One ingest per project at a time (an advisory lock file; released on exit/crash)."""
    import fcntl

    path = ts.project_dir(project) / ".crowdsight" / "ingest.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreNotWritableError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"another ingest of project {project!r} is running in "
                            f"{ts.root}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _layer_bands(name: str, infos: list[SourceInfo], bands: list[int] | None) -> tuple[int, ...]:
    chosen = {check_bands(i, bands) for i in infos}
    if len(chosen) > 1:
        raise BandError(f"layer {name!r}: its files have different bands "
                        f"({', '.join(map(str, sorted(chosen)))}); pass --bands explicitly",
                        infos[0].path)
    return chosen.pop()


def _union_bounds(bounds: Iterable[tuple[float, ...]]) -> tuple[float, float, float, float]:
    bl = list(bounds)
    return (min(b[0] for b in bl), min(b[1] for b in bl), max(b[2] for b in bl),
            max(b[3] for b in bl))


def _intersection(a, b):
    w, s, e, n = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (w, s, e, n) if w < e and s < n else None


def _fmt_bounds(b) -> str:
    return "lon %.5f..%.5f, lat %.5f..%.5f" % (b[0], b[2], b[1], b[3])


def _default_min_zoom(bounds, zoom: int) -> int:
    """The zoom at which the whole extent spans about one tile (as gdal2tiles does)."""
    import mercantile

    w, s, e, n = bounds
    nw = mercantile.tile(w, n, zoom)
    se = mercantile.tile(e, s, zoom)
    span = max(se.x - nw.x, se.y - nw.y) + 1
    return max(0, zoom - math.ceil(math.log2(span))) if span > 1 else zoom


def _parse_aoi(aoi: dict):
    """A GeoJSON Polygon/MultiPolygon (geometry, Feature or FeatureCollection) in lon/lat."""
    import shapely
    from shapely.geometry import shape

    try:
        if aoi.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in aoi["features"]]
        elif aoi.get("type") == "Feature":
            geoms = [shape(aoi["geometry"])]
        else:
            geoms = [shape(aoi)]
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
        raise OptionError(f"--aoi: not a GeoJSON geometry/Feature/FeatureCollection ({exc})") \
            from None
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise OptionError("--aoi: needs at least one Polygon or MultiPolygon (lon/lat)")
    geom = shapely.union_all(polys)
    if geom.is_empty or not geom.is_valid:
        geom = shapely.make_valid(geom)
    w, s, e, n = geom.bounds
    if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
        raise OptionError("--aoi: coordinates must be lon/lat WGS84 (RFC 7946)")
    return geom


def _clip_to_aoi(cand: set[tuple[int, int]], zoom: int, geom) -> set[tuple[int, int]]:
    import shapely

    if not cand:
        return cand
    order = sorted(cand)
    boxes = shapely.box(*np.array([tile_bounds(zoom, x, y) for x, y in order]).T)
    hit = shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
    return {t for t, h in zip(order, hit) if h}


def _fingerprint(spec: LayerSpec, block: int, aoi_geom) -> dict:
    opts = {
        "render_version": RENDER_VERSION,
        "sources": [s.sha256 for s in spec.sources], "bands": list(spec.bands),
        "stretch": [spec.stretch_low, spec.stretch_high], "ext": spec.ext,
        "quality": spec.quality, "tile_size": spec.tile_size, "task_zoom": spec.task_zoom,
        "min_zoom": spec.min_zoom, "resampling": spec.resampling, "block": block,
        "aoi": aoi_geom.wkt if aoi_geom is not None else None,
    }
    digest = hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "options": opts}


def _prepare_layer_dir(ts: TileStore, project: str, layer: str, fp: dict) -> bool:
    """True when the layer was made with the same sources/options (resume); else reset it."""
    work = work_dir(ts.root, project, check_layer(layer))
    path = work / "fingerprint.json"
    try:
        old = json.loads(path.read_text())
        if old.get("sha256") == fp["sha256"]:
            return True
    except (OSError, ValueError):
        pass
    try:
        blocks = block_dir(ts.root, project, layer)
        if blocks.exists():
            shutil.rmtree(blocks)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, fp)
    except OSError as exc:
        raise StoreNotWritableError(f"cannot write {work}: {exc.strerror or exc}") from exc
    return False


def _prune(ts: TileStore, project: str, layer: str, keep: dict[int, set[tuple[int, int]]],
           ext: str) -> None:
    """Delete tiles of this layer that this ingest did not produce, and stale temp files."""
    base = ts.layer_dir(project, layer)
    for z, x, y, e in list(ts.iter_tiles(project, layer)):
        if e != ext or (x, y) not in keep.get(z, ()):
            ts.path_for(project, layer, z, x, y, e).unlink(missing_ok=True)
    for root, dirs, files in os.walk(base):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                Path(root, f).unlink(missing_ok=True)
    for root, dirs, files in os.walk(base, topdown=False):
        if Path(root) != base and not os.listdir(root):
            os.rmdir(root)


def _manifest(project, specs, infos, stretches, footprints, written, coverage, zoom,
              min_zoom, tile_size, aoi) -> dict:
    layers_out: dict[str, Any] = {}
    for name, spec in specs.items():
        counts = {str(z): len(v) for z, v in sorted(written[name].items()) if v}
        layers_out[name] = {
            "ext": spec.ext, "media_type": media_type(spec.ext),
            "path_template": f"{name}/{{z}}/{{x}}/{{y}}.{spec.ext}",
            "sources": [i.manifest_entry() for i in infos[name]],
            "bands": list(spec.bands), "stretch": stretches[name],
            "bounds": rounded(footprints[name]), "zooms": [min_zoom, zoom],
            "tile_count": sum(counts.values()), "tile_counts": counts,
            "resampling": spec.resampling,
        }
    tasks_layers: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name in sorted(specs):
        for xy in written[name].get(zoom, ()):
            tasks_layers[xy].append(name)
    tasks = [{"z": zoom, "x": x, "y": y, "bounds": rounded(tile_bounds(zoom, x, y)),
              "layers": sorted(ls),
              "coverage": {name: coverage[name].get((x, y), 1.0) for name in sorted(ls)}}
             for (x, y), ls in sorted(tasks_layers.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return {
        "format": MANIFEST_FORMAT, "project": project,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software_version": __version__, "tile_size": tile_size, "task_zoom": zoom,
        "min_zoom": min_zoom, "layers": layers_out,
        "task_count": len(tasks),
        "complete_task_count": sum(1 for t in tasks if len(t["layers"]) == len(specs)),
        "aoi": aoi, "tasks": tasks,
    }


# ---------------------------------------------------------------------------------------
class _Pyramid:
    """Builds the zooms above the blocks' top level from the blocks' top tiles, streaming:
    a parent is made (and its children forgotten) as soon as all its children arrived."""

    def __init__(self, spec: LayerSpec, store: TileStore, jobs: list[BlockJob],
                 resume: bool) -> None:
        self.spec, self.store, self.resume = spec, store, resume
        self.written = self.skipped = 0
        self.tiles: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.pending: dict[tuple[int, int, int], dict[tuple[int, int], np.ndarray | None]] = {}
        self.expected: dict[tuple[int, int, int], int] = {}
        if not jobs:
            self.top_zoom = spec.task_zoom
            return
        self.top_zoom = jobs[0].layer.task_zoom - block_levels(jobs[0])
        level = {(j.bx, j.by) for j in jobs}
        z = self.top_zoom
        while z > spec.min_zoom:
            parents: dict[tuple[int, int], int] = defaultdict(int)
            for x, y in level:
                parents[(x >> 1, y >> 1)] += 1
            for (px, py), n in parents.items():
                self.expected[(z - 1, px, py)] = n
            level = set(parents)
            z -= 1

    def add(self, res: BlockResult) -> None:
        if self.top_zoom <= self.spec.min_zoom:
            return
        self._child(self.top_zoom, res.bx, res.by, res.top)

    def _child(self, z: int, x: int, y: int, arr: np.ndarray | None) -> None:
        key = (z - 1, x >> 1, y >> 1)
        slot = self.pending.setdefault(key, {})
        slot[(x & 1, y & 1)] = arr
        if len(slot) == self.expected[key]:
            del self.pending[key]
            self._make(key, slot)

    def _make(self, key, kids: dict[tuple[int, int], np.ndarray | None]) -> None:
        z, x, y = key
        ts = self.spec.tile_size
        c = self.spec.channels + 1
        present = [a for a in kids.values() if a is not None]
        out = None
        if present:
            big = np.zeros((2 * ts, 2 * ts, c), np.uint8)
            for (dx, dy), a in kids.items():
                if a is not None:
                    big[dy * ts:(dy + 1) * ts, dx * ts:(dx + 1) * ts] = a
            small = downsample2(big)
            if int(small[..., -1].max()) > 0:
                out = small
                self.tiles[z].append((x, y))
                if self.resume and self.store.exists(self.spec.project, self.spec.name, z, x,
                                                     y, self.spec.ext):
                    self.skipped += 1
                else:
                    with store_writes():
                        self.store.write(self.spec.project, self.spec.name, z, x, y,
                                         self.spec.ext, encode_tile(out, self.spec))
                    self.written += 1
        if z > self.spec.min_zoom:
            self._child(z, x, y, out)

    def finish(self) -> dict[int, list[tuple[int, int]]]:
        if self.pending:  # cannot happen unless a block result went missing
            raise IngestError(f"layer {self.spec.name!r}: pyramid incomplete "
                              f"({len(self.pending)} parents waiting); re-run the ingest")
        return self.tiles


# ---------------------------------------------------------------------------------------
def _jobs(jobs: int | None) -> int:
    if jobs is None or jobs <= 0:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))
    return jobs


WORKERS = ("auto", "threads", "processes")


def _run(all_jobs: list[BlockJob], jobs: int | None, scheduler: str | None,
         workers: str = "auto", on_top: Callable[[BlockResult], None] | None = None,
         shared: SharedSources | None = None) -> Iterator[BlockResult]:
    """Yield block results as they finish: in-process, in this process plus forked workers,
    or on dask.distributed. ``on_top``: see :func:`_run_threads` (threads only); ``shared``:
    the sources opened by the description, lent to this process's render threads."""
    if not all_jobs:
        return
    if scheduler:
        yield from _run_dask(all_jobs, scheduler)
        return
    n = min(_jobs(jobs), len(all_jobs))
    if n == 1:
        with open_sources(shared):
            for job in all_jobs:
                yield render_block(job)
        return
    if workers == "threads" or (workers == "auto"
                                and len(all_jobs) <= THREADS_UP_TO_BLOCKS_PER_JOB * n):
        yield from _run_threads(all_jobs, n, on_top, shared)
    else:
        yield from _run_processes(all_jobs, n, shared)


#: a local parallel run with at most this many blocks per job uses threads that share the
#: tiles of a block (small runs: no fork, and the last blocks are spread over every thread);
#: longer runs use processes (measured: with many blocks, threads got ~1 core of 2)
THREADS_UP_TO_BLOCKS_PER_JOB = 2


def _run_threads(all_jobs: list[BlockJob], n: int,
                 on_top: Callable[[BlockResult], None] | None = None,
                 shared: SharedSources | None = None) -> Iterator[BlockResult]:
    """``n`` threads render the blocks: this one and ``n - 1`` helpers, sharing tiles.

    A thread that finds no tile waiting takes the next block and warps it
    (:class:`~ingest.render.BlockWork`); the block's tiles then go to a shared queue that
    every thread serves before it starts another block, so the work balances tile by tile
    (the last block of a run is encoded by all threads) and at most about ``n`` blocks are in
    memory. The heavy steps (GDAL reads, cv2, Pillow's encoders, file writes) release the
    GIL. This thread yields finished blocks between its own work units, so the consumer's
    pyramid runs here. ``on_top(result)``, if given, is called here too, as soon as a block
    is *rendered* (its tiles may still be encoding; the same result is yielded when they are
    written): the pyramid above the blocks is then built alongside the last block's tiles
    instead of after them. An error stops every thread after its current unit and is raised here;
    so is an interrupt of this thread.

    Every block is planned here (:func:`~ingest.render.plan_block`: the coordinate
    transformations), the first before the helpers start and the others while they work,
    and the helpers read the datasets ``shared`` lends them: this thread described the
    sources, so its PROJ context is built, and a helper's first use of PROJ would hold the
    GIL for ~10-20 ms while building its own.
    """
    preload(all_jobs[0].layer.ext)
    crs = shared.crs() if shared is not None else None
    cond = threading.Condition()
    tiles: deque[tuple[BlockWork, Any]] = deque()  # (block, tile task) waiting
    finished: deque[tuple[bool, BlockResult]] = deque()  # (rendered only?, result)
    remaining: dict[int, int] = {}  # id(block) -> tiles not yet written
    total = len(all_jobs)
    plans: list[Any] = [None] * total  # made for [:state["planned"]], taken for [:state["next"]]
    state = {"next": 0, "planned": 0, "busy": 0, "error": None, "stop": False}

    def idle() -> bool:  # under cond: nothing left to start
        return not tiles and state["next"] >= total

    def unplanned() -> bool:  # under cond: the next block to start is not planned yet
        return not tiles and state["planned"] <= state["next"] < total

    def plan(i: int) -> None:  # this thread only (see the docstring)
        job = all_jobs[i]
        # a resumed block with a record is read back, not rendered (a record that turns out
        # unusable leaves the planning to the thread that renders the block)
        resumed = job.skip_existing and record_path(job).is_file()
        made = None if resumed else plan_block(job, crs)
        with cond:
            plans[i] = made
            state["planned"] = i + 1
            cond.notify_all()

    def step() -> bool:
        """Run one unit of work (a tile, or a new block); False when none is available."""
        with cond:
            if state["stop"]:
                return False
            if tiles:
                work, task = tiles.popleft()
                job = None
            elif state["next"] < state["planned"]:
                job, block_plan = all_jobs[state["next"]], plans[state["next"]]
                plans[state["next"]] = None  # the block holds it from here
                state["next"] += 1
            else:
                return False
            state["busy"] += 1
        try:
            if job is not None:
                work = BlockWork(job, block_plan)
                if on_top is not None:
                    with cond:
                        finished.append((True, work.res))  # see on_top in the docstring
                if work.tasks:
                    with cond:
                        remaining[id(work)] = len(work.tasks)
                        tiles.extend((work, t) for t in work.tasks)
                        cond.notify_all()
                    return True
            else:
                work.write_tile(task)
                with cond:
                    remaining[id(work)] -= 1
                    if remaining[id(work)]:
                        return True
                    del remaining[id(work)]
            res = work.finish()
            with cond:
                finished.append((False, res))
            return True
        except BaseException as exc:
            with cond:
                if state["error"] is None:
                    state["error"] = exc
                state["stop"] = True
            raise
        finally:
            with cond:
                state["busy"] -= 1
                cond.notify_all()

    def deliver(rendered_only: bool, res: BlockResult) -> Iterator[BlockResult]:
        if rendered_only:
            on_top(res)  # type: ignore[misc]
        else:
            yield res

    def helper() -> None:
        with open_sources(shared):
            while True:
                try:
                    if step():
                        continue
                except BaseException:  # noqa: BLE001 - recorded in state, raised by the caller
                    return
                with cond:
                    while not state["stop"] and (idle() and state["busy"] or unplanned()):
                        cond.wait()  # more tiles may come from a block being warped
                    if state["stop"] or (idle() and not state["busy"]):
                        return

    helpers = [threading.Thread(target=helper, name=f"crowdsight-ingest-{k}", daemon=True)
               for k in range(n - 1)]
    plan(0)
    with cv2_single_threaded():  # the threads are the parallelism (see cv2_single_threaded)
        for t in helpers:
            t.start()
        try:
            for i in range(1, total):
                plan(i)
            with open_sources(shared):
                while True:
                    ran = step()
                    while finished:
                        yield from deliver(*finished.popleft())
                    if ran:
                        continue
                    with cond:
                        if state["error"] is not None:
                            raise state["error"]
                        if finished or not idle():
                            continue  # a helper finished a block or queued tiles meanwhile
                        if not state["busy"]:
                            break
                        cond.wait()
            with cond:
                if state["error"] is not None:
                    raise state["error"]
            while finished:
                yield from deliver(*finished.popleft())
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            for t in helpers:
                t.join()


def _run_processes(all_jobs: list[BlockJob], n: int,
                   shared: SharedSources | None = None) -> Iterator[BlockResult]:
    """``n`` processes render the blocks: this one and ``n - 1`` forked workers.

    Each process takes the next unclaimed block (a shared counter) until none is left, so
    the work balances itself block by block; workers send their results through a queue,
    which this process drains after each of its own blocks and at the end. This process
    working too (instead of waiting on a pool of ``n``) spares a fork, a pool's start-up and
    the pickling of its own results; it also runs the consumer's pyramid steps between its
    blocks. On an error or interrupt the workers are stopped at once (SIGTERM), as a pool's
    ``terminate()`` would; a worker that dies without reporting fails the ingest instead of
    hanging it. ``shared``: datasets this process may borrow (a worker opens its own).
    """
    preload(all_jobs[0].layer.ext)  # once here, inherited by forked workers
    # fork is cheap and safe while we are single-threaded; otherwise use a clean forkserver
    method = "fork" if threading.active_count() == 1 and os.name == "posix" else "forkserver"
    ctx = multiprocessing.get_context(method)
    counter = ctx.Value("q", 0)  # index of the next unclaimed job
    results = ctx.Queue()
    total = len(all_jobs)
    with cv2_single_threaded():  # workers fork with cv2's threads stopped (see docstring)
        workers = [ctx.Process(target=_worker, args=(all_jobs, counter, results),
                               name=f"crowdsight-ingest-{k}", daemon=True)
                   for k in range(n - 1)]
        for w in workers:
            w.start()
        pending = total
        try:
            with open_sources(shared):
                while (i := _claim(counter, total)) is not None:
                    res = render_block(all_jobs[i])
                    pending -= 1
                    yield res
                    while pending:
                        try:
                            msg = results.get_nowait()
                        except queue.Empty:
                            break
                        pending -= 1
                        yield _unwrap(msg)
            while pending:
                try:
                    msg = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers) and results.empty():
                        codes = ", ".join(str(w.exitcode) for w in workers)
                        raise IngestError(
                            f"{pending} block(s) were never rendered: a worker process "
                            f"ended early (exit codes {codes}; out of memory?); re-run the "
                            "ingest to complete it") from None
                    continue
                pending -= 1
                yield _unwrap(msg)
        except BaseException:
            _stop(counter, total)
            for w in workers:
                if w.is_alive():
                    w.terminate()
            raise
        finally:
            for w in workers:
                w.join()
            results.close()
            results.join_thread()


def _claim(counter: Any, total: int) -> int | None:
    """The next job index, or None when every job has been claimed."""
    with counter.get_lock():
        i = counter.value
        if i >= total:
            return None
        counter.value = i + 1
    return i


def _stop(counter: Any, total: int) -> None:
    """No process claims another job (a worker holding the lock is given 1 s)."""
    lock = counter.get_lock()
    if lock.acquire(timeout=1.0):
        try:
            counter.value = total
        finally:
            lock.release()


def _worker(all_jobs: list[BlockJob], counter: Any, results: Any) -> None:
    """A forked worker: render unclaimed blocks; send ``("ok", result)`` for each, or
    ``("error", exception)`` and stop."""
    try:
        with open_sources():
            while (i := _claim(counter, len(all_jobs))) is not None:
                try:
                    res = render_block_in_worker(all_jobs[i])
                except KeyboardInterrupt:
                    return  # Ctrl-C reaches the whole process group: the parent reports it
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    results.put(("error", _picklable(exc)))
                    return
                results.put(("ok", res))
    finally:
        results.close()
        results.join_thread()  # every result is in the pipe before this process ends


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (as every IngestError does), else a RuntimeError
    carrying its type and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _unwrap(msg: tuple[str, Any]) -> BlockResult:
    kind, value = msg
    if kind == "error":
        raise value
    return value


def _run_dask(all_jobs: list[BlockJob], address: str) -> Iterator[BlockResult]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise OptionError("--scheduler needs dask.distributed: pip install 'crowdsight[dask]'") \
            from None
    try:
        client = Client(address, set_as_default=False)  # timeout: distributed.comm.timeouts.connect
    except (OSError, TimeoutError) as exc:
        raise OptionError(f"--scheduler {address}: cannot connect ({exc})") from None
    try:
        futures = client.map(render_block_in_worker, all_jobs, pure=False)
        for fut in as_completed(futures, loop=client.loop):
            yield fut.result()
    finally:
        client.close()
