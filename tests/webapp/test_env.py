"""Configuration from the environment: bad values fail with a message naming the variable."""

from __future__ import annotations

import pytest

from webapp.env import ConfigError, env_json_object


def test_json_object_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARTIFACT_STORE_OPTIONS", raising=False)
    assert env_json_object("ARTIFACT_STORE_OPTIONS") == {}
    monkeypatch.setenv("ARTIFACT_STORE_OPTIONS", '{"endpoint_url": "http://minio:9000", "anon": false}')
    assert env_json_object("ARTIFACT_STORE_OPTIONS") == {"endpoint_url": "http://minio:9000", "anon": False}
    monkeypatch.setenv("ARTIFACT_STORE_OPTIONS", "{endpoint_url: x}")
    with pytest.raises(ConfigError, match="ARTIFACT_STORE_OPTIONS is not valid JSON"):
        env_json_object("ARTIFACT_STORE_OPTIONS")
    monkeypatch.setenv("ARTIFACT_STORE_OPTIONS", '["x"]')
    with pytest.raises(ConfigError, match="ARTIFACT_STORE_OPTIONS must be a JSON object, got list"):
        env_json_object("ARTIFACT_STORE_OPTIONS")
