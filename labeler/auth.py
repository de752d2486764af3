"""Request-level authentication helpers used by every route module (incl. ``labeler.dashboard``).

- :func:`bearer_principal` -> the :class:`~labeler.security.Principal` of an
  ``Authorization: Bearer`` token, ``None`` without one; raises ``NotAuthenticated`` for an
  unknown/revoked token.
- :func:`require_role` -> 401 for anonymous callers, 403 for volunteers and wrong roles.
- :func:`volunteer_session` / :func:`require_volunteer` -> the signed-cookie session;
  ``write=True`` also checks the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import threading
import time

from starlette.requests import Request

from labeler.errors import NotAuthenticated
from labeler.security import (
    COOKIE,
    Principal,
    VolunteerSession,
    authenticate_token,
    hash_token,
)
from labeler.security import require_role as _require_role

TOKEN_CACHE_S = 5.0


class TokenCache:
    """Caches successful token lookups for a few seconds (revocations made through this
    process clear it at once)."""

    def __init__(self, ttl: float = TOKEN_CACHE_S) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        hit = self._items.get(digest)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    def put(self, digest: str, principal: Principal) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[digest] = (time.monotonic(), principal)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def bearer_principal(request: Request) -> Principal | None:
    token = bearer_token(request)
    if token is None:
        return None
    state = request.state.labeler
    digest = hash_token(token)
    principal = state.tokens.get(digest)
    if principal is None:
        principal = authenticate_token(state.engine, token)
        state.tokens.put(digest, principal)
    return principal


def volunteer_session(request: Request) -> VolunteerSession | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    return request.state.labeler.signer.loads(raw)


def require_volunteer(request: Request, *, write: bool = False) -> VolunteerSession:
    session = volunteer_session(request)
    if session is None:
        raise NotAuthenticated("no volunteer session: POST /api/session first")
    if write:
        request.state.labeler.signer.check_csrf(session, request.headers.get("x-csrf-token"))
    return session


def require_role(request: Request, *roles: str) -> Principal:
    """The bearer principal if it has one of ``roles`` (admin always passes)."""
    principal = bearer_principal(request)
    has_session = volunteer_session(request) is not None
    if principal is not None and any(principal.allows(r) for r in roles):
        return principal
    return _require_role(principal, roles[0], has_session)
