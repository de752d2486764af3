"""OpenAPI 3.1 document built from the app's own routes, so every route is listed.

Summaries come from each endpoint's docstring (first line); the role needed is in the
docstring too ("Role: ..."). Request/answer shapes are described in ``docs/api.md``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

from crowdsight import __version__

PARAM_RE = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def iter_routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, set[str], Any]]:
    out = []
    for r in routes:
        if isinstance(r, Route):
            methods = set(r.methods or {"GET"}) - {"HEAD"}
            out.append((prefix + r.path, methods, r.endpoint))
        elif isinstance(r, Mount):
            sub = getattr(r, "routes", None) or []
            if sub:
                out.extend(iter_routes(list(sub), prefix + r.path))
            else:
                out.append((prefix + r.path + "/{path}", {"GET"}, r.app))
    return out


def build(routes: list[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, methods, endpoint in iter_routes(routes):
        clean = PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", path)
        doc = inspect.getdoc(endpoint) or ""
        summary = doc.splitlines()[0] if doc else (getattr(endpoint, "__name__", "") or clean)
        role = re.search(r"Role: ([a-z /()]+)", doc)
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in PARAM_RE.findall(path)]
        # Optional query parameters an endpoint declares as ``endpoint.query_params``
        # ({name: (json schema type, description)}).
        params += [{"name": n, "in": "query", "required": False, "schema": {"type": t},
                    "description": d}
                   for n, (t, d) in getattr(endpoint, "query_params", {}).items()]
        for m in sorted(methods):
            op: dict[str, Any] = {
                "summary": summary,
                "description": doc,
                "operationId": f"{m.lower()}_{re.sub(r'[^a-z0-9]+', '_', clean.lower()).strip('_')}",
                "responses": {"200": {"description": "OK"},
                              "4XX": {"description": "Error",
                                      "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/Error"}}}}},
            }
            if params:
                op["parameters"] = params
            if role:
                op["security"] = [{"bearer": []}]
                op["x-role"] = role.group(1).strip()
            elif clean.startswith("/api/"):
                op["security"] = [{"session": []}, {}]
            paths.setdefault(clean, {})[m.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "crowdsight labeler API", "version": __version__,
                 "description": "See docs/api.md for request and answer shapes."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "cs_session"},
            },
            "schemas": {"Error": {"type": "object", "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": ["string", "null"]}}}}}},
        },
    }
