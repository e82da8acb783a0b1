"""How long the loop takes to close, from an outside client: from the commit of the label that
triggers a run to the first answer the promoted version writes, gate included.

The whole system runs as `make run` starts it (`manage.py prefloop_run`: the built-in policy server
with the tiny model, a Celery worker with beat, `prefloop_serve`), here on PostgreSQL and Redis. A
project's recipe trains after every `--every` labels (DPO, a few steps) and gates each candidate
(held-out accuracy and KL on held-out prompts, both measured and timed; warm-up cycles, not timed,
first give the gate its held-out labels). An annotator
judges items through the REST API; when the label that reaches the threshold is accepted, the clock
starts. It stops when the refresh job that follows the promotion has stored the first item the new
version answered (`GET /api/generation-jobs/`).

Each cycle is broken into: trigger (label to run queued), queue wait (queued to started), data
loading, training, saving, evaluation, swap (loading the adapter into the policy server and
promoting), and first answer (promotion to the new version's first stored item); the stages come
from the run's own timestamps and `metrics.timings`. The last line prints the median of the cycles.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
        python bench/loop_latency.py --cycles 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import free_port, wait_until  # noqa: E402

STAGES = ("trigger", "queue_wait", "data_s", "train_s", "save_s", "evaluate_s", "swap_s", "first_answer")


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--every", type=int, default=4, help="Labels per run (the recipe's auto_train_every).")
    parser.add_argument("--prompts", type=int, default=60, help="Prompts answered by version 1 to judge.")
    parser.add_argument(
        "--warmup", type=int, default=3, help="Cycles run first and not timed: they give the gate held-out labels."
    )
    args = parser.parse_args()
    import psycopg

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"prefloop_latency_{secrets.token_hex(3)}"
    admin_dsn = server_url.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    var = ROOT / "var" / "loop-latency" / name
    web_port, policy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    env.update(
        DATABASE_URL=server_url.rsplit("/", 1)[0] + f"/{name}",
        CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"),
        PREFLOOP_VAR_DIR=str(var),
        POLICY_SERVER_URL=f"http://127.0.0.1:{policy_port}",
        POLICY_MAX_TOKENS="8",
        PREFLOOP_SERVER_LOG_LEVEL="warning",
    )
    system = None
    try:
        manage = [sys.executable, "manage.py"]
        for command in (["migrate", "--noinput"], ["prefloop_setup"]):
            subprocess.run([*manage, *command], cwd=ROOT, env=env, check=True, capture_output=True)
        log = (var / "system.log").open("wb")
        system = subprocess.Popen([*manage, "prefloop_run", "--addr", f"127.0.0.1:{web_port}"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}/api", timeout=60)

        def token(username: str, password: str) -> dict[str, str]:
            answer = api.post("/auth/token/", json={"username": username, "password": password})
            return {"Authorization": f"Token {answer.json()['token']}"} if answer.status_code == 200 else {}

        def up() -> dict[str, str]:
            try:
                return token("admin", "prefloop-admin")
            except httpx.TransportError:
                return {}

        admin = wait_until("the web server", up, timeout=300, every=0.5)
        ann = token("annotator", "prefloop-annotator")
        project = api.post("/projects/", json={"name": "Latency", "feedback_types": ["pairwise"],
                                               "members": ["annotator"]}, headers=admin).json()  # fmt: skip
        # every check runs and is timed; the thresholds let each candidate through (this measures time, and
        # the simulated judge prefers whichever answer is shown first)
        recipe = {"method": "dpo", "auto_train_every": args.every, "max_steps": 4, "learning_rate": 1e-3,
                  "held_out_share": 0.25, "min_heldout_pairs": 2, "gate_prompts": 2, "max_kl": 1000.0,
                  "min_heldout_accuracy": 0.0}  # fmt: skip
        assert api.patch(f"/projects/{project['id']}/recipe/", json=recipe, headers=admin).status_code == 200
        prompts = [{"text": f"Tell me something about the number {i}.", "project": project["id"]}
                   for i in range(args.prompts)]  # fmt: skip
        assert api.post("/prompts/", json=prompts, headers=admin).status_code == 201
        wait_until("version 1's answers", lambda: api.get("/generation-jobs/", headers=admin).json()["results"][0]
              ["status"] == "succeeded", timeout=600, every=0.5)  # fmt: skip

        rows = []
        for cycle in range(-args.warmup, args.cycles):  # warm-up cycles: held-out labels for the gate, loaded models
            runs_before = api.get("/runs/", headers=admin).json()["count"]
            for _ in range(args.every):
                served = api.post(f"/projects/{project['id']}/next/", headers=ann)
                assert served.status_code == 200, served.text
                done = api.post(f"/assignments/{served.json()['id']}/submit/", json={"choice": "a"}, headers=ann)
                assert done.status_code == 201, done.text
            start = _when(done.json()["created_at"])  # the triggering label, as the database stamped it

            def finished(before: int = runs_before):
                runs = api.get("/runs/", headers=admin).json()
                if runs["count"] <= before:
                    return None
                run = runs["results"][0]
                return run if run["status"] in ("succeeded", "failed", "cancelled") else None

            run = wait_until(f"cycle {cycle + 1}'s run", finished, timeout=600)
            verdict = run["metrics"].get("gate", {}).get("verdict")  # "unchecked" serves too, by default
            if run["status"] != "succeeded" or verdict not in ("passed", "unchecked"):
                raise SystemExit(f"cycle {cycle + 1}: the run did not serve a version: {run['metrics'].get('gate')}")
            number = run["result_version"]

            def first_answer(number: int = number):
                for job in api.get("/generation-jobs/", headers=admin).json()["results"]:
                    if job["kind"] == "refresh" and job["policy_version"] == number and job["tasks_created"] > 0:
                        return time.time()
                return None

            end = wait_until(f"version {number}'s first answer", first_answer, timeout=600)
            if cycle < 0:
                continue
            version = next(v for v in api.get("/versions/", headers=admin).json()["results"] if v["number"] == number)
            timings = run["metrics"]["timings"]
            row = {
                "trigger": _when(run["created_at"]) - start,
                "queue_wait": _when(run["started_at"]) - _when(run["created_at"]),
                **{k: timings.get(k, 0.0) for k in ("data_s", "train_s", "save_s", "evaluate_s", "swap_s")},
                "first_answer": end - _when(version["promoted_at"]),
                "total": end - start,
                "version": number,
            }
            rows.append(row)
            print(
                f"cycle {cycle + 1} (v{number}): {row['total']:5.2f} s = "
                + " + ".join(f"{k.removesuffix('_s')} {row[k]:.2f}" for k in STAGES)
                + f"\n    gate: {run['metrics']['gate']['reason']}",
                flush=True,
            )
        totals = [r["total"] for r in rows]
        print(f"median of {len(rows)} cycles: {statistics.median(totals):.2f} s (target under 5 s with the gate)")
    finally:
        if system is not None and system.poll() is None:
            os.killpg(system.pid, signal.SIGTERM)
            try:
                system.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(system.pid, signal.SIGKILL)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
