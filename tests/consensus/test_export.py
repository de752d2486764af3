from __future__ import annotations

import csv
import io
import json

import geojson
import numpy as np
import pytest
import shapely

import crowdsight
from consensus import (ExportError, MissingDependencyError, Votes, aggregate, cluster_points,
                       export_metadata, group_villages, pseudonym, structure_layer, tile_bounds,
                       tile_layer, to_geojson, village_layer, volunteer_rows, write_csv,
                       write_geojson, write_gpkg)
from consensus.export import Layer, snake

from .conftest import grid_votes

PATTERN = ["nnnnnn", "nyyynn", "nyyynn", "nnnnnn", "nnnnyy", "nnnnyy"]


@pytest.fixture
def layers():
    v = grid_votes(PATTERN, ambiguous={(0, 0): ["bad_imagery", "bad_imagery", "no"]})
    r = aggregate(v, "spatial")
    b = tile_bounds(v.tile_xyz)
    cx, cy = (b[7, 0] + b[7, 2]) / 2, (b[7, 1] + b[7, 3]) / 2
    pts = np.array([(cx + dx * 1e-5, cy) for dx in (0, 0.1, 0.2)])
    s = cluster_points(pts, ["secret-worker-a", "secret-worker-b", "secret-worker-c"],
                       [str(v.task_ids[7])] * 3, {str(v.task_ids[7]): 3},
                       labels=["destroyed"] * 3)
    vil = group_villages(b, r.answer_labels(), r.confidence, s, eps_m=200, votes=v)
    return v, r, [tile_layer(r), structure_layer(s), village_layer(vil)]


def _meta(r, layer="tiles"):
    return export_metadata("joplin", layer=layer, result=r)


def _check_ring_ccw(ring):
    return shapely.LinearRing(ring).is_ccw


def test_geojson_is_rfc7946(layers, tmp_path):
    import pyogrio

    v, r, lays = layers
    for lay in lays:
        fc = to_geojson(lay, _meta(r, lay.name))
        assert "crs" not in fc
        assert fc["metadata"]["software_version"] == crowdsight.__version__
        assert fc["metadata"]["method"] == "spatial" and fc["metadata"]["project"] == "joplin"
        assert fc["metadata"]["parameters"] == r.params and "strength" in r.params
        text = json.dumps(fc)
        obj = geojson.loads(text)
        assert obj.is_valid, obj.errors()
        for f in fc["features"]:
            g = shapely.geometry.shape(f["geometry"])
            assert g.is_valid
            if f["geometry"]["type"] == "Polygon":
                assert _check_ring_ccw(f["geometry"]["coordinates"][0])
            flat = np.asarray(shapely.get_coordinates(g))
            assert np.allclose(flat, np.round(flat, 7))
            assert (np.abs(flat[:, 0]) <= 180).all() and (np.abs(flat[:, 1]) <= 90).all()
            assert all(k == snake(k) for k in f["properties"])
        path = tmp_path / f"{lay.name}.geojson"
        write_geojson(lay, path, _meta(r, lay.name))
        info = pyogrio.read_info(path)
        assert info["features"] == len(lay)
        assert "4326" in (info["crs"] or "")


def test_tile_properties_mapswipe_style(layers):
    v, r, (tiles, *_) = layers
    fc = to_geojson(tiles)
    p = fc["features"][0]["properties"]
    assert {"task_id", "z", "x", "y", "answer", "confidence", "p_no", "p_yes",
            "p_bad_imagery", "total_count", "yes_count", "yes_share", "agreement"} <= set(p)
    assert p["answer"] == "bad_imagery" and p["total_count"] == 3


def test_no_volunteer_ids_in_layers(layers, tmp_path):
    v, r, lays = layers
    for lay in lays:
        text = json.dumps(to_geojson(lay, _meta(r)))
        buf = io.StringIO()
        write_csv(lay, buf)
        for wid in list(v.worker_ids) + ["secret-worker-a"]:
            assert f'"{wid}"' not in text and f",{wid}," not in buf.getvalue()


def test_csv_wkt_round_trip(layers):
    _, _, lays = layers
    for lay in lays:
        buf = io.StringIO()
        write_csv(lay, buf)
        rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
        assert len(rows) == len(lay) and list(rows[0])[0] == "wkt"
        for row, g in zip(rows, lay.geometry):
            back = shapely.from_wkt(row["wkt"])
            assert back.equals_exact(shapely.orient_polygons(g), tolerance=1e-7)
        assert set(rows[0]) == {"wkt", *lay.properties}


def test_gpkg_opens_with_three_layers(layers, tmp_path):
    import pyogrio

    v, r, lays = layers
    path = tmp_path / "out.gpkg"
    write_gpkg(lays, path, _meta(r))
    names = [n for n, _ in pyogrio.list_layers(path)]
    assert names == ["tiles", "structures", "villages"]
    meta, table = pyogrio.read_info(path, layer="villages"), None
    assert meta["features"] == len(lays[2])
    _, _, geoms, fields = pyogrio.raw.read(path, layer="tiles")
    assert len(geoms) == len(lays[0])
    md = pyogrio.read_info(path, layer="tiles")["layer_metadata"]
    assert json.loads(md["crowdsight"])["project"] == "joplin"


def test_gpkg_without_pyogrio_is_a_clear_error(layers, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyogrio"):
            raise ImportError("no pyogrio")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependencyError, match="pip install"):
        write_gpkg(layers[2], tmp_path / "x.gpkg")


def test_pseudonyms_stable_keyed_and_not_raw():
    a = pseudonym("alice", "k1")
    assert a == pseudonym("alice", "k1") and a.startswith("v_") and len(a) == 18
    assert a != pseudonym("alice", "k2") and a != pseudonym("bob", "k1")
    assert "alice" not in a
    with pytest.raises(ExportError, match="secret"):
        pseudonym("alice", "")


def test_volunteer_export(layers):
    v, r, _ = layers
    rows = volunteer_rows(r, "server-secret")
    assert len(rows) == v.n_workers
    assert {row["volunteer"] for row in rows} == {pseudonym(w, "server-secret") for w in v.worker_ids}
    assert all(set(v.worker_ids).isdisjoint(map(str, row.values())) for row in rows)
    assert "p_yes_yes" in rows[0] and rows[0]["n_labels"] > 0


def test_layer_rejects_bad_columns():
    with pytest.raises(ExportError, match="snake_case"):
        Layer("x", np.array([shapely.Point(0, 0)]), {"Bad Name": np.array([1])})
    with pytest.raises(ExportError, match="values"):
        Layer("x", np.array([shapely.Point(0, 0)]), {"a": np.array([1, 2])})


def test_tiles_without_grid_need_bounds():
    r = aggregate(Votes.from_arrays(["a"], ["w"], ["yes"]), "mv")
    with pytest.raises(ExportError, match="z-x-y"):
        tile_layer(r)
    lay = tile_layer(r, bounds=np.array([[0.0, 0.0, 1.0, 1.0]]))
    assert len(lay) == 1


def test_nan_agreement_becomes_null(tmp_path):
    r = aggregate(Votes.from_arrays(["18-1-1"], ["w"], ["yes"]), "mv")
    fc = to_geojson(tile_layer(r))
    assert fc["features"][0]["properties"]["agreement"] is None
    write_geojson(tile_layer(r), tmp_path / "a.geojson")      # allow_nan=False must not trip


def test_num_is_json_safe():
    import json

    from consensus import num
    vals = [np.int64(3), np.float32(0.5), np.nan, float("inf"), np.bool_(True), "x", None]
    out = [num(v) for v in vals]
    assert out == [3, 0.5, None, None, True, "x", None]
    assert [type(v) for v in out[:2]] == [int, float]
    json.dumps(out, allow_nan=False)
