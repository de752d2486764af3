from pathlib import Path

import pytest

from crowdsight.settings import Settings, SettingsError


def test_defaults_use_embedded_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = Settings.from_env({"CROWDSIGHT_DATA_DIR": str(tmp_path)})
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'crowdsight.db').resolve()}"
    assert s.tile_store_path == tmp_path / "tiles"


def test_env_values_are_typed() -> None:
    s = Settings.from_env({"CROWDSIGHT_LEASE_SECONDS": "30", "CROWDSIGHT_SECURE_COOKIES": "yes"})
    assert s.lease_seconds == 30 and s.secure_cookies is True


@pytest.mark.parametrize("key,value", [("CROWDSIGHT_LEASE_SECONDS", "ten"),
                                       ("CROWDSIGHT_DEBUG", "maybe")])
def test_bad_values_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        Settings.from_env({key: value})


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    s = Settings.from_env({"CROWDSIGHT_DATA_DIR": str(tmp_path)})
    k1 = s.resolved_secret_key()
    assert len(k1) > 40 and s.resolved_secret_key() == k1
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0
