"""Start the whole system on this machine: policy server, Celery worker and web server.

Ctrl-C (or any of them dying) stops all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.runs.artifacts import version_local_path
from webapp.runs.models import ModelVersion
from webapp.runs.policy import policy_client
from webapp.runs.selectors import version_serving


class Command(BaseCommand):
    help = "Run the policy server, a Celery worker and the web server together (what `make run` does)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default=os.environ.get("PREFLOOP_ADDR", "127.0.0.1:8000"))
        parser.add_argument(
            "--policy-server",
            choices=["builtin", "vllm", "external"],
            default=os.environ.get("POLICY_SERVER", "builtin"),
            help="builtin: the small transformers server; vllm: a vLLM server; external: one already running "
            "at POLICY_SERVER_URL.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        serving = version_serving()
        if serving is None:
            raise CommandError("No policy version is serving: run `python manage.py prefloop_setup` first.")
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            if options["policy_server"] != "external":
                argv, env = self._policy_server_command(options["policy_server"], serving)
                procs.append(
                    ("policy server", subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True))
                )
            self.stdout.write(f"Waiting for the policy server at {settings.POLICY_SERVER_URL} …")
            policy_client().wait_ready(timeout=300)
            worker = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery",
                "--quiet",  # no start-up banner: the URL below is what a newcomer needs to see
                "worker",
                "-Q",
                "cpu,gpu,generate",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                # beat inside the worker: the label-threshold check and the reaper of lost runs
                "--beat",
                "--schedule",
                str(settings.VAR_DIR / "celerybeat-schedule"),
            ]
            procs.append(("worker", subprocess.Popen(worker, start_new_session=True)))
            # the production server, one process: what a newcomer tries is what is deployed
            web = [sys.executable, "manage.py", "prefloop_serve", "--addr", options["addr"], "--workers", "1"]
            procs.append(("web", subprocess.Popen(web, start_new_session=True)))
            self._wait_until_up(options["addr"], procs)
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nPrefloop is running: http://{options['addr']}/\n"
                    f"  policy {serving} served by the {options['policy_server']} server "
                    f"at {settings.POLICY_SERVER_URL}\n"
                    "  log in as admin / prefloop-admin or annotator / prefloop-annotator (unless you changed them)\n"
                    "  Ctrl-C stops everything.\n"
                )
            )
            while not stopping:
                for name, proc in procs:
                    if proc.poll() is not None:
                        self.stderr.write(f"The {name} exited with code {proc.returncode}; stopping.")
                        stopping = True
                time.sleep(0.5)
        finally:
            for _, proc in reversed(procs):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for _, proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            self.stdout.write("Stopped.")

    def _wait_until_up(self, addr: str, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        """Until the web server answers and a worker listens on every queue (its own heartbeat), so the
        URL printed next is the last thing said before the system is up; at most 180 s."""
        import httpx

        from webapp.core.workers import queue_listeners

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for _, proc in procs):
                return  # the loop below says which one exited
            try:
                web_up = httpx.get(f"http://{addr}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                web_up = False
            listeners = queue_listeners()
            if web_up and all(listeners.get(q) for q in ("cpu", "gpu", "generate")):
                return
            time.sleep(0.5)
        self.stderr.write("The web server or the worker is slow to start; the URL below may not answer yet.")

    def _policy_server_command(self, kind: str, serving: ModelVersion) -> tuple[list[str], dict[str, str]]:
        url = urlparse(settings.POLICY_SERVER_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 8100
        lora = {serving.adapter_name: version_local_path(serving)}
        if kind == "vllm":
            from training.vllm_server import vllm_command

            return vllm_command(
                settings.POLICY_BASE_MODEL, host=host, port=port, served_model_name="base", lora_modules=lora
            )
        from training.policy_server import policy_server_command

        return policy_server_command(settings.POLICY_BASE_MODEL, host=host, port=port, lora_modules=lora), {}
