"""Analyst dashboard and researcher pages (issue 5).

``routes()`` returns the Starlette routes that ``labeler.app.create_app`` mounts:
analyst routes live in ``labeler.dashboard.analyst``, researcher routes in
``labeler.dashboard.researcher``; each module exposes ``routes() -> list[BaseRoute]``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, TypeVar

from starlette.routing import BaseRoute

T = TypeVar("T")

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


def app_object(request: Any, name: str, factory: Callable[[], T]) -> T:
    """A per-app object (cache, registry) kept on ``app.state``, created on first use, so the
    dashboard needs no module-level globals and each app (and test) gets its own."""
    state = request.app.state
    obj = getattr(state, name, None)
    if obj is None:
        obj = factory()
        setattr(state, name, obj)
    return obj
