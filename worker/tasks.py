"""Celery tasks: thin adapters that load rows by id, call `training`, and write through services."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from django.conf import settings

from training.artifacts import VersionMeta, data_hash
from training.dpo import DPOTrainConfig, PreferencePair, train_dpo
from training.followup import FollowupScorer
from training.grpo import GRPOTrainConfig, ensemble_reward, followup_reward, train_grpo
from training.kto import KTOTrainConfig, ThumbExample, train_kto
from training.reward import PreferenceExample, RewardConfig, RewardEnsemble, train_reward_model
from webapp.feedback.selectors import label_count, preference_pairs, prompts_recent
from webapp.feedback.transfer import export_rows
from webapp.runs import services
from webapp.runs.artifacts import artifact_store, reward_model_local_path, version_local_path
from webapp.runs.models import TrainingRun
from webapp.runs.selectors import reward_model_list, run_get, version_serving
from worker.celery import app

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


@app.task(name="prefloop.train_policy", queue="gpu", acks_late=True, ignore_result=True)
def train_policy(run_id: int) -> None:
    """Train a new policy version (DPO, KTO or GRPO, after the run's kind), serve it, and record the run.

    Idempotent: a run that is already finished is left alone, so a redelivered message does no
    harm. Any error moves the run to FAILED with its text; the serving version stays as it was.
    """
    parent = version_serving()
    run = services.run_start(run_id=run_id, parent_version=parent)
    if run is None:
        logger.info("run %s is not active; nothing to do", run_id)
        return
    try:
        _train_and_serve(run_id=run_id, parent=parent)
    except Exception as exc:  # the run must never stay RUNNING: record why it failed
        logger.exception("run %s failed", run_id)
        services.run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")


def _progress_reporter(run_id: int) -> Callable[[dict[str, Any]], None]:
    """A training progress callback that records the run's progress and metrics, at most once a second."""
    last_report = [0.0]

    def progress(logs: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last_report[0] >= PROGRESS_EVERY_S or logs.get("fraction", 0) >= 1:
            last_report[0] = now
            services.run_progress(run_id=run_id, progress=float(logs.get("fraction", 0.0)), metrics=logs)

    return progress


class DeviceOptions(TypedDict):
    use_cpu: bool
    bf16: bool


def device_options() -> DeviceOptions:
    """The trainer configs' `use_cpu` and `bf16` for TRAIN_DEVICE: a visible CUDA GPU is used (in
    bfloat16 where it supports it) unless TRAIN_DEVICE=cpu."""
    import torch

    cuda = torch.cuda.is_available()
    if settings.TRAIN_DEVICE == "cuda" and not cuda:
        raise RuntimeError("TRAIN_DEVICE=cuda but no CUDA device is visible to this worker")
    use_cuda = cuda and settings.TRAIN_DEVICE != "cpu"
    return DeviceOptions(use_cpu=not use_cuda, bf16=use_cuda and torch.cuda.is_bf16_supported())


@dataclass
class _Update:
    """What one policy-update run trains on: a trainer (`train_dpo`, `train_kto`, `train_grpo`) and its
    data and config, called with the parent adapter, the output folder and a progress callback."""

    trainer: Callable[..., dict[str, Any]]
    data: dict[str, Any]  # the trainer's data and reward arguments (pairs=, examples=, prompts= + reward_fn=)
    config: Any
    records: list[dict[str, Any]]  # plain data, hashed into the version's data_hash
    n_examples: int
    notes: dict[str, Any] = field(default_factory=dict)  # added to the run's metrics

    def train(self, adapter: str, out: Path, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        metrics = self.trainer(
            base_model_path=settings.POLICY_BASE_MODEL,
            adapter_path=adapter,
            out_dir=out,
            config=self.config,
            progress=progress,
            **self.data,
        )
        return {**metrics, **self.notes}


def _dpo_update() -> _Update:
    rows = preference_pairs()
    if not rows:
        raise ValueError("no decisive pairwise labels yet (ties and 'both bad' carry no preference)")
    pairs = [
        PreferencePair(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], strength=r["strength"])
        for r in rows
    ]
    return _Update(train_dpo, {"pairs": pairs}, DPOTrainConfig(**device_options()), rows, len(pairs))


def _kto_update() -> _Update:
    """KTO from thumbs in the chat and from choices (the chosen answer liked, the other not)."""
    rows = list(export_rows(kind="kto"))
    examples = [
        ThumbExample(prompt=r["prompt"], completion=r["completion"][0]["content"], desirable=bool(r["label"]))
        for r in rows
        if r["completion"][0]["content"].strip()
    ]
    if not examples:
        raise ValueError("no thumbs or decisive choices yet for KTO")
    return _Update(train_kto, {"examples": examples}, KTOTrainConfig(**device_options()), rows, len(examples))


def _grpo_update() -> _Update:
    """GRPO on the newest prompts (chats and imports), rewarded (GRPO_REWARD) by the newest reward
    model's uncertainty-weighted score (mean - GRPO_UWO_LAMBDA * variance over its members), or by
    the follow-up likelihood of a frozen FOLLOWUP_MODEL (no labels needed)."""
    reward_model = None
    if settings.GRPO_REWARD == "reward_model":
        reward_model = reward_model_list().first()
        if reward_model is None:
            raise ValueError(
                "GRPO needs a reward model: train one first (dashboard or POST /api/runs/ kind=reward), "
                "or set GRPO_REWARD=followup"
            )
    prompts = prompts_recent(limit=settings.GRPO_PROMPTS)
    if not prompts:
        raise ValueError("no prompts yet for GRPO (chat, or import prompts)")
    if reward_model is None:
        scorer = FollowupScorer.from_pretrained(settings.FOLLOWUP_MODEL)
        reward_fn, source = followup_reward(scorer), {"reward": "followup", "followup_model": settings.FOLLOWUP_MODEL}
    else:
        root = Path(reward_model_local_path(reward_model))
        ensemble = RewardEnsemble.load([root / m for m in reward_model.member_paths])
        reward_fn = ensemble_reward(lambda p, c: ensemble.score(p, c)["members"], settings.GRPO_UWO_LAMBDA)
        source = {"reward": "reward_model", "reward_model": reward_model.name}
    config = GRPOTrainConfig(
        max_steps=settings.GRPO_MAX_STEPS or None,
        max_completion_length=settings.POLICY_MAX_TOKENS,
        **device_options(),
    )
    records = [{"prompt": p} for p in prompts] + [source]
    return _Update(train_grpo, {"prompts": prompts, "reward_fn": reward_fn}, config, records, len(prompts), source)


POLICY_UPDATES: dict[str, Callable[[], _Update]] = {
    TrainingRun.Kind.DPO: _dpo_update,
    TrainingRun.Kind.KTO: _kto_update,
    TrainingRun.Kind.GRPO: _grpo_update,
}


def _train_and_serve(*, run_id: int, parent: Any) -> None:
    if parent is None:
        raise RuntimeError("no serving policy version: run `manage.py prefloop_setup` first")
    run = run_get(run_id=run_id)
    services.run_record_data(run=run, n_labels=label_count(), n_pairs=0)
    update = POLICY_UPDATES[run.kind]()
    services.run_record_data(run=run, n_labels=run.n_labels, n_pairs=update.n_examples)
    store = artifact_store()
    name = f"run-{run_id}-{uuid.uuid4().hex[:8]}"
    with store.write_version(name) as folder:
        metrics = update.train(version_local_path(parent), folder, _progress_reporter(run_id))
        digest = data_hash(update.records)
        config = {"kind": run.kind, **asdict(update.config)}
        store.write_meta(
            folder,
            VersionMeta(
                name=name,
                parent=parent.name,
                kind="lora",
                base_model=settings.POLICY_BASE_MODEL,
                config=config,
                metrics=metrics,
                data_hash=digest,
            ),
        )
    version = services.version_register(
        artifact_path=store.version_uri(name),
        base_model=settings.POLICY_BASE_MODEL,
        parent=parent,
        config=config,
        metrics=metrics,
        data_hash=digest,
    )
    # Hot swap with no restart: the server loads the version under its own name, new requests
    # name it, and older adapters are unloaded.
    services.version_serve(version=version)
    services.run_succeed(run_id=run_id, version=version, metrics=metrics)
    logger.info("%s run %s served %s from %d examples", run.kind, run_id, version, update.n_examples)


@app.task(name="prefloop.train_reward", queue="gpu", acks_late=True, ignore_result=True)
def train_reward(run_id: int) -> None:
    """Train a reward model (or an ensemble) on every preference the labels express, score it on
    held-out pairs, and register it. Idempotent and failure-safe like `train_policy`."""
    run = services.run_start(run_id=run_id, parent_version=None)
    if run is None:
        logger.info("run %s is not active; nothing to do", run_id)
        return
    try:
        _train_reward(run_id=run_id)
    except Exception as exc:  # the run must never stay RUNNING: record why it failed
        logger.exception("run %s failed", run_id)
        services.run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")


HELD_OUT_EVERY = 5  # labels whose id is a multiple of this are held out for evaluation (>= 10 pairs)


def _train_reward(*, run_id: int) -> None:
    rows = preference_pairs()
    run = run_get(run_id=run_id)
    services.run_record_data(run=run, n_labels=label_count(), n_pairs=len(rows))
    if len(rows) < 2:
        raise ValueError(f"a reward model needs at least 2 preference pairs; the labels give {len(rows)}")
    examples = [
        PreferenceExample(
            prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], strength=r["strength"], group=r["annotator"]
        )
        for r in rows
    ]
    held_out = [r["label_id"] % HELD_OUT_EVERY == 0 for r in rows] if len(rows) >= 10 else [False] * len(rows)
    if all(held_out):  # keep something to train on
        held_out = [False] * len(rows)
    train = [e for e, out in zip(examples, held_out, strict=True) if not out]
    evaluate = [e for e, out in zip(examples, held_out, strict=True) if out]
    config = RewardConfig(
        backbone=settings.REWARD_BACKBONE,
        ensemble_size=settings.REWARD_ENSEMBLE_SIZE,
        ensemble_method=settings.REWARD_ENSEMBLE_METHOD,
        max_steps=settings.REWARD_MAX_STEPS or None,
        label_smoothing=settings.REWARD_LABEL_SMOOTHING,
        calibrate=settings.REWARD_CALIBRATE,
        **device_options(),
    )
    store = artifact_store()
    name = f"reward-{run_id}-{uuid.uuid4().hex[:8]}"
    with store.write_version(name) as folder:
        metrics = train_reward_model(train, folder, config, progress=_progress_reporter(run_id), eval_examples=evaluate)
        digest = data_hash(rows)
        members = [str(Path(p).relative_to(folder)) if Path(p) != folder else "" for p in metrics["member_paths"]]
        summary = {k: v for k, v in metrics.items() if k not in ("member_paths",)}
        summary["n_train_pairs"], summary["n_eval_pairs"] = len(train), len(evaluate)
        store.write_meta(
            folder,
            VersionMeta(
                name=name,
                parent=None,
                kind="reward",
                base_model=config.backbone,
                config=config.to_dict(),
                metrics=summary,
                data_hash=digest,
            ),
        )
    reward_model = services.reward_model_register(
        artifact_path=store.version_uri(name),
        backbone=config.backbone,
        member_paths=members,
        config=config.to_dict(),
        metrics=summary,
        data_hash=digest,
    )
    services.run_succeed(run_id=run_id, reward_model=reward_model, metrics=summary)
    logger.info("run %s made %s from %d pairs (%d held out)", run_id, reward_model, len(train), len(evaluate))


@app.task(name="prefloop.check_training_threshold", queue="cpu", ignore_result=True)
def check_training_threshold() -> None:
    """Scheduled by beat: queue a run when enough labels arrived (covers labels written without a
    submit hook, such as bulk imports)."""
    services.run_maybe_trigger()
