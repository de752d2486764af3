"""crowdsight: crowdsourced analysis of satellite imagery.

The distribution ships five top-level packages with clear rooms:

* ``tiles``     - pure tile math, encoding and tile storage (no web, no DB)
* ``ingest``    - reads imagery (GeoTIFF/COG) and writes tiles through ``tiles``
* ``consensus`` - votes to answers, points to structures, villages, exports (plain arrays)
* ``labeler``   - the Starlette service; owns the database schema
* ``crowdsight``- version, settings and the ``crowdsight`` command line (a thin layer)
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("crowdsight")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
