"""Analyst dashboard and researcher pages (issue 5).

``routes()`` returns the Starlette routes that ``labeler.app.create_app`` mounts:
analyst routes live in ``labeler.dashboard.analyst``, researcher routes in
``labeler.dashboard.researcher``; each module exposes ``routes() -> list[BaseRoute]``.
"""

from __future__ import annotations

import importlib

from starlette.routing import BaseRoute

_MODULES = ("labeler.dashboard.analyst", "labeler.dashboard.researcher")


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        out.extend(module.routes())
    return out
