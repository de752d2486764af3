"""Streamed, size-limited, type-checked imagery uploads for the researcher pages.

The browser sends the raw file as the request body (``PUT`` with ``fetch``/``XMLHttpRequest``),
so the server never holds more than one chunk in memory:

* a declared ``Content-Length`` above the limit is refused before a byte is read (413);
* the first bytes must carry a TIFF/BigTIFF signature, checked as soon as they arrive (415);
* the running total is checked on every chunk (413 even when the client lied about its length);
* the file is written to ``<name>.part`` and renamed only when complete, so a half upload never
  looks like a finished one; any failure removes the partial file;
* the finished file goes through the same validation as ``crowdsight ingest``
  (``ingest.sources.describe``: GDAL restricted to the GTiff driver, width x height x bands
  against ``Settings.max_raster_pixels``, georeferencing, data type): 415 when it is another
  format, 422 when it is a TIFF that cannot be used.

The user's file name is only kept for display: files are stored under a random name.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
import warnings
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
    """What GDAL says about an uploaded file (shown to the researcher before ingest);
    ``bounds`` are lon/lat ``[w, s, e, n]``."""

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


def inspect_geotiff(path: Path, *, max_pixels: int, display: str | None = None) -> RasterSummary:
    """Validate ``path`` exactly as ``crowdsight ingest`` does (``ingest.sources.describe``:
    TIFF signature, GDAL restricted to the GTiff driver, pixel limit, georeferencing, data
    type) and summarise it. Messages name ``display`` instead of the server-side path.

    Blocking (GDAL); call it in a worker thread from async code.
    """
    from ingest.errors import IngestError, NotARasterError, UnsupportedDriverError
    from ingest.sources import describe

    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            # a TIFF without georeferencing is reported below as a clear 422, not a warning
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            info = describe(path, max_pixels)
    except IngestError as exc:
        message = str(exc).replace(str(path), display or "the upload")
        if isinstance(exc, (NotARasterError, UnsupportedDriverError)):
            raise NotAGeoTIFF(message) from exc
        raise UnusableRaster(message, code=_code(exc)) from exc
    return RasterSummary(
        driver="GTiff", width=info.width, height=info.height, count=info.count,
        dtype=info.dtype, crs=info.crs_name,
        bounds=tuple(round(v, 7) for v in info.bounds_lonlat),  # type: ignore[arg-type]
    )


def _code(exc: BaseException) -> str:
    """``RasterTooLargeError`` -> ``raster_too_large``."""
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "unusable_raster"


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
            lambda: inspect_geotiff(dest, max_pixels=max_pixels, display=display_name(filename))
        )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return StoredUpload(
        path=dest, filename=display_name(filename), size=size, sha256=sha, raster=summary
    )
