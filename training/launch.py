"""One policy run on several processes: ``torchrun --nproc-per-node N -m training.launch SPEC``.

The worker that owns the run (webapp.runs.distributed) writes SPEC, a pickle of the trainer's
dotted name and its keyword arguments, and starts this module under torchrun. Every process
trains (PyTorch DDP through the Trainer's accelerate: gloo on the CPU, NCCL on GPUs; FSDP2 when the
trainer's config says `sharding="fsdp"`); process 0 alone writes the adapter (training.adapters.save_trained), appends
each step's log to the progress file, and writes the trainer's result. The worker reads both, and
cancels the run by stopping the process group.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train together (torchrun's WORLD_SIZE; 1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def allow_fsdp_on_cpu() -> None:
    """Let accelerate shard with FSDP on CPU processes (gloo), as it does on GPUs.

    accelerate 1.15 turns an FSDP plugin into `DistributedType.FSDP` on accelerator backends only; on
    MULTI_CPU it keeps DDP and drops the plugin without a word. Torch's FSDP2 (`fully_shard`) itself
    runs on gloo, so this makes each `AcceleratorState` (each re-reads MULTI_CPU) keep the plugin.
    On GPUs it changes nothing. `training.adapters.sharding_used` reads back what the run used, and
    tests/training/test_launch.py checks that an FSDP run on the CPU is sharded.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_prefloop_fsdp_on_cpu", False):
        return

    def __init__(self, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        plugin = fsdp_plugin if fsdp_plugin is not None else self.__dict__.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    __init__._prefloop_fsdp_on_cpu = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = __init__  # type: ignore[method-assign]


def main(spec_path: str) -> None:
    import importlib

    spec: dict[str, Any] = pickle.loads(Path(spec_path).read_bytes())  # written by the run's own worker
    module, _, name = spec["trainer"].rpartition(".")
    trainer = getattr(importlib.import_module(module), name)
    progress_file, result_file = Path(spec["progress_file"]), Path(spec["result_file"])

    def progress(entry: dict[str, Any]) -> None:
        if rank() == 0:
            with progress_file.open("a") as f:
                f.write(json.dumps(entry, default=float) + "\n")

    result = trainer(**spec["kwargs"], progress=progress)
    if rank() == 0:
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        tmp.rename(result_file)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: Any) -> None:
    """Stop torchrun and every training process it started (they share its process group)."""
    import signal
    import subprocess

    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_on_processes(
    trainer: str,
    kwargs: dict[str, Any],
    *,
    processes: int,
    work_dir: str | Path,
    progress: Callable[[dict[str, Any]], None] | None = None,
    check: Callable[[], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Run ``trainer`` (a dotted name) with ``kwargs`` on ``processes`` processes under torchrun and
    return process 0's result. ``progress`` gets each step's log as process 0 writes it; when it or
    ``check`` raises (a cancel, a time limit), every process is stopped and the exception
    propagates. A process that fails fails the run with the end of its log."""
    import pickle
    import subprocess
    import time

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    progress_file, result_file = work / "progress.jsonl", work / "result.json"
    spec = {"trainer": trainer, "kwargs": kwargs, "progress_file": str(progress_file), "result_file": str(result_file)}
    (work / "spec.pkl").write_bytes(pickle.dumps(spec))
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
            "-m", "training.launch", str(work / "spec.pkl")]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    with (work / "processes.log").open("wb") as log:
        process = subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen = 0
    try:
        while True:
            done = process.poll() is not None
            # whole lines only: process 0 may be writing the last one
            lines = progress_file.read_text().split("\n")[:-1] if progress_file.exists() else []
            for line in lines[seen:]:
                if line.strip() and progress is not None:
                    progress(json.loads(line))
            seen = len(lines)
            if check is not None:
                check()
            if done:
                break
            time.sleep(poll_s)
    except BaseException:
        _stop(process)
        raise
    if process.returncode != 0 or not result_file.exists():
        tail = (work / "processes.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"training on {processes} processes failed (exit {process.returncode}):\n{tail}")
    return dict(json.loads(result_file.read_text()))


if __name__ == "__main__":
    main(sys.argv[1])
