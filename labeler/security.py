"""Sessions, CSRF, API tokens, roles and rate limits.

- Volunteer sessions: a signed cookie (itsdangerous) carrying the volunteer's row id and
  public id, so the hot path needs no session lookup. The CSRF token is an HMAC of the
  public id: tied to the session, nothing stored.
- API tokens: ``cs_`` + 32 random bytes; only their SHA-256 is stored, compared with
  :func:`hmac.compare_digest`.
- Rate limits: in-process token buckets (per worker process; with N workers the effective
  ceiling is N times the setting).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.engine import Connection, Engine

from labeler.db import write_tx
from labeler.sql import js, run, ts
from labeler.errors import (
    CSRFFailed,
    Forbidden,
    NotAuthenticated,
    NotFound,
    RateLimited,
    ValidationError,
)
from labeler.models import ROLES, ApiToken, utcnow
from labeler.projects import audit

COOKIE = "cs_session"
COOKIE_MAX_AGE = 365 * 24 * 3600
TOKEN_PREFIX = "cs_"


@dataclass(frozen=True)
class VolunteerSession:
    id: int
    public_id: str


@dataclass(frozen=True)
class Principal:
    """A bearer-token caller."""

    token_id: int
    role: str
    name: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}:{self.name}"[:200]

    def allows(self, role: str) -> bool:
        return self.role == "admin" or self.role == role


class Signer:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._ser = URLSafeTimedSerializer(secret, salt="crowdsight-session")
        self._seen: dict[str, tuple[VolunteerSession, float]] = {}

    def dumps(self, session: VolunteerSession) -> str:
        return self._ser.dumps([session.id, session.public_id])

    def loads(self, value: str) -> VolunteerSession | None:
        hit = self._seen.get(value)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        try:
            vid, pid = self._ser.loads(value, max_age=COOKIE_MAX_AGE)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(vid, int) or not isinstance(pid, str):
            return None
        session = VolunteerSession(vid, pid)
        # Verified cookies are remembered for a minute (signature checks cost ~0.2 ms each).
        if len(self._seen) > 50_000:
            self._seen.clear()
        self._seen[value] = (session, time.monotonic() + 60)
        return session

    def csrf_token(self, session: VolunteerSession) -> str:
        return hmac.new(self._secret, b"csrf:" + session.public_id.encode(),
                        hashlib.sha256).hexdigest()[:40]

    def check_csrf(self, session: VolunteerSession, token: str | None) -> None:
        if not token or not hmac.compare_digest(self.csrf_token(session), token):
            raise CSRFFailed("missing or wrong X-CSRF-Token header: use the csrf_token from "
                             "GET /api/session")


# --- volunteers -------------------------------------------------------------------------

_NEW_VOLUNTEER_SQL = (
    "INSERT INTO volunteers (public_id, display_name, tutorials_passed, created_at) "
    "VALUES (:pid, :name, :tp, :now) RETURNING id")


def insert_volunteer(conn: Connection, display_name: str | None) -> VolunteerSession:
    """Create a volunteer inside the caller's write transaction."""
    public_id = uuid.uuid4().hex
    row = run(conn, _NEW_VOLUNTEER_SQL, {"pid": public_id, "name": display_name,
                                         "tp": js(conn, []), "now": ts(conn, utcnow())}).first()
    return VolunteerSession(int(row[0]), public_id)


def create_volunteer(engine: Engine, display_name: str | None) -> VolunteerSession:
    with write_tx(engine) as conn:
        return insert_volunteer(conn, display_name)


def clean_display_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value.strip()) > 40:
        raise ValidationError("'display_name' must be text of at most 40 characters",
                              field="display_name")
    value = " ".join(value.split())
    if any(not ch.isprintable() for ch in value):
        raise ValidationError("'display_name' contains control characters", field="display_name")
    return value or None


# --- API tokens -------------------------------------------------------------------------

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, role: str, name: str = "", *, actor: str = "cli") -> tuple[int, str]:
    """Create a token; returns ``(id, token)``. The token itself is never stored."""
    if role not in ROLES:
        raise ValidationError(f"'role' must be one of {', '.join(ROLES)}", field="role")
    if not isinstance(name, str) or len(name) > 200:
        raise ValidationError("'name' must be text of at most 200 characters", field="name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    t = ApiToken.__table__  # type: ignore[attr-defined]
    with write_tx(engine) as conn:
        tid = conn.execute(sa.insert(t).values(
            name=name, role=role, token_hash=hash_token(token), prefix=token[:10],
            created_at=utcnow()).returning(t.c.id)).scalar_one()
        audit(conn, actor, "token.create", str(tid), {"role": role, "name": name})
    return int(tid), token


def revoke_token(engine: Engine, token_id: int, *, actor: str = "cli") -> None:
    t = ApiToken.__table__  # type: ignore[attr-defined]
    with write_tx(engine) as conn:
        n = conn.execute(sa.update(t).where(t.c.id == token_id, t.c.revoked_at.is_(None)).values(
            revoked_at=utcnow())).rowcount
        if n == 0:
            exists = conn.execute(sa.select(t.c.id).where(t.c.id == token_id)).first()
            if exists is None:
                raise NotFound(f"no token {token_id}")
        audit(conn, actor, "token.revoke", str(token_id))


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    t = ApiToken.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.id, t.c.name, t.c.role, t.c.prefix, t.c.created_at,
                                      t.c.revoked_at).order_by(t.c.id)).all()
    return [{"id": r.id, "name": r.name, "role": r.role, "prefix": r.prefix,
             "created_at": r.created_at.isoformat().replace("+00:00", "Z"),
             "revoked": r.revoked_at is not None} for r in rows]


def authenticate_token(engine: Engine, token: str) -> Principal:
    digest = hash_token(token)
    t = ApiToken.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.c.id, t.c.role, t.c.name, t.c.token_hash, t.c.revoked_at)
                           .where(t.c.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
        raise NotAuthenticated("unknown or revoked API token")
    return Principal(row.id, row.role, row.name)


def require_role(principal: Principal | None, role: str, has_session: bool) -> Principal:
    if principal is None:
        if has_session:
            raise Forbidden(f"this needs an API token with role '{role}'; volunteer sessions "
                            "cannot use it")
        raise NotAuthenticated(f"this needs 'Authorization: Bearer <token>' with role '{role}'")
    if not principal.allows(role):
        raise Forbidden(f"this needs role '{role}' (your token has '{principal.role}')")
    return principal


# --- rate limits ------------------------------------------------------------------------

class RateLimiter:
    """Token bucket per key: ``per_minute`` requests, bursts up to the same number."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.capacity = float(max(per_minute, 1))
        self.rate = self.capacity / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str, cost: float = 1.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                wait = max(1, int((cost - tokens) / self.rate + 0.999))
                raise RateLimited(f"too many submissions; try again in {wait} s", retry_after=wait)
            self._buckets[key] = (tokens - cost, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)


def client_ip(scope_client: tuple[str, int] | None, forwarded_for: str | None,
              trusted: frozenset[str]) -> str:
    host = scope_client[0] if scope_client else "unknown"
    if forwarded_for and host in trusted:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in trusted:
                return hop
    return host
