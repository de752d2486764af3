"""Labeler exceptions and the single table mapping them to HTTP statuses.

Every error raised on purpose inside ``labeler`` derives from :class:`LabelerError`;
the app turns it into ``{"error": {"code", "message", "field"}}`` with the status
from :data:`HTTP_STATUS`.
"""

from __future__ import annotations


class LabelerError(Exception):
    """Root of every labeler error."""

    code = "labeler_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class DatabaseNotMigrated(LabelerError):
    """The database schema is missing or older than this software."""

    code = "database_not_migrated"


class InvalidJSON(LabelerError):
    code = "invalid_json"


class ValidationError(LabelerError, ValueError):
    code = "validation_error"


class NotAuthenticated(LabelerError):
    code = "not_authenticated"


class CSRFFailed(LabelerError):
    code = "csrf_failed"


class Forbidden(LabelerError):
    code = "forbidden"


class NotFound(LabelerError, LookupError):
    code = "not_found"


class Conflict(LabelerError):
    code = "conflict"


class ProjectNotLive(Conflict):
    code = "project_not_live"


class NotLeased(Conflict):
    code = "not_leased"


class LeaseExpired(Conflict):
    """A late label that can no longer be used (tile finished or its places taken)."""

    code = "lease_expired"


class TutorialRequired(Forbidden):
    """``next`` for a volunteer who has not passed the project's tutorial."""

    code = "tutorial_required"


class BodyTooLarge(LabelerError):
    code = "body_too_large"


class RateLimited(LabelerError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ManifestError(LabelerError, ValueError):
    """An ingest manifest cannot be loaded (wrong format, missing file, outside the store)."""

    code = "manifest_error"


# One table: error class -> HTTP status. Looked up along the MRO, most specific first.
HTTP_STATUS: dict[type[LabelerError], int] = {
    InvalidJSON: 400,
    NotAuthenticated: 401,
    CSRFFailed: 403,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    BodyTooLarge: 413,
    ValidationError: 422,
    ManifestError: 422,
    RateLimited: 429,
    DatabaseNotMigrated: 503,
    LabelerError: 500,
}


def status_for(exc: LabelerError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]  # type: ignore[index]
    return 500
