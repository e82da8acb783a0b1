"""Helpers for tests that start real server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started with `start_new_session=True`, and everything it started."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError):  # children (vLLM's engine core, workers) may linger
        os.killpg(process.pid, signal.SIGKILL)


S3_KEY, S3_SECRET = "prefloop", "prefloop-secret"


@contextlib.contextmanager
def s3_server(data_dir, *, buckets: str = "artifacts"):
    """A real S3-compatible object store (SeaweedFS's all-in-one `weed mini`) on free ports.

    Yields its endpoint URL; the access key and secret are S3_KEY and S3_SECRET, and `buckets`
    (comma-separated) exist from the start.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin", "lance")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    args = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={buckets}",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.port.lance={ports['lance']}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={grpc['admin']}",
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(Path(data_dir) / "weed.log", "w+b")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the S3 server did not start:\n{log.read().decode(errors='replace')[-3000:]}")
            try:  # the gateway answers once it is up; the bucket exists once the filer has it
                if httpx.get(f"{endpoint}/{buckets.split(',')[0]}", timeout=2).status_code in (200, 403):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield endpoint
    finally:
        stop_process_group(process)
        log.close()


@contextlib.contextmanager
def celery_broker(url: str):
    """Send this process's Celery tasks to the broker at `url` for a while, then back.

    Celery reads `broker_url` from the CELERY_BROKER_URL environment variable before its settings,
    so the switch sets the write URL, which senders use; and its connection and producer pools
    (kombu's, shared by URL) are closed and forgotten on each switch, as after a fork.
    """
    from worker.celery import app

    def switch(to: str | None) -> None:
        from kombu import pools

        pools.reset()  # closes kombu's shared connection and producer pools and forgets them
        app.conf.broker_write_url = to
        app._pool = None
        app.amqp._producer_pool = None

    old = app.conf.get("broker_write_url")
    switch(url)
    try:
        yield app
    finally:
        switch(old)
