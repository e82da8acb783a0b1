"""A project's training recipe: how its labels train the policy, and what a candidate must pass to serve.

Plain data with validation and no Django import, so the dashboard's form, the API and the worker
read one definition. A project stores only what differs from the defaults (``Project.recipe``);
`Recipe.from_dict` fills in the rest and reports every bad field at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace
from typing import Any

# The update method -> the run kind that carries it out.
METHODS: dict[str, str] = {
    "dpo": "dpo",
    "robust_dpo": "dpo",
    "ipo": "dpo",
    "lipo": "lipo",
    "kto": "kto",
    "grpo": "grpo",
    "online_dpo": "online_dpo",
}
METHOD_LABELS: dict[str, str] = {
    "dpo": "DPO (sigmoid loss)",
    "robust_dpo": "Robust DPO (noisy labels, with ε)",
    "ipo": "IPO",
    "lipo": "LiPO-λ (rankings as lists)",
    "kto": "KTO (thumbs and choices)",
    "grpo": "GRPO with the reward model",
    "online_dpo": "Online DPO (fresh pairs labelled by the reward ensemble)",
}
GRPO_SCORES = ("uwo", "wco")  # uncertainty-weighted (mean - λ·variance) or worst-case (min) over the ensemble
# raw labels (annotators under the trust floor left out); raw labels each weighted by its
# annotator's trust; one Dawid-Skene label per overlapped item; or raw labels, except that an item a
# reviewer adjudicated trains on the reviewer's final answer alone
LABEL_MODES = ("raw", "weighted", "aggregated", "adjudicated")
# the labels the starting version's lineage has not trained on, or every label
LABEL_SCOPES = ("new", "all")
GATE_CHECKS = ("heldout_accuracy", "win_rate", "kl")
TRAIN_FROM = ("serving", "first")  # where a policy run starts: the serving version, or the lineage's first
# non_inferiority: reject on evidence of worse, pass on enough evidence of not worse (webapp.runs.gate);
# threshold: each figure against its threshold, point for point
GATE_RULES = ("non_inferiority", "threshold")
# what a candidate no check could judge does: serve (shown as unchecked), wait for a person, or go to the arena
GATE_UNCHECKED = ("serve", "wait", "arena")


class RecipeError(ValueError):
    """Bad recipe fields; `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True)
class Recipe:
    method: str = field(default="dpo", metadata={"help": "The update method: " + ", ".join(METHODS) + "."})
    beta: float = field(
        default=0.0, metadata={"help": "β: how strongly the policy is kept near its reference; 0: the method's own."}
    )
    learning_rate: float = field(
        default=0.0, metadata={"help": "Peak learning rate of the LoRA weights; 0: the method's own."}
    )
    epochs: int = field(
        default=0, metadata={"help": "Passes over the training data (unless max_steps is set); 0: the method's own."}
    )
    max_steps: int = field(default=0, metadata={"help": "Optimiser steps per run; 0 trains by epochs."})
    processes: int = field(
        default=0,
        metadata={"help": "Processes a DPO-family or KTO run trains on (DDP, one per GPU); 0: TRAIN_PROCESSES."},
    )
    lora_rank: int = field(
        default=8, metadata={"help": "LoRA rank of the versions its runs write (a parent of another rank is resized)."}
    )
    robust_epsilon: float = field(
        default=0.1, metadata={"help": "Robust DPO's ε: the share of labels assumed flipped, in [0, 0.5)."}
    )
    grpo_score: str = field(default="uwo", metadata={"help": "GRPO's ensemble score: uwo (mean - λ·var) or wco (min)."})
    grpo_lambda: float = field(default=1.0, metadata={"help": "λ of the uwo score."})
    followup_margin: float = field(
        default=0.0,
        metadata={
            "help": "KTO in the chat's project: answers the user's next message scores above this train as liked, "
            "below minus it as disliked (0: follow-ups do not train)."
        },
    )
    online_prompts: int = field(
        default=32,
        metadata={"help": "Online DPO: prompts the serving version answers twice per run for the ensemble to label."},
    )
    online_human_share: float = field(
        default=0.5,
        metadata={
            "help": "Online DPO: the share of the training pairs that are people's labels, the rest labelled by "
            "the reward ensemble (0: the ensemble's only; 1: people's only)."
        },
    )
    reward_groups: int = field(
        default=0,
        metadata={
            "help": "Reward runs: look for up to this many groups of annotators who prefer differently (a mixture "
            "of Bradley-Terry models fitted by EM, the number chosen on held-out labels) and train one reward "
            "member per group; GRPO's wco score over them is then the maxmin objective (MaxMin-RLHF). 0 or 1: "
            "one population."
        },
    )
    auto_train_every: int = field(
        default=16, metadata={"help": "Queue a policy run after this many new labels of the project; 0: by hand."}
    )
    labels: str = field(
        default="raw",
        metadata={
            "help": "raw: each label as given; weighted: each label counts by its annotator's trust (2·trust - 1); "
            "aggregated: one Dawid-Skene label per item where overlap > 1."
        },
    )
    label_scope: str = field(
        default="all",
        metadata={
            "help": "new: train on the labels the starting version and its ancestors have not trained on (each "
            "label trains the lineage once); all: every label, every run."
        },
    )
    train_from: str = field(
        default="serving",
        metadata={
            "help": "Where a policy run starts: serving (the version serving now, its reference too) or first (the "
            "lineage's first version: each candidate is trained afresh on its labels, and serving versions only "
            "decide which answers people judge)."
        },
    )
    trust_floor: float = field(
        default=0.0, metadata={"help": "Leave out annotators whose trust score is below this (0 to 1)."}
    )
    held_out_share: float = field(
        default=0.2, metadata={"help": "Share of the labels never trained on, kept for the gate (0 to 0.5)."}
    )
    min_heldout_accuracy: float = field(
        default=0.5,
        metadata={"help": "Gate: the candidate's implicit reward must favour the chosen answer on this share."},
    )
    min_win_rate: float = field(
        default=0.5, metadata={"help": "Gate: the candidate's win rate over the serving version, judged by the RM."}
    )
    max_kl: float = field(default=5.0, metadata={"help": "Gate: the most KL (nats per answer) from the serving one."})
    required_checks: tuple[str, ...] = field(
        default=(), metadata={"help": "Checks that must run: a candidate waits rather than skip them."}
    )
    min_heldout_pairs: int = field(
        default=10, metadata={"help": "Held-out pairs needed before the accuracy check runs."}
    )
    gate_prompts: int = field(default=16, metadata={"help": "Held-out prompts answered for the win rate and KL."})
    gate_rule: str = field(
        default="non_inferiority",
        metadata={
            "help": "non_inferiority: a candidate is rejected when the evidence says it is worse than the serving "
            "version at gate_confidence, and a check passes only with enough data to catch one worse by gate_margin; "
            "threshold: each figure against its threshold, point for point."
        },
    )
    gate_confidence: float = field(
        default=0.95, metadata={"help": "Non-inferiority: the confidence of the one-sided tests (0.5 to 1)."}
    )
    gate_margin: float = field(
        default=0.15,
        metadata={
            "help": "Non-inferiority: how much worse (in accuracy or win rate) a candidate must be for a passing "
            "check to have caught it 80% of the time."
        },
    )
    gate_unchecked: str = field(
        default="serve",
        metadata={
            "help": "A candidate no check could judge (too few held-out labels, no reward model): serve it, shown "
            "as unchecked; wait (it stays a candidate for a person to promote); or arena (people compare it blind "
            "on arena_prompts prompts, 16 if 0)."
        },
    )
    arena_prompts: int = field(
        default=0,
        metadata={
            "help": "Gate: after the checks pass, people compare the candidate with the serving version blind on "
            "this many of the project's prompts; it serves when its arena interval is above the serving one's "
            "and is rejected when below (0: no arena gate)."
        },
    )

    def __post_init__(self) -> None:
        errors = _check(self)
        if errors:
            raise RecipeError(errors)

    @property
    def kind(self) -> str:
        """The run kind that carries out this recipe's method."""
        return METHODS[self.method]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, defaults: dict[str, Any] | None = None) -> Recipe:
        """A recipe from stored or posted data over `defaults`; unknown fields are an error."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = {name: "is not a recipe field" for name in sorted(set(data) - known)}
        merged = {**(defaults or {}), **data}
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            values[f.name] = f.default
            if f.name not in merged:
                continue
            try:
                values[f.name] = _coerce(f.name, merged[f.name], f.default)
            except (TypeError, ValueError) as exc:
                errors[f.name] = str(exc)
        # the fields that were read are checked too, so one answer names every bad field
        errors = {**_check(SimpleNamespace(**values)), **errors, **unknown}
        if errors:
            raise RecipeError(errors)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["required_checks"] = list(self.required_checks)
        return out


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name == "required_checks":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of check names")
        return tuple(str(v) for v in value)
    if isinstance(default, bool) or isinstance(value, bool):
        raise ValueError(f"must be a number or a name, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"must be a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number, got {value!r}") from None
    if isinstance(default, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ValueError(f"must be a name, got {value!r}")
    return value.strip()


def _check(r: Recipe | SimpleNamespace) -> dict[str, str]:
    errors: dict[str, str] = {}

    def need(ok: bool, name: str, message: str) -> None:
        if not ok and name not in errors:
            errors[name] = message

    need(r.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
    need(r.beta >= 0, "beta", "must be > 0, or 0 for the method's own")
    need(0 <= r.learning_rate <= 1, "learning_rate", "must be in (0, 1], or 0 for the method's own")
    need(0 <= r.epochs <= 100, "epochs", "must be from 1 to 100, or 0 for the method's own")
    need(0 <= r.max_steps <= 100_000, "max_steps", "must be from 0 (train by epochs) to 100000")
    need(0 <= r.processes <= 64, "processes", "must be from 0 (the worker's TRAIN_PROCESSES) to 64")
    need(
        r.processes <= 1 or METHODS.get(r.method) in ("dpo", "online_dpo", "kto"),
        "processes",
        "only DPO-family runs (online DPO too) and KTO runs train on several processes (LiPO and GRPO on one)",
    )
    from django.conf import settings

    top = settings.MAX_LORA_RANK  # what the policy server loads: vLLM's --max-lora-rank reads it too
    need(1 <= r.lora_rank <= top, "lora_rank", f"must be from 1 to {top} (MAX_LORA_RANK: what the policy server loads)")
    need(0 <= r.robust_epsilon < 0.5, "robust_epsilon", "must be in [0, 0.5)")
    need(r.method != "robust_dpo" or r.robust_epsilon > 0, "robust_epsilon", "robust DPO needs ε > 0")
    need(r.grpo_score in GRPO_SCORES, "grpo_score", f"must be one of {', '.join(GRPO_SCORES)}")
    need(r.grpo_lambda >= 0, "grpo_lambda", "must be >= 0")
    need(r.followup_margin >= 0, "followup_margin", "must be >= 0 (0: follow-ups do not train)")
    need(1 <= r.online_prompts <= 10_000, "online_prompts", "must be from 1 to 10000")
    need(0 <= r.online_human_share <= 1, "online_human_share", "must be from 0 to 1")
    need(0 <= r.reward_groups <= 8, "reward_groups", "must be from 0 (one population) to 8")
    need(0 <= r.auto_train_every <= 1_000_000, "auto_train_every", "must be >= 0 (0: only by hand)")
    need(r.labels in LABEL_MODES, "labels", f"must be one of {', '.join(LABEL_MODES)}")
    need(
        not (r.labels == "weighted" and r.method == "kto"),
        "labels",
        "KTO has no per-label weight here (its loss estimates a KL over each batch): use raw or aggregated",
    )
    need(r.label_scope in LABEL_SCOPES, "label_scope", f"must be one of {', '.join(LABEL_SCOPES)}")
    need(r.train_from in TRAIN_FROM, "train_from", f"must be one of {', '.join(TRAIN_FROM)}")
    need(
        r.train_from != "first" or r.label_scope == "all",
        "train_from",
        "first trains each candidate afresh from the first version, so it needs label_scope all",
    )
    need(0 <= r.trust_floor <= 1, "trust_floor", "must be from 0 to 1")
    need(0 <= r.held_out_share <= 0.5, "held_out_share", "must be from 0 to 0.5")
    need(0 <= r.min_heldout_accuracy <= 1, "min_heldout_accuracy", "must be from 0 to 1")
    need(0 <= r.min_win_rate <= 1, "min_win_rate", "must be from 0 to 1")
    need(r.max_kl > 0, "max_kl", "must be > 0")
    bad = [c for c in r.required_checks if c not in GATE_CHECKS]
    need(not bad, "required_checks", f"unknown check {', '.join(bad)}: use {', '.join(GATE_CHECKS)}")
    need(1 <= r.min_heldout_pairs <= 10_000, "min_heldout_pairs", "must be from 1 to 10000")
    need(1 <= r.gate_prompts <= 1_000, "gate_prompts", "must be from 1 to 1000")
    need(r.gate_rule in GATE_RULES, "gate_rule", f"must be one of {', '.join(GATE_RULES)}")
    need(0.5 < r.gate_confidence < 1, "gate_confidence", "must be between 0.5 and 1 (for example 0.95)")
    need(0 < r.gate_margin < 0.5, "gate_margin", "must be between 0 and 0.5 (for example 0.15)")
    need(r.gate_unchecked in GATE_UNCHECKED, "gate_unchecked", f"must be one of {', '.join(GATE_UNCHECKED)}")
    need(0 <= r.arena_prompts <= 1_000, "arena_prompts", "must be from 0 (no arena gate) to 1000")
    return errors


# Starting points for the dashboard's form: each sets only the fields it names.
PRESETS: dict[str, dict[str, Any]] = {
    "careful-dpo": {"method": "dpo", "beta": 0.1, "learning_rate": 1e-4, "epochs": 2, "min_heldout_accuracy": 0.55},
    "fast-dpo": {"method": "dpo", "beta": 0.1, "learning_rate": 1e-3, "epochs": 3},
    "noisy-crowd": {
        "method": "robust_dpo",
        "robust_epsilon": 0.2,
        "labels": "aggregated",
        "trust_floor": 0.5,
    },
    "rankings": {"method": "lipo", "beta": 0.1, "epochs": 3},
    "thumbs": {"method": "kto"},
    "reward-model": {"method": "grpo", "grpo_score": "uwo", "grpo_lambda": 1.0, "required_checks": ["win_rate"]},
    "online": {"method": "online_dpo", "online_prompts": 32, "online_human_share": 0.5},
    # MaxMin-RLHF: one reward member per group of annotators; GRPO raises the worst-off group's reward
    "maxmin": {"method": "grpo", "grpo_score": "wco", "reward_groups": 3, "required_checks": ["win_rate"]},
}
