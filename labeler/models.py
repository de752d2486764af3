"""Database schema (SQLModel tables). The Alembic migrations in ``labeler/migrations``
must create exactly this; ``tests/labeler/test_migrations.py`` checks they agree.

Times are aware UTC datetimes (SQLModel's ``UTCDateTime``: ``timestamptz`` on PostgreSQL,
UTC text on SQLite). Raw SQL must bind them with :data:`TS` so both backends compare alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel
from sqlmodel.sql.sqltypes import UTCDateTime

PROJECT_TYPES = ("find", "compare", "mark")
PROJECT_STATUSES = ("draft", "live", "paused", "finished")
TILE_STATES = ("live", "retired", "unresolved")
ROLES = ("researcher", "analyst", "admin")
PRIORITIES = ("completion", "uncertain")


TS = UTCDateTime()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.JSON, nullable=nullable))


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: Optional[int] = Field(default=None, primary_key=True)
    slug: str = Field(max_length=63, sa_column_kwargs={"unique": True}, nullable=False)
    name: str = Field(max_length=200)
    type: str = Field(max_length=16)
    question: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    help_text: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    examples: Any = _json()
    answers: Any = _json()
    layers: Any = _json()
    redundancy: int = 5
    retirement: Any = _json()
    gold_rate: float = 0.1
    priority: str = Field(default="completion", max_length=16)
    block_cols: int = 1
    block_rows: int = 1
    context: bool = False
    max_points: int = 200
    status: str = Field(default="draft", max_length=16)
    task_zoom: Optional[int] = None
    manifest_path: Optional[str] = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


#: the rows of ``ix_tiles_room``: the claim's ``_ELIGIBLE`` has each of these terms
ROOM_INDEX_WHERE = "state = 'live' AND has_room AND gold_answer IS NULL AND NOT tutorial"


class Tile(SQLModel, table=True):
    __tablename__ = "tiles"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "z", "x", "y", name="uq_tiles_project_zxy"),
        sa.Index("ix_tiles_queue", "project_id", "state", "label_count", "id"),
        # gold tiles of a project (the claim of a gold turn; without it every 10th claim of a
        # project with few or no gold tiles scanned all its tiles inside the write lock)
        sa.Index("ix_tiles_gold", "project_id", sqlite_where=sa.text("gold_answer IS NOT NULL"),
                 postgresql_where=sa.text("gold_answer IS NOT NULL")),
        # the claim's queue: only the tiles a claim may take (live, with room, not gold or
        # tutorial), so it no longer walks past the tiles that are full with live leases —
        # as many as the volunteers holding tasks at the top of the queue
        sa.Index("ix_tiles_room", "project_id", "label_count", "id",
                 sqlite_where=sa.text(ROOM_INDEX_WHERE),
                 postgresql_where=sa.text(ROOM_INDEX_WHERE)),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE")
    z: int
    x: int
    y: int
    west: float
    south: float
    east: float
    north: float
    layers: Any = _json()
    gold_answer: Optional[str] = Field(default=None, max_length=64)
    gold_explanation: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text))
    tutorial: bool = False
    state: str = Field(default="live", max_length=16)
    # Derived counters, changed only in the transaction that inserts/deletes the row they count
    # (non-skipped, non-gold labels; unexpired or not-yet-reclaimed leases). ``labeler.assign.recount``
    # recomputes them from scratch.
    label_count: int = 0
    lease_count: int = 0
    # whether ``label_count + lease_count`` is below the project's target (its redundancy, or
    # an adaptive policy's ``max_votes``): kept with the two counters by the same statements,
    # and when the target changes. Only what ``ix_tiles_room`` indexes; the claim still checks
    # the counts themselves (a stale ``has_room`` could hide a tile, never overfill one).
    has_room: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    answer_counts: Any = _json()
    consensus_answer: Optional[str] = Field(default=None, max_length=64)
    confidence: Optional[float] = None
    retired_at: Optional[datetime] = None


class Volunteer(SQLModel, table=True):
    __tablename__ = "volunteers"

    id: Optional[int] = Field(default=None, primary_key=True)
    public_id: str = Field(max_length=32, sa_column_kwargs={"unique": True}, nullable=False)
    display_name: Optional[str] = Field(default=None, max_length=40)
    tutorials_passed: Any = _json()
    created_at: datetime = Field(default_factory=utcnow)


class Label(SQLModel, table=True):
    """Append-only: rows are inserted, never updated or deleted by the service."""

    __tablename__ = "labels"
    __table_args__ = (
        sa.UniqueConstraint("tile_id", "volunteer_id", name="uq_labels_tile_volunteer"),
        sa.UniqueConstraint("volunteer_id", "idempotency_key", name="uq_labels_volunteer_key"),
        sa.Index("ix_labels_project", "project_id", "id"),
        sa.Index("ix_labels_volunteer_project", "volunteer_id", "project_id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE")
    tile_id: int = Field(foreign_key="tiles.id", ondelete="CASCADE")
    volunteer_id: int = Field(foreign_key="volunteers.id", ondelete="CASCADE")
    answer: Optional[str] = Field(default=None, max_length=64)
    points: Any = _json(nullable=True)
    skipped: bool = False
    flag_note: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text))
    idempotency_key: str = Field(max_length=64)
    is_gold: bool = False
    correct: Optional[bool] = None
    time_spent_ms: Optional[int] = None
    created_at: datetime = Field(default_factory=utcnow)


class VolunteerProgress(SQLModel, table=True):
    """How many labels a volunteer gave in a project, kept up to date by the statements that
    store labels (the assigner reads it on every task: counting the labels each time grew
    with the volunteer's work)."""

    __tablename__ = "volunteer_progress"

    volunteer_id: int = Field(foreign_key="volunteers.id", ondelete="CASCADE", primary_key=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE", primary_key=True)
    labels: int = 0


class Lease(SQLModel, table=True):
    """A tile handed to a volunteer until ``expires_at``; a task is the leases sharing ``task_id``."""

    __tablename__ = "leases"
    __table_args__ = (
        sa.UniqueConstraint("tile_id", "volunteer_id", name="uq_leases_tile_volunteer"),
        sa.Index("ix_leases_volunteer", "volunteer_id", "project_id"),
        sa.Index("ix_leases_expiry", "project_id", "expires_at"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    task_id: str = Field(max_length=32, index=True)
    project_id: int = Field(foreign_key="projects.id", ondelete="CASCADE")
    tile_id: int = Field(foreign_key="tiles.id", ondelete="CASCADE")
    volunteer_id: int = Field(foreign_key="volunteers.id", ondelete="CASCADE")
    is_gold: bool = False
    block_row: int = 0
    block_col: int = 0
    expires_at: datetime
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """Only the SHA-256 of a token is stored; ``prefix`` helps people tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(default="", max_length=200)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: Optional[datetime] = None


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=64)
    target: str = Field(default="", max_length=200)
    details: Any = _json(nullable=True)
