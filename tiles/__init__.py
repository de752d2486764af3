"""Web-Mercator tiles: tile math, image encoding, the on-disk store, PMTiles packing.

No web, no database, no rasterio: ``ingest`` writes through this package and ``labeler``
serves from it.

    from tiles import TileStore, encode, decode, tile_bounds
    from tiles.errors import TilesError
    from tiles.pmtiles import pack
"""

from tiles.encode import FORMATS, decode, encode, media_type
from tiles.errors import (EncodeError, InvalidTileError, StoreError, TileNotFoundError,
                          TilesError)
from tiles.grid import (children, parent, tile_bounds, tile_xy_bounds, tiles_in_bounds,
                        zoom_for_resolution)
from tiles.store import TileStore, atomic_write, atomic_write_json

__all__ = [
    "FORMATS", "decode", "encode", "media_type",
    "TilesError", "InvalidTileError", "TileNotFoundError", "EncodeError", "StoreError",
    "children", "parent", "tile_bounds", "tile_xy_bounds", "tiles_in_bounds",
    "zoom_for_resolution", "TileStore", "atomic_write", "atomic_write_json",
]
