"""Settings, read from ``CROWDSIGHT_*`` environment variables.

Nothing here runs at import time: call :func:`Settings.from_env` inside ``main()``
or ``create_app()``. Every field has a default that works on a fresh machine
(embedded SQLite + a local tile folder under ``CROWDSIGHT_DATA_DIR``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

PREFIX = "CROWDSIGHT_"


class SettingsError(ValueError):
    """A CROWDSIGHT_* variable has a value that cannot be used."""


def _as_bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{PREFIX}{name.upper()}={raw!r}: expected true/false")


@dataclass(frozen=True)
class Settings:
    """All runtime configuration. Field ``foo_bar`` is read from ``CROWDSIGHT_FOO_BAR``."""

    data_dir: Path = Path("crowdsight-data")
    # Empty means ``sqlite:///{data_dir}/crowdsight.db``.
    database_url: str = ""
    # Empty means ``{data_dir}/tiles``.
    tile_store: str = ""
    # Empty means a random key persisted in ``{data_dir}/secret.key`` (created on first use).
    secret_key: str = ""
    # Largest raster accepted by ingest (width * height * bands).
    max_raster_pixels: int = 2_000_000_000
    # Largest upload accepted through the browser, in bytes.
    max_upload_bytes: int = 2_000_000_000
    # Largest JSON request body, in bytes.
    max_body_bytes: int = 256 * 1024
    lease_seconds: int = 600
    # Submissions per minute per volunteer / per client IP.
    rate_limit_volunteer: int = 120
    rate_limit_ip: int = 600
    max_points_per_tile: int = 200
    # Set behind TLS so cookies carry the Secure flag.
    secure_cookies: bool = False
    debug: bool = False
    # Trust X-Forwarded-For from these proxies (comma separated), for rate limits behind a proxy.
    forwarded_allow_ips: str = ""
    # Manifest tasks whose valid-pixel coverage is below this (0..1) are not loaded as tiles.
    min_task_coverage: float = 0.5
    # Seconds between checks for adaptive projects due a skill refit (labeler.refit); 0 = off.
    skill_refit_interval: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = PREFIX + f.name.upper()
            if key not in env:
                continue
            raw = env[key]
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = _as_bool(f.name, raw)
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif isinstance(default, Path):
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                if isinstance(exc, SettingsError):
                    raise
                raise SettingsError(f"{key}={raw!r}: expected a number") from exc
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    # Derived values -------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'crowdsight.db').resolve()}"

    @property
    def tile_store_path(self) -> Path:
        """The tile store, absolute (like the database path): manifest paths built from it are
        then unambiguous — a relative one would be read as relative to the store itself."""
        return (Path(self.tile_store) if self.tile_store else self.data_dir / "tiles").absolute()

    def resolved_secret_key(self) -> str:
        """The signing secret; generated once and kept in the data directory if not set."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret.key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return key
