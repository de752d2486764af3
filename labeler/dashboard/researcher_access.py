"""Sensitive projects: private projects with invite links, and researcher-only exports.

Helpers for the volunteer API and the exports (SQLAlchemy Core on a ``Connection``):

* :func:`volunteer_sees` — the request-level check the volunteer API calls (``labeler/api.py``
  ``_visible_project`` and ``projects_index``): private projects look like unknown projects
  (404) to volunteers who were not invited;
* :func:`volunteer_project_filter` — a WHERE clause hiding private projects from volunteers who
  were not invited (for ``GET /api/projects`` and every per-project volunteer route);
* :func:`volunteer_can_access` — the same check for one project;
* :func:`redeem_invite` — admits the volunteer holding an invite token to its project;
* :func:`exports_allowed` — whether a bearer role may download a project's results/exports.

A private project is reached through an invite link ``/join#<token>``: that page starts (or
resumes) the volunteer session, calls ``POST /api/invites/redeem`` with it, then opens the
project on the volunteer page (``/#/p/<slug>``). The code sits in the URL fragment, so it never
reaches server logs or Referer headers.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa

from labeler.dashboard import app_object
from labeler.dashboard.models import iso, ProjectAccess, ProjectInvite, ProjectMember
from labeler.errors import NotFound
from labeler.models import Project, utcnow

ACCESS = ProjectAccess.__table__
INVITES = ProjectInvite.__table__
MEMBERS = ProjectMember.__table__
PROJECTS = Project.__table__

INVITE_PREFIX = "inv_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_access(conn: sa.Connection, project_id: int) -> dict[str, bool]:
    row = conn.execute(sa.select(ACCESS).where(ACCESS.c.project_id == project_id)).first()
    if row is None:
        return {"private": False, "exports_restricted": False}
    return {"private": bool(row.private), "exports_restricted": bool(row.exports_restricted)}


def set_access(conn: sa.Connection, project_id: int, *, private: bool | None = None,
               exports_restricted: bool | None = None) -> dict[str, bool]:
    current = get_access(conn, project_id)
    if private is not None:
        current["private"] = bool(private)
    if exports_restricted is not None:
        current["exports_restricted"] = bool(exports_restricted)
    exists = conn.execute(
        sa.select(ACCESS.c.project_id).where(ACCESS.c.project_id == project_id)
    ).first()
    values = dict(current, updated_at=utcnow())
    if exists:
        conn.execute(sa.update(ACCESS).where(ACCESS.c.project_id == project_id).values(**values))
    else:
        conn.execute(sa.insert(ACCESS).values(project_id=project_id, **values))
    return current


def volunteer_project_filter(volunteer_id: int | None) -> sa.ColumnElement[bool]:
    """WHERE clause on ``projects``: public projects, plus private ones the volunteer joined."""
    private_ids = sa.select(ACCESS.c.project_id).where(ACCESS.c.private.is_(True))
    clause = PROJECTS.c.id.not_in(private_ids)
    if volunteer_id is not None:
        joined = sa.select(MEMBERS.c.project_id).where(MEMBERS.c.volunteer_id == volunteer_id)
        clause = sa.or_(clause, PROJECTS.c.id.in_(joined))
    return clause


def volunteer_can_access(conn: sa.Connection, project_id: int, volunteer_id: int | None) -> bool:
    if not get_access(conn, project_id)["private"]:
        return True
    if volunteer_id is None:
        return False
    row = conn.execute(
        sa.select(MEMBERS.c.project_id).where(
            MEMBERS.c.project_id == project_id, MEMBERS.c.volunteer_id == volunteer_id
        )
    ).first()
    return row is not None


def exports_allowed(conn: sa.Connection, project_id: int, role: str | None) -> bool:
    """Analysts may export unless the project restricts exports to researchers."""
    if role in ("researcher", "admin"):
        return True
    if role != "analyst":
        return False
    return not get_access(conn, project_id)["exports_restricted"]


def create_invite(conn: sa.Connection, project_id: int, *, label: str = "",
                  created_by: str = "") -> dict[str, Any]:
    """A new invite; the token is returned only here (only its hash is stored)."""
    token = INVITE_PREFIX + secrets.token_urlsafe(24)
    now = utcnow()
    res = conn.execute(
        sa.insert(INVITES).values(
            project_id=project_id, token_hash=hash_token(token), prefix=token[:10],
            label=label[:200], created_by=created_by[:200], created_at=now,
        )
    )
    invite_id = res.inserted_primary_key[0] if res.inserted_primary_key else None
    return {"id": invite_id, "token": token, "prefix": token[:10], "label": label,
            "created_at": iso(now), "revoked": False, "members": 0}


def list_invites(conn: sa.Connection, project_id: int) -> list[dict[str, Any]]:
    members = (
        sa.select(MEMBERS.c.invite_id, sa.func.count().label("n"))
        .where(MEMBERS.c.project_id == project_id)
        .group_by(MEMBERS.c.invite_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(INVITES, sa.func.coalesce(members.c.n, 0).label("members"))
        .select_from(INVITES.outerjoin(members, members.c.invite_id == INVITES.c.id))
        .where(INVITES.c.project_id == project_id)
        .order_by(INVITES.c.id)
    ).all()
    return [
        {"id": r.id, "prefix": r.prefix, "label": r.label, "created_by": r.created_by,
         "created_at": iso(r.created_at), "revoked": r.revoked_at is not None,
         "members": int(r.members)}
        for r in rows
    ]


def revoke_invite(conn: sa.Connection, project_id: int, invite_id: int) -> None:
    res = conn.execute(
        sa.update(INVITES)
        .where(INVITES.c.id == invite_id, INVITES.c.project_id == project_id)
        .values(revoked_at=utcnow())
    )
    if res.rowcount == 0:
        raise NotFound(f"no invite {invite_id} in this project", field="invite_id")


def redeem_invite(conn: sa.Connection, token: str, volunteer_id: int) -> str:
    """Admit the volunteer to the invite's project; returns the project slug. Idempotent."""
    row = conn.execute(
        sa.select(INVITES.c.id, INVITES.c.project_id, INVITES.c.revoked_at, PROJECTS.c.slug)
        .select_from(INVITES.join(PROJECTS, PROJECTS.c.id == INVITES.c.project_id))
        .where(INVITES.c.token_hash == hash_token(token or ""))
    ).first()
    if row is None or row.revoked_at is not None:
        raise NotFound(
            "this invite link is unknown or was withdrawn; ask the project's researchers "
            "for a new one", field="invite",
        )
    exists = conn.execute(
        sa.select(MEMBERS.c.project_id).where(
            MEMBERS.c.project_id == row.project_id, MEMBERS.c.volunteer_id == volunteer_id
        )
    ).first()
    if exists is None:
        conn.execute(
            sa.insert(MEMBERS).values(project_id=row.project_id, volunteer_id=volunteer_id,
                                      invite_id=row.id, joined_at=utcnow())
        )
    return str(row.slug)


# --------------------------------------------------------------------------- volunteer API hook


class PrivateProjects:
    """Ids of private projects, cached ``ttl`` seconds per process (the volunteer hot path
    pays one PK lookup per private project only; public projects cost nothing)."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._at = -1e9
        self._ids: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def ids(self, engine: sa.Engine) -> frozenset[int]:
        now = time.monotonic()
        if now - self._at < self.ttl:
            return self._ids
        with engine.connect() as conn:
            ids = frozenset(conn.execute(sa.select(ACCESS.c.project_id).where(
                ACCESS.c.private.is_(True))).scalars().all())
        with self._lock:
            self._ids, self._at = ids, now
        return ids

    def invalidate(self) -> None:
        with self._lock:
            self._at = -1e9


def _private_cache(request: Any) -> PrivateProjects:
    return app_object(request, "private_projects", PrivateProjects)


def volunteer_sees(request: Any, project_id: int) -> bool:
    """For the volunteer API (blocking; call in a worker thread): may the caller of this
    volunteer request see project ``project_id``? Public projects: yes. Private projects: only
    volunteers admitted through an invite link. Bearer-token callers are not volunteers and
    are checked by the caller (researchers/analysts/admins see everything)."""
    st = request.state.labeler
    if project_id not in _private_cache(request).ids(st.engine):
        return True
    from labeler.auth import volunteer_session

    session = volunteer_session(request)
    if session is None:
        return False
    with st.engine.connect() as conn:
        return volunteer_can_access(conn, project_id, int(session.id))


def invalidate_private(request: Any) -> None:
    """Call after changing a project's ``private`` flag through this process."""
    _private_cache(request).invalidate()


def may_be_private(request: Any, project_id: int) -> bool:
    """Non-blocking pre-check for the volunteer API's cached fast path: ``False`` only when the
    (fresh) cache says the project is public; otherwise call :func:`volunteer_sees` in a
    worker thread."""
    cache = _private_cache(request)
    if time.monotonic() - cache._at >= cache.ttl:
        return True
    return project_id in cache._ids
