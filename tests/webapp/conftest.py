"""Everything under tests/webapp is a product path a newcomer takes on SQLite (`make run`) as much
as on PostgreSQL: `make test` runs it on both (the `both_databases` marker)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.both_databases)


@pytest.fixture(autouse=True)
def _fresh_counters():
    """Throttle and lockout counters live in the cache: each test starts with none."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _quick_passwords(settings):
    """A fast hasher for passwords made in these in-process tests (Django's advice for tests)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
