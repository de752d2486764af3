"""Analyst dashboard and researcher pages (issue 5).

``routes()`` returns the Starlette routes that ``labeler.app.create_app`` mounts.
"""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
