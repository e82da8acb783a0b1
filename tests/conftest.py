"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base policy, built once per test session with the same code `make run` uses."""
    from training.tiny_model import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("models") / "tiny-policy")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (SeaweedFS) for the test session, with an `artifacts` bucket."""
    from tests.processes import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict[str, object]:
    """fsspec storage options for the test S3 server."""
    from tests.processes import S3_KEY, S3_SECRET

    return {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": s3_endpoint}


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    return f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
