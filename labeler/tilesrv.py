"""Serving tiles from the on-disk tile store: ``{store}/{root}/{layer}/{z}/{x}/{y}.{ext}``.

Tiles are immutable once written, so responses carry a one-year ``Cache-Control`` and an
``ETag`` (size + mtime); ``If-None-Match`` gets a 304. Path parts are checked against strict
patterns and the resolved path must stay inside the store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labeler.errors import NotFound

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FILE_RE = re.compile(r"^(\d{1,8})\.(jpg|jpeg|png|webp)$")
MEDIA = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CACHE = "public, max-age=31536000, immutable"


def _etag(st: Any) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def tile_path(store: Path, root: str, layer: str, z: int, x: int, name: str) -> tuple[Path, str]:
    m = FILE_RE.match(name)
    if not (NAME_RE.match(root) and NAME_RE.match(layer) and m) or not 0 <= z <= 30 \
            or not 0 <= x < 2 ** z or not 0 <= int(m.group(1)) < 2 ** z:
        raise NotFound("no such tile")
    path = store / root / layer / str(z) / str(x) / name
    return path, MEDIA[m.group(2)]


async def serve_tile(request: Request) -> Response:
    """A tile image from the tile store (immutable; ETag and 304)."""
    store: Path = request.state.labeler.tile_store
    p = request.path_params
    path, media = tile_path(store, p["root"], p["layer"], p["z"], p["x"], p["name"])
    try:
        st = path.stat()
    except OSError:
        raise NotFound("no such tile") from None
    etag = _etag(st)
    headers = {"Cache-Control": CACHE, "ETag": etag}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(path.read_bytes(), media_type=media, headers=headers)


async def tilejson(request: Request) -> Response:
    """TileJSON 3.0.0 for one layer of an ingested imagery folder."""
    store: Path = request.state.labeler.tile_store
    root, layer = request.path_params["root"], request.path_params["layer"]
    if not (NAME_RE.match(root) and NAME_RE.match(layer)):
        raise NotFound("no such layer")
    manifest = store / root / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        info = data["layers"][layer]
    except (OSError, ValueError, KeyError, TypeError):
        raise NotFound(f"no layer '{layer}' in '{root}'") from None
    zooms = info.get("zooms") or [data.get("min_zoom", 0), data.get("task_zoom", 18)]
    base = str(request.base_url).rstrip("/")
    bounds = info.get("bounds") or [-180, -85.0511, 180, 85.0511]
    body = {
        "tilejson": "3.0.0",
        "name": f"{root}/{layer}",
        "scheme": "xyz",
        "tiles": [f"{base}/tiles/{root}/{layer}/{{z}}/{{x}}/{{y}}.{info.get('ext', 'jpg')}"],
        "minzoom": int(zooms[0]),
        "maxzoom": int(zooms[-1]),
        "bounds": bounds,
        "center": [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, int(zooms[-1])],
        "attribution": "",
    }
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})
