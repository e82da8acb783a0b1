"""bench/loop_latency.py closes the loop once, as a smoke test: the whole system started as `make
run` starts it (here on PostgreSQL and Redis), a label that triggers a run, the gate, the swap and
the new version's first answer. The figures are printed, not asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_one_cycle_from_a_label_to_the_promoted_versions_first_answer(settings):
    import redis

    from tests.e2e.conftest import test_database_url

    broker = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + "/14"  # a Redis database of its own
    redis.Redis.from_url(broker).flushdb()
    env = {**os.environ, "DATABASE_URL": test_database_url(), "CELERY_BROKER_URL": broker}
    done = subprocess.run(
        [sys.executable, "bench/loop_latency.py", "--cycles", "1", "--every", "2", "--prompts", "12", "--warmup", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cycle = re.search(r"cycle 1 \(v3\): +([\d.]+) s = trigger ([-\d.]+) \+ queue_wait ([\d.]+)", done.stdout)
    assert cycle is not None, done.stdout
    assert float(cycle.group(1)) > 0
    for stage in ("data", "train", "save", "evaluate", "swap", "first_answer"):
        assert re.search(rf"\b{stage} [\d.]+", done.stdout), (stage, done.stdout)
    assert "gate: held-out preference accuracy" in done.stdout  # the gate ran its checks
    assert "median of 1 cycles" in done.stdout
