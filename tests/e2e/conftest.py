"""Real parts for end-to-end tests: policy servers, a Celery worker process, and Chromium.

Nothing here is mocked: the built-in policy server and vLLM run as their own processes over HTTP,
the worker is a real `celery worker` process on the Redis broker, and the browser is Debian's
Chromium driven by Playwright.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.processes import free_port, stop_process_group

# Playwright's sync API keeps an event loop in the test thread; the test still talks to the
# database synchronously from that thread, which is safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LATENCY_ENV = "PREFLOOP_E2E_LATENCY_MS"  # network latency for every browser page (0: none)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process_group(self.popen)


def start_process(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Process(name, popen, log_path)


def wait_for_server(process: Process, url: str, timeout: float) -> None:
    from training.policy_client import PolicyClient, PolicyServerError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.log()[-4000:]}")
        try:
            PolicyClient(url, timeout=5).wait_ready(timeout=2)
            return
        except PolicyServerError:
            time.sleep(0.5)
    process.stop()
    raise RuntimeError(f"{process.name} did not answer at {url} within {timeout} s:\n{process.log()[-4000:]}")


@dataclass
class LoopFiles:
    base_model: Path
    artifact_dir: Path
    v1_adapter: Path


@pytest.fixture(scope="session")
def loop_files(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> LoopFiles:
    """The tiny base model and the version 1 adapter (fresh LoRA: exactly the base model)."""
    from training.artifacts import ArtifactStore
    from training.dpo import DPOTrainConfig, create_initial_adapter

    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    with store.write_version("v1-initial") as folder:
        create_initial_adapter(tiny_policy_path, folder, DPOTrainConfig())
    return LoopFiles(tiny_policy_path, store.root, store.version_path("v1-initial"))


@pytest.fixture(scope="session")
def builtin_policy_server(loop_files: LoopFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from training.policy_server import policy_server_command

    port = free_port()
    argv = policy_server_command(loop_files.base_model, port=port, lora_modules={"policy-v1": loop_files.v1_adapter})
    process = start_process("builtin-policy-server", argv, dict(os.environ), tmp_path_factory.mktemp("logs"))
    url = f"http://127.0.0.1:{port}"
    wait_for_server(process, url, timeout=120)
    yield url
    process.stop()


@pytest.fixture(scope="session")
def vllm_policy_server(loop_files: LoopFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from training.vllm_server import vllm_command

    port = free_port()
    argv, extra_env = vllm_command(
        str(loop_files.base_model),
        port=port,
        served_model_name="base",
        lora_modules={"policy-v1": str(loop_files.v1_adapter)},
    )
    if not Path(argv[0]).exists():
        pytest.fail(f"vLLM's python {argv[0]} is missing: run `make vllm-venv` (make test does)")
    process = start_process("vllm", argv, {**os.environ, **extra_env}, tmp_path_factory.mktemp("logs"))
    url = f"http://127.0.0.1:{port}"
    wait_for_server(process, url, timeout=300)
    yield url
    process.stop()


def test_database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def start_worker(tmp_path: Path, settings) -> Iterator:
    """Start a real Celery worker process on the Redis broker, pointed at the test database."""
    import redis

    processes: list[Process] = []

    def start(
        *,
        policy_url: str,
        files: LoopFiles,
        env: dict[str, str] | None = None,
        beat: bool = False,
        queues: str = "cpu,gpu,generate",
        clear: bool = True,
    ) -> Process:
        """A worker on `queues`; with `beat`, Celery beat runs inside it (the reaper and the threshold check)."""
        broker = settings.CELERY_BROKER_URL
        if broker.startswith("redis://") and clear:
            redis.Redis.from_url(broker).delete("gpu", "cpu", "generate")  # no stale task of an earlier run
        env = {
            **os.environ,
            **(env or {}),
            "DATABASE_URL": test_database_url(),
            "CELERY_BROKER_URL": broker,
            "ARTIFACT_DIR": str(files.artifact_dir),
            "POLICY_BASE_MODEL": str(files.base_model),
            "POLICY_SERVER_URL": policy_url,
            "PYTHONUNBUFFERED": "1",
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery",
            "worker",
            "-Q",
            queues,
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--hostname",
            f"e2e-{free_port()}@%h",
        ]
        if beat:
            argv += ["--beat", "--schedule", str(tmp_path / f"beat-{len(processes)}")]
        process = start_process(f"worker-{len(processes)}", argv, env, tmp_path)
        processes.append(process)
        deadline = time.monotonic() + 90
        while "ready" not in process.log():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{process.log()[-4000:]}")
            time.sleep(0.3)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def loop_settings(settings, loop_files: LoopFiles):
    """Point the web app (the live server runs in this process) at the test's files."""
    settings.ARTIFACT_DIR = loop_files.artifact_dir
    settings.POLICY_BASE_MODEL = str(loop_files.base_model)
    return settings


@pytest.fixture
def gate_settings(loop_settings, loop_files, builtin_policy_server):
    """The tasks run in this process: the messages their runs send go to an in-memory broker, where
    no worker process of another test could take them."""
    from tests.processes import celery_broker

    loop_settings.POLICY_SERVER_URL = builtin_policy_server
    loop_settings.REWARD_BACKBONE = str(loop_files.base_model)
    loop_settings.REWARD_MAX_STEPS, loop_settings.POLICY_MAX_TOKENS = 8, 8
    loop_settings.TRAIN_DEVICE = "cpu"
    with celery_broker("memory://"):
        yield loop_settings


def run_trained(kind, project):
    """Queue a run of `kind` ("policy" lets the recipe choose) for `project` as the API does, carry it
    out in this process as its worker task would, and return it once it succeeded."""
    from webapp.runs import services
    from webapp.runs.models import TrainingRun
    from worker import tasks

    run, created = services.run_create(trigger=TrainingRun.Trigger.API, kind=kind, project=project)
    assert created
    tasks.train_reward(run.pk) if run.kind == TrainingRun.Kind.REWARD else tasks.train_policy(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    return run


def serve_version_one(*, files: LoopFiles):
    """Register and serve version 1, and make sure the policy server has its adapter loaded."""
    from tests.factories import make_serving_version
    from webapp.runs.policy import adapter_load

    version = make_serving_version(str(files.v1_adapter))
    adapter_load(version)  # the live server and this test share the process's settings
    return version


@pytest.fixture(scope="session")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make browser` installs it (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        latency_ms = int(os.environ.get(LATENCY_ENV, "0") or 0)
        yield _SlowNetwork(browser, latency_ms) if latency_ms else browser
        browser.close()


class _SlowNetwork:
    """The browser, with every page given `latency_ms` of network latency (PREFLOOP_E2E_LATENCY_MS).

    Scripts then arrive well after the page's first elements, so a test that acts before they are
    bound (a key pressed before its handler exists) fails every time instead of on a slow day.
    """

    def __init__(self, browser: Any, latency_ms: int) -> None:
        self._browser, self._latency_ms = browser, latency_ms

    def new_context(self, **kwargs: Any) -> Any:
        context = self._browser.new_context(**kwargs)
        new_page = context.new_page

        def slow_page(**page_kwargs: Any) -> Any:
            page = new_page(**page_kwargs)
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            conditions = {
                "offline": False,
                "latency": self._latency_ms,
                "downloadThroughput": -1,
                "uploadThroughput": -1,
            }
            cdp.send("Network.emulateNetworkConditions", conditions)
            return page

        context.new_page = slow_page
        return context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def item_for_prompt(client, prompt_id: int, headers: dict[str, str], *, api: str = "/api", timeout: float = 180):
    """The item a worker's generation job makes of prompt `prompt_id`, as its author finds it through
    the API (`GET /api/tasks/?prompt=<id>`), once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.get(f"{api}/tasks/", params={"prompt": prompt_id}, headers=headers)
        assert found.status_code == 200, found.text
        if found.json()["count"]:
            return found.json()["results"][0]
        if time.monotonic() > deadline:
            jobs = client.get(f"{api}/generation-jobs/", headers=headers).json()
            raise AssertionError(f"no item for prompt {prompt_id} after {timeout} s; jobs: {jobs}")
        time.sleep(0.5)
