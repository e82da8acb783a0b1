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


def test_choice_and_number_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from webapp.env import env_choice, env_float

    monkeypatch.delenv("GRPO_REWARD", raising=False)
    assert env_choice("GRPO_REWARD", "reward_model", ("reward_model", "followup")) == "reward_model"
    monkeypatch.setenv("GRPO_REWARD", "followup")
    assert env_choice("GRPO_REWARD", "reward_model", ("reward_model", "followup")) == "followup"
    monkeypatch.setenv("GRPO_REWARD", "vibes")
    with pytest.raises(ConfigError, match="GRPO_REWARD='vibes' must be one of reward_model, followup"):
        env_choice("GRPO_REWARD", "reward_model", ("reward_model", "followup"))
    monkeypatch.setenv("GRPO_UWO_LAMBDA", "0.5")
    assert env_float("GRPO_UWO_LAMBDA", 1.0, minimum=0.0) == 0.5
    for bad, message in (("x", "is not a number"), ("nan", "must be a finite number"), ("-1", "must be at least 0")):
        monkeypatch.setenv("GRPO_UWO_LAMBDA", bad)
        with pytest.raises(ConfigError, match=message):
            env_float("GRPO_UWO_LAMBDA", 1.0, minimum=0.0)
    monkeypatch.setenv("REWARD_LABEL_SMOOTHING", "0.1")
    assert env_float("REWARD_LABEL_SMOOTHING", 0.0, minimum=0.0, below=0.5) == 0.1
    monkeypatch.setenv("REWARD_LABEL_SMOOTHING", "0.5")
    with pytest.raises(ConfigError, match=r"REWARD_LABEL_SMOOTHING=0.5 must be below 0.5"):
        env_float("REWARD_LABEL_SMOOTHING", 0.0, minimum=0.0, below=0.5)
