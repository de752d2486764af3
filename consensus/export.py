"""Export layers (tiles, structures, villages, volunteers) as GeoJSON, CSV (WKT) and GeoPackage.

* GeoJSON follows RFC 7946: lon/lat WGS84, no ``crs`` member, exterior rings counter-clockwise
  (``shapely.orient_polygons``), coordinates rounded to 7 decimals, snake_case properties and a
  top-level ``metadata`` foreign member (project, layer, method, parameters, software version,
  generation time). Media type: ``application/geo+json``.
* CSV: one row per feature, a ``wkt`` geometry column (7 decimals) then the properties.
* GeoPackage through pyogrio (optional: a clear :class:`MissingDependencyError` without it).

Volunteer ids never appear in tile, structure or village layers. The per-volunteer export uses
keyed pseudonyms (:func:`pseudonym`, HMAC-SHA256 with the server secret).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

import numpy as np
import shapely

from .aggregate import TileResult
from .errors import ExportError, MissingDependencyError
from .geo import tile_bounds
from .points import Structures
from .villages import Villages

MEDIA_TYPES = {"geojson": "application/geo+json", "csv": "text/csv",
               "gpkg": "application/geopackage+sqlite3"}
PRECISION = 7
_SNAKE = re.compile(r"[^a-z0-9_]+")


def snake(name: str) -> str:
    """A property name in snake_case (``p_Bad Imagery`` -> ``p_bad_imagery``)."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(name)).lower()
    s = _SNAKE.sub("_", s).strip("_")
    return s or "x"


@dataclass(eq=False)
class Layer:
    """Features of one layer: lon/lat shapely geometries plus property columns."""

    name: str
    geometry: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.geometry)
        for k, v in self.properties.items():
            if len(v) != n:
                raise ExportError(f"layer {self.name!r}: column {k!r} has {len(v)} values "
                                  f"for {n} features")
            if snake(k) != k:
                raise ExportError(f"layer {self.name!r}: property {k!r} is not snake_case")

    def __len__(self) -> int:
        return len(self.geometry)


# ---------------------------------------------------------------------------------------------
# layer builders
# ---------------------------------------------------------------------------------------------

def tile_layer(result: TileResult, bounds: np.ndarray | None = None,
               task_filter: np.ndarray | None = None) -> Layer:
    """Tiles as polygons with answer, confidence, ``p_<class>``, counts, shares, agreement.

    ``bounds`` (n_tasks, 4) lon/lat; default from ``result.tile_xyz``. ``task_filter`` is an
    optional boolean mask of tasks to include.
    """
    if bounds is None:
        if result.tile_xyz is None:
            raise ExportError("tiles need geometry: the tasks are not z-x-y tiles, pass bounds")
        bounds = tile_bounds(result.tile_xyz)
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] != len(result.task_ids):
        raise ExportError("bounds must have one row per task")
    sel = np.ones(len(b), bool) if task_filter is None else np.asarray(task_filter, bool)
    geom = shapely.box(b[sel, 0], b[sel, 1], b[sel, 2], b[sel, 3], ccw=True)
    props: dict[str, np.ndarray] = {"task_id": np.asarray([str(t) for t in result.task_ids],
                                                          dtype=object)[sel]}
    if result.tile_xyz is not None:
        for i, k in enumerate("zxy"):
            props[k] = result.tile_xyz[sel, i].astype(np.int64)
    props["answer"] = result.answer_labels()[sel]
    props["confidence"] = result.confidence[sel]
    for k, c in enumerate(result.classes):
        props[snake(f"p_{c}")] = result.posterior[sel, k]
    props["total_count"] = result.n_votes[sel].astype(np.int64)
    shares = result.shares()
    for j, lab in enumerate(result.labels):
        props[snake(f"{lab}_count")] = result.counts[sel, j].astype(np.int64)
        props[snake(f"{lab}_share")] = shares[sel, j]
    props["agreement"] = result.agreement[sel]
    return Layer("tiles", geom, props)


def structure_layer(structures: Structures) -> Layer:
    """Structures as points: task, support counts, support share, confidence, damage."""
    geom = shapely.points(np.column_stack([structures.lon, structures.lat]))
    props: dict[str, np.ndarray] = {
        "structure_id": np.arange(len(structures), dtype=np.int64),
        "task_id": np.asarray([str(t) for t in structures.task], dtype=object),
        "n_support": structures.n_support.astype(np.int64),
        "n_seen": structures.n_seen.astype(np.int64),
        "support": structures.support.astype(np.float64),
        "confidence": structures.confidence.astype(np.float64),
    }
    if structures.damage is not None:
        props["damage"] = np.asarray(structures.damage, dtype=object)
    return Layer("structures", geom, props)


def village_layer(villages: Villages) -> Layer:
    """Villages as polygons with structure counts, share of damaged tiles and confidence."""
    props = {
        "village_id": np.arange(len(villages), dtype=np.int64),
        "n_tiles": villages.n_tiles, "n_damaged_tiles": villages.n_damaged_tiles,
        "share_damaged": villages.share_damaged, "n_structures": villages.n_structures,
        "n_intact": villages.n_intact, "n_damaged": villages.n_damaged,
        "n_destroyed": villages.n_destroyed, "confidence": villages.confidence,
        "n_volunteers": villages.n_volunteers,
    }
    return Layer("villages", villages.outline, props)


def pseudonym(worker_id: object, secret: str | bytes, length: int = 16) -> str:
    """Stable keyed pseudonym: ``v_`` + the first ``length`` hex digits of
    HMAC-SHA256(secret, str(worker_id)). Without the secret it cannot be reversed or linked."""
    if not secret:
        raise ExportError("a non-empty secret is needed for volunteer pseudonyms "
                          "(the server's secret key)")
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(worker_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return "v_" + digest[: max(8, min(length, 64))]


def volunteer_rows(result: TileResult, secret: str | bytes) -> list[dict[str, Any]]:
    """Per-volunteer skills with pseudonyms: ``volunteer, n_labels, accuracy,
    p_<true>_<answer>...`` (no raw ids)."""
    rows = []
    for w, wid in enumerate(result.worker_ids.tolist()):
        row: dict[str, Any] = {"volunteer": pseudonym(wid, secret),
                               "n_labels": int(result.worker_n_labels[w]),
                               "accuracy": num(result.accuracy[w])}
        for k, c in enumerate(result.classes):
            for j, lab in enumerate(result.labels):
                row[snake(f"p_{c}_{lab}")] = num(result.confusion[w, k, j])
        rows.append(row)
    rows.sort(key=lambda r: r["volunteer"])
    return rows


# ---------------------------------------------------------------------------------------------
# metadata and writers
# ---------------------------------------------------------------------------------------------

def export_metadata(project: str, *, layer: str | None = None,
                    result: TileResult | None = None, method: str | None = None,
                    parameters: Mapping[str, Any] | None = None,
                    generated: datetime | None = None, **extra: Any) -> dict[str, Any]:
    """The ``metadata`` block stamped into every export."""
    from crowdsight import __version__

    when = (generated or datetime.now(timezone.utc)).astimezone(timezone.utc)
    meta: dict[str, Any] = {"project": project}
    if layer:
        meta["layer"] = layer
    meta["method"] = method or (result.method if result is not None else None)
    params = dict(parameters) if parameters is not None else (
        dict(result.params) if result is not None else {})
    meta["parameters"] = _jsonable(params)
    if result is not None:
        meta["classes"] = list(result.classes)
        meta["answers"] = list(result.labels)
    meta["software"] = "crowdsight"
    meta["software_version"] = __version__
    meta["generated"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta.update(_jsonable(extra))
    return meta


def num(v: Any) -> Any:
    """A JSON-safe plain Python scalar: numpy ints/bools -> int/bool, floats -> float with NaN
    and infinity -> ``None``; anything else unchanged. Use it on every property value that
    leaves the package (GeoJSON, JSON APIs)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    return num(obj)


def _round_coords(c: Any) -> Any:
    if isinstance(c, (list, tuple)):
        if c and isinstance(c[0], (int, float)):
            return [round(float(x), PRECISION) for x in c]
        return [_round_coords(x) for x in c]
    return c


def _geojson_geometry(g: shapely.Geometry) -> dict[str, Any]:
    g = shapely.orient_polygons(g)
    mapping = json.loads(shapely.to_geojson(g))
    mapping["coordinates"] = _round_coords(mapping["coordinates"])
    return mapping


def to_geojson(layer: Layer, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection (dict) with a top-level ``metadata`` member."""
    names = list(layer.properties)
    cols = [layer.properties[k] for k in names]
    feats = []
    for i, g in enumerate(layer.geometry):
        props = {k: num(col[i]) for k, col in zip(names, cols)}
        feats.append({"type": "Feature", "geometry": _geojson_geometry(g), "properties": props})
    fc: dict[str, Any] = {"type": "FeatureCollection"}
    if metadata is not None:
        fc["metadata"] = _jsonable(dict(metadata))
    if len(layer):
        b = shapely.total_bounds(layer.geometry)
        fc["bbox"] = [round(float(x), PRECISION) for x in b]
    fc["features"] = feats
    return fc


def _open_text(target: str | Path | TextIO):
    if isinstance(target, (str, Path)):
        return open(target, "w", newline="", encoding="utf-8"), True
    return target, False


def write_geojson(layer: Layer, target: str | Path | TextIO,
                  metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``layer`` as RFC 7946 GeoJSON to a path (atomically) or a text stream."""
    fc = to_geojson(layer, metadata)
    text = json.dumps(fc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    _write_text(target, text)


def _write_text(target: str | Path | TextIO, text: str) -> None:
    if isinstance(target, (str, Path)):
        path = Path(target)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"cannot write {path}: {exc.strerror}") from exc
    else:
        target.write(text)


def _csv_value(v: Any) -> Any:
    v = num(v)
    return "" if v is None else v


def write_csv(layer: Layer, target: str | Path | TextIO) -> None:
    """Write ``layer`` as CSV: ``wkt`` geometry (lon/lat, 7 decimals) then the properties."""
    names = list(layer.properties)
    geoms = shapely.orient_polygons(np.asarray(layer.geometry, dtype=object))
    wkt = shapely.to_wkt(geoms, rounding_precision=PRECISION, trim=True) if len(layer) else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["wkt", *names])
    cols = [layer.properties[k] for k in names]
    for i in range(len(layer)):
        w.writerow([wkt[i], *(_csv_value(c[i]) for c in cols)])
    _write_text(target, buf.getvalue())


def write_rows_csv(rows: Sequence[Mapping[str, Any]], target: str | Path | TextIO,
                   columns: Sequence[str] | None = None) -> None:
    """Plain rows (e.g. :func:`volunteer_rows`, ``TileResult.to_rows()``) as CSV."""
    cols = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    _write_text(target, buf.getvalue())


_GEOM_TYPES = {"tiles": "Polygon", "villages": "Polygon", "structures": "Point"}


def write_gpkg(layers: Iterable[Layer], path: str | Path,
               metadata: Mapping[str, Any] | None = None) -> None:
    """Write layers into one GeoPackage (EPSG:4326) with pyogrio; the metadata goes into each
    layer's metadata. Needs the optional ``pyogrio`` dependency (``crowdsight[gpkg]``)."""
    try:
        import pyogrio.raw
    except ImportError as exc:
        raise MissingDependencyError("GeoPackage export needs pyogrio: "
                                     "pip install 'crowdsight[gpkg]'") from exc
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    meta = {"crowdsight": json.dumps(_jsonable(dict(metadata or {})), separators=(",", ":"))}
    try:
        for i, layer in enumerate(layers):
            names = list(layer.properties)
            data = [_gpkg_column(layer.properties[k]) for k in names]
            geoms = shapely.orient_polygons(np.asarray(layer.geometry, dtype=object))
            wkb = shapely.to_wkb(geoms) if len(layer) else np.empty(0, dtype=object)
            pyogrio.raw.write(str(tmp), wkb, data, names, layer=layer.name, driver="GPKG",
                              geometry_type=_GEOM_TYPES.get(layer.name, "Unknown"),
                              crs="EPSG:4326", append=i > 0, layer_metadata=meta)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot write GeoPackage {path}: {exc}") from exc


def _gpkg_column(col: np.ndarray) -> np.ndarray:
    a = np.asarray(col)
    if a.dtype == object:
        return np.asarray(["" if v is None else str(v) for v in a], dtype=object)
    return a
