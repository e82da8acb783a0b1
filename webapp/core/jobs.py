"""One lifecycle for every background job: training and reward runs, generation jobs, imports.

    queued ──start──▶ running (heartbeat) ──▶ succeeded | failed | cancelled
       │                  │
       └──cancel──▶ cancelled    lost worker (no heartbeat for RUN_STALE_S): failed, or queued
                                 again where the kind can resume (`on_lost = "retry"`), at most
                                 RUN_MAX_ATTEMPTS times; past its kind's time limit
                                 (JOB_TIME_LIMITS): failed, with the limit named

- Only a queued job starts (`job_start`): a message delivered twice, or again while the job runs
  (fresh heartbeat or not), starts nothing. A lost worker is the reaper's to judge, not a
  redelivery's.
- One reaper (`jobs_reap`, run by beat) for every kind: lost workers, time limits, and queued jobs
  the broker never took or lost, which it sends again (`job_enqueue`) after RUN_RESEND_S.
- Cancel (`job_cancel`): a queued job ends at once; a running one is asked, and its worker stops
  at its next step (`JobGuard.check`).
- While a job runs, `JobGuard` beats from a thread of its own, and keeps the last lines its worker
  logged for it in `log_tail` (shown on its page and in the API).
- Workers beat too (webapp.core.workers), so a job queued where no worker listens on its queue says
  so (`job_waiting_on`).

Each job model subclasses `Job` and says its `job_kind`, its task (`job_task`), `on_lost`, and what
ending means to it (`job_ended`, e.g. an import removes its upload).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from webapp.core.queue import broker_send
from webapp.core.workers import queue_listeners

logger = logging.getLogger(__name__)
LOG_TAIL_LINES = 40


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class Job(models.Model):
    """The fields every background job shares."""

    job_kind: ClassVar[str] = ""  # "policy", "reward", "generation", "import": its time limit and its name in lists
    on_lost: ClassVar[str] = "fail"  # what a lost worker means: "fail", or "retry" (queued again; it resumes)

    objects = models.Manager()

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When the broker took its message.")
    cancel_requested = models.BooleanField(default=False)
    log_tail = models.TextField(blank=True, help_text="The last lines its worker logged for it.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    def job_task(self) -> tuple[str, str]:
        """The Celery task's name and queue that run this job."""
        raise NotImplementedError

    def job_end_fields(self) -> dict[str, Any]:
        """Fields its kind sets whenever it ends (a training run's stage: done)."""
        return {}

    def job_ended(self) -> None:
        """Called once the job has ended, however it ended (succeeded, failed, cancelled, reaped)."""

    @property
    def job_progress(self) -> float | None:
        """How far it got, 0 to 1 (None where the kind cannot tell)."""
        return None

    def job_type(self) -> str:
        """Its kind among jobs (`job_kind`; a training run says which: policy or reward)."""
        return self.job_kind

    @property
    def time_limit_s(self) -> int:
        return job_time_limit(self.job_type())


JobT = TypeVar("JobT", bound=Job)


def job_label(job: Job) -> str:
    """How a report names a job: its kind and id ("generation 12")."""
    return f"{job.job_type()} {job.pk}"


def job_models() -> list[type[Job]]:
    """Every installed job model."""
    return [m for m in apps.get_models() if issubclass(m, Job)]


def job_time_limit(kind: str) -> int:
    """The seconds a job of `kind` may run (JOB_TIME_LIMITS; 0 = no limit)."""
    return int(settings.JOB_TIME_LIMITS.get(kind, 0))


def _heartbeat_fresh(job: Job) -> bool:
    return job.heartbeat_at is not None and (timezone.now() - job.heartbeat_at).total_seconds() < settings.RUN_STALE_S


# -- the transitions ---------------------------------------------------------------------------------


def job_enqueue(job: Job, *, countdown: float = 0) -> bool:
    """Send the job's task to the broker (to run `countdown` seconds from now); record when it took
    it. With the broker down the job stays queued without `enqueued_at`, and the reaper sends it
    later. Never raises."""
    name, queue = job.job_task()
    if not broker_send(name, args=[job.pk], queue=queue, countdown=countdown):
        return False
    type(job).objects.filter(pk=job.pk).update(enqueued_at=timezone.now())
    return True


def job_start(model: type[JobT], pk: int, **fields: Any) -> JobT | None:
    """Move a queued job to running (with `fields` set too); None when there is nothing to do: it
    ended, or it is running already (a live worker holds it, or the reaper will judge it), or its
    cancel was asked while it waited (it ends cancelled)."""
    with transaction.atomic():
        job = model.objects.select_for_update().filter(pk=pk).first()
        if job is None or job.status != JobStatus.QUEUED:
            if job is not None and job.status == JobStatus.RUNNING:
                fresh = "a fresh" if _heartbeat_fresh(job) else "a stale"
                logger.info("%s is running with %s heartbeat; this delivery starts nothing", job, fresh)
            return None
        if job.cancel_requested:
            _end(job, JobStatus.CANCELLED, error="cancelled before it started")
            return None
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.started_at = job.heartbeat_at = timezone.now()
        job.error = ""
        for name, value in fields.items():
            setattr(job, name, value)
        job.save(update_fields=["status", "attempts", "started_at", "heartbeat_at", "error", *fields])
    return job


def job_beat(model: type[Job], pk: int, **fields: Any) -> bool:
    """Record that the job's worker is alive (and `fields`); return whether it should stop (a cancel
    was asked, or it was ended meanwhile: reaped, or past its time limit)."""
    model.objects.filter(pk=pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now(), **fields)
    return model.objects.filter(pk=pk).exclude(status=JobStatus.RUNNING, cancel_requested=False).exists()


def _end(job: Job, status: str, *, error: str = "", **fields: Any) -> None:
    job.status = status
    job.error = error[:10_000]
    job.finished_at = timezone.now()
    fields = {**job.job_end_fields(), **fields}
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=["status", "error", "finished_at", *fields])
    try:  # what ending means to its kind (an import's upload removed); never undoes the end
        job.job_ended()
    except Exception:
        logger.exception("%s: cleaning up after its end failed", job)


def job_finish(
    model: type[JobT], pk: int, status: str, *, error: str = "", attempt: int | None = None, **fields: Any
) -> JobT | None:
    """End an active job as `status`; a job that ended already (reaped, cancelled) stays as it is.
    With `attempt` (what a worker's guard passes), only that attempt, still running, is ended: a job
    the reaper queued again after this worker went quiet belongs to its next attempt."""
    with transaction.atomic():
        job = model.objects.select_for_update().filter(pk=pk).first()
        if job is None or not job.is_active:
            return job
        if attempt is not None and (job.status != JobStatus.RUNNING or job.attempts != attempt):
            logger.info("%s: attempt %s no longer holds it; it is left as it is", job, attempt)
            return job
        _end(job, status, error=error, **fields)
    return job


def job_retry_later(
    model: type[JobT], pk: int, *, error: str, attempt: int, delay_s: float, **fields: Any
) -> JobT | None:
    """Put a running attempt that failed for a passing reason (a webhook's receiver down) back in
    the queue, to start again after `delay_s` (its back-off); the error stays on it meanwhile. Like
    `job_finish`, only that attempt, still running, is moved."""
    with transaction.atomic():
        job = model.objects.select_for_update().filter(pk=pk).first()
        if job is None or job.status != JobStatus.RUNNING or job.attempts != attempt:
            return job
        job.status, job.error, job.heartbeat_at = JobStatus.QUEUED, error[:10_000], None
        for name, value in fields.items():
            setattr(job, name, value)
        job.save(update_fields=["status", "error", "heartbeat_at", *fields])
        transaction.on_commit(lambda: job_enqueue(job, countdown=delay_s))
    return job


def job_cancel(model: type[JobT], pk: int, **fields: Any) -> JobT:
    """Cancel a queued job at once, or ask a running one to stop at its next step (its worker then
    ends it cancelled). ValueError for a job that has ended; DoesNotExist for none."""
    with transaction.atomic():
        job = model.objects.select_for_update().get(pk=pk)
        if not job.is_active:
            raise ValueError(f"{job} is already {job.status}")
        if job.status == JobStatus.QUEUED:
            _end(job, JobStatus.CANCELLED, error="cancelled before it started", **fields)
        else:
            job.cancel_requested = True
            job.save(update_fields=["cancel_requested"])
    return job


def jobs_reap() -> dict[str, list[str]]:
    """The one reaper, for every kind: a running job whose heartbeat is older than RUN_STALE_S lost
    its worker (it fails, or is queued again where its kind resumes, at most RUN_MAX_ATTEMPTS
    times); one running past its kind's time limit fails, naming the limit; queued jobs the broker
    never took, or took more than RUN_RESEND_S ago, are sent again (a second message is harmless:
    only a queued job starts)."""
    now = timezone.now()
    report: dict[str, list[str]] = {"lost": [], "requeued": [], "timed_out": [], "sent": []}
    for model in job_models():
        for pk in model.objects.filter(status=JobStatus.RUNNING).values_list("pk", flat=True):
            with transaction.atomic():
                job = model.objects.select_for_update().get(pk=pk)
                if job.status != JobStatus.RUNNING:
                    continue
                limit = job.time_limit_s
                if limit and job.started_at and (now - job.started_at).total_seconds() > limit:
                    job.cancel_requested = True  # a live worker stops at its next beat
                    _end(job, JobStatus.FAILED, error=f"hit its time limit: ran more than {limit} s "
                         f"(JOB_TIME_LIMITS['{job.job_type()}'])", cancel_requested=True)  # fmt: skip
                    report["timed_out"].append(job_label(job))
                elif not _heartbeat_fresh(job):
                    _reap_lost(job, report)
        stale = now - timedelta(seconds=settings.RUN_RESEND_S)
        waiting = model.objects.filter(status=JobStatus.QUEUED).filter(
            models.Q(enqueued_at__isnull=True) | models.Q(enqueued_at__lt=stale)
        )
        report["sent"] += [job_label(job) for job in waiting if job_enqueue(job)]
    if any(report.values()):
        logger.info("reaper: %s", {k: v for k, v in report.items() if v})
    return report


def _reap_lost(job: Job, report: dict[str, list[str]]) -> None:
    lost = f"the worker was lost (no heartbeat for {settings.RUN_STALE_S} s)"
    if job.cancel_requested:  # it was being cancelled anyway
        _end(job, JobStatus.CANCELLED, error=f"cancelled; {lost}")
    elif job.on_lost == "retry" and job.attempts < settings.RUN_MAX_ATTEMPTS:
        job.status, job.error, job.enqueued_at = JobStatus.QUEUED, f"{lost}; queued again", None
        job.save(update_fields=["status", "error", "enqueued_at"])
        report["requeued"].append(job_label(job))
        return
    else:
        tried = f" after {job.attempts} attempts (RUN_MAX_ATTEMPTS)" if job.on_lost == "retry" else ""
        _end(job, JobStatus.FAILED, error=f"{lost}{tried}")
    report["lost"].append(job_label(job))


# -- on the worker -----------------------------------------------------------------------------------


class JobStopped(Exception):
    """The job was cancelled, or ended meanwhile (reaped, past its time limit): stop at this step."""


class _TailHandler(logging.Handler):
    """Keeps the last lines logged by one thread (the job's)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__(level=logging.INFO)
        self.thread_id = thread_id
        self.lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            try:
                self.lines.append(self.format(record)[:2000])
            except Exception:  # a log line that cannot be formatted is left out, never fatal
                pass

    def text(self) -> str:
        return "\n".join(self.lines)


class JobGuard:
    """While a job runs on a worker: a heartbeat every RUN_HEARTBEAT_S from a thread of its own (long
    steps included), the log tail, and the stop flag, which `check` turns into `JobStopped`."""

    def __init__(self, model: type[Job], pk: int) -> None:
        self.model, self.pk = model, pk
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._fields: dict[str, Any] = {}
        self._tail = _TailHandler(threading.get_ident())
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)
        self.attempt = 0  # the attempt this worker holds, read when it enters

    def __enter__(self) -> JobGuard:
        self.attempt = self.model.objects.filter(pk=self.pk).values_list("attempts", flat=True).first() or 0
        logging.getLogger().addHandler(self._tail)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        logging.getLogger().removeHandler(self._tail)
        self.model.objects.filter(pk=self.pk).update(log_tail=self._tail.text())

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._done.is_set():
                self.beat()
                self._done.wait(settings.RUN_HEARTBEAT_S)
        finally:
            connection.close()

    def beat(self, **fields: Any) -> None:
        """A heartbeat now (with `fields`, which later beats keep sending)."""
        self._fields.update(fields)
        try:
            if job_beat(self.model, self.pk, log_tail=self._tail.text(), **self._fields):
                self.stopped.set()
        except Exception:  # a database hiccup must not kill the job; the next beat retries
            logger.exception("heartbeat of %s %s failed", self.model.__name__, self.pk)

    def check(self) -> None:
        if self.stopped.is_set():
            raise JobStopped(f"{self.model.__name__} {self.pk} was cancelled or ended")


def job_guarded(
    model: type[Job],
    pk: int,
    body: Callable[[JobGuard], None],
    *,
    cancelled: str,
    guard: Callable[[int], JobGuard] | None = None,
) -> None:
    """Run `body` under a JobGuard: a stop ends the job cancelled (with `cancelled` as its reason),
    any error ends it failed with its text; a job never stays running because its body raised."""
    held = guard(pk) if guard is not None else JobGuard(model, pk)
    try:
        with held:
            body(held)
    except JobStopped:
        logger.info("%s %s stopped", model.__name__, pk)
        job_finish(model, pk, JobStatus.CANCELLED, error=cancelled, attempt=held.attempt)
    except Exception as exc:
        logger.exception("%s %s failed", model.__name__, pk)
        error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        job_finish(model, pk, JobStatus.FAILED, error=error, attempt=held.attempt)


# -- workers and the one list of jobs ----------------------------------------------------------------


def job_waiting_on(job: Job, listeners: dict[str, list[str]]) -> str:
    """Why a queued job is not moving, when it is because no worker listens on its queue ("" otherwise)."""
    if job.status != JobStatus.QUEUED:
        return ""
    queue = job.job_task()[1]
    if listeners.get(queue):
        return ""
    return f"no worker listens on the {queue!r} queue: start one (`celery -A worker.celery worker -Q {queue}`)"


JOB_KINDS = ("policy", "reward", "generation", "import", "webhook", "embedding")


def job_model_for(kind: str) -> type[Job]:
    """The model of a job kind (ValueError for an unknown one)."""
    for model in job_models():
        if (kind in ("policy", "reward") and model.__name__ == "TrainingRun") or model.job_kind == kind:
            return model
    raise ValueError(f"unknown job kind {kind!r}: one of {', '.join(JOB_KINDS)}")


def job_row(job: Job, listeners: dict[str, list[str]]) -> dict[str, Any]:
    """A job as the one list shows it, whatever its kind."""
    return {
        "kind": job.job_type(),
        "id": job.pk,
        "name": str(job),
        "project": getattr(job, "project_id", None),
        "status": job.status,
        "progress": job.job_progress,
        "attempts": job.attempts,
        "heartbeat_at": job.heartbeat_at,
        "time_limit_s": job.time_limit_s,
        "cancel_requested": job.cancel_requested,
        "waiting_on": job_waiting_on(job, listeners),
        "error": job.error[:2000],
        "log_tail": job.log_tail,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def jobs_list(
    *, kind: str = "", status: str = "", project: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Every job of every kind, newest first, filtered by kind, status and project."""
    if kind and kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}: one of {', '.join(JOB_KINDS)}")
    if status and status not in JobStatus.values:
        raise ValueError(f"unknown status {status!r}: one of {', '.join(JobStatus.values)}")
    listeners = queue_listeners()
    rows: list[Job] = []
    for model in job_models():
        jobs = model.objects.all()
        if model.__name__ == "TrainingRun":
            if kind in ("generation", "import"):
                continue
            if kind:
                reward = {"kind": "reward"}  # a training run's kind says policy or reward
                jobs = jobs.filter(**reward) if kind == "reward" else jobs.exclude(**reward)
        elif kind and model.job_kind != kind:
            continue
        if status:
            jobs = jobs.filter(status=status)
        if project is not None:
            if not any(f.name == "project" for f in model._meta.fields):
                continue  # a kind that belongs to no project (a webhook delivery)
            jobs = jobs.filter(**{"project_id": project})
        rows += list(jobs.order_by("-created_at", "-id")[:limit])
    rows.sort(key=lambda j: j.created_at, reverse=True)
    return [job_row(job, listeners) for job in rows[:limit]]
