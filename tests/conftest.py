"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base policy, built once per test session with the same code `make run` uses."""
    from training.tiny_model import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("models") / "tiny-policy")
