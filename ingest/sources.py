"""Opening and validating user GeoTIFFs, and describing them (picklable :class:`SourceInfo`).

Safety rules (see docs/ingest.md): only local regular files; the file type is sniffed from
its first bytes before GDAL sees it; GDAL is only allowed the GTiff driver; VRTs, ``/vsi*``
paths and URLs are refused; the raster size is checked right after opening.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import (BandError, NoGeoreferenceError, NotARasterError, ReadError,
                           RasterTooLargeError, SourceNotFoundError, UnsupportedDriverError)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_OTHER_FORMATS = [
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"), (b"\xffO\xffQ", "a JPEG 2000 codestream"),
    (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"CDF", "a NetCDF file"),
    (b"\x89HDF", "an HDF5 file"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"),
    (b"SIMPLE  =", "a FITS file"), (b"RIFF", "a RIFF/WebP image"),
]
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class SourceInfo:
    """What the renderer needs to know about one source file (plain data, picklable)."""

    path: str
    sha256: str
    size: int
    crs_wkt: str
    crs_name: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    count: int
    dtype: str
    res: tuple[float, float]
    nodata: float | None
    bounds_lonlat: tuple[float, float, float, float]
    default_bands: tuple[int, ...]
    merc_res: float  # pixel size in Web-Mercator metres near the centre

    def manifest_entry(self) -> dict:
        from tiles.grid import rounded

        return {"path": self.path, "sha256": self.sha256, "size": self.size,
                "crs": self.crs_name, "res": [self.res[0], self.res[1]],
                "width": self.width, "height": self.height, "count": self.count,
                "dtype": self.dtype, "nodata": self.nodata,
                "bounds_lonlat": rounded(self.bounds_lonlat)}


def check_path(path: Path | str) -> Path:
    """Refuse virtual/network paths and VRTs; return the absolute path of a regular file."""
    raw = str(path)
    low = raw.lower()
    if low.startswith("/vsi") or "://" in raw or low.startswith(("http:", "https:", "s3:",
                                                                  "gs:", "zip:", "tar:")):
        raise UnsupportedDriverError(
            f"{raw}: virtual file systems and URLs are not accepted; download the GeoTIFF "
            "and pass a local path", raw)
    if low.endswith(".vrt"):
        raise UnsupportedDriverError(
            f"{raw}: GDAL VRT files are not accepted (they can point anywhere); pass the "
            "GeoTIFFs they reference, or convert with `gdal_translate -of COG`", raw)
    p = Path(raw).expanduser().absolute()
    if not p.exists():
        raise SourceNotFoundError(f"{raw}: no such file", raw)
    if not p.is_file():
        raise SourceNotFoundError(f"{raw}: not a regular file", raw)
    return p


def sniff(path: Path) -> None:
    """Raise unless the first bytes say TIFF/BigTIFF (before GDAL ever opens the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ReadError(f"{path}: cannot read ({exc.strerror or exc})", str(path)) from exc
    if head[:4] in _TIFF_MAGIC:
        return
    stripped = head.lstrip()
    if stripped.startswith(b"<VRTDataset") or stripped.startswith(b"<?xml"):
        raise UnsupportedDriverError(
            f"{path}: is an XML/VRT file; only GeoTIFF/COG files are accepted", str(path))
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            raise UnsupportedDriverError(
                f"{path}: is {what}, not a GeoTIFF; convert it with "
                "`gdal_translate -of COG` (it must carry georeferencing)", str(path))
    if not head:
        raise NotARasterError(f"{path}: is empty, not a GeoTIFF", str(path))
    raise NotARasterError(f"{path}: is not a raster image (expected a GeoTIFF/COG)", str(path))


#: GDAL's options for reading sources (opened by :func:`open_raster`, read by the render): a
#: small block cache, one thread per read, and no directory listing, so no sidecar file
#: (``.aux.xml``, ``.msk``, world file) is ever read: what is validated is what is drawn
GDAL_ENV = {"GDAL_CACHEMAX": 32, "GDAL_NUM_THREADS": 1,
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def open_raster(path: Path | str, max_pixels: int):
    """Open a validated local GeoTIFF with only the GTiff driver allowed; check its size."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    p = check_path(path)
    sniff(p)
    # rasterio warns (NotGeoreferencedWarning) on open and on reading ``transform``/``gcps`` of
    # an ungeoreferenced file; with warnings as errors that would escape as an exception
    # instead of the NoGeoreferenceError below, so the whole check runs with it silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.Env(**GDAL_ENV):
                ds = rasterio.open(p, driver="GTiff")
        except RasterioError as exc:
            raise ReadError(f"{p}: looks like a TIFF but GDAL cannot open it (truncated or "
                            f"corrupt?): {_short(exc)}", str(p)) from exc
        _check_opened(p, ds, max_pixels)
    return ds


#: sidecar files that may carry a TIFF's georeferencing, as GDAL's GeoTIFF driver finds them
#: ("{stem}" / "{name}" of the TIFF, any letter case): world files (geotransform), the PAM
#: ``.aux.xml`` (CRS and/or geotransform) and an ESRI ``.prj`` (CRS; read by gdal_translate
#: only through ``-a_srs``). The sources are opened without reading sidecars (:data:`GDAL_ENV`),
#: so a file georeferenced only by them is refused with the command that embeds them.
WORLD_FILES = ("{stem}.tfw", "{stem}.tifw", "{stem}.tiffw", "{stem}.wld")
AUX_XML, PRJ = "{name}.aux.xml", "{stem}.prj"


def georeference_sidecars(p: Path) -> dict[str, str]:
    """The sidecar files next to ``p`` that carry georeferencing GDAL would use: ``{"world":
    name, "aux_crs": name, "aux_transform": name, "prj": name}`` (keys only for what is there;
    an ``.aux.xml`` counts only with an ``<SRS>`` / ``<GeoTransform>``, e.g. not one of
    QGIS's statistics files). Lists the directory: for error messages only."""
    try:
        present = {e.name.lower(): e.name for e in os.scandir(p.parent) if e.is_file()}
    except OSError:
        return {}

    def find(pattern: str) -> str | None:
        return present.get(pattern.format(stem=p.stem, name=p.name).lower())

    found: dict[str, str] = {}
    world = next(filter(None, map(find, WORLD_FILES)), None)
    if world:
        found["world"] = world
    aux = find(AUX_XML)
    if aux:
        try:
            with open(p.parent / aux, "rb") as f:
                text = f.read(1 << 20)
        except OSError:
            text = b""
        if b"<SRS" in text:
            found["aux_crs"] = aux
        if b"<GeoTransform" in text:
            found["aux_transform"] = aux
    prj = find(PRJ)
    if prj:
        found["prj"] = prj
    return found


def _sidecar_advice(p: Path, has_crs: bool) -> str | None:
    """The error for a TIFF whose geotransform is only in sidecar files (see
    :func:`georeference_sidecars`): the gdal_translate command that embeds them, with full,
    quoted paths; None when no sidecar has a geotransform."""
    import shlex

    found = georeference_sidecars(p)
    if "world" not in found and "aux_transform" not in found:
        return None
    prj = found.get("prj")
    has_crs = has_crs or "aux_crs" in found or prj is not None
    srs = f"-a_srs {shlex.quote(str(p.parent / prj))} " if prj else ""
    names = ", ".join(dict.fromkeys(found.values()))
    out = p.with_name(f"{p.stem}-georef.tif")
    return (f"{p}: has no georeferencing (CRS and geotransform) inside the file; crowdsight "
            f"does not read sidecar files such as {names}: embed them with `gdal_translate "
            f"{srs}{shlex.quote(str(p))} {shlex.quote(str(out))}`"
            + ("" if has_crs else " plus `-a_srs EPSG:<code>` for the CRS"))


def _check_opened(p: Path, ds, max_pixels: int) -> None:  # type: ignore[no-untyped-def]
    """Size, georeferencing and dtype checks on a just-opened dataset (closed on failure)."""
    try:
        if ds.width * ds.height * ds.count > max_pixels:
            raise RasterTooLargeError(
                f"{p}: {ds.width} x {ds.height} x {ds.count} bands = "
                f"{ds.width * ds.height * ds.count:,} values exceeds the limit of "
                f"{max_pixels:,}; split the image (gdal_retile) or raise "
                "CROWDSIGHT_MAX_RASTER_PIXELS", str(p))
        if ds.crs is None or ds.transform.is_identity:
            gcps = " (it has only GCPs: warp it first with `gdalwarp`)" if ds.gcps[0] else ""
            advice = None if ds.gcps[0] else _sidecar_advice(p, ds.crs is not None)
            if advice:
                raise NoGeoreferenceError(advice, str(p))
            raise NoGeoreferenceError(
                f"{p}: has no georeferencing (CRS and geotransform){gcps}; georeference it "
                "in QGIS or with `gdal_translate -a_srs -a_ullr`", str(p))
        if ds.dtypes[0] not in SUPPORTED_DTYPES:
            raise BandError(f"{p}: data type {ds.dtypes[0]} is not supported "
                            f"(use one of {', '.join(SUPPORTED_DTYPES)})", str(p))
    except BaseException:
        ds.close()
        raise


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def sha256_file(path: Path) -> str:
    """The file's sha256 (``hashlib.file_digest``: one reused buffer; reading 4 MB chunks
    as new ``bytes`` cost ~2x as much in a fresh process, every chunk newly paged in)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hash_key(p: Path) -> str:
    """``"path|size|mtime_ns"``: a file's key in the hash cache (see :func:`describe`)."""
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _cached_sha256(p: Path, cache: dict[str, str] | None) -> str:
    key = _hash_key(p)
    if cache is not None and key in cache:
        return cache[key]
    digest = sha256_file(p)
    if cache is not None:
        cache[key] = digest
    return digest


def with_digest(info: SourceInfo, cache: dict[str, str] | None) -> SourceInfo:
    """``info`` (of ``describe(..., digest=False)``) with its file's sha256 (from ``cache``
    when there, e.g. filled by :func:`prehash`)."""
    import dataclasses

    return dataclasses.replace(info, sha256=_cached_sha256(Path(info.path), cache))


def prehash(paths: Iterable[Path], cache: dict[str, str], threads: int) -> None:
    """Hash the files not yet in ``cache`` (see :func:`describe`) with ``threads`` threads
    at once, filling ``cache``; :func:`with_digest` then finds their hashes there.

    ``paths`` as :func:`check_path` returns them (absolute paths of regular files), e.g. the
    ``path`` of a :class:`SourceInfo`.
    Hashing releases the GIL, so the files' hashes take about 1 / ``threads`` of the time;
    describing them cannot share the time (GDAL's open and PROJ hold the GIL, and a thread
    hashing beside them waits for it after every chunk: tried, slower than one after the
    other). A file that cannot be read is left to :func:`with_digest` to report.
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = []
    for p in dict.fromkeys(paths):
        try:
            if _hash_key(p) not in cache:
                todo.append(p)
        except OSError:
            continue
    if len(todo) < 2 or threads < 2:
        return

    def one(p: Path) -> None:
        try:
            _cached_sha256(p, cache)
        except OSError:
            pass

    with ThreadPoolExecutor(min(threads, len(todo)), thread_name_prefix="crowdsight-hash") as ex:
        list(ex.map(one, todo))


def default_bands(ds) -> tuple[int, ...]:
    """RGB for 3+ band images (alpha bands excluded), band 1 for 1-2 band images."""
    from rasterio.enums import ColorInterp

    ci = list(ds.colorinterp)
    data = [i + 1 for i, c in enumerate(ci) if c != ColorInterp.alpha]
    if not data:
        data = [1]
    if len(data) >= 3:
        rgb = [ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
               if c in ci]
        return tuple(rgb) if len(rgb) == 3 else tuple(data[:3])
    return (data[0],)


def crs_name(crs) -> str:
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    auth = crs.to_authority()
    return ":".join(auth) if auth else crs.to_string()


def describe(path: Path | str, max_pixels: int, hash_cache: dict[str, str] | None = None,
             keep: Callable[[str, Any], bool] | None = None, *,
             digest: bool = True) -> SourceInfo:
    """Open, validate and describe one source file (also hashes it).

    ``hash_cache`` maps ``"path|size|mtime_ns"`` to a sha256 so that re-runs do not re-read
    big unchanged files; it is updated in place. ``keep(path, dataset)``, if given, may take
    the open dataset (returning True: it then closes it); else it is closed here.
    ``digest=False``: no hash (``sha256`` is empty; see :func:`with_digest`), e.g. to
    validate every file of a run before hashing any (:func:`prehash`).
    """
    from rasterio.errors import RasterioError

    ds = open_raster(path, max_pixels)
    p = Path(ds.name)
    try:
        try:
            bounds = _footprint_lonlat(ds)
            merc_res = _mercator_resolution(ds)
        except (RasterioError, ValueError) as exc:
            raise NoGeoreferenceError(
                f"{p}: its CRS/extent cannot be projected to Web Mercator ({_short(exc)}); "
                "check the georeferencing", str(p)) from exc
        if not all(math.isfinite(v) for v in bounds) or bounds[1] >= 85.06 or bounds[3] <= -85.06:
            raise NoGeoreferenceError(f"{p}: lies outside Web Mercator's latitude range", str(p))
        t = ds.transform
        info = SourceInfo(
            path=str(p), sha256=_cached_sha256(p, hash_cache) if digest else "",
            size=p.stat().st_size,
            crs_wkt=ds.crs.to_wkt(), crs_name=crs_name(ds.crs),
            transform=(t.a, t.b, t.c, t.d, t.e, t.f), width=ds.width, height=ds.height,
            count=ds.count, dtype=ds.dtypes[0], res=(abs(ds.res[0]), abs(ds.res[1])),
            nodata=None if ds.nodata is None else float(ds.nodata),
            bounds_lonlat=tuple(float(v) for v in bounds),  # type: ignore[arg-type]
            default_bands=default_bands(ds), merc_res=merc_res)
    except BaseException:
        ds.close()
        raise
    if keep is None or not keep(info.path, ds):
        ds.close()
    return info


def _footprint_lonlat(ds, n: int = 21) -> tuple[float, float, float, float]:
    """Lon/lat bounding box of the raster outline (densified; rotated transforms too)."""
    from rasterio.warp import transform

    from tiles.grid import lonlat_from_mercator

    a, b, c, d, e, f = tuple(ds.transform)[:6]
    w, h = ds.width, ds.height
    t = np.linspace(0.0, 1.0, n)
    cols = np.concatenate([t * w, np.full(n, w), (1 - t) * w, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), t * h, np.full(n, h), (1 - t) * h])
    # through Web Mercator, then its exact inverse: the CRS pair the ingest needs anyway
    # (a new pair costs PROJ ~5-8 ms of searching proj.db in each process)
    mx, my = transform(ds.crs, "EPSG:3857", a * cols + b * rows + c, d * cols + e * rows + f)
    lon, lat = lonlat_from_mercator(np.asarray(mx), np.asarray(my))
    ok = np.isfinite(lon) & np.isfinite(lat)
    if not ok.any():
        raise ValueError("the raster outline does not project to lon/lat")
    return (float(lon[ok].min()), float(lat[ok].min()), float(lon[ok].max()),
            float(lat[ok].max()))


def _mercator_resolution(ds) -> float:
    """Pixel size in Web-Mercator metres at the image centre (geometric mean of x and y)."""
    from rasterio.warp import transform

    a, b, c, d, e, f = tuple(ds.transform)[:6]
    n = max(1, min(ds.width, ds.height) // 4)
    cc, rr = ds.width / 2, ds.height / 2
    pts = [(cc, rr), (cc + n, rr), (cc, rr + n)]
    xs = [a * u + b * v + c for u, v in pts]
    ys = [d * u + e * v + f for u, v in pts]
    mx, my = transform(ds.crs, "EPSG:3857", xs, ys)
    along_x = math.hypot(mx[1] - mx[0], my[1] - my[0]) / n
    along_y = math.hypot(mx[2] - mx[0], my[2] - my[0]) / n
    res = math.sqrt(along_x * along_y)
    if not (math.isfinite(res) and res > 0):
        raise ValueError("degenerate pixel size")
    return res


def check_bands(info: SourceInfo, bands: list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    if bands is None:
        return info.default_bands
    if len(bands) not in (1, 3):
        raise BandError(f"--bands {','.join(map(str, bands))}: give 1 band (grey) or 3 bands "
                        "(red,green,blue)", info.path)
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise BandError(f"{info.path}: has {info.count} band(s); band(s) "
                        f"{', '.join(map(str, bad))} do not exist", info.path)
    return tuple(int(b) for b in bands)


def _sample(info: SourceInfo, bands: tuple[int, ...], max_side: int) -> Iterator[np.ndarray]:
    """Valid pixel values per band from a decimated read (overviews used when present; read
    as the render reads, under :data:`GDAL_ENV`: no sidecar mask)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    k = max(1.0, max(info.width, info.height) / max_side)
    shape = (max(1, int(info.height / k)), max(1, int(info.width / k)))
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(info.path, driver="GTiff") as ds:
            data = ds.read(list(bands), out_shape=(len(bands), *shape),
                           resampling=Resampling.nearest)
            mask = ds.dataset_mask(out_shape=shape) > 0
    except RasterioError as exc:
        raise ReadError(f"{info.path}: read failed while sampling for the contrast stretch "
                        f"(truncated or corrupt?): {_short(exc)}", info.path) from exc
    if data.dtype.kind == "f":
        mask &= np.isfinite(data).all(axis=0)
    for b in range(len(bands)):
        yield data[b][mask]


def percentile_stretch(infos: list[SourceInfo], bands: tuple[int, ...],
                       percentiles: tuple[float, float] = (2.0, 98.0),
                       max_side: int = 1024) -> dict | None:
    """Per-band low/high percentiles over all sources of a layer, or None for uint8 data."""
    if all(i.dtype == "uint8" for i in infos):
        return None
    per_band: list[list[np.ndarray]] = [[] for _ in bands]
    for info in infos:
        for b, values in enumerate(_sample(info, bands, max_side)):
            per_band[b].append(values.astype(np.float64))
    low, high = [], []
    for b, chunks in enumerate(per_band):
        values = np.concatenate(chunks) if chunks else np.empty(0)
        if values.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(values, percentiles))
            if hi <= lo:
                hi = lo + 1.0
        low.append(lo)
        high.append(hi)
    return {"method": "percentile", "percentiles": list(percentiles), "low": low, "high": high}
