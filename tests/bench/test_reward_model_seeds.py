"""Tests for bench/reward_model_seeds.py: seed lists, the summary and the rule (pure), and a real run
of the benchmark over two seeds on the HH-RLHF pairs in the shared data folder."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.bench import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "reward_model_seeds.py"
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
TINY_RUN = ["--train-pairs", "16", "--max-length", "64", "--members", "1", "--threads", "1", "--epochs", "1"]


seeds_mod = load_script("reward_model_seeds")


def _record(seed: int, ours_halves: int, trl_halves: int, ours_s: float, trl_s: float) -> dict[str, Any]:
    """A benchmark JSON as reward_model.py writes it; accuracies in half-pairs of 462 test pairs."""
    record: dict[str, Any] = {"argv": ["--seed", str(seed), "--json", "x"], "seed": seed}
    record["trl"] = {"accuracy": trl_halves / 924, "n": 462, "train_s": trl_s}
    for key in ("ours_single", "ours_ensemble"):
        record[key] = {"accuracy": ours_halves / 924, "n": 462, "train_s": ours_s}
        record[f"delta_{key}"] = 100 * (record[key]["accuracy"] - record["trl"]["accuracy"])
        record[f"time_ratio_{key}"] = ours_s / trl_s
    return record


def test_seed_lists_parse_ranges_and_lists_and_reject_bad_ones() -> None:
    assert seeds_mod.parse_seeds("4-11") == list(range(4, 12))
    assert seeds_mod.parse_seeds("0,2, 5") == [0, 2, 5]
    assert seeds_mod.parse_seeds("0-2,8") == [0, 1, 2, 8]
    for bad, message in (("3-1", "neither a seed nor a range"), ("x", "neither"), ("1,1", "twice"), ("", "neither")):
        with pytest.raises(ValueError, match=message):
            seeds_mod.parse_seeds(bad)


def test_summary_matches_numpy_on_run_7e_figures() -> None:
    # run 7e's eight seeds: ours - TRL of 80, 28, 20, 9, 44, 48, 38, 14 half-pairs
    halves = [80, 28, 20, 9, 44, 48, 38, 14]
    records = [_record(4 + i, 580 + h, 580, 1000 + 10 * i, 950) for i, h in enumerate(halves)]
    figures = [seeds_mod.seed_figures(r) for r in records]
    summary = seeds_mod.summarise(figures)
    deltas = np.array(halves) * 100 / 924
    ratios = np.array([(1000 + 10 * i) / 950 for i in range(8)])
    assert summary["n"] == 8 and summary["ahead"] == 8
    assert summary["delta"] == pytest.approx(deltas.mean())
    assert summary["delta"] == pytest.approx(3.8014, abs=1e-4)
    assert summary["sd"] == pytest.approx(deltas.std(ddof=1))
    assert summary["se"] == pytest.approx(deltas.std(ddof=1) / math.sqrt(8))
    assert summary["ratio"] == pytest.approx(ratios.mean())
    assert summary["trl"] == pytest.approx(100 * 580 / 924)
    met, why = seeds_mod.judge(summary, seeds=8, target=4.0, max_ratio=1.2)
    assert met is False and "+3.80 < +4.0 points" in why and "time ratio" not in why


def test_the_rule_is_judged_only_on_all_seeds_and_needs_both_bounds() -> None:
    figures = [seeds_mod.seed_figures(_record(s, 600, 560, 100, 90)) for s in range(3)]  # +4.33 points, 1.11x
    summary = seeds_mod.summarise(figures)
    assert seeds_mod.judge(summary, seeds=4, target=4.0, max_ratio=1.2) == (None, "not judged: 3 of 4 seeds have run")
    assert seeds_mod.judge(summary, seeds=3, target=4.0, max_ratio=1.2)[0] is True
    met, why = seeds_mod.judge(summary, seeds=3, target=4.0, max_ratio=1.1)
    assert met is False and "time ratio 1.11x > 1.10x" in why
    met, why = seeds_mod.judge(summary, seeds=3, target=5.0, max_ratio=1.0)
    assert met is False and "< +5.0 points" in why and "> 1.00x" in why
    one = seeds_mod.summarise(figures[:1])
    assert math.isnan(one["sd"]) and one["delta"] == pytest.approx(100 * 40 / 924)
    with pytest.raises(ValueError, match="no seed"):
        seeds_mod.summarise([])


def test_a_run_without_the_trl_script_cannot_be_judged() -> None:
    record = _record(0, 600, 560, 100, 90)
    del record["trl"]
    with pytest.raises(ValueError, match="skip-baseline"):
        seeds_mod.seed_figures(record)


@pytest.fixture
def hh_data() -> None:
    """The real runs need the HH-RLHF pairs from the shared data folder."""
    if not HH.is_file():
        pytest.skip(f"real data not found: {HH} (needs the shared data folder next to the project)")


def _run(log_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--log-dir", str(log_dir), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


def _table(stdout: str) -> dict[int, list[str]]:
    lines = stdout[stdout.index("seed    ours") :].splitlines()[1:]
    return {int(line.split()[0]): line.split() for line in lines if line.split()[0].isdigit()}


def test_two_seeds_run_side_by_side_resume_and_refuse_other_arguments(hh_data: None, tmp_path: Path) -> None:
    log_dir = tmp_path / "run"
    # a bound any run meets, so the verdict printed is MET whatever the tiny models learn
    rule = ["--target", "-100", "--max-ratio", "100"]
    first = _run(log_dir, "--seeds", "0,1", "--jobs", "2", *rule, "--", *TINY_RUN)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "seed 0: done" in first.stdout and "seed 1: done" in first.stdout

    records = {s: json.loads((log_dir / f"seed-{s}.json").read_text()) for s in (0, 1)}
    assert not list(log_dir.glob("*.partial"))
    table = _table(first.stdout)
    assert sorted(table) == [0, 1]
    deltas = []
    for seed, record in records.items():
        partial = log_dir / f"seed-{seed}.json.partial"  # renamed once the run finished
        assert record["seed"] == seed and record["argv"] == [*TINY_RUN, "--seed", str(seed), "--json", str(partial)]
        ours, trl = 100 * record["ours_single"]["accuracy"], 100 * record["trl"]["accuracy"]
        assert record["trl"]["n"] == 462
        assert table[seed][1] == f"{ours:.1f}%" and table[seed][2] == f"{trl:.1f}%"
        assert table[seed][3] == f"{ours - trl:+.1f}"
        assert table[seed][4] == f"{record['ours_single']['train_s'] / record['trl']['train_s']:.2f}x"
        assert f"(a) - (c): {ours - trl:+.1f} accuracy points" in (log_dir / f"seed-{seed}.log").read_text()
        deltas.append(ours - trl)
    assert f"ours - TRL over 2 seeds: {sum(deltas) / 2:+.2f} points" in first.stdout
    assert "over seeds 0,1): MET" in first.stdout

    # the same command again runs nothing and prints the same figures
    logs = {p: p.stat().st_mtime_ns for p in log_dir.glob("seed-*.log")}
    again = _run(log_dir, "--seeds", "0,1", "--jobs", "2", *rule, "--", *TINY_RUN)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "seed 0: figures already in" in again.stdout and "started" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in log_dir.glob("seed-*.log")} == logs
    assert _table(again.stdout) == table
    # other benchmark arguments are refused before anything runs, rather than mixed with these figures
    other = _run(log_dir, "--seeds", "0,1", "--", *TINY_RUN[:-2], "--epochs", "2")
    assert other.returncode == 2 and "run with other arguments" in other.stderr
    assert "started" not in other.stdout


def test_a_failing_seed_is_reported_and_leaves_no_figures(hh_data: None, tmp_path: Path) -> None:
    result = _run(tmp_path, "--seeds", "3", "--", *TINY_RUN, "--ours-lr", "-1")
    assert result.returncode == 1
    assert "seed 3: FAILED" in result.stdout and "no seed finished" in result.stdout
    assert "learning_rate" in (tmp_path / "seed-3.log").read_text()
    assert not list(tmp_path.glob("seed-3.json*"))


def test_a_killed_run_stops_its_seeds_and_keeps_no_half_figures(hh_data: None, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--log-dir", str(tmp_path), "--seeds", "0,1", "--jobs", "2", "--", *TINY_RUN],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert parent.stdout is not None
    started = [parent.stdout.readline() for _ in range(2)]
    assert all("started" in line for line in started), started
    children = psutil.Process(parent.pid).children()
    assert len(children) == 2 and all(c.is_running() for c in children)
    parent.terminate()
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive and len(gone) == 2
    assert not list(tmp_path.glob("seed-*.json*"))
