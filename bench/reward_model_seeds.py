"""Run ``bench/reward_model.py`` over a fixed list of training seeds and judge a rule set in advance.

One seed of the reward-model benchmark decides no 4-point question: the training seed alone (head
initialisation and data order) moves either model's test accuracy by several points (see
``docs/benchmarks.md``). This script runs the benchmark once per seed, ``--jobs`` at a time, each with
the TRL script in the same run, and prints every seed's figures, then the mean of ours minus the TRL
script with its standard error, the mean training-time ratio, and whether the rule given on the
command line holds over all the seeds:

    python bench/reward_model_seeds.py --seeds 4-11 --jobs 2 --target 4.0 --max-ratio 1.2 \\
        --log-dir var/bench/7e -- --train-pairs 1850 --ours-max-length 128 --ours-epochs 2 \\
        --ours-lr 5e-5 --ours-warmup-ratio 0.1 --ours-head-init probe --ours-probe-examples 720 \\
        --members 1 --threads 1

Everything after ``--`` goes to ``bench/reward_model.py`` unchanged (``--seed`` and ``--json`` are
set here). Each seed's output goes to ``seed-N.log`` and its figures to ``seed-N.json`` in
``--log-dir``. A seed whose JSON is already there is not run again, so an interrupted run resumes
where it stopped, and the same command prints the summary once every seed has run. The rule is
judged only when all the seeds listed have run: a rule checked after each seed, and stopped when it
holds, would pass more often than it should.

Exit status: 0 when every seed has run (whatever the verdict), 1 when a seed's run failed, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().with_name("reward_model.py")
MODELS = {"single": "ours_single", "ensemble": "ours_ensemble"}


def parse_seeds(spec: str) -> list[int]:
    """``"4-11"``, ``"0,2,5"`` or a mix (``"0-3,8"``) as a list of distinct seeds, in order given."""
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds {spec!r}: {part!r} is neither a seed nor a range like 4-11") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds {spec!r}: seeds must be >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {spec!r} names a seed twice")
    return seeds


def seed_figures(record: dict[str, Any], model: str = "single") -> dict[str, float]:
    """One seed's ours and TRL accuracy (%), ours - TRL (points) and training-time ratio, as its run printed them."""
    if "trl" not in record:
        raise ValueError(
            f"seed {record.get('seed')} ran without the TRL script (--skip-baseline); the rule needs both in one run"
        )
    key = MODELS[model]
    return {
        "seed": record["seed"],
        "ours": 100 * record[key]["accuracy"],
        "trl": 100 * record["trl"]["accuracy"],
        "delta": record[f"delta_{key}"],
        "ratio": record[f"time_ratio_{key}"],
    }


def summarise(figures: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means over the seeds; the standard deviation and standard error of ours - TRL (n - 1 in the SD)."""
    if not figures:
        raise ValueError("no seed has run yet")
    deltas = [f["delta"] for f in figures]
    sd = statistics.stdev(deltas) if len(deltas) > 1 else math.nan
    return {
        "n": len(figures),
        "ours": statistics.fmean(f["ours"] for f in figures),
        "trl": statistics.fmean(f["trl"] for f in figures),
        "delta": statistics.fmean(deltas),
        "sd": sd,
        "se": sd / math.sqrt(len(deltas)),
        "ratio": statistics.fmean(f["ratio"] for f in figures),
        "ahead": sum(d > 0 for d in deltas),
    }


def judge(summary: dict[str, float], *, seeds: int, target: float, max_ratio: float) -> tuple[bool | None, str]:
    """(met, why): ``None`` until all ``seeds`` have run; met only if both the accuracy and the time bound hold."""
    if summary["n"] < seeds:
        return None, f"not judged: {summary['n']} of {seeds} seeds have run"
    misses = []
    if summary["delta"] < target:
        misses.append(f"ours - TRL {summary['delta']:+.2f} < {target:+.1f} points")
    if summary["ratio"] > max_ratio:
        misses.append(f"time ratio {summary['ratio']:.2f}x > {max_ratio:.2f}x")
    if misses:
        return False, "NOT MET: " + "; ".join(misses)
    return True, f"MET: ours - TRL {summary['delta']:+.2f} >= {target:+.1f} points at {summary['ratio']:.2f}x"


def _load(path: Path, bench_args: list[str]) -> dict[str, Any]:
    """A seed's JSON, checked to come from ``bench/reward_model.py`` run with ``bench_args`` by this script."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not a benchmark JSON: {error}") from None
    if not isinstance(record, dict) or record.get("argv", [])[:-4] != bench_args:
        stored = record.get("argv") if isinstance(record, dict) else None
        raise ValueError(f"{path} was run with other arguments ({stored}) than {bench_args}; use another --log-dir")
    return record


def _run_missing(seeds: list[int], bench_args: list[str], log_dir: Path, jobs: int) -> list[int]:
    """Runs the seeds without a JSON in ``log_dir``, ``jobs`` at a time; returns the seeds that failed."""
    todo = [s for s in seeds if not (log_dir / f"seed-{s}.json").is_file()]
    for s in seeds:
        if s not in todo:
            print(f"seed {s}: figures already in {log_dir / f'seed-{s}.json'}, not run again", flush=True)
    running: dict[int, tuple[subprocess.Popen[bytes], float, Any, Path]] = {}
    failed: list[int] = []
    try:
        while todo or running:
            while todo and len(running) < jobs:
                seed = todo.pop(0)
                log = open(log_dir / f"seed-{seed}.log", "wb")  # closed when its run ends
                partial = log_dir / f"seed-{seed}.json.partial"
                cmd = [sys.executable, str(BENCH), *bench_args, "--seed", str(seed), "--json", str(partial)]
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                running[seed] = (proc, time.time(), log, partial)
                print(f"seed {seed}: started, output in {log.name}", flush=True)
            time.sleep(2)
            for seed, (proc, started, log, partial) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[seed]
                if proc.returncode == 0 and partial.is_file():
                    partial.replace(log_dir / f"seed-{seed}.json")  # only a finished run counts
                    print(f"seed {seed}: done in {time.time() - started:.0f} s", flush=True)
                else:
                    failed.append(seed)
                    print(f"seed {seed}: FAILED (exit {proc.returncode}); see {log.name}", flush=True)
    finally:
        for proc, _, log, _ in running.values():  # interrupted: stop the children, keep what finished
            proc.terminate()
            proc.wait()
            log.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, bench_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", required=True, help="training seeds, e.g. 4-11 or 0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="benchmark runs at a time (one per CPU core at most)")
    parser.add_argument("--target", type=float, default=4.0, help="the least mean ours - TRL, in accuracy points")
    parser.add_argument("--max-ratio", type=float, default=1.2, help="the most mean training time of ours / TRL's")
    parser.add_argument("--model", choices=sorted(MODELS), default="single", help="ours: one member or the ensemble")
    parser.add_argument("--log-dir", type=Path, required=True, help="each seed's log and JSON (reused on a rerun)")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(str(error))
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    for flag in ("--seed", "--json", "--skip-baseline"):
        if any(a == flag or a.startswith(flag + "=") for a in bench_args):
            parser.error(f"{flag} is set by this script; leave it out of the arguments after --")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:  # figures kept from an earlier run must come from the same command
        if (path := args.log_dir / f"seed-{seed}.json").is_file():
            try:
                seed_figures(_load(path, bench_args), args.model)
            except ValueError as error:
                parser.error(str(error))

    # killed (SIGTERM) like interrupted (Ctrl-C): stop the runs in progress on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    failed = _run_missing(seeds, bench_args, args.log_dir, args.jobs)
    figures = []
    for seed in seeds:
        path = args.log_dir / f"seed-{seed}.json"
        if path.is_file():
            figures.append(seed_figures(_load(path, bench_args), args.model))
    if not figures:
        print("no seed finished; nothing to summarise")
        return 1
    print()
    print(f"{'seed':>4} {'ours':>7} {'TRL':>7} {'ours - TRL':>11} {'time ratio':>11}")
    for f in figures:
        print(f"{f['seed']:>4} {f['ours']:>6.1f}% {f['trl']:>6.1f}% {f['delta']:>+11.1f} {f['ratio']:>10.2f}x")
    summary = summarise(figures)
    print(
        f"mean {summary['ours']:>6.1f}% {summary['trl']:>6.1f}% {summary['delta']:>+11.2f} {summary['ratio']:>10.2f}x"
    )
    print(
        f"ours - TRL over {summary['n']} seeds: {summary['delta']:+.2f} points (standard deviation {summary['sd']:.2f},"
        f" standard error {summary['se']:.2f}); ours ahead on {summary['ahead']} of {summary['n']}"
    )
    _, why = judge(summary, seeds=len(seeds), target=args.target, max_ratio=args.max_ratio)
    print(
        f"rule (mean ours - TRL >= {args.target:+.1f} points and mean time ratio <= {args.max_ratio:.2f}x"
        f" over seeds {args.seeds}): {why}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
