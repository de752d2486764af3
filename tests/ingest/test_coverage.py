"""Per-task, per-layer coverage (valid-pixel fraction) in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest import ingest
from ingest.render import tile_coverage


def _alpha_fraction(tile: np.ndarray) -> float:
    if tile.ndim == 2 or tile.shape[2] in (1, 3):
        return 1.0
    return float(tile[..., -1].mean()) / 255.0


def test_tile_coverage_rounding() -> None:
    a = np.zeros((256, 256), np.uint8)
    assert tile_coverage(a) == 0.0
    a[0, 0] = 1  # a speck of data never rounds down to "empty"
    assert tile_coverage(a) == 0.001
    a[:, :64] = 255
    assert tile_coverage(a) == 0.25
    a[:] = 255
    assert tile_coverage(a) == 1.0


def test_coverage_matches_the_written_tiles(tmp_path, make_tif, pattern_fn, tile_reader):
    data = pattern_fn(600, 600, 3)
    data[:, :, 420:] = 0  # a nodata strip on the east side, as in the synthetic "after" layer
    after = make_tif(data, nodata=0)
    before = make_tif(pattern_fn(600, 600, 3))
    store = tmp_path / "store"
    m = ingest({"before": [before], "after": [after]}, store, "cov", fmt="png", jobs=1)
    values = {}
    for t in m["tasks"]:
        assert sorted(t["coverage"]) == t["layers"]
        for layer, cov in t["coverage"].items():
            assert isinstance(cov, float) and 0 < cov <= 1 and round(cov, 3) == cov
            tile = tile_reader(store, "cov", layer, t["z"], t["x"], t["y"])
            assert cov == pytest.approx(_alpha_fraction(tile), abs=0.002)
            values.setdefault(layer, []).append(cov)
    # interior tiles are full; edge tiles (and the nodata strip) are partial
    assert max(values["before"]) == 1.0 and min(values["before"]) < 0.5
    assert sum(values["after"]) < sum(values["before"])
    assert any(t["coverage"]["before"] == 1.0 and t["coverage"].get("after", 0) < 0.5
               for t in m["tasks"])
    assert json.loads((store / "cov" / "manifest.json").read_text())["tasks"] == m["tasks"]


def test_coverage_survives_resume_and_old_block_records(tmp_path, make_tif, pattern_fn):
    src = make_tif(pattern_fn(600, 600, 3))
    store = tmp_path / "store"
    first = ingest({"image": [src]}, store, "p", fmt="png", jobs=1, block=2)
    again = ingest({"image": [src]}, store, "p", fmt="png", jobs=1, block=2)
    assert again["ingest_stats"]["blocks_resumed"] > 0
    assert again["tasks"] == first["tasks"]
    # block records written before coverage existed: those blocks are re-rendered for it
    records = list((store / "p" / ".crowdsight" / "image" / "blocks").glob("*.json"))
    assert records
    for r in records:
        body = json.loads(r.read_text())
        del body["coverage"]
        r.write_text(json.dumps(body))
    old = ingest({"image": [src]}, store, "p", fmt="png", jobs=1, block=2)
    assert old["ingest_stats"]["blocks_resumed"] == 0
    assert old["ingest_stats"]["tiles_written"] == 0  # the tiles themselves were kept
    assert old["tasks"] == first["tasks"]
