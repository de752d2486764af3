"""Web-Mercator XYZ tile math (thin, typed wrappers over ``mercantile``).

Tile addresses are ``(z, x, y)`` in the XYZ ("slippy map") scheme: y grows southwards.
All lon/lat bounds are ``(west, south, east, north)`` in WGS84 degrees.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import mercantile
import numpy as np

from tiles.errors import InvalidTileError

#: Equatorial circumference of the Web-Mercator sphere, metres.
CIRCUMFERENCE = 2 * math.pi * 6378137.0
MAX_ZOOM = 24
TILE_SIZES = (256, 512)

Bounds = tuple[float, float, float, float]


def check_tile(z: int, x: int, y: int) -> None:
    """Raise :class:`InvalidTileError` unless ``z/x/y`` is a valid XYZ tile."""
    if not (isinstance(z, int) and isinstance(x, int) and isinstance(y, int)):
        raise InvalidTileError(f"tile {z}/{x}/{y}: z, x and y must be integers")
    if not 0 <= z <= MAX_ZOOM:
        raise InvalidTileError(f"tile {z}/{x}/{y}: zoom must be between 0 and {MAX_ZOOM}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise InvalidTileError(f"tile {z}/{x}/{y}: x and y must be between 0 and {n - 1}")


def tile_bounds(z: int, x: int, y: int) -> Bounds:
    """Exact lon/lat bounds of a tile (``mercantile.bounds``)."""
    b = mercantile.bounds(x, y, z)
    return (b.west, b.south, b.east, b.north)


def tile_xy_bounds(z: int, x: int, y: int) -> Bounds:
    """Bounds of a tile in Web-Mercator metres (EPSG:3857)."""
    b = mercantile.xy_bounds(x, y, z)
    return (b.left, b.bottom, b.right, b.top)


def lonlat_from_mercator(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Web-Mercator metres (EPSG:3857) to WGS84 lon/lat degrees: the inverse spherical
    Mercator (as ``mercantile.lnglat``, on arrays; non-finite input stays non-finite)."""
    r = CIRCUMFERENCE / (2 * math.pi)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.degrees(x / r), np.degrees(np.pi / 2 - 2 * np.arctan(np.exp(-y / r)))


def rounded(bounds: Iterable[float], ndigits: int = 7) -> list[float]:
    """Round coordinates for JSON output (RFC 7946 suggests ~7 decimals)."""
    return [round(float(v), ndigits) for v in bounds]


def ground_resolution(zoom: int, lat: float, tile_size: int = 256) -> float:
    """Metres on the ground per tile pixel at ``zoom`` and latitude ``lat``."""
    return CIRCUMFERENCE * math.cos(math.radians(lat)) / (tile_size * (1 << zoom))


def zoom_for_resolution(res_m: float, lat: float, tile_size: int = 256) -> int:
    """Smallest zoom whose tile pixels are at least as fine as ``res_m`` at latitude ``lat``.

    E.g. 0.6 m imagery at 37 N -> 18; 0.5 m at 13 N -> 19; 300 m Landsat at 24 N -> 9.
    """
    if not res_m > 0:
        raise InvalidTileError(f"resolution {res_m!r} m: must be positive")
    exact = math.log2(CIRCUMFERENCE * math.cos(math.radians(lat)) / (tile_size * res_m))
    # tolerate float noise: 18.0000001 is 18
    return max(0, min(MAX_ZOOM, math.ceil(exact - 1e-6)))


def tiles_in_bounds(bounds: Bounds, zoom: int) -> Iterator[tuple[int, int]]:
    """``(x, y)`` of every tile at ``zoom`` intersecting lon/lat ``bounds`` (edges exclusive)."""
    w, s, e, n = bounds
    # shrink by a hair so a bound lying exactly on a tile edge does not pull in the neighbour
    eps = 1e-9
    for t in mercantile.tiles(w + eps, s + eps, e - eps, n - eps, [zoom]):
        yield t.x, t.y


def parent(z: int, x: int, y: int) -> tuple[int, int, int]:
    return z - 1, x >> 1, y >> 1


def children(z: int, x: int, y: int) -> list[tuple[int, int, int]]:
    """The four children, in order top-left, top-right, bottom-left, bottom-right."""
    return [(z + 1, 2 * x + dx, 2 * y + dy) for dy in (0, 1) for dx in (0, 1)]


def morton(x: int, y: int) -> int:
    """Z-order key: sorting by it keeps spatial neighbours (and shared parents) together."""
    key = 0
    for i in range(32):
        key |= ((x >> i) & 1) << (2 * i) | ((y >> i) & 1) << (2 * i + 1)
    return key
