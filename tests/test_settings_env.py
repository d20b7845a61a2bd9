"""``STREAMTRIO_*`` environment variables: a misspelled one is not silently ignored."""

from __future__ import annotations

import warnings

import pytest

import streamtrio
from streamtrio._settings import UnknownEnvironmentSettingWarning


def test_misspelled_variable_warns_naming_the_nearest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRIO_COMIT_INTERVAL", "5")
    monkeypatch.setattr("streamtrio._settings._warned_env", set())
    with pytest.warns(UnknownEnvironmentSettingWarning) as caught:
        app = streamtrio.App("envcheck", broker="memory://")
    [warning] = [w for w in caught if issubclass(w.category, UnknownEnvironmentSettingWarning)]
    assert "STREAMTRIO_COMIT_INTERVAL" in str(warning.message)
    assert "did you mean STREAMTRIO_COMMIT_INTERVAL?" in str(warning.message)
    assert app.conf.commit_interval != 5.0
    # Once per process: a second app says nothing more.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownEnvironmentSettingWarning)
        streamtrio.App("envcheck2", broker="memory://")


def test_known_and_test_variables_give_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRIO_COMMIT_INTERVAL", "5")
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", "kafka")
    monkeypatch.setattr("streamtrio._settings._warned_env", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownEnvironmentSettingWarning)
        app = streamtrio.App("envcheck", broker="memory://")
    assert app.conf.commit_interval == 5.0
