"""Streamed, size-limited, type-checked imagery uploads for the researcher pages.

The browser sends the raw file as the request body (``PUT`` with ``fetch``/``XMLHttpRequest``),
so the server never holds more than one chunk in memory:

* a declared ``Content-Length`` above the limit is refused before a byte is read (413);
* the first bytes must carry a TIFF/BigTIFF signature, checked as soon as they arrive (415);
* the running total is checked on every chunk (413 even when the client lied about its length);
* the file is written to ``<name>.part`` and renamed only when complete, so a half upload never
  looks like a finished one; any failure removes the partial file;
* the finished file is opened with GDAL restricted to the GTiff driver and its
  width x height x bands checked against ``Settings.max_raster_pixels`` (422 otherwise).

The user's file name is only kept for display: files are stored under a random name.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from labeler.dashboard.researcher_errors import (
    NotAGeoTIFF,
    UnusableRaster,
    UploadIncomplete,
    UploadTooLarge,
)

# Little-endian / big-endian classic TIFF and BigTIFF signatures.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RasterSummary:
    """What GDAL says about an uploaded file (shown to the researcher before ingest)."""

    driver: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    bounds: tuple[float, float, float, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class StoredUpload:
    """A complete, validated upload on disk."""

    path: Path
    filename: str  # the user's (sanitised) file name, for display only
    size: int
    sha256: str
    raster: RasterSummary

    def to_json(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "raster": self.raster.to_json(),
        }


def display_name(raw: str | None) -> str:
    """A harmless display version of a client-supplied file name."""
    name = Path((raw or "upload.tif").replace("\\", "/")).name
    name = _SAFE_NAME.sub("_", name).strip("._") or "upload.tif"
    return name[:120]


def looks_like_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_SIGNATURES


async def stream_to_disk(
    chunks: AsyncIterator[bytes],
    dest: Path,
    *,
    max_bytes: int,
    declared_length: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Write an async byte stream to ``dest`` atomically; return ``(size, sha256)``.

    Raises :class:`UploadTooLarge`, :class:`NotAGeoTIFF` or :class:`UploadIncomplete`;
    on any error nothing is left at ``dest`` or ``dest.part``.
    """
    if declared_length is not None and declared_length > max_bytes:
        raise UploadTooLarge(declared_length, max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    head = b""
    ok = False
    try:
        async with await anyio.open_file(part, "wb") as fh:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(size, max_bytes, declared=False)
                if len(head) < 4:
                    head += chunk[: 4 - len(head)]
                    if len(head) >= 4 and not looks_like_tiff(head):
                        raise NotAGeoTIFF(
                            "the file does not start with a TIFF signature; upload a GeoTIFF or "
                            "Cloud-Optimized GeoTIFF (.tif) — other formats (JPEG, PNG, ZIP, "
                            "JPEG2000, ...) must be converted first, e.g. with "
                            "`gdal_translate -of COG in.jp2 out.tif`"
                        )
                digest.update(chunk)
                await fh.write(chunk)
                if progress is not None:
                    progress(size)
        if size == 0:
            raise UploadIncomplete("the upload was empty; choose a GeoTIFF file")
        if len(head) < 4:
            raise NotAGeoTIFF("the file is too short to be a GeoTIFF; choose a .tif file")
        if declared_length is not None and size != declared_length:
            raise UploadIncomplete(
                f"the upload stopped after {size} of {declared_length} bytes; try again"
            )
        os.replace(part, dest)
        ok = True
        return size, digest.hexdigest()
    finally:
        if not ok:
            part.unlink(missing_ok=True)


def inspect_geotiff(path: Path, *, max_pixels: int) -> RasterSummary:
    """Open ``path`` with GDAL restricted to the GTiff driver and check its size.

    Blocking (GDAL); call it in a worker thread from async code.
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path, driver=["GTiff"]) as ds:
            pixels = ds.width * ds.height * ds.count
            if pixels > max_pixels:
                raise UnusableRaster(
                    f"the raster is {ds.width} x {ds.height} x {ds.count} bands = {pixels:,} "
                    f"values, above the limit of {max_pixels:,} "
                    "(CROWDSIGHT_MAX_RASTER_PIXELS); split it into smaller GeoTIFFs "
                    "(e.g. `gdal_retile.py`) and upload them together",
                    code="raster_too_large",
                )
            if ds.crs is None and ds.gcps[1] is None:
                raise UnusableRaster(
                    "the TIFF has no coordinate reference system, so crowdsight cannot place it "
                    "on the map; georeference it first (e.g. `gdal_translate -a_srs EPSG:XXXX "
                    "-a_ullr ...`)",
                    code="not_georeferenced",
                )
            return RasterSummary(
                driver=ds.driver,
                width=ds.width,
                height=ds.height,
                count=ds.count,
                dtype=str(ds.dtypes[0]),
                crs=ds.crs.to_string() if ds.crs else None,
                bounds=tuple(float(v) for v in ds.bounds),  # type: ignore[arg-type]
            )
    except RasterioError as exc:
        raise UnusableRaster(
            f"GDAL could not read the file as a GeoTIFF ({exc}); check that the upload "
            "finished and the file opens in QGIS",
            code="unreadable_raster",
        ) from exc


async def receive_upload(
    chunks: AsyncIterator[bytes],
    upload_dir: Path,
    *,
    filename: str | None,
    max_bytes: int,
    max_pixels: int,
    declared_length: int | None = None,
) -> StoredUpload:
    """Stream a request body into ``upload_dir`` and validate it as a GeoTIFF.

    The stored file is removed again if validation fails.
    """
    dest = upload_dir / f"{uuid.uuid4().hex}.tif"
    size, sha = await stream_to_disk(
        chunks, dest, max_bytes=max_bytes, declared_length=declared_length
    )
    try:
        summary = await anyio.to_thread.run_sync(
            lambda: inspect_geotiff(dest, max_pixels=max_pixels)
        )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return StoredUpload(
        path=dest, filename=display_name(filename), size=size, sha256=sha, raster=summary
    )
