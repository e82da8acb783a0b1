"""Celery tasks: each receives ids, calls one service, and records nothing itself.

The pipeline a training run goes through is `webapp.runs.pipeline`; a run's heartbeat, stage and
cancel are `webapp.runs.guard`; generation, imports and the queue's scores are in
`webapp.feedback`.
"""

from __future__ import annotations

import logging

from webapp.core.jobs import jobs_reap
from webapp.runs import guard, pipeline, services
from webapp.runs.arena import arena_gates_check
from webapp.runs.selectors import version_serving
from worker.celery import app

logger = logging.getLogger(__name__)


@app.task(name="prefloop.train_policy", queue="gpu", acks_late=True, ignore_result=True)
def train_policy(run_id: int) -> None:
    """Train a candidate policy version (the run's kind: DPO, LiPO, KTO, GRPO or online DPO), gate
    it against the serving version and promote it if it passes (webapp.runs.pipeline.policy_run).

    Idempotent: a finished run, or one a live worker holds, is left alone, so a redelivered
    message does no harm. Any error moves the run to FAILED with its text; the serving version
    stays as it was.
    """
    parent = version_serving()
    if services.run_start(run_id=run_id, parent_version=parent) is None:
        logger.info("run %s is not startable here; nothing to do", run_id)
        return
    guard.guarded(run_id, lambda g: pipeline.policy_run(run_id=run_id, parent=parent, guard=g))


@app.task(name="prefloop.train_reward", queue="gpu", acks_late=True, ignore_result=True)
def train_reward(run_id: int) -> None:
    """Train a reward model on its project's labels (webapp.runs.pipeline.reward_run). Idempotent
    and failure-safe like `train_policy`."""
    if services.run_start(run_id=run_id, parent_version=None) is None:
        logger.info("run %s is not startable here; nothing to do", run_id)
        return
    guard.guarded(run_id, lambda g: pipeline.reward_run(run_id=run_id, guard=g))


@app.task(name="prefloop.generate", queue="generate", acks_late=True, ignore_result=True)
def generate(job_id: int) -> None:
    """Answer a project's prompts with the serving version (webapp.feedback.generation), each item
    ranked by the serving reward model's disagreement on it."""
    from webapp.feedback.generation import generation_job_run_scored

    generation_job_run_scored(job_id=job_id, scorer_for=pipeline.disagreement_scorer)


@app.task(name="prefloop.rescore_queue", queue="generate", ignore_result=True)
def rescore_queue(project_id: int) -> None:
    """After a new reward model: rank the project's open items again by its members' disagreement."""
    from webapp.feedback.generation import queue_rescore_project

    queue_rescore_project(project_id=project_id, scorer_for=pipeline.disagreement_scorer)


@app.task(name="prefloop.score_followups", queue="cpu", ignore_result=True)
def score_followups() -> None:
    """Score the chat's answers the user replied to by that reply (webapp.feedback.followups)."""
    from webapp.feedback.followups import followups_score_all

    followups_score_all()


@app.task(name="prefloop.import_feedback", queue="cpu", acks_late=True, ignore_result=True)
def import_feedback(job_id: int) -> None:
    """Import an uploaded feedback file (webapp.feedback.transfer.import_job_run)."""
    from webapp.feedback.transfer import import_job_run

    import_job_run(job_id=job_id)


@app.task(name="prefloop.webhook_deliver", queue="cpu", acks_late=True, ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    """Post one event to one webhook, signed (webapp.hooks.services.delivery_run)."""
    from webapp.hooks.services import delivery_run

    delivery_run(delivery_id=delivery_id)


@app.task(name="prefloop.items_embed", queue="cpu", acks_late=True, ignore_result=True)
def items_embed(job_id: int) -> None:
    """Embed a project's new items and find their nearest items (webapp.feedback.similar)."""
    from webapp.feedback.similar import embedding_job_run

    embedding_job_run(job_id=job_id)


@app.task(name="prefloop.figure_refresh", queue="cpu", ignore_result=True)
def figure_refresh(figure_id: int) -> None:
    """Compute again a project figure that a page found behind the data (webapp.feedback.figures)."""
    from webapp.feedback.figures import figure_refresh as refresh

    refresh(figure_id=figure_id)


@app.task(name="prefloop.reap_runs", queue="cpu", ignore_result=True)
def reap_runs() -> None:
    """Scheduled by beat: the one reaper of every kind of job (webapp.core.jobs.jobs_reap), and the
    candidates waiting on the arena."""
    jobs_reap()
    arena_gates_check()


@app.task(name="prefloop.check_training_threshold", queue="cpu", ignore_result=True)
def check_training_threshold() -> None:
    """Scheduled by beat: queue a run when enough labels arrived (covers labels written without a
    submit hook, such as bulk imports)."""
    services.run_maybe_trigger()
