"""A training run on its worker: the job lifecycle's guard (webapp.core.jobs.JobGuard: heartbeat,
log tail, stop flag) with the run's stage, and progress reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from webapp.core.jobs import JobGuard, JobStopped, job_guarded
from webapp.runs import services
from webapp.runs.models import TrainingRun

PROGRESS_EVERY_S = 1.0
RunCancelled = JobStopped  # a cancel (or the reaper) stops training at its next step; nothing half written is kept


class RunGuard(JobGuard):
    def __init__(self, run_id: int) -> None:
        super().__init__(TrainingRun, run_id)
        self.run_id = run_id

    def stage(self, stage: str) -> None:
        """The run's stage now (training, evaluating, serving), then stop here if asked."""
        self.beat(stage=stage)
        self.check()


def guarded(run_id: int, body: Callable[[RunGuard], None]) -> None:
    """Run `body` under the run's guard: a cancel ends the run cancelled, any error ends it failed."""

    def run(guard: JobGuard) -> None:
        assert isinstance(guard, RunGuard)
        body(guard)

    job_guarded(TrainingRun, run_id, run, cancelled="cancelled while it ran; nothing it wrote was kept",
                guard=RunGuard)  # fmt: skip


def progress_reporter(run_id: int, guard: JobGuard) -> Callable[[dict[str, Any]], None]:
    """A training progress callback that stops a cancelled run at its step, and records the run's
    progress and metrics at most once a second."""
    last_report = [0.0]

    def progress(logs: dict[str, Any]) -> None:
        guard.check()
        now = time.monotonic()
        if now - last_report[0] >= PROGRESS_EVERY_S or logs.get("fraction", 0) >= 1:
            last_report[0] = now
            services.run_progress(run_id=run_id, progress=float(logs.get("fraction", 0.0)), metrics=logs)

    return progress
