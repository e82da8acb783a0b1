"""Helpers for tests and benchmarks that start real server processes or need a database of their own."""

from __future__ import annotations

import contextlib
import os
import secrets
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


def wait_until(what: str, check, *, timeout: float = 300, every: float = 0.05):
    """Call `check` every `every` seconds until it returns something true, and return that; exit
    naming `what` after `timeout` seconds (the benchmarks' way of waiting on a system they drive)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


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


class OwnPostgres:
    """A PostgreSQL cluster of a test's own (initdb in `data_dir`, on `port`): stopped and started
    again by its postmaster's process id, never touching the machine's shared server. PostgreSQL
    refuses to run as root, so there it runs as the `postgres` system user."""

    def __init__(self, port: int) -> None:
        import tempfile

        # a folder of its own that the `postgres` user can reach (pytest's are private to root)
        self.data_dir, self.port = Path(tempfile.mkdtemp(prefix="prefloop-pg-")), port
        self.url = f"postgres://postgres@127.0.0.1:{port}/prefloop"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            self.data_dir.chmod(0o755)

    def _bin(self, name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not versions:
            raise RuntimeError(f"{name} is not installed")
        return str(versions[-1])

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.data_dir, "postgres", "postgres")
        subprocess.run(
            [*self._as, self._bin("initdb"), "-D", str(self.data_dir / "data"), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        self.start()
        subprocess.run(
            [*self._as, self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "prefloop"],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        argv = [*self._as, self._bin("pg_ctl"), "-D", str(self.data_dir / "data"), "-o", options, "-w", "-t", "60"]
        subprocess.run([*argv, "-l", str(self.data_dir / "server.log"), "start"], check=True, capture_output=True)

    def pid(self) -> int:
        return int((self.data_dir / "data" / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Fast shutdown by the postmaster's process id; wait until it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str):
    """A PostgreSQL database of its own on the server of `server_url` (named `<prefix>_<6 hex>`),
    dropped on exit even while something is still connected to it; yields its name."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(3)}"
    admin_dsn = server_url.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
