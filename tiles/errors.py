"""Exceptions of the ``tiles`` package: one root, :class:`TilesError`."""

from __future__ import annotations


class TilesError(Exception):
    """Root of every error raised by ``tiles``."""


class InvalidTileError(TilesError, ValueError):
    """A tile address (project, layer, z/x/y, extension) is malformed or out of range."""


class TileNotFoundError(TilesError, FileNotFoundError):
    """The requested tile is not in the store (outside the data or not ingested yet)."""


class EncodeError(TilesError, ValueError):
    """An array cannot be encoded in the requested format."""


class StoreError(TilesError, OSError):
    """The tile store cannot be written or read (permissions, full disk, not a directory)."""
