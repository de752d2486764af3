"""Pack a layer's XYZ pyramid into one PMTiles v3 archive (the ``pmtiles`` library's writer).

A PMTiles file can be hosted on any static file server or object store and read with HTTP
range requests (MapLibre, Leaflet + protomaps plugins, QGIS >= 3.32).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from tiles.errors import StoreError, TilesError
from tiles.grid import tile_bounds
from tiles.store import TileStore

_TYPES = {"jpg": TileType.JPEG, "png": TileType.PNG, "webp": TileType.WEBP}


def pack(store: TileStore | Path | str, project: str, layer: str, out_path: Path | str, *,
         progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write every tile of ``project/layer`` into ``out_path``; return a small summary.

    The archive is written to a temporary sibling and renamed into place.
    """
    ts = store if isinstance(store, TileStore) else TileStore(store)
    found = sorted(ts.iter_tiles(project, layer), key=lambda t: zxy_to_tileid(t[0], t[1], t[2]))
    if not found:
        raise TilesError(f"layer {project}/{layer} has no tiles in {ts.root}; run "
                         "`crowdsight ingest` first")
    exts = {t[3] for t in found}
    if len(exts) != 1:
        raise TilesError(f"layer {project}/{layer} mixes tile formats {sorted(exts)}; "
                         "re-run the ingest with one --format")
    ext = exts.pop()
    zooms = [t[0] for t in found]
    max_z = max(zooms)
    top = [t for t in found if t[0] == max_z]
    bounds = [tile_bounds(z, x, y) for z, x, y, _ in top]
    w = min(b[0] for b in bounds)
    s = min(b[1] for b in bounds)
    e = max(b[2] for b in bounds)
    n = max(b[3] for b in bounds)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            writer = Writer(f)
            for i, (z, x, y, _) in enumerate(found):
                writer.write_tile(zxy_to_tileid(z, x, y), ts.read(project, layer, z, x, y, ext))
                if progress and (i % 256 == 0 or i == len(found) - 1):
                    progress(i + 1, len(found), "pmtiles")
            header = {
                "tile_type": _TYPES[ext], "tile_compression": Compression.NONE,
                "min_lon_e7": int(w * 1e7), "min_lat_e7": int(s * 1e7),
                "max_lon_e7": int(e * 1e7), "max_lat_e7": int(n * 1e7),
                "center_zoom": (min(zooms) + max_z) // 2,
                "center_lon_e7": int((w + e) / 2 * 1e7), "center_lat_e7": int((s + n) / 2 * 1e7),
            }
            metadata = {"name": f"{project}/{layer}", "format": ext, "type": "overlay",
                        "minzoom": min(zooms), "maxzoom": max_z,
                        "bounds": [w, s, e, n], "attribution": "crowdsight"}
            writer.finalize(header, metadata)
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    return {"path": str(out_path), "tiles": len(found), "min_zoom": min(zooms),
            "max_zoom": max_z, "format": ext, "bytes": out_path.stat().st_size}
