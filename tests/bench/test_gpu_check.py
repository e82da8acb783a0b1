"""bench/gpu_check.py --dry-run: the GPU check's every part (each run kind, the gate, the hot-swap)
on the CPU with the tiny policy, so the script is ready whenever a GPU machine is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_the_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["part"] for r in rows] == ["dpo", "kto", "lipo", "grpo", "reward", "gate", "hot-swap"]
    assert all(r["steps"] >= 1 and r["steps_per_s"] > 0 and r["tokens_per_s"] > 0 for r in rows), rows
    assert "failed parts: none" in done.stdout
