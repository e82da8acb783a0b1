"""The pipeline's second step: what each policy run kind trains on, built from the labels' snapshot.

`policy_update(kind, data, recipe, project)` returns an `Update`: the trainer (`train_dpo`,
`train_lipo`, `train_kto`, `train_grpo`), its data and config, the records hashed into the
version's `data_hash`, and the ids of the labels it sees. GRPO and online DPO score with the
project's serving reward model (`reward_model_serving`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from django.conf import settings

from training.device import Placement, placement
from training.dpo import DPOTrainConfig, PreferencePair, train_dpo
from training.followup import FollowupScorer
from training.grpo import GRPOTrainConfig, ensemble_reward, followup_reward, train_grpo
from training.kto import KTOTrainConfig, ThumbExample, train_kto
from training.launch import run_on_processes
from training.lipo import LiPOTrainConfig, RankedAnswers, train_lipo
from training.online import mix_by_share, pair_verdicts
from training.reward import RewardEnsemble
from webapp.feedback.models import Project
from webapp.feedback.selectors import prompts_recent
from webapp.runs.artifacts import reward_model_local_path
from webapp.runs.data import TrainingData
from webapp.runs.models import RewardModel, TrainingRun
from webapp.runs.recipe import Recipe
from webapp.runs.selectors import reward_model_serving, version_serving


class DeviceOptions(TypedDict):
    use_cpu: bool
    bf16: bool


def train_placement() -> Placement:
    """Where this worker's models run, from TRAIN_DEVICE (training.device.placement: a visible CUDA
    GPU, in bfloat16 where it supports it, unless TRAIN_DEVICE=cpu)."""
    try:
        return placement(settings.TRAIN_DEVICE)
    except RuntimeError as exc:  # name the setting an operator changes
        raise RuntimeError(f"TRAIN_DEVICE={settings.TRAIN_DEVICE} but {exc}") from None


def device_options() -> DeviceOptions:
    """The TRL trainer configs' `use_cpu` and `bf16` for this worker's placement."""
    where = train_placement()
    return DeviceOptions(use_cpu=where.use_cpu, bf16=where.bf16)


# The trainers that run on several processes: TRL's, whose Trainer is DDP through accelerate. LiPO's
# own loop and GRPO's reward function (a loaded model) stay in the worker's process.
DISTRIBUTED_TRAINERS = ("train_dpo", "train_kto")


@dataclass
class Update:
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

    @property
    def distributable(self) -> bool:
        """Whether its trainer runs on several processes (DISTRIBUTED_TRAINERS)."""
        return self.trainer.__name__ in DISTRIBUTED_TRAINERS

    def train(
        self,
        adapter: str,
        out: Path,
        progress: Callable[[dict[str, Any]], None],
        *,
        processes: int = 1,
        check: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Train from `adapter` into `out`, in this process or, with `processes` > 1, on that many
        under torchrun (training.launch: DDP, or FSDP2 with TRAIN_SHARDING=fsdp; `check` stops them
        all when it raises)."""
        kwargs = {"base_model_path": settings.POLICY_BASE_MODEL, "adapter_path": adapter, "out_dir": out,
                  "config": self.config, **self.data}  # fmt: skip
        if processes <= 1:
            return {**self.trainer(**kwargs, progress=progress), **self.notes}
        if not self.distributable:
            raise ValueError(
                f"{self.trainer.__name__} trains on one process; only DPO-family and KTO runs take "
                f"processes > 1 (the recipe's processes, or TRAIN_PROCESSES={settings.TRAIN_PROCESSES})"
            )
        kwargs["config"] = replace(self.config, sharding=settings.TRAIN_SHARDING)
        with tempfile.TemporaryDirectory(prefix="prefloop-processes-") as work:
            metrics = run_on_processes(
                f"{self.trainer.__module__}.{self.trainer.__name__}",
                kwargs,
                processes=processes,
                work_dir=work,
                progress=progress,
                check=check,
            )
        return {**metrics, **self.notes, "processes": processes}


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


def _dpo_update(data: TrainingData, recipe: Recipe) -> Update:
    """DPO (sigmoid), robust DPO (with ε) or IPO on the project's training pairs."""
    rows = data.pairs
    if not rows:
        hint = "; thumbs up or down train KTO: set the recipe's method to kto" if data.kto or data.thumbs else ""
        raise ValueError(
            "no decisive pairwise labels yet to train on (ties and 'both bad' carry no preference); "
            f"left out: {data.excluded or 'none'}{hint}"
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
    return Update(train_dpo, {"pairs": pairs}, config, rows, len(pairs), _pair_label_ids(rows))


def _lipo_update(data: TrainingData, recipe: Recipe) -> Update:
    """LiPO-λ on the project's rankings, each a list."""
    rows = data.rankings
    if not rows:
        raise ValueError("no rankings yet to train LiPO on (rank 2 or more different answers)")
    rankings = [
        RankedAnswers(prompt=r["prompt"], completions=r["completions"], ranks=r["ranks"], weight=r.get("weight", 1.0))
        for r in rows
    ]
    where = train_placement()
    config = LiPOTrainConfig(
        **_common(recipe, LiPOTrainConfig, epochs_field="epochs"), bf16=where.bf16, device=where.device
    )
    return Update(train_lipo, {"rankings": rankings}, config, rows, len(rankings), _pair_label_ids(rows))


def _kto_update(data: TrainingData, recipe: Recipe) -> Update:
    """KTO on what the labels say of single answers (training.examples: a choice's winner liked and
    loser disliked, "both bad" both disliked, a ranking's best and worst groups, a rewrite over its
    answer) and on the chat's thumbs."""
    rows = [*data.kto, *data.thumbs]
    examples = [
        ThumbExample(prompt=r["prompt"], completion=r["completion"], desirable=bool(r["desirable"]))
        for r in rows
        if r["completion"].strip()
    ]
    if not examples:
        raise ValueError("no thumbs, decisive choices, rankings or rewrites yet for KTO")
    config = KTOTrainConfig(max_steps=recipe.max_steps or None, **_common(recipe, KTOTrainConfig), **device_options())
    label_ids = sorted({int(r["label_id"]) for r in rows if "label_id" in r})
    return Update(train_kto, {"examples": examples}, config, rows, len(examples), label_ids)


def _wco_reward(score_fn: Callable[[Any, Any], Any]) -> Callable[..., list[float]]:
    """Worst-case optimisation: the lowest member's score."""

    def reward(prompts: list[list[dict[str, str]]], completions: list[str]) -> list[float]:
        members = score_fn(prompts, completions)
        return [min(float(m[i]) for m in members) for i in range(len(completions))]

    reward.__name__ = "wco_reward"
    return reward


def _grpo_update(data: TrainingData, recipe: Recipe, project: Project | None = None) -> Update:
    """GRPO on the project's newest prompts (never the gate's held-out ones), rewarded (GRPO_REWARD)
    by the project's serving reward model, as the recipe's uwo (mean - λ·variance) or wco (min) over
    its members, or by the follow-up likelihood of a frozen FOLLOWUP_MODEL (no labels needed)."""
    reward_model = None
    if settings.GRPO_REWARD == "reward_model":
        reward_model = reward_model_serving(project)
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
        scorer = FollowupScorer.from_pretrained(settings.FOLLOWUP_MODEL, device=train_placement().device)
        reward_fn, source = followup_reward(scorer), {"reward": "followup", "followup_model": settings.FOLLOWUP_MODEL}
    else:
        ensemble = load_ensemble(reward_model)
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
    return Update(train_grpo, {"prompts": prompts, "reward_fn": reward_fn}, config, records, len(prompts), [], source)


def _online_dpo_update(data: TrainingData, recipe: Recipe, project: Project) -> Update:
    """Online DPO: the serving version answers the project's newest prompts twice (never the gate's
    held-out ones); the project's reward ensemble labels the pairs its members agree on and the
    rest go to people as items of the queue (training.online); the update trains DPO on the
    ensemble's pairs mixed with people's labels by the recipe's `online_human_share`."""
    from webapp.feedback.generation import answers_for, items_for_people
    from webapp.feedback.models import Prompt

    reward_model = reward_model_serving(project)
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
        members = load_ensemble(reward_model).score(
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
    return Update(
        train_dpo, {"pairs": human + machine}, config, records, len(human) + len(machine), _pair_label_ids(human_rows),
        notes,
    )  # fmt: skip


def load_ensemble(reward_model: RewardModel) -> RewardEnsemble:
    root = Path(reward_model_local_path(reward_model))
    return RewardEnsemble.load([root / m for m in reward_model.member_paths], device=train_placement().device)


POLICY_UPDATES: dict[str, Callable[[TrainingData, Recipe, Project], Update]] = {
    TrainingRun.Kind.DPO: lambda data, recipe, project: _dpo_update(data, recipe),
    TrainingRun.Kind.LIPO: lambda data, recipe, project: _lipo_update(data, recipe),
    TrainingRun.Kind.KTO: lambda data, recipe, project: _kto_update(data, recipe),
    TrainingRun.Kind.GRPO: _grpo_update,
    TrainingRun.Kind.ONLINE_DPO: _online_dpo_update,
}


def policy_update(kind: str, data: TrainingData, recipe: Recipe, project: Project) -> Update:
    """What a policy run of `kind` trains on (ValueError, in words, when the labels give nothing)."""
    return POLICY_UPDATES[kind](data, recipe, project)
