"""Exceptions raised by :mod:`consensus`.

Every error derives from :class:`ConsensusError`, so callers (the labeler's error table, the
CLI) can catch one type. Subclasses also derive from the matching builtin where that helps
(``ValueError`` for bad input), rasterio style.
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Root of every error raised by the consensus package."""


class VotesError(ConsensusError, ValueError):
    """The votes (or gold / truth tables) cannot be used as given; the message says what to fix."""


class MethodError(ConsensusError, ValueError):
    """Unknown aggregation method or parameter."""


class ExportError(ConsensusError):
    """An export could not be written (bad layer, missing optional dependency, ...)."""


class MissingDependencyError(ExportError, ImportError):
    """An optional dependency (e.g. pyogrio for GeoPackage) is not installed."""
