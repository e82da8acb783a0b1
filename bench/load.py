"""Load on the annotation queue, measured as an outside client: simulated annotators loop "next task,
submit a pairwise label" against the production server (`manage.py prefloop_serve`) on PostgreSQL
and Redis.

For each level of concurrency: labels per second, p50 and p99 of `next` and of submit, errors (must
be 0), "nothing left" answers while items were open (must be 0), and the labels in the database
against the submits the server accepted (must be equal).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
        python bench/load.py --levels 10 50 100 --duration 60

It makes a database of its own on DATABASE_URL's server (dropped at the end). The same load against
Label Studio, for the ratio issue 18 asks for, is not part of this script yet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


COUNT_LABELS = "from webapp.feedback.models import Label; print(Label.objects.count())"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _seed(env: dict[str, str], n_tasks: int, n_people: int) -> int:
    code = f"""
from webapp.accounts.services import user_ensure
from webapp.feedback.models import Project, ProjectMember
from webapp.feedback.services import tasks_bulk_create
project = Project.objects.create(name="Load", feedback_types=["pairwise"], overlap=1, recipe={{"auto_train_every": 0}})
for i in range({n_people}):
    user, _ = user_ensure(username=f"ann{{i}}", password="load-test-password", role="annotator")
    ProjectMember.objects.create(project=project, user=user)
for start in range(0, {n_tasks}, 1000):
    items = [{{"kind": "pairwise", "messages": [{{"role": "user", "content": f"Question {{i}}?"}}],
              "candidates": [f"First answer {{i}}.", f"Second answer {{i}}."], "external_id": f"q{{i}}"}}
             for i in range(start, min(start + 1000, {n_tasks}))]
    tasks_bulk_create(project=project, items=items, created_by=None)
print(project.pk)
"""
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


async def _annotator(client: httpx.AsyncClient, project: int, until: float, stats: dict) -> None:
    while time.monotonic() < until:
        start = time.perf_counter()
        served = await client.post(f"/api/projects/{project}/next/")
        stats["next"].append(time.perf_counter() - start)
        if served.status_code == 204:
            stats["nothing_left"] += 1
            return
        if served.status_code != 200:
            stats["errors"].append(("next", served.status_code, served.text[:200]))
            continue
        assignment = served.json()["id"]
        start = time.perf_counter()
        done = await client.post(f"/api/assignments/{assignment}/submit/", json={"choice": "a", "strength": 2})
        stats["submit"].append(time.perf_counter() - start)
        if done.status_code == 201:
            stats["accepted"] += 1
        else:
            stats["errors"].append(("submit", done.status_code, done.text[:200]))


async def _level(base: str, tokens: list[str], project: int, seconds: float) -> dict:
    stats: dict = {"next": [], "submit": [], "errors": [], "accepted": 0, "nothing_left": 0}
    limits = httpx.Limits(max_connections=len(tokens) + 5)
    clients = [
        httpx.AsyncClient(base_url=base, timeout=120, limits=limits, headers={"Authorization": f"Token {t}"})
        for t in tokens
    ]
    until = time.monotonic() + seconds
    start = time.monotonic()
    await asyncio.gather(*(_annotator(c, project, until, stats) for c in clients))
    stats["seconds"] = time.monotonic() - start
    for client in clients:
        await client.aclose()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load per level.")
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2, help="prefloop_serve's processes.")
    args = parser.parse_args()
    import psycopg

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"prefloop_load_{secrets.token_hex(3)}"
    admin_dsn = server_url.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    port = 18000 + secrets.randbelow(1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    env.update(
        DATABASE_URL=server_url.rsplit("/", 1)[0] + f"/{name}",
        CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9"),
        PREFLOOP_VAR_DIR=str(ROOT / "var" / "load"),
        PREFLOOP_ADDR=f"127.0.0.1:{port}",
        PREFLOOP_THROTTLE_USER="100000/min",
        PREFLOOP_THROTTLE_LOGIN="100000/min",  # every simulated annotator logs in from this address
        PREFLOOP_SERVER_LOG_LEVEL="warning",
        TRAIN_EVERY_N_LABELS="0",
        DATABASE_POOL_MAX=os.environ.get("DATABASE_POOL_MAX", "16"),  # 100 clients: keep under 100 connections
    )
    server = None
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                       capture_output=True)  # fmt: skip
        people = max(args.levels)
        project = _seed(env, args.tasks, people)
        # statistics as a database in use has them (autovacuum's ANALYZE), not those of an empty one
        with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute("ANALYZE")
        argv = [sys.executable, "manage.py", "prefloop_serve", "--no-migrate", "--workers", str(args.workers)]
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("prefloop_serve did not start")
            time.sleep(0.5)
        tokens = [
            httpx.post(
                f"{base}/api/auth/token/", json={"username": f"ann{i}", "password": "load-test-password"}
            ).json()["token"]
            for i in range(people)
        ]
        print(
            f"Prefloop ({args.workers} server processes, PostgreSQL with a pool of {env['DATABASE_POOL_MAX']} "
            f"connections per process, {args.tasks} pairwise items, overlap 1)"
        )
        total_accepted = 0
        for level in args.levels:
            stats = asyncio.run(_level(base, tokens[:level], project, args.duration))
            total_accepted += stats["accepted"]
            open_left = args.tasks - total_accepted
            false_empty = stats["nothing_left"] if open_left > 0 else 0
            ms = {
                k: (1000 * statistics.median(stats[k]), 1000 * _percentile(stats[k], 0.99)) for k in ("next", "submit")
            }
            print(
                f"{level:>4} annotators: {stats['accepted'] / stats['seconds']:6.1f} labels/s; "
                f"next p50 {ms['next'][0]:6.1f} ms p99 {ms['next'][1]:7.1f} ms; "
                f"submit p50 {ms['submit'][0]:6.1f} ms p99 {ms['submit'][1]:7.1f} ms; "
                f"errors {len(stats['errors'])}; 'nothing left' with items open {false_empty}"
            )
            if stats["errors"]:
                print(f"      errors (first 5): {stats['errors'][:5]}")
        count = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", COUNT_LABELS],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        stored = int(count.stdout.strip().splitlines()[-1])
        verdict = "equal" if stored == total_accepted else "DIFFERENT"
        print(f"labels in the database {stored}, submits accepted {total_accepted}: {verdict}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
