"""PMTiles packing is readable back with the pmtiles reader."""

from __future__ import annotations

import numpy as np
import pytest
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import TileType

from tiles.encode import encode
from tiles.errors import TilesError
from tiles.pmtiles import pack
from tiles.store import TileStore


def test_pack_and_read_back(tmp_path):
    s = TileStore(tmp_path / "store")
    tiles = {}
    for z, x, y in [(3, 1, 2), (4, 2, 4), (4, 3, 5), (4, 2, 5)]:
        arr = np.full((256, 256, 3), 10 * (x + y + z), np.uint8)
        data = encode(arr, "png")
        tiles[(z, x, y)] = data
        s.write("proj", "image", z, x, y, "png", data)
    out = tmp_path / "image.pmtiles"
    info = pack(s, "proj", "image", out)
    assert info["tiles"] == 4 and info["min_zoom"] == 3 and info["max_zoom"] == 4
    with open(out, "rb") as f:
        r = Reader(MmapSource(f))
        h = r.header()
        assert h["tile_type"] == TileType.PNG and (h["min_zoom"], h["max_zoom"]) == (3, 4)
        for (z, x, y), data in tiles.items():
            assert r.get(z, x, y) == data
        assert r.get(4, 0, 0) is None
        assert r.metadata()["format"] == "png"
        assert len(list(all_tiles(r.get_bytes))) == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_pack_empty_layer_is_an_error(tmp_path):
    with pytest.raises(TilesError, match="no tiles"):
        pack(tmp_path, "proj", "image", tmp_path / "x.pmtiles")
