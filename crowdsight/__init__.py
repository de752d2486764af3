"""crowdsight: crowdsourced analysis of satellite imagery.

The distribution ships five top-level packages with clear rooms:

* ``tiles``     - pure tile math, encoding and tile storage (no web, no DB)
* ``ingest``    - reads imagery (GeoTIFF/COG) and writes tiles through ``tiles``
* ``consensus`` - votes to answers, points to structures, villages, exports (plain arrays)
* ``labeler``   - the Starlette service; owns the database schema
* ``crowdsight``- version, settings and the ``crowdsight`` command line (a thin layer)
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """``__version__``, read from the installed distribution on first use: importing
    ``importlib.metadata`` costs ~25-30 ms, which every ``crowdsight`` command would pay at
    start-up (an ingest of a few files takes well under a second)."""
    if name != "__version__":
        raise AttributeError(f"module 'crowdsight' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("crowdsight")
    except PackageNotFoundError:  # running from a source tree without install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
