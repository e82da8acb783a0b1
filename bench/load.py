"""Load on the annotation queue, measured as an outside client: simulated annotators loop "next task,
submit a pairwise label" against Prefloop's production server (`manage.py prefloop_serve`) on
PostgreSQL and Redis, then, in the same run, against Label Studio on the same PostgreSQL server.

For each arm and each level of concurrency: labels per second, p50 and p99 of `next` and of submit,
errors (must be 0), "nothing left" answers while items were open (must be 0), and the labels in the
database against the submits the server accepted (must be equal). The last lines print Prefloop's
throughput over Label Studio's at each level.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
        python bench/load.py --levels 10 50 100 --duration 60

Each arm makes a database of its own on DATABASE_URL's server (dropped at the end) and a project of
the same pairwise items (a prompt and two answers, one label per item).

Label Studio is installed with pip into a virtual environment of its own (`--label-studio-venv`,
made on first use: `label-studio==1.23.2` and gunicorn). It runs as its Docker image runs it, a WSGI
server with `DEBUG` off, here gunicorn with as many processes as Prefloop's server and 8 threads
each. Its annotators authenticate with personal access tokens (exchanged for access tokens at
`/api/token/refresh/`), take work with `GET /api/projects/{id}/next/` (what its labelling stream
calls) and submit a `Pairwise` result with `POST /api/tasks/{id}/annotations/`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import scratch_database  # noqa: E402

LABEL_STUDIO = "label-studio==1.23.2"
# How Prefloop's simulated annotators work (--flows): the API's two requests a label, or one, as the
# queue page makes (each submit is answered with the next item).
FLOWS = {
    "two": "next, then submit: two requests a label",
    "one": "submit-and-next: one request a label",
}
# the labels the load submitted (those seeded as already judged are imports)
COUNT_LABELS = "from webapp.feedback.models import Label; print(Label.objects.exclude(source='import').count())"
LS_CONFIG = (
    '<View><Header value="$prompt"/><Pairwise name="pw" toName="answer1,answer2"/>'
    '<Text name="answer1" value="$answer1"/><Text name="answer2" value="$answer2"/></View>'
)
LS_RESULT = [{"from_name": "pw", "to_name": "answer1", "type": "pairwise", "value": {"selected": "left"}}]
# Label Studio's users, organisation and personal access tokens, made as its `label-studio start`
# makes its first user; annotators never log in with a password, so theirs is left unusable.
LS_SETUP = """
import json
from jwt_auth.models import LSAPIToken
from organizations.models import Organization
from users.models import User
owner = User.objects.create_user(email="owner@load.test", password=None)
owner.is_staff = owner.is_superuser = True
owner.save()
org = Organization.create_organization(created_by=owner, title="Load")
people = [owner]
for i in range({n}):
    user = User.objects.create_user(email=f"ann{{i}}@load.test", password=None)
    org.add_user(user)
    people.append(user)
for user in people:
    user.active_organization = org
    user.save(update_fields=["active_organization"])
print(json.dumps([LSAPIToken.for_user(user).get_full_jwt() for user in people]))
"""


@dataclass
class Arm:
    """How one system's annotators take and submit work, over HTTP."""

    name: str
    base: str
    project: int
    headers: Callable[[int], dict[str, str]]  # the annotator's index -> auth headers
    next_call: Callable[[httpx.AsyncClient, int], object]  # -> a coroutine of the response
    nothing_left: int  # the status `next` answers when no item is left for the annotator
    submit_call: Callable[[httpx.AsyncClient, int], object]
    stored: Callable[[], int]  # labels in the database
    # submit and be served the next item in one request (answers {"submitted", "next"}), if the system can
    submit_next_call: Callable[[httpx.AsyncClient, int], object] | None = None


def _items(n: int) -> Iterator[tuple[str, str, str]]:
    for i in range(n):
        yield f"Question {i}?", f"First answer {i}.", f"Second answer {i}."


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_up(url: str, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.5)


def _analyze(dsn: str) -> None:
    """Statistics as a database in use has them (autovacuum's ANALYZE), not those of an empty one."""
    import psycopg

    with psycopg.connect(dsn.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute("ANALYZE")


@contextmanager
def _server(argv: list[str], cwd: Path, env: dict[str, str], health: str, what: str) -> Iterator[None]:
    server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_up(health, what)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


# Prefloop


def _prefloop_seed(env: dict[str, str], n_tasks: int, n_people: int) -> int:
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


def _prefloop_closed(dsn: str, project: int, n: int) -> None:
    """`n` items already judged (one label each, by annotators of the seed), written in SQL: a
    database in use, where the queue must find the open items among many done ones."""
    import psycopg

    sql = """
    WITH prompts AS (
        INSERT INTO feedback_prompt (project_id, messages, source, external_id, created_at)
        SELECT %(project)s, '[{"role": "user", "content": "Done before."}]'::jsonb, 'import', '', now()
        FROM generate_series(1, %(n)s) RETURNING id
    ), tasks AS (
        INSERT INTO feedback_task (project_id, kind, prompt_id, required_labels, is_gold, created_at, taken,
                                   priority, arena)
        SELECT %(project)s, 'pairwise', id, 1, false, now() - interval '1 day', 1, 0, false FROM prompts
        RETURNING id
    )
    INSERT INTO feedback_label (task_id, annotator_id, kind, source, choice, critique, rewrite, rationale,
                                idempotency_key, created_at)
    SELECT tasks.id, (SELECT min(user_id) FROM feedback_projectmember WHERE project_id = %(project)s),
           'pairwise', 'import', 'a', '', '', '', '', now() - interval '1 day'
    FROM tasks
    """
    with psycopg.connect(dsn.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql, {"project": project, "n": n})


@contextmanager
def prefloop_arm(args: argparse.Namespace, server_url: str, *, flow: str) -> Iterator[Arm]:
    people = max(args.levels)
    with scratch_database(server_url, "prefloop_load") as name:
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
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                       capture_output=True)  # fmt: skip
        project = _prefloop_seed(env, args.tasks, people)
        if args.closed:
            _prefloop_closed(env["DATABASE_URL"], project, args.closed)
        _analyze(env["DATABASE_URL"])
        argv = [sys.executable, "manage.py", "prefloop_serve", "--no-migrate", "--workers", str(args.workers)]
        base = f"http://127.0.0.1:{port}"
        with _server(argv, ROOT, env, f"{base}/healthz", "prefloop_serve"):
            tokens = [
                httpx.post(
                    f"{base}/api/auth/token/", json={"username": f"ann{i}", "password": "load-test-password"}
                ).json()["token"]
                for i in range(people)
            ]

            def stored() -> int:
                count = subprocess.run(
                    [sys.executable, "manage.py", "shell", "-c", COUNT_LABELS],
                    cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                return int(count.stdout.strip().splitlines()[-1])

            print(
                f"Prefloop, {FLOWS[flow]} ({args.workers} prefloop_serve processes, PostgreSQL with a pool of "
                f"{env['DATABASE_POOL_MAX']} connections per process, {args.tasks} open pairwise items, "
                f"{args.closed} judged ones, overlap 1)"
            )
            yield Arm(
                name=f"Prefloop ({flow})",
                base=base,
                project=project,
                headers=lambda i: {"Authorization": f"Token {tokens[i]}"},
                next_call=lambda client, project: client.post(f"/api/projects/{project}/next/"),
                nothing_left=204,
                submit_call=lambda client, assignment: client.post(
                    f"/api/assignments/{assignment}/submit/", json={"choice": "a", "strength": 2}
                ),
                stored=stored,
                submit_next_call=None
                if flow == "two"
                else lambda client, assignment: client.post(
                    f"/api/assignments/{assignment}/submit-and-next/", json={"choice": "a", "strength": 2}
                ),
            )


# Label Studio


def _label_studio_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "gunicorn").exists():
        print(f"installing {LABEL_STUDIO} and gunicorn into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LABEL_STUDIO, "gunicorn"], check=True)
    return python


@contextmanager
def label_studio_arm(args: argparse.Namespace, server_url: str) -> Iterator[Arm]:
    people = max(args.levels)
    python = _label_studio_venv(args.label_studio_venv)
    package = Path(
        subprocess.run([str(python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )  # fmt: skip
    postgres = httpx.URL(server_url.replace("postgres://", "postgresql://"))
    with scratch_database(server_url, "label_studio_load") as name:
        port = 19000 + secrets.randbelow(1000)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_", "DATABASE_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="core.settings.label_studio",
            DJANGO_DB="default",
            POSTGRE_NAME=name,
            POSTGRE_USER=postgres.username or "postgres",
            POSTGRE_PASSWORD=postgres.password or "",
            POSTGRE_HOST=postgres.host or "127.0.0.1",
            POSTGRE_PORT=str(postgres.port or 5432),
            LABEL_STUDIO_BASE_DATA_DIR=str(ROOT / "var" / "load" / "label-studio"),
            DEBUG="false",
            LOG_LEVEL="WARNING",
            # no calls out of the machine: error reports, analytics, the version check
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
        )
        manage = [str(python), "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput"], cwd=package, env=env, check=True, capture_output=True)
        out = subprocess.run([*manage, "shell", "-c", LS_SETUP.format(n=people)], cwd=package, env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
        owner_pat, *pats = json.loads(out.stdout.strip().splitlines()[-1])
        gunicorn = [str(python), "-m", "gunicorn", "core.wsgi:application", "--bind", f"127.0.0.1:{port}",
                    "--workers", str(args.workers), "--threads", "8", "--log-level", "warning"]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        with _server(gunicorn, package, env, f"{base}/health", "Label Studio"):

            def access(pat: str) -> str:
                answer = httpx.post(f"{base}/api/token/refresh/", json={"refresh": pat}, timeout=60)
                answer.raise_for_status()
                return answer.json()["access"]

            owner = httpx.Client(base_url=base, timeout=300, headers={"Authorization": f"Bearer {access(owner_pat)}"})
            made = owner.post("/api/projects/", json={"title": "Load", "label_config": LS_CONFIG,
                                                       "maximum_annotations": 1})  # fmt: skip
            made.raise_for_status()
            project = made.json()["id"]
            items = [{"prompt": p, "answer1": a, "answer2": b} for p, a, b in _items(args.tasks)]
            for start in range(0, len(items), 1000):
                owner.post(f"/api/projects/{project}/import", json=items[start : start + 1000]).raise_for_status()
            owner.close()
            _analyze(server_url.rsplit("/", 1)[0] + f"/{name}")
            # access tokens live 5 minutes: each level asks for fresh ones through `headers`
            fresh: dict[int, tuple[float, str]] = {}

            def headers(i: int) -> dict[str, str]:
                if i not in fresh or time.monotonic() - fresh[i][0] > 120:
                    fresh[i] = (time.monotonic(), access(pats[i]))
                return {"Authorization": f"Bearer {fresh[i][1]}"}

            def stored() -> int:
                auth = {"Authorization": f"Bearer {access(owner_pat)}"}
                with httpx.Client(base_url=base, timeout=60, headers=auth) as client:
                    return int(client.get(f"/api/projects/{project}/").json()["total_annotations_number"])

            print(
                f"Label Studio ({LABEL_STUDIO}: gunicorn, {args.workers} processes of 8 threads, DEBUG off, "
                f"PostgreSQL, {args.tasks} pairwise items, maximum_annotations 1)"
            )
            yield Arm(
                name="Label Studio",
                base=base,
                project=project,
                headers=headers,
                next_call=lambda client, project: client.get(f"/api/projects/{project}/next/"),
                nothing_left=404,
                submit_call=lambda client, task: client.post(
                    f"/api/tasks/{task}/annotations/", json={"result": LS_RESULT, "lead_time": 1.0}
                ),
                stored=stored,
            )


# The load


async def _timed(stats: dict, key: str, call: Any) -> httpx.Response:
    """Await `call` (a request), adding its seconds to `stats[key]`."""
    start = time.perf_counter()
    response = await call
    stats[key].append(time.perf_counter() - start)
    return response


async def _annotator(arm: Arm, client: httpx.AsyncClient, until: float, stats: dict) -> None:
    if arm.submit_next_call is not None:
        return await _annotator_one_request(arm, client, until, stats)
    while time.monotonic() < until:
        served = await _timed(stats, "next", arm.next_call(client, arm.project))
        if served.status_code == arm.nothing_left:
            stats["nothing_left"] += 1
            return
        if served.status_code != 200:
            stats["errors"].append(("next", served.status_code, served.text[:200]))
            continue
        done = await _timed(stats, "submit", arm.submit_call(client, served.json()["id"]))
        if done.status_code == 201:
            stats["accepted"] += 1
        else:
            stats["errors"].append(("submit", done.status_code, done.text[:200]))


async def _annotator_one_request(arm: Arm, client: httpx.AsyncClient, until: float, stats: dict) -> None:
    """`next` once, then each submit is served the following item in its answer ("submit" times both)."""
    served = await _timed(stats, "next", arm.next_call(client, arm.project))
    if served.status_code == arm.nothing_left:
        stats["nothing_left"] += 1
        return
    if served.status_code != 200:
        stats["errors"].append(("next", served.status_code, served.text[:200]))
        return
    assignment = served.json()
    while time.monotonic() < until and assignment is not None:
        done = await _timed(stats, "submit", arm.submit_next_call(client, assignment["id"]))
        if done.status_code != 201:
            stats["errors"].append(("submit", done.status_code, done.text[:200]))
            return
        stats["accepted"] += 1
        assignment = done.json()["next"]
        if assignment is None:
            stats["nothing_left"] += 1


async def _level(arm: Arm, level: int, seconds: float) -> dict:
    stats: dict = {"next": [], "submit": [], "errors": [], "accepted": 0, "nothing_left": 0}
    limits = httpx.Limits(max_connections=level + 5)
    clients = [httpx.AsyncClient(base_url=arm.base, timeout=120, limits=limits, headers=arm.headers(i))
               for i in range(level)]  # fmt: skip
    until = time.monotonic() + seconds
    start = time.monotonic()
    await asyncio.gather(*(_annotator(arm, c, until, stats) for c in clients))
    stats["seconds"] = time.monotonic() - start
    for client in clients:
        await client.aclose()
    return stats


def run_arm(arm: Arm, args: argparse.Namespace) -> dict[int, float]:
    """Each level in turn on one project; returns labels per second by level."""
    throughput = {}
    total_accepted = 0
    for level in args.levels:
        stats = asyncio.run(_level(arm, level, args.duration))
        total_accepted += stats["accepted"]
        false_empty = stats["nothing_left"] if args.tasks - total_accepted > 0 else 0
        ms = {k: (1000 * statistics.median(stats[k]), 1000 * _percentile(stats[k], 0.99)) for k in ("next", "submit")}
        throughput[level] = stats["accepted"] / stats["seconds"]
        print(
            f"{level:>4} annotators: {throughput[level]:6.1f} labels/s; "
            f"next p50 {ms['next'][0]:6.1f} ms p99 {ms['next'][1]:7.1f} ms; "
            f"submit p50 {ms['submit'][0]:6.1f} ms p99 {ms['submit'][1]:7.1f} ms; "
            f"errors {len(stats['errors'])}; 'nothing left' with items open {false_empty}",
            flush=True,
        )
        if stats["errors"]:
            print(f"      errors (first 5): {stats['errors'][:5]}")
    stored = arm.stored()
    verdict = "equal" if stored == total_accepted else "DIFFERENT"
    print(f"{arm.name}: labels in the database {stored}, submits accepted {total_accepted}: {verdict}", flush=True)
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load per level.")
    parser.add_argument("--tasks", type=int, default=6000, help="Open pairwise items in each project.")
    parser.add_argument(
        "--closed", type=int, default=0, help="Prefloop only: items already judged, one label each (a database in use)."
    )
    parser.add_argument("--workers", type=int, default=2, help="Server processes, for each system.")
    parser.add_argument("--label-studio-venv", type=Path, default=ROOT / "var" / "label-studio-venv")
    parser.add_argument("--skip-label-studio", action="store_true", help="Prefloop's arm only.")
    parser.add_argument(
        "--flows", nargs="+", choices=sorted(FLOWS), default=["one"],
        help="Prefloop's flows, each on a database of its own: " + "; ".join(f"{k}: {v}" for k, v in FLOWS.items()),
    )  # fmt: skip
    args = parser.parse_args()

    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    ours = {}
    for flow in args.flows:
        with prefloop_arm(args, server_url, flow=flow) as arm:
            ours[flow] = run_arm(arm, args)
    if args.skip_label_studio:
        return
    with label_studio_arm(args, server_url) as arm:
        theirs = run_arm(arm, args)
    for level in args.levels:
        for flow in args.flows:
            ratio = ours[flow][level] / theirs[level] if theirs[level] else float("inf")
            line = f"Prefloop ({flow}) {ours[flow][level]:.1f}, Label Studio {theirs[level]:.1f} labels/s"
            print(f"{level:>4} annotators: {line}: ×{ratio:.2f}")


if __name__ == "__main__":
    main()
