"""Celery tasks: thin adapters that load rows by id, call `training`, and write through services."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict

from django.conf import settings

from training.active import item_disagreements
from training.adapters import adapter_rank, resize_adapter
from training.artifacts import VersionMeta, data_hash
from training.dpo import DPOTrainConfig, PreferencePair, train_dpo
from training.followup import FollowupScorer
from training.grpo import GRPOTrainConfig, ensemble_reward, followup_reward, train_grpo
from training.kto import KTOTrainConfig, ThumbExample, train_kto
from training.lipo import LiPOTrainConfig, RankedAnswers, train_lipo
from training.online import mix_by_share, pair_verdicts
from training.reward import (
    PreferenceExample,
    RankingExample,
    RewardConfig,
    RewardEnsemble,
    train_group_reward_models,
    train_reward_model,
)
from webapp.core.queue import broker_send
from webapp.feedback.models import Project
from webapp.feedback.selectors import prompts_recent
from webapp.feedback.services import project_default
from webapp.runs import services
from webapp.runs.arena import arena_gate_open, arena_gates_check
from webapp.runs.artifacts import artifact_store, reward_model_local_path, version_local_path
from webapp.runs.data import TrainingData, lineage_label_ids, training_data
from webapp.runs.groups import annotator_groups
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun
from webapp.runs.recipe import Recipe
from webapp.runs.selectors import reward_model_list, run_get, version_serving
from worker.celery import app

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


class RunCancelled(Exception):
    """An admin cancelled the run: training stops at its next step and keeps nothing half written."""


class RunGuard:
    """While a run trains: a heartbeat every RUN_HEARTBEAT_S from a thread of its own (long steps and
    evaluations included), the run's stage, and the cancel flag, which `check` turns into
    RunCancelled at the next step."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._stage: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def __enter__(self) -> RunGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        from django.db import connection

        try:
            while not self._stop.is_set():
                try:
                    if services.run_heartbeat(run_id=self.run_id, stage=self._stage):
                        self.cancelled.set()
                except Exception:  # a database hiccup must not kill the run; the next beat retries
                    logger.exception("heartbeat of run %s failed", self.run_id)
                self._stop.wait(settings.RUN_HEARTBEAT_S)
        finally:
            connection.close()

    def stage(self, stage: str) -> None:
        self._stage = stage
        if services.run_heartbeat(run_id=self.run_id, stage=stage):
            self.cancelled.set()
        self.check()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RunCancelled(f"run {self.run_id} was cancelled")


def _guarded(run_id: int, body: Callable[[RunGuard], None]) -> None:
    """Run `body` under a RunGuard: a cancel ends the run cancelled, any error ends it failed."""
    try:
        with RunGuard(run_id) as guard:
            body(guard)
    except RunCancelled:
        logger.info("run %s cancelled", run_id)
        services.run_cancelled(run_id=run_id)
    except Exception as exc:  # the run must never stay RUNNING: record why it failed
        logger.exception("run %s failed", run_id)
        services.run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")


@app.task(name="prefloop.train_policy", queue="gpu", acks_late=True, ignore_result=True)
def train_policy(run_id: int) -> None:
    """Train a candidate policy version (the run's kind: DPO, LiPO, KTO or GRPO) on its project's
    labels, evaluate it against the serving version, and promote it only if it passes the gate.

    Idempotent: a finished run, or one a live worker holds, is left alone, so a redelivered
    message does no harm. Any error moves the run to FAILED with its text; the serving version
    stays as it was.
    """
    parent = version_serving()
    run = services.run_start(run_id=run_id, parent_version=parent)
    if run is None:
        logger.info("run %s is not startable here; nothing to do", run_id)
        return
    _guarded(run_id, lambda guard: _train_and_serve(run_id=run_id, parent=parent, guard=guard))


def _progress_reporter(run_id: int, guard: RunGuard) -> Callable[[dict[str, Any]], None]:
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
    """What one policy-update run trains on: a trainer (`train_dpo`, `train_lipo`, `train_kto`,
    `train_grpo`) and its data and config, called with the parent adapter, the output folder and a
    progress callback."""

    trainer: Callable[..., dict[str, Any]]
    data: dict[str, Any]  # the trainer's data and reward arguments (pairs=, examples=, prompts= + reward_fn=)
    config: Any
    records: list[dict[str, Any]]  # plain data, hashed into the version's data_hash
    n_examples: int
    label_ids: list[int] = field(default_factory=list)  # the labels the trainer sees
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


def _common(recipe: Recipe, config_cls: type, *, epochs_field: str = "num_train_epochs") -> dict[str, Any]:
    """The recipe's β, learning rate and epochs where it sets them (non-zero); the trainer's own
    defaults where it leaves them at 0."""
    out: dict[str, Any] = {}
    if recipe.beta:
        out["beta"] = recipe.beta
    if recipe.learning_rate:
        out["learning_rate"] = recipe.learning_rate
    if recipe.epochs:
        out[epochs_field] = type(getattr(config_cls(), epochs_field))(recipe.epochs)
    return out


def _pair_label_ids(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r["label_id"]) for r in rows})


def _dpo_update(data: TrainingData, recipe: Recipe) -> _Update:
    """DPO (sigmoid), robust DPO (with ε) or IPO on the project's training pairs."""
    rows = data.pairs
    if not rows:
        raise ValueError(
            "no decisive pairwise labels yet to train on (ties and 'both bad' carry no preference); "
            f"left out: {data.excluded or 'none'}"
        )
    pairs = [
        PreferencePair(
            prompt=r["prompt"],
            chosen=r["chosen"],
            rejected=r["rejected"],
            strength=r["strength"],
            weight=r.get("weight", 1.0),
        )
        for r in rows
    ]
    loss = {"dpo": "sigmoid", "robust_dpo": "robust", "ipo": "ipo"}.get(recipe.method, "sigmoid")
    config = DPOTrainConfig(
        loss_type=loss,
        label_smoothing=recipe.robust_epsilon if loss == "robust" else 0.0,
        max_steps=recipe.max_steps or None,
        lora_r=recipe.lora_rank,
        **_common(recipe, DPOTrainConfig),
        **device_options(),
    )
    return _Update(train_dpo, {"pairs": pairs}, config, rows, len(pairs), _pair_label_ids(rows))


def _lipo_update(data: TrainingData, recipe: Recipe) -> _Update:
    """LiPO-λ on the project's rankings, each a list."""
    rows = data.rankings
    if not rows:
        raise ValueError("no rankings yet to train LiPO on (rank 2 or more different answers)")
    rankings = [
        RankedAnswers(prompt=r["prompt"], completions=r["completions"], ranks=r["ranks"], weight=r.get("weight", 1.0))
        for r in rows
    ]
    options = device_options()
    config = LiPOTrainConfig(**_common(recipe, LiPOTrainConfig, epochs_field="epochs"), bf16=options["bf16"])
    return _Update(train_lipo, {"rankings": rankings}, config, rows, len(rankings), _pair_label_ids(rows))


def _kto_update(data: TrainingData, recipe: Recipe) -> _Update:
    """KTO from thumbs in the chat and from choices (the chosen answer liked, the other not)."""
    rows = [
        {"prompt": r["prompt"], "completion": text, "desirable": desirable, "label_id": r["label_id"]}
        for r in data.pairs
        for text, desirable in ((r["chosen"], True), (r["rejected"], False))
    ] + data.thumbs
    examples = [
        ThumbExample(prompt=r["prompt"], completion=r["completion"], desirable=bool(r["desirable"]))
        for r in rows
        if r["completion"].strip()
    ]
    if not examples:
        raise ValueError("no thumbs or decisive choices yet for KTO")
    config = KTOTrainConfig(max_steps=recipe.max_steps or None, **_common(recipe, KTOTrainConfig), **device_options())
    label_ids = sorted({int(r["label_id"]) for r in rows if "label_id" in r})
    return _Update(train_kto, {"examples": examples}, config, rows, len(examples), label_ids)


def _wco_reward(score_fn: Callable[[Any, Any], Any]) -> Callable[..., list[float]]:
    """Worst-case optimisation: the lowest member's score."""

    def reward(prompts: list[list[dict[str, str]]], completions: list[str]) -> list[float]:
        members = score_fn(prompts, completions)
        return [min(float(m[i]) for m in members) for i in range(len(completions))]

    reward.__name__ = "wco_reward"
    return reward


def _grpo_update(data: TrainingData, recipe: Recipe, project: Project | None = None) -> _Update:
    """GRPO on the project's newest prompts (never the gate's held-out ones), rewarded (GRPO_REWARD)
    by the project's newest reward model, as the recipe's uwo (mean - λ·variance) or wco (min) over
    its members, or by the follow-up likelihood of a frozen FOLLOWUP_MODEL (no labels needed)."""
    reward_model = None
    if settings.GRPO_REWARD == "reward_model":
        reward_model = _project_reward_model(project)
        if reward_model is None:
            raise ValueError(
                "GRPO needs a reward model: train one first (dashboard or POST /api/runs/ kind=reward), "
                "or set GRPO_REWARD=followup"
            )
    held_out = {json.dumps(p, sort_keys=True) for p in data.held_out_prompts}
    prompts = [
        p for p in prompts_recent(limit=settings.GRPO_PROMPTS + len(held_out), project=project)
        if json.dumps(p, sort_keys=True) not in held_out
    ][: settings.GRPO_PROMPTS]  # fmt: skip
    if not prompts:
        raise ValueError("no prompts yet for GRPO (chat, or import prompts)")
    if reward_model is None:
        scorer = FollowupScorer.from_pretrained(settings.FOLLOWUP_MODEL)
        reward_fn, source = followup_reward(scorer), {"reward": "followup", "followup_model": settings.FOLLOWUP_MODEL}
    else:
        ensemble = _load_ensemble(reward_model)
        members = lambda p, c: ensemble.score(p, c)["members"]  # noqa: E731
        if recipe.grpo_score == "wco":
            reward_fn = _wco_reward(members)
        else:
            reward_fn = ensemble_reward(members, recipe.grpo_lambda)
        source = {"reward": "reward_model", "reward_model": reward_model.name, "score": recipe.grpo_score}
    config = GRPOTrainConfig(
        max_steps=(recipe.max_steps or settings.GRPO_MAX_STEPS) or None,
        max_completion_length=settings.POLICY_MAX_TOKENS,
        **_common(recipe, GRPOTrainConfig),
        **device_options(),
    )
    records = [{"prompt": p} for p in prompts] + [source]
    return _Update(train_grpo, {"prompts": prompts, "reward_fn": reward_fn}, config, records, len(prompts), [], source)


def _online_dpo_update(data: TrainingData, recipe: Recipe, project: Project) -> _Update:
    """Online DPO: the serving version answers the project's newest prompts twice (never the gate's
    held-out ones); the project's reward ensemble labels the pairs its members agree on and the
    rest go to people as items of the queue (training.online); the update trains DPO on the
    ensemble's pairs mixed with people's labels by the recipe's `online_human_share`."""
    from webapp.feedback.generation import answers_for, items_for_people
    from webapp.feedback.models import Prompt

    reward_model = _project_reward_model(project)
    if reward_model is None:
        raise ValueError("online DPO needs the project's reward model to label its pairs: train one first")
    serving = version_serving()
    if serving is None:
        raise ValueError("online DPO samples from the serving version, and none serves yet")
    held_out = {json.dumps(p, sort_keys=True) for p in data.held_out_prompts}
    newest = Prompt.objects.filter(project=project).order_by("-id")[: recipe.online_prompts + len(held_out)]
    prompts = [p for p in newest if json.dumps(p.messages, sort_keys=True) not in held_out][: recipe.online_prompts]
    if not prompts:
        raise ValueError("no prompts yet for online DPO (chat, or import prompts)")
    sampled = [(p, answers_for(p.messages, project=project, version=serving, k=2)) for p in prompts]
    sampled = [(p, texts) for p, texts in sampled if len(set(texts)) == 2]  # twins teach nothing
    machine: list[PreferencePair] = []
    unsure: list[tuple[Any, list[str], float]] = []
    if sampled:
        members = _load_ensemble(reward_model).score(
            [p.messages for p, _ in sampled for _ in (0, 1)], [t for _, texts in sampled for t in texts]
        )["members"]
        for (prompt, texts), (verdict, disagreement) in zip(sampled, pair_verdicts(members), strict=True):
            if verdict == 0:
                unsure.append((prompt, texts, disagreement))
                continue
            chosen, rejected = texts if verdict > 0 else texts[::-1]
            machine.append(PreferencePair(prompt=prompt.messages, chosen=chosen, rejected=rejected))
    sent = items_for_people(pairs=unsure, version=serving)
    human_rows, machine = mix_by_share(data.pairs, machine, recipe.online_human_share, seed=len(data.pairs))
    human = [
        PreferencePair(r["prompt"], r["chosen"], r["rejected"], strength=r["strength"], weight=r.get("weight", 1.0))
        for r in human_rows
    ]
    notes = {
        "reward_model": reward_model.name,
        "sampled": len(prompts),
        "reward_labelled": len(machine),
        "sent_to_people": sent,
        "human_pairs": len(human),
    }
    if not human and not machine:
        raise ValueError(f"online DPO found no pair to train on ({notes})")
    config = DPOTrainConfig(
        loss_type="sigmoid",
        max_steps=recipe.max_steps or None,
        lora_r=recipe.lora_rank,
        **_common(recipe, DPOTrainConfig),
        **device_options(),
    )
    records = [*human_rows, *({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in machine), notes]
    return _Update(
        train_dpo, {"pairs": human + machine}, config, records, len(human) + len(machine), _pair_label_ids(human_rows),
        notes,
    )  # fmt: skip


def _project_reward_model(project: Project | None) -> RewardModel | None:
    models = reward_model_list()
    if project is not None:
        models = models.filter(project=project)
    return models.first()


def _load_ensemble(reward_model: RewardModel) -> RewardEnsemble:
    root = Path(reward_model_local_path(reward_model))
    return RewardEnsemble.load([root / m for m in reward_model.member_paths])


POLICY_UPDATES: dict[str, Callable[[TrainingData, Recipe, Project], _Update]] = {
    TrainingRun.Kind.DPO: lambda data, recipe, project: _dpo_update(data, recipe),
    TrainingRun.Kind.LIPO: lambda data, recipe, project: _lipo_update(data, recipe),
    TrainingRun.Kind.KTO: lambda data, recipe, project: _kto_update(data, recipe),
    TrainingRun.Kind.GRPO: _grpo_update,
    TrainingRun.Kind.ONLINE_DPO: _online_dpo_update,
}


def _run_inputs(run: TrainingRun) -> tuple[Project, Recipe, TrainingData]:
    """The run's project, the recipe it was queued with, and what that recipe trains on (for a
    policy run, without the labels that already trained the starting version's lineage, when the
    recipe's label scope is "new")."""
    project = run.project or project_default()
    recipe = Recipe.from_dict(run.recipe or project.recipe, defaults=services.recipe_defaults())
    trained = lineage_label_ids(run.parent_version) if run.kind != TrainingRun.Kind.REWARD else set()
    return project, recipe, training_data(project=project, recipe=recipe, trained=trained)


def _train_and_serve(*, run_id: int, parent: ModelVersion | None, guard: RunGuard) -> None:
    if parent is None:
        raise RuntimeError("no serving policy version: run `manage.py prefloop_setup` first")
    clock = time.perf_counter()
    timings: dict[str, float] = {}  # seconds of each stage, in the run's metrics (bench/loop_latency.py)

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    run = run_get(run_id=run_id)
    project, recipe, data = _run_inputs(run)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=0, data=data.summary())
    update = POLICY_UPDATES[run.kind](data, recipe, project)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=update.n_examples)
    lap("data_s")
    store = artifact_store()
    name = f"run-{run_id}-{uuid.uuid4().hex[:8]}"
    with store.write_version(name) as folder, tempfile.TemporaryDirectory(prefix="resized-") as scratch:
        origin = parent
        while recipe.train_from == "first" and origin.parent is not None:  # the lineage's first version
            origin = origin.parent
        start = version_local_path(origin)
        if adapter_rank(start) != recipe.lora_rank:  # the recipe's rank: resize the parent's adapter, keeping ΔW
            start = str(resize_adapter(start, Path(scratch) / "adapter", recipe.lora_rank))
        metrics = update.train(start, folder, _progress_reporter(run_id, guard))
        lap("train_s")
        guard.check()  # a cancel during the last step: the folder is removed, nothing is registered
        digest = data_hash(update.records)
        config = {"kind": run.kind, "method": recipe.method, "trained_from": origin.name, **asdict(update.config)}
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
        label_ids=update.label_ids,
        project=project,
    )
    lap("save_s")
    gate = _gate_and_serve(version=version, project=project, recipe=recipe, data=data, guard=guard, timings=timings)
    services.run_succeed(run_id=run_id, version=version, metrics={**metrics, "gate": gate, "timings": timings})
    logger.info(
        "%s run %s made %s (%s) from %d examples", run.kind, run_id, version, gate["verdict"], update.n_examples
    )


def _gate_and_serve(
    *,
    version: ModelVersion,
    project: Project,
    recipe: Recipe,
    data: TrainingData,
    guard: RunGuard,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Evaluate the candidate against the version serving now; promote it if it passes. If another
    run promoted a version meanwhile, evaluate again against that one: never promote silently over
    a newer version. `timings` gets the seconds spent evaluating and swapping."""
    gate: dict[str, Any] = {}
    timings = timings if timings is not None else {}
    for _ in range(3):
        serving = version_serving()
        if serving is None:
            raise RuntimeError("no serving policy version to evaluate against")
        try:
            guard.stage(TrainingRun.Stage.EVALUATING)
            began = time.perf_counter()
            gate = evaluate_against(
                version=version, serving=serving, project=project, recipe=recipe, data=data, guard=guard
            )
            timings["evaluate_s"] = round(timings.get("evaluate_s", 0.0) + time.perf_counter() - began, 3)
        except RunCancelled:
            services.version_gate_record(
                version=version, gate={"verdict": "rejected", "reason": "its run was cancelled during the evaluation"}
            )
            raise
        unchecked = gate["verdict"] == "unchecked"  # no check could judge it: the recipe says what happens
        if (gate["verdict"] == "passed" and recipe.arena_prompts) or (unchecked and recipe.gate_unchecked == "arena"):
            gate = arena_gate_open(  # people decide, blind (webapp.runs.arena)
                version=version, serving=serving, project=project, prompts=recipe.arena_prompts or 16, gate=gate
            )
        version = services.version_gate_record(version=version, gate=gate)
        if not (gate["verdict"] == "passed" or (gate["verdict"] == "unchecked" and recipe.gate_unchecked == "serve")):
            return gate
        guard.stage(TrainingRun.Stage.SERVING)
        began = time.perf_counter()
        said = "passed the gate" if gate["verdict"] == "passed" else "served unchecked (the recipe's gate_unchecked)"
        try:
            services.version_serve(
                version=version, expected_serving=serving, reason=f"{said} against {serving}: {gate['reason']}"
            )
            timings["swap_s"] = round(time.perf_counter() - began, 3)
            return gate
        except services.ServingChanged as exc:
            logger.info("%s: %s", version, exc)
    raise RuntimeError(f"the serving version kept changing while {version} was evaluated; promote it by hand")


def evaluate_against(
    *,
    version: ModelVersion,
    serving: ModelVersion,
    project: Project,
    recipe: Recipe,
    data: TrainingData,
    guard: RunGuard | None = None,
) -> dict[str, Any]:
    """The gate's checks of candidate `version` against `serving`, on data the candidate never saw."""
    from training.gate import GateConfig, evaluate_candidate
    from webapp.runs.data import held_out_prompts
    from webapp.runs.gate import gate_judge

    skipped: dict[str, str] = {}
    pairs = data.held_out_pairs
    if len(pairs) < recipe.min_heldout_pairs:
        skipped["heldout_accuracy"] = f"{len(pairs)} held-out pairs, fewer than {recipe.min_heldout_pairs}"
        pairs = []
    prompts = held_out_prompts(project=project, data=data, limit=recipe.gate_prompts)
    if not prompts:
        skipped["kl"] = skipped["win_rate"] = "no held-out prompts"
    reward_model = _project_reward_model(project)
    score_members = None
    if reward_model is None:
        skipped.setdefault("win_rate", "the project has no reward model yet")
    elif prompts:
        ensemble = _load_ensemble(reward_model)
        score_members = lambda p, a: ensemble.score(p, a)["members"]  # noqa: E731
    options = device_options()
    figures = evaluate_candidate(
        base_model_path=settings.POLICY_BASE_MODEL,
        candidate_adapter=version_local_path(version),
        serving_adapter=version_local_path(serving),
        pairs=pairs,
        prompts=prompts,
        score_members=score_members,
        config=GateConfig(
            max_tokens=settings.POLICY_MAX_TOKENS, bf16=options["bf16"], device="cpu" if options["use_cpu"] else "cuda"
        ),
        should_stop=guard.check if guard is not None else None,
    )
    gate = gate_judge(figures, recipe, against=serving.name, skipped=skipped)
    if reward_model is not None and "win_rate" in figures:
        gate["reward_model"] = reward_model.name
        found = (reward_model.metrics or {}).get("groups") or {}
        if found.get("k", 1) >= 2:  # the members are groups of annotators: how each group would judge it
            gate["groups"] = [
                {"group": g, "annotators": group["annotators"], "win_rate": rate}
                for g, (group, rate) in enumerate(zip(found["groups"], figures["win_rate"]["per_member"], strict=True))
            ]
    return gate


@app.task(name="prefloop.train_reward", queue="gpu", acks_late=True, ignore_result=True)
def train_reward(run_id: int) -> None:
    """Train a reward model (or an ensemble) on every preference its project's labels express (pairs,
    ties, lists), score it on the held-out pairs, and register it. Idempotent and failure-safe like
    `train_policy`."""
    run = services.run_start(run_id=run_id, parent_version=None)
    if run is None:
        logger.info("run %s is not startable here; nothing to do", run_id)
        return
    _guarded(run_id, lambda guard: _train_reward(run_id=run_id, guard=guard))


def _reward_examples(
    data: TrainingData,
) -> tuple[list[PreferenceExample | RankingExample], list[PreferenceExample]]:
    """A reward run's training examples (pairs, ties and lists, each with its weight) and held-out pairs."""
    listed = {r["label_id"] for r in data.rankings}  # a ranking trains as its list, not as its pairs
    train: list[PreferenceExample | RankingExample] = [
        PreferenceExample(
            prompt=r["prompt"],
            chosen=r["chosen"],
            rejected=r["rejected"],
            strength=r["strength"],
            group=r["annotator"],
            weight=r.get("weight", 1.0),
        )
        for r in data.pairs
        if r["label_id"] not in listed
    ]
    train += [
        PreferenceExample(
            prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], tie=True, weight=r.get("weight", 1.0)
        )
        for r in data.ties
    ]
    train += [
        RankingExample(
            prompt=r["prompt"],
            completions=r["completions"],
            ranks=r["ranks"],
            group=r["annotator"],
            weight=r.get("weight", 1.0),
        )
        for r in data.rankings
    ]
    evaluate = [
        PreferenceExample(
            prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], strength=r["strength"], group=r["annotator"]
        )
        for r in data.held_out_pairs
    ]
    return train, evaluate


def _train_reward(*, run_id: int, guard: RunGuard) -> None:
    run = run_get(run_id=run_id)
    project, recipe, data = _run_inputs(run)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=len(data.pairs), data=data.summary())
    if len(data.pairs) + len(data.rankings) < 2:
        raise ValueError(
            f"a reward model needs at least 2 preference pairs; the labels give {len(data.pairs) + len(data.rankings)}"
        )
    train, evaluate = _reward_examples(data)
    config = RewardConfig(
        backbone=settings.REWARD_BACKBONE,
        ensemble_size=settings.REWARD_ENSEMBLE_SIZE,
        ensemble_method=settings.REWARD_ENSEMBLE_METHOD,
        max_steps=settings.REWARD_MAX_STEPS or None,
        label_smoothing=settings.REWARD_LABEL_SMOOTHING,
        length_robust=settings.REWARD_LENGTH_ROBUST,
        calibrate=settings.REWARD_CALIBRATE,
        **device_options(),
    )
    store = artifact_store()
    name = f"reward-{run_id}-{uuid.uuid4().hex[:8]}"
    groups = annotator_groups(pairs=data.pairs, max_k=recipe.reward_groups) if recipe.reward_groups >= 2 else None
    with store.write_version(name) as folder:
        if groups is not None and groups["k"] >= 2:  # one member per group of annotators (MaxMin-RLHF)
            members_of = [g["annotators"] for g in groups["groups"]]
            metrics = train_group_reward_models(
                train, folder, config, members_of, progress=_progress_reporter(run_id, guard), eval_examples=evaluate
            )
            for found, trained in zip(groups["groups"], metrics["groups"], strict=True):
                found.update(eval_accuracy=trained["eval_accuracy"], n_eval=trained["n_eval"])
            metrics["groups"] = groups
        else:
            metrics = train_reward_model(
                train, folder, config, progress=_progress_reporter(run_id, guard), eval_examples=evaluate
            )
            if groups is not None:
                metrics["groups"] = groups
        guard.check()
        digest = data_hash([*data.pairs, *data.ties, *data.rankings])
        members = [str(Path(p).relative_to(folder)) if Path(p) != folder else "" for p in metrics["member_paths"]]
        summary = {k: v for k, v in metrics.items() if k not in ("member_paths",)}
        summary["n_train_pairs"], summary["n_eval_pairs"] = len(train), len(evaluate)
        summary["n_ties"], summary["n_lists"] = len(data.ties), len(data.rankings)
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
        project=project,
    )
    services.run_succeed(run_id=run_id, reward_model=reward_model, metrics=summary)
    logger.info("run %s made %s from %d examples (%d held out)", run_id, reward_model, len(train), len(evaluate))
    if project.queue_order == Project.QueueOrder.UNCERTAINTY:
        broker_send("prefloop.rescore_queue", args=[project.pk], queue="generate")


def disagreement_scorer(project: Project | None) -> Callable[[list[Any], list[list[str]]], list[float]] | None:
    """How much a label of each item would teach (training.active): the disagreement of the
    project's latest reward model's members; None without one (every item then ranks the same)."""
    reward_model = _project_reward_model(project)
    if reward_model is None:
        return None
    ensemble = _load_ensemble(reward_model)

    def score(contexts: list[Any], answers: list[list[str]]) -> list[float]:
        prompts = [context for context, texts in zip(contexts, answers, strict=True) for _ in texts]
        members = ensemble.score(prompts, [text for texts in answers for text in texts])["members"]
        return item_disagreements(members, [len(texts) for texts in answers])

    return score


@app.task(name="prefloop.generate", queue="generate", acks_late=True, ignore_result=True)
def generate(job_id: int) -> None:
    """Answer a project's prompts with the serving version (webapp.feedback.generation), each item
    ranked by the reward ensemble's disagreement on it."""
    from webapp.feedback.generation import generation_job_run

    project = Project.objects.filter(generation_jobs=job_id).first()
    needs_score = project is not None and project.queue_order == Project.QueueOrder.UNCERTAINTY
    job = generation_job_run(job_id=job_id, score=disagreement_scorer(project) if needs_score else None)
    if job is not None:
        logger.info("generation %s: %s, %d items from %d prompts", job_id, job.status, job.tasks_created,
                    job.prompts_total)  # fmt: skip


@app.task(name="prefloop.rescore_queue", queue="generate", ignore_result=True)
def rescore_queue(project_id: int) -> None:
    """After a new reward model: rank the project's open items again by its members' disagreement."""
    from webapp.feedback.generation import queue_rescore

    project = Project.objects.filter(pk=project_id).first()
    score = disagreement_scorer(project)
    if project is not None and score is not None:
        logger.info("queue of %s ranked again: %d items", project, queue_rescore(project=project, score=score))


@lru_cache(maxsize=1)
def _followup_scorer(model: str) -> FollowupScorer:
    return FollowupScorer.from_pretrained(model)


@app.task(name="prefloop.score_followups", queue="cpu", ignore_result=True)
def score_followups() -> None:
    """Score the chat's answers the user replied to by that reply (webapp.feedback.followups), with
    FOLLOWUP_MODEL, 64 at a time until none is left."""
    from webapp.feedback.followups import followup_scores_store, followups_unscored

    if not settings.FOLLOWUP_SCORE:
        return
    after: int | None = 0
    while after is not None:
        pending, after = followups_unscored(after=after, limit=64)
        if not pending:
            continue
        scores = _followup_scorer(settings.FOLLOWUP_MODEL).score_replies(
            [(context, answer.content, reply) for answer, context, reply in pending]
        )
        followup_scores_store({answer.pk: score for (answer, _, _), score in zip(pending, scores, strict=True)})
        logger.info("scored %d answers by the user's next message", len(pending))


@app.task(name="prefloop.import_feedback", queue="cpu", acks_late=True, ignore_result=True)
def import_feedback(job_id: int) -> None:
    """Import an uploaded feedback file (webapp.feedback.transfer.import_job_run)."""
    from webapp.feedback.transfer import import_job_run

    job = import_job_run(job_id=job_id)
    if job is not None:
        logger.info("import %s: %s, %d items, %d bad lines", job_id, job.status, job.items, job.bad_lines)


@app.task(name="prefloop.reap_runs", queue="cpu", ignore_result=True)
def reap_runs() -> None:
    """Scheduled by beat: fail runs whose worker was lost, send queued runs, imports and generation
    jobs the broker never took, queue again generation jobs whose worker was lost, and decide the
    candidates waiting on the arena."""
    from webapp.feedback.generation import generation_jobs_resend
    from webapp.feedback.transfer import import_jobs_resend

    services.runs_reap()
    import_jobs_resend(older_than_s=settings.RUN_RESEND_S)
    generation_jobs_resend(older_than_s=settings.RUN_RESEND_S)
    decided = arena_gates_check()
    if decided["served"] or decided["rejected"]:
        logger.info("arena gate: served %s, rejected %s", decided["served"], decided["rejected"])


@app.task(name="prefloop.check_training_threshold", queue="cpu", ignore_result=True)
def check_training_threshold() -> None:
    """Scheduled by beat: queue a run when enough labels arrived (covers labels written without a
    submit hook, such as bulk imports)."""
    services.run_maybe_trigger()
