"""Imagery ingest: GeoTIFF/COG files (any CRS) -> Web-Mercator XYZ tiles + a manifest.

Public API::

    from ingest import ingest, generate_scene, Scene
    from ingest.errors import IngestError

See ``docs/ingest.md``. Nothing runs at import time; rasterio is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ingest", "generate_scene", "Scene"]

if TYPE_CHECKING:  # pragma: no cover
    from ingest.pipeline import ingest
    from ingest.synthetic import Scene, generate_scene


def __getattr__(name: str) -> Any:
    if name in ("generate_scene", "Scene"):
        from ingest import synthetic

        return getattr(synthetic, name)
    if name == "ingest":
        from ingest.pipeline import ingest

        return ingest
    raise AttributeError(f"module 'ingest' has no attribute {name!r}")
