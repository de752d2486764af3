"""Errors raised by the researcher pages.

They derive from the labeler's error classes, so the app's single error table
(``labeler.errors.HTTP_STATUS``) maps them; :func:`http_status` adds the one status that
table lacks (415 for an upload that is not a TIFF at all).
"""

from __future__ import annotations

from labeler.errors import (
    BodyTooLarge,
    Conflict,
    LabelerError,
    NotFound,
    ValidationError,
    status_for,
)

__all__ = [
    "ResearcherError",
    "UploadTooLarge",
    "NotAGeoTIFF",
    "UnusableRaster",
    "UploadIncomplete",
    "JobConflict",
    "NotFound",
    "ValidationError",
    "http_status",
]


class ResearcherError(LabelerError):
    """Root of the researcher-area errors (a :class:`LabelerError`)."""

    code = "researcher_error"


class UploadTooLarge(ResearcherError, BodyTooLarge):
    code = "upload_too_large"

    def __init__(self, size: int, limit: int, *, declared: bool = True) -> None:
        what = "declares" if declared else "exceeded"
        super().__init__(
            f"the upload {what} {size:,} bytes, above the limit of {limit:,} bytes "
            "(CROWDSIGHT_MAX_UPLOAD_BYTES); split the imagery into smaller GeoTIFFs or ingest it "
            "on the server with `crowdsight ingest`",
            field="file",
        )
        self.size = size
        self.limit = limit


class NotAGeoTIFF(ResearcherError, ValidationError):
    """The upload is not a TIFF at all (HTTP 415)."""

    code = "not_a_geotiff"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="file")


class UnusableRaster(ResearcherError, ValidationError):
    """The upload is a TIFF but cannot be used (no CRS, too many pixels, unreadable): 422."""

    code = "unusable_raster"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, field="file", code=code)


class UploadIncomplete(ResearcherError, ValidationError):
    code = "upload_incomplete"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="file")


class JobConflict(ResearcherError, Conflict):
    code = "ingest_running"


def http_status(exc: LabelerError) -> int:
    if isinstance(exc, NotAGeoTIFF):
        return 415
    return status_for(exc)
