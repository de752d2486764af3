"""Issue-5 tables (researcher pages + analyst dashboard), on the labeler's SQLModel metadata.

Created by the Alembic revision ``labeler/migrations/versions/*_issue5_dashboard.py``.

Contract with the analyst side (``labeler.dashboard.results``):

* ``review_decisions`` holds at most ONE current expert decision per tile
  (``UNIQUE(tile_id)``). When a row exists, its ``answer`` overrides the crowd's consensus in
  every result and export (the result's ``source`` becomes ``"expert"``, confidence 1.0);
  ``answer`` is always one of the project's answer values (``bad_imagery`` included).
  Earlier decisions are not kept here: every decision (and its withdrawal) is written to the
  labeler's ``audit_log`` (``action`` = ``review.decide`` / ``review.withdraw``,
  ``target`` = ``tile:<id>``) in the same transaction.
* ``project_access.exports_restricted``: when true, result downloads/exports of that project
  need the ``researcher`` (or ``admin``) role; analysts get 403. Absent row = public project
  with open exports. Use :func:`labeler.dashboard.researcher_access.exports_allowed`.
* ``project_access.private``: only volunteers in ``project_members`` (joined through an invite
  link) may see or label the project. See ``labeler.dashboard.researcher_access``.

Times are aware UTC datetimes, like the labeler's own tables; :func:`iso` formats them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from labeler.models import utcnow

def iso(dt: datetime | None) -> str | None:
    """``2026-11-27T06:30:00Z`` for an aware (or naive UTC) datetime."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


JOB_STATES = ("queued", "running", "succeeded", "failed")
REVIEW_SOURCES = ("unresolved", "flagged", "sample", "manual")


class IngestJob(SQLModel, table=True):
    """A browser upload being ingested in a background worker process.

    ``progress`` is 0..1 over the whole job; ``stage`` says which part runs
    (``queued`` -> ``ingest`` -> ``loading`` -> ``done``). ``heartbeat_at`` is refreshed by
    the worker; a ``running`` job whose heartbeat is older than a few minutes was interrupted
    (server restart) and is reported as failed.
    """

    __tablename__ = "ingest_jobs"
    __table_args__ = (sa.Index("ix_ingest_jobs_project", "project_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE")
    status: str = Field(default="queued", max_length=16)
    stage: str = Field(default="queued", max_length=32)
    progress: float = 0.0
    message: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    error_code: Optional[str] = Field(default=None, max_length=64)
    error_message: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text))
    # {"layers": {name: [{"filename","size","sha256"}]}, "options": {...}}
    request: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    # {"tiles_added", "tiles_existing", "tiles_total", "tile_count", ...}
    result: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class ReviewDecision(SQLModel, table=True):
    """The current expert decision for a tile; overrides the crowd in results and exports."""

    __tablename__ = "review_decisions"
    __table_args__ = (
        sa.UniqueConstraint("tile_id", name="uq_review_decisions_tile"),
        sa.Index("ix_review_decisions_project", "project_id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE")
    tile_id: int = Field(foreign_key="tiles.id", ondelete="CASCADE")
    answer: str = Field(max_length=64)
    note: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text))
    source: str = Field(default="manual", max_length=16)
    # the crowd's answer/confidence when the decision was taken (for the QC statistics)
    crowd_answer: Optional[str] = Field(default=None, max_length=64)
    crowd_confidence: Optional[float] = None
    decided_by: str = Field(default="", max_length=200)
    decided_at: datetime = Field(default_factory=utcnow)


class ProjectAccess(SQLModel, table=True):
    """Sensitive-project settings; no row means public with open exports."""

    __tablename__ = "project_access"

    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE", primary_key=True)
    private: bool = False
    exports_restricted: bool = False
    updated_at: datetime = Field(default_factory=utcnow)


class ProjectInvite(SQLModel, table=True):
    """An invite link for a private project; only the SHA-256 of its token is stored."""

    __tablename__ = "project_invites"

    id: Optional[int] = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    prefix: str = Field(max_length=16)
    label: str = Field(default="", max_length=200)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: Optional[datetime] = None


class ProjectMember(SQLModel, table=True):
    """A volunteer admitted to a private project (through ``invite_id``)."""

    __tablename__ = "project_members"

    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE", primary_key=True)
    volunteer_id: int = Field(foreign_key="volunteers.id", ondelete="CASCADE", primary_key=True)
    invite_id: Optional[int] = Field(
        default=None, foreign_key="project_invites.id", ondelete="SET NULL"
    )
    joined_at: datetime = Field(default_factory=utcnow)
