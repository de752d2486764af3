"""Exceptions of the ``ingest`` package: one root, :class:`IngestError`.

Every message names the file (or option) at fault and says what to do about it; the CLI
prints it on one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tiles.errors import StoreError


class IngestError(Exception):
    """Root of every error raised by ``ingest``. ``path`` is the offending file, if any."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # keep ``path`` across process boundaries (multiprocessing, dask)
        return (type(self), (str(self), self.path))


class OptionError(IngestError, ValueError):
    """An ingest option is invalid (zoom range, tile size, format, layer name, AOI...)."""


class SourceNotFoundError(IngestError, FileNotFoundError):
    """A source file does not exist or is not a regular file."""


class NotARasterError(IngestError, ValueError):
    """The file is not a raster image at all."""


class UnsupportedDriverError(IngestError, ValueError):
    """The file is a raster, but not a GeoTIFF (VRT, JPEG2000, PNG, network/virtual paths...)."""


class NoGeoreferenceError(IngestError, ValueError):
    """The GeoTIFF has no CRS or no geotransform, so it cannot be placed on the map."""


class RasterTooLargeError(IngestError, ValueError):
    """width x height x bands exceeds the configured limit (``max_pixels``)."""


class BandError(IngestError, ValueError):
    """The requested bands do not exist or the layer's files disagree on bands."""


class NoOverlapError(IngestError, ValueError):
    """The layers (or the area of interest) do not overlap."""


class ReadError(IngestError, OSError):
    """A GeoTIFF could not be read (truncated, corrupt or unreadable)."""


class StoreNotWritableError(IngestError, OSError):
    """The tile store cannot be written."""


@contextmanager
def store_writes() -> Iterator[None]:
    """Tile-store writes inside: a :class:`tiles.errors.StoreError` comes out as
    :class:`StoreNotWritableError` (same message)."""
    try:
        yield
    except StoreError as exc:
        raise StoreNotWritableError(str(exc)) from exc


class BusyError(IngestError, RuntimeError):
    """Another ingest of the same project is running."""
