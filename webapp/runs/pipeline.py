"""The loop in one place: what a training run does, step by step, as the worker calls it.

A policy run (`policy_run`):

1. `run_inputs`: snapshot the project's labels through the recipe the run was queued with
   (webapp.runs.data: held-out share, trust, label scope).
2. `policy_update`: build what the run kind trains on (webapp.runs.updates: pairs, lists,
   thumbs, prompts with a reward).
3. `candidate_train`: train from the serving version (or the lineage's first) into a folder of
   the artifact store, and write its metadata.
4. `candidate_register`: register the folder as a candidate version with the labels it saw.
5. `gate_and_serve`: the gate's checks against the serving version (`evaluate_against`,
   webapp.runs.gate), the arena where the recipe asks for it, then promote or reject; the policy
   server swaps to the promoted version on its next request (webapp.runs.policy), with no restart.

A reward run (`reward_run`): the same snapshot, `reward_examples`, `reward_train` (one model, an
ensemble, or a member per group of annotators), registration as a candidate, then
`reward_gate_and_serve`: it serves its project only if it is not worse than the serving reward
model on the held-out labels (accuracy and calibration, the length rule beside them).

Each step is a plain function; `worker.tasks` only calls `policy_run` and `reward_run` with a
run's id, under the run's guard (webapp.runs.guard: heartbeat, stage, cancel).
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from training.active import item_disagreements
from training.adapters import adapter_rank, resize_adapter
from training.artifacts import VersionMeta, data_hash
from training.reward import (
    PreferenceExample,
    RankingExample,
    RewardConfig,
    train_group_reward_models,
    train_reward_model,
)
from webapp.core.queue import broker_send
from webapp.feedback.models import Project
from webapp.feedback.projects import project_default
from webapp.runs import services
from webapp.runs.arena import arena_gate_open
from webapp.runs.artifacts import artifact_store, version_local_path
from webapp.runs.data import TrainingData, lineage_label_ids, training_data
from webapp.runs.gate import reward_gate_judge
from webapp.runs.groups import annotator_groups
from webapp.runs.guard import RunCancelled, RunGuard, progress_reporter
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun
from webapp.runs.recipe import Recipe
from webapp.runs.selectors import reward_model_serving, run_get, version_serving
from webapp.runs.updates import Update, device_options, load_ensemble, policy_update, train_placement

logger = logging.getLogger(__name__)


# -- 1. the snapshot --------------------------------------------------------------------------------


def run_inputs(run: TrainingRun) -> tuple[Project, Recipe, TrainingData]:
    """The run's project, the recipe it was queued with, and what that recipe trains on (for a
    policy run, without the labels that already trained the starting version's lineage, when the
    recipe's label scope is "new")."""
    project = run.project or project_default()
    recipe = Recipe.from_dict(run.recipe or project.recipe, defaults=services.recipe_defaults())
    trained = lineage_label_ids(run.parent_version) if run.kind != TrainingRun.Kind.REWARD else set()
    return project, recipe, training_data(project=project, recipe=recipe, trained=trained)


# -- 3. and 4. the candidate ------------------------------------------------------------------------


@dataclass
class Candidate:
    """A trained candidate's folder name in the artifact store, and what its metadata says."""

    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    data_hash: str


def candidate_train(
    *, run: TrainingRun, parent: ModelVersion, update: Update, recipe: Recipe, guard: RunGuard
) -> Candidate:
    """Train `update` from `parent` (or, with `train_from: first`, from the lineage's first version)
    at the recipe's adapter rank, into a new folder of the artifact store with its metadata. A cancel
    during training removes the folder: nothing half written is kept."""
    store = artifact_store()
    name = f"run-{run.pk}-{uuid.uuid4().hex[:8]}"
    with store.write_version(name) as folder, tempfile.TemporaryDirectory(prefix="resized-") as scratch:
        origin = parent
        while recipe.train_from == "first" and origin.parent is not None:
            origin = origin.parent
        start = version_local_path(origin)
        if adapter_rank(start) != recipe.lora_rank:  # the recipe's rank: resize the parent's adapter, keeping ΔW
            start = str(resize_adapter(start, Path(scratch) / "adapter", recipe.lora_rank))
        # the worker's TRAIN_PROCESSES is for the runs that can use it; a recipe's is checked already
        processes = recipe.processes or (settings.TRAIN_PROCESSES if update.distributable else 1)
        metrics = update.train(start, folder, progress_reporter(run.pk, guard), processes=processes, check=guard.check)
        guard.check()  # a cancel during the last step: the folder is removed, nothing is registered
        digest = data_hash(update.records)
        config = {"kind": run.kind, "method": recipe.method, "trained_from": origin.name, **asdict(update.config)}
        meta = VersionMeta(
            name=name,
            parent=parent.name,
            kind="lora",
            base_model=settings.POLICY_BASE_MODEL,
            config=config,
            metrics=metrics,
            data_hash=digest,
        )
        store.write_meta(folder, meta)
    return Candidate(name=name, config=config, metrics=metrics, data_hash=digest)


def candidate_register(*, candidate: Candidate, parent: ModelVersion, update: Update, project: Project) -> ModelVersion:
    """The trained folder as a candidate version, with the labels that trained it."""
    return services.version_register(
        artifact_path=artifact_store().version_uri(candidate.name),
        base_model=settings.POLICY_BASE_MODEL,
        parent=parent,
        config=candidate.config,
        metrics=candidate.metrics,
        data_hash=candidate.data_hash,
        label_ids=update.label_ids,
        project=project,
    )


# -- 5. the gate and the swap -----------------------------------------------------------------------


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
    reward_model = reward_model_serving(project)
    score_members = None
    if reward_model is None:
        skipped.setdefault("win_rate", "the project has no reward model yet")
    elif prompts:
        ensemble = load_ensemble(reward_model)
        score_members = lambda p, a: ensemble.score(p, a)["members"]  # noqa: E731
    where = train_placement()
    figures = evaluate_candidate(
        base_model_path=settings.POLICY_BASE_MODEL,
        candidate_adapter=version_local_path(version),
        serving_adapter=version_local_path(serving),
        pairs=pairs,
        prompts=prompts,
        score_members=score_members,
        config=GateConfig(max_tokens=settings.POLICY_MAX_TOKENS, bf16=where.bf16, device=where.device),
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


def gate_and_serve(
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


# -- a policy run, whole ----------------------------------------------------------------------------


def policy_run(*, run_id: int, parent: ModelVersion | None, guard: RunGuard) -> None:
    """Steps 1 to 5 for a started policy run; the run succeeds with its version and the gate's verdict."""
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
    project, recipe, data = run_inputs(run)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=0, data=data.summary())
    update = policy_update(run.kind, data, recipe, project)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=update.n_examples)
    lap("data_s")
    candidate = candidate_train(run=run, parent=parent, update=update, recipe=recipe, guard=guard)
    lap("train_s")
    version = candidate_register(candidate=candidate, parent=parent, update=update, project=project)
    lap("save_s")
    gate = gate_and_serve(version=version, project=project, recipe=recipe, data=data, guard=guard, timings=timings)
    metrics = {**candidate.metrics, "gate": gate, "timings": timings}
    services.run_succeed(run_id=run_id, version=version, metrics=metrics)
    logger.info(
        "%s run %s made %s (%s) from %d examples", run.kind, run_id, version, gate["verdict"], update.n_examples
    )


# -- a reward run -----------------------------------------------------------------------------------


def reward_examples(
    data: TrainingData,
) -> tuple[list[PreferenceExample | RankingExample], list[PreferenceExample]]:
    """A reward run's training examples (pairs, ties and lists, each with its weight) and held-out pairs."""

    def pair(r: dict[str, Any], **how: Any) -> PreferenceExample:
        return PreferenceExample(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"], **how)

    listed = {r["label_id"] for r in data.rankings}  # a ranking trains as its list, not as its pairs
    train: list[PreferenceExample | RankingExample] = [
        pair(r, strength=r["strength"], group=r["annotator"], weight=r.get("weight", 1.0))
        for r in data.pairs
        if r["label_id"] not in listed
    ]
    train += [pair(r, tie=True, weight=r.get("weight", 1.0)) for r in data.ties]
    train += [
        RankingExample(prompt=r["prompt"], completions=r["completions"], ranks=r["ranks"], group=r["annotator"],
                       weight=r.get("weight", 1.0))
        for r in data.rankings
    ]  # fmt: skip
    evaluate = [pair(r, strength=r["strength"], group=r["annotator"]) for r in data.held_out_pairs]
    return train, evaluate


def reward_config() -> RewardConfig:
    """The reward runs' settings (REWARD_*) on this worker's device."""
    return RewardConfig(
        backbone=settings.REWARD_BACKBONE,
        ensemble_size=settings.REWARD_ENSEMBLE_SIZE,
        ensemble_method=settings.REWARD_ENSEMBLE_METHOD,
        max_steps=settings.REWARD_MAX_STEPS or None,
        label_smoothing=settings.REWARD_LABEL_SMOOTHING,
        length_robust=settings.REWARD_LENGTH_ROBUST,
        calibrate=settings.REWARD_CALIBRATE,
        **device_options(),
    )


def reward_train(
    *, run_id: int, data: TrainingData, recipe: Recipe, config: RewardConfig, guard: RunGuard
) -> tuple[str, list[str], dict[str, Any], str]:
    """Train the reward model (a member per group of annotators where the recipe's `reward_groups`
    finds two or more) into a new folder of the artifact store: its name, member paths, summary and
    data hash."""
    train, evaluate = reward_examples(data)
    store = artifact_store()
    name = f"reward-{run_id}-{uuid.uuid4().hex[:8]}"
    groups = annotator_groups(pairs=data.pairs, max_k=recipe.reward_groups) if recipe.reward_groups >= 2 else None
    progress = progress_reporter(run_id, guard)
    with store.write_version(name) as folder:
        if groups is not None and groups["k"] >= 2:  # one member per group of annotators (MaxMin-RLHF)
            members_of = [g["annotators"] for g in groups["groups"]]
            metrics = train_group_reward_models(train, folder, config, members_of, progress=progress,
                                                eval_examples=evaluate)  # fmt: skip
            for found, trained in zip(groups["groups"], metrics["groups"], strict=True):
                found.update(eval_accuracy=trained["eval_accuracy"], n_eval=trained["n_eval"])
            metrics["groups"] = groups
        else:
            metrics = train_reward_model(train, folder, config, progress=progress, eval_examples=evaluate)
            if groups is not None:
                metrics["groups"] = groups
        guard.check()
        digest = data_hash([*data.pairs, *data.ties, *data.rankings])
        members = [str(Path(p).relative_to(folder)) if Path(p) != folder else "" for p in metrics["member_paths"]]
        summary = {k: v for k, v in metrics.items() if k not in ("member_paths",)}
        summary["n_train_pairs"], summary["n_eval_pairs"] = len(train), len(evaluate)
        summary["n_ties"], summary["n_lists"] = len(data.ties), len(data.rankings)
        meta = VersionMeta(
            name=name,
            parent=None,
            kind="reward",
            base_model=config.backbone,
            config=config.to_dict(),
            metrics=summary,
            data_hash=digest,
        )
        store.write_meta(folder, meta)
    return name, members, summary, digest


def reward_run(*, run_id: int, guard: RunGuard) -> None:
    """Snapshot, examples, training and registration for a started reward run."""
    run = run_get(run_id=run_id)
    project, recipe, data = run_inputs(run)
    services.run_record_data(run=run, n_labels=data.n_labels, n_pairs=len(data.pairs), data=data.summary())
    if len(data.pairs) + len(data.rankings) < 2:
        raise ValueError(
            f"a reward model needs at least 2 preference pairs; the labels give {len(data.pairs) + len(data.rankings)}"
        )
    config = reward_config()
    name, members, summary, digest = reward_train(run_id=run_id, data=data, recipe=recipe, config=config, guard=guard)
    reward_model = services.reward_model_register(
        artifact_path=artifact_store().version_uri(name),
        backbone=config.backbone,
        member_paths=members,
        config=config.to_dict(),
        metrics=summary,
        data_hash=digest,
        project=project,
    )
    guard.stage(TrainingRun.Stage.EVALUATING)
    gate = reward_gate_and_serve(reward_model=reward_model, project=project, recipe=recipe, data=data)
    services.run_succeed(run_id=run_id, reward_model=reward_model, metrics={**summary, "gate": gate})
    logger.info("run %s made %s (%s) from %d examples (%d held out)", run_id, reward_model, gate["verdict"],
                summary["n_train_pairs"], summary["n_eval_pairs"])  # fmt: skip
    reward_model.refresh_from_db()
    if reward_model.status == RewardModel.Status.SERVING and project.queue_order == Project.QueueOrder.UNCERTAINTY:
        broker_send("prefloop.rescore_queue", args=[project.pk], queue="generate")


def reward_margins(reward_model: RewardModel, pairs: list[dict[str, Any]]) -> list[float]:
    """s(chosen) - s(rejected) under `reward_model` (its members' mean) for each pair."""
    if not pairs:
        return []
    ensemble = load_ensemble(reward_model)
    prompts = [r["prompt"] for r in pairs]
    chosen = ensemble.score(prompts, [r["chosen"] for r in pairs])["mean"]
    rejected = ensemble.score(prompts, [r["rejected"] for r in pairs])["mean"]
    return [float(c) - float(r) for c, r in zip(chosen, rejected, strict=True)]


def reward_gate_and_serve(
    *, reward_model: RewardModel, project: Project, recipe: Recipe, data: TrainingData
) -> dict[str, Any]:
    """The reward gate (webapp.runs.gate.reward_gate_judge): the candidate against the project's
    serving reward model on the held-out pairs neither trained on. It serves when it passes (or is
    unchecked and the recipe's `gate_unchecked` is `serve`); a rejected one changes nothing."""
    serving = reward_model_serving(project)
    pairs = data.held_out_pairs
    words = [(len(r["chosen"].split()), len(r["rejected"].split())) for r in pairs]
    gate = reward_gate_judge(
        candidate=reward_margins(reward_model, pairs),
        serving=reward_margins(serving, pairs) if serving is not None else None,
        longer_chosen=[None if c == r else c > r for c, r in words],
        recipe=recipe,
        against=serving.name if serving is not None else "none",
    )
    reward_model = services.reward_model_gate_record(reward_model=reward_model, gate=gate)
    unchecked_serves = gate["verdict"] == "unchecked" and recipe.gate_unchecked == "serve"
    if gate["verdict"] == "passed" or unchecked_serves:
        said = "passed the reward gate" if gate["verdict"] == "passed" else "served unchecked (gate_unchecked)"
        services.reward_model_serve(reward_model=reward_model, reason=f"{said}: {gate['reason']}")
    return gate


# -- the queue's use of the reward model ------------------------------------------------------------


def disagreement_scorer(project: Project | None) -> Callable[[list[Any], list[list[str]]], list[float]] | None:
    """How much a label of each item would teach (training.active): the disagreement of the
    project's serving reward model's members; None without one (every item then ranks the same)."""
    reward_model = reward_model_serving(project)
    if reward_model is None:
        return None
    ensemble = load_ensemble(reward_model)

    def score(contexts: list[Any], answers: list[list[str]]) -> list[float]:
        prompts = [context for context, texts in zip(contexts, answers, strict=True) for _ in texts]
        members = ensemble.score(prompts, [text for texts in answers for text in texts])["members"]
        return item_disagreements(members, [len(texts) for texts in answers])

    return score
