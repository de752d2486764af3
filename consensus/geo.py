"""Small geodesy helpers: a local metric projection and Web-Mercator tile bounds.

Clustering happens at building / settlement scale (metres to a few kilometres), where a local
equirectangular projection about the data's centre is accurate to well under 0.1 % - far below
the scatter of volunteers' clicks - and needs no PROJ database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius


@dataclass(frozen=True)
class LocalProjection:
    """Equirectangular projection about (lon0, lat0), in metres."""

    lon0: float
    lat0: float

    @classmethod
    def around(cls, lon: np.ndarray, lat: np.ndarray) -> "LocalProjection":
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if lon.size == 0:
            return cls(0.0, 0.0)
        # centre longitude via the mean unit vector (safe across the antimeridian)
        ang = np.radians(lon)
        lon0 = float(np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())))
        return cls(lon0, float(np.mean(lat)))

    def forward(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """(n, 2) metres east / north of the centre."""
        dlon = (np.asarray(lon, dtype=np.float64) - self.lon0 + 180.0) % 360.0 - 180.0
        k = np.radians(1.0) * EARTH_RADIUS_M
        x = dlon * k * np.cos(np.radians(self.lat0))
        y = (np.asarray(lat, dtype=np.float64) - self.lat0) * k
        return np.column_stack([x, y])

    def inverse(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        k = np.radians(1.0) * EARTH_RADIUS_M
        lat = self.lat0 + xy[:, 1] / k
        lon = self.lon0 + xy[:, 0] / (k * np.cos(np.radians(self.lat0)))
        lon = (lon + 180.0) % 360.0 - 180.0
        return lon, lat


def tile_bounds(xyz: np.ndarray) -> np.ndarray:
    """(n, 4) lon/lat ``west, south, east, north`` of Web-Mercator tiles ``z, x, y``."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    z, x, y = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    n = 2.0 ** z

    def lat(yy: np.ndarray) -> np.ndarray:
        return np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * yy / n))))

    return np.column_stack([x / n * 360.0 - 180.0, lat(y + 1), (x + 1) / n * 360.0 - 180.0,
                            lat(y)])
