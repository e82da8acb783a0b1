"""bench/closed_loop.py --quick, as a smoke test: every arm runs its cycles on a whole system of its
own (PostgreSQL, Redis, the built-in policy server), the simulated annotator labels through the REST
API, and the table, the figure and the last line come out. The figures are printed, not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_quick_run_of_every_arm_writes_its_rows_table_and_figure(settings, tmp_path):
    import redis

    from tests.e2e.conftest import test_database_url

    broker = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + "/13"  # a Redis database of its own
    redis.Redis.from_url(broker).flushdb()
    env = {**os.environ, "DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": broker}
    rows, png, table = tmp_path / "rows.json", tmp_path / "closed_loop.png", tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, "bench/closed_loop.py", "--quick", "--json", rows, "--png", png, "--table", table],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(rows.read_text())
    arms = ("online", "online_random", "offline", "hard_rm")
    for arm in arms:
        curve = [r for r in found if r["arm"] == arm]
        assert [r["labels"] for r in curve] == ([0, 8] if arm == "offline" else [0, 4, 8]), (arm, curve)
        assert curve[0]["version"] == 1 and curve[0]["verdict"] == "start"
        assert all(isinstance(r["gold"], float) for r in curve)
    # the arms with a reward model report its proxy; the offline one has none
    assert all(r["proxy"] is not None for r in found if r["arm"] in ("online", "hard_rm") and r["labels"])
    assert all(r["proxy"] is None for r in found if r["arm"] == "offline")
    # hard_rm promotes every candidate, so each cycle serves a new version, and the reward model it
    # optimised scores the new version's answers against the previous one's (the proxy's gain)
    hard = [r for r in found if r["arm"] == "hard_rm"]
    assert [r["version"] for r in hard] == [1, 2, 3]
    assert hard[0]["proxy_gain"] is None and all(isinstance(r["proxy_gain"], float) for r in hard[1:])
    assert all(len(r["answers"]) == 3 * 2 for r in found)  # every held-out prompt, every sample
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.read_text().startswith("| labels | online gold | online_random gold | offline gold | hard_rm gold |")
    assert done.stdout.strip().splitlines()[-1].startswith("gold gain: online ")


def test_a_system_that_fails_to_start_drops_the_database_it_made(tmp_path, monkeypatch):
    """A stop while a system starts (here its migration fails) leaves no prefloop_closed_* database."""
    import psycopg

    from tests.bench import load_script
    from tests.e2e.conftest import test_database_url

    closed_loop = load_script("closed_loop")
    monkeypatch.setenv("DATABASE_URL", test_database_url())
    with pytest.raises(subprocess.CalledProcessError):
        closed_loop.System(
            name="failed", base_model=tmp_path, env={"DJANGO_SETTINGS_MODULE": "no_such_settings"}, max_tokens=8
        )
    admin = test_database_url().rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'prefloop_closed_failed_%'").fetchall()
    assert left == []
