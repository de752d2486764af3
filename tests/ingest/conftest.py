"""Tiny synthetic GeoTIFFs written in tmp_path (several CRSs, dtypes, masks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_transform


def pattern(height: int, width: int, count: int, dtype: str = "uint8") -> np.ndarray:
    """A smooth, position-dependent pattern: every pixel's value says where it is."""
    rows, cols = np.mgrid[0:height, 0:width]
    bands = []
    for b in range(count):
        v = (40 + 3 * (cols % 64) + 2 * (rows % 50) + 37 * b) % 230 + 20
        bands.append(v)
    arr = np.stack(bands).astype(np.float64)
    if dtype == "uint16":
        arr = arr * 40 + 1000
    elif dtype.startswith("float"):
        arr = arr / 255.0 - 0.2
    return arr.astype(dtype)


def write_tif(path: Path, data: np.ndarray, *, crs: str = "EPSG:32635",
              center_lonlat: tuple[float, float] = (24.3, 13.4), res: float = 0.5,
              nodata: float | None = None, mask: np.ndarray | None = None,
              alpha: np.ndarray | None = None, transform: Affine | None = None,
              georef: bool = True, **profile) -> Path:
    """Write ``data`` (count, h, w) as a GeoTIFF centred on ``center_lonlat``."""
    count, h, w = data.shape
    if transform is None and georef:
        (cx,), (cy,) = warp_transform("EPSG:4326", crs, [center_lonlat[0]], [center_lonlat[1]])
        transform = Affine(res, 0.0, cx - w * res / 2, 0.0, -res, cy + h * res / 2)
    prof = dict(driver="GTiff", width=w, height=h, count=count + (alpha is not None),
                dtype=str(data.dtype), tiled=True, blockxsize=64, blockysize=64)
    if georef:
        prof.update(crs=crs, transform=transform)
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data, indexes=list(range(1, count + 1)))
            if alpha is not None:
                from rasterio.enums import ColorInterp
                dst.write(alpha.astype(data.dtype), count + 1)
                ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue][:count]
                if count == 1:
                    ci = [ColorInterp.gray]
                dst.colorinterp = ci + [ColorInterp.alpha]
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
    return path


@pytest.fixture
def make_tif(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(data: np.ndarray | None = None, name: str | None = None, **kw) -> Path:
        if data is None:
            data = pattern(256, 256, 3)
        return write_tif(tmp_path / (name or f"src{next(counter)}.tif"), data, **kw)

    return make


@pytest.fixture
def pattern_fn() -> Callable[..., np.ndarray]:
    return pattern


@pytest.fixture
def two_file_mosaic(make_tif: Callable[..., Path]) -> Callable[..., tuple[Path, Path, Path]]:
    """``split(data)``: a (3, 256, 512) array written as two side-by-side 256-px files (UTM
    35N, 0.5 m, near 24.3 E 13.4 N) and as one file of the whole; ``(left, right, whole)``."""
    from affine import Affine
    from rasterio.warp import transform as warp_transform

    def split(data: np.ndarray) -> tuple[Path, Path, Path]:
        (cx,), (cy,) = warp_transform("EPSG:4326", "EPSG:32635", [24.3], [13.4])
        left = Affine(0.5, 0, cx - 128, 0, -0.5, cy + 64)
        right = Affine(0.5, 0, cx, 0, -0.5, cy + 64)
        a = make_tif(np.ascontiguousarray(data[:, :, :256]), transform=left)
        b = make_tif(np.ascontiguousarray(data[:, :, 256:]), transform=right)
        return a, b, make_tif(data, transform=left)

    return split


def read_tile(store: Path, project: str, layer: str, z: int, x: int, y: int,
              ext: str = "png") -> np.ndarray:
    from tiles.encode import decode

    return decode((store / project / layer / str(z) / str(x) / f"{y}.{ext}").read_bytes())


@pytest.fixture
def tile_reader() -> Callable[..., np.ndarray]:
    return read_tile


@pytest.fixture
def run_script(tmp_path: Path) -> Callable[[str], subprocess.CompletedProcess]:
    """``run_script(code)``: run ``code`` in a fresh interpreter (for process-wide patches,
    and so that its workers are forked from a single-threaded process); output captured."""
    def run(code: str) -> subprocess.CompletedProcess:
        script = tmp_path / "run.py"
        script.write_text(code)
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120)
    return run
