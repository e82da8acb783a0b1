"""Group Relative Policy Optimisation of a LoRA adapter against any reward, with TRL.

GRPO ("DeepSeekMath", Shao et al. 2024) samples ``num_generations`` answers per prompt from the
policy, scores each with a reward function, and pushes up the answers that beat their group's
mean, with a KL penalty (``beta``) towards a reference policy. Here the policy is the adapter of
the version that is serving now and the reference is that same adapter, frozen (TRL's "ref"
adapter, as in :func:`training.dpo.train_dpo`), so each round stays close to the serving policy.

The reward is any callable ``reward_fn(prompts, completions) -> list[float]``, where ``prompts``
are chat message lists and ``completions`` the answers as plain strings. Two adapters build one
from the project's scorers:

* :func:`ensemble_reward`: a reward-model ensemble returning per-member scores becomes the
  uncertainty-weighted reward mean - λ·variance (Coste et al. 2023, "Reward Model Ensembles Help
  Mitigate Overoptimization");
* :func:`followup_reward`: the follow-up likelihood reward of :mod:`training.followup`.

Heavy libraries are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.adapters import (
    ProgressFn,
    check_folders,
    load_trainable_policy,
    progress_callback,
    save_trained,
    train_quietly,
    trainer_arguments,
)
from training.kto import check_prompt

if TYPE_CHECKING:
    from training.followup import FollowupScorer

GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")

RewardFn = Callable[[list[list[dict[str, str]]], list[str]], Sequence[float]]
"""``reward_fn(prompts, completions) -> one float per completion``; prompts are chat message lists."""

EnsembleScoreFn = Callable[[list[list[dict[str, str]]], list[str]], Any]
"""``score_fn(prompts, completions) -> scores`` of shape (members, batch): list of lists, array or tensor."""


@dataclass
class GRPOTrainConfig:
    """Settings for GRPO on a LoRA adapter.

    Each optimiser step sees ``per_device_train_batch_size * gradient_accumulation_steps``
    completions, i.e. that many divided by ``num_generations`` prompts. The defaults (2 prompts
    x 4 answers of up to 128 tokens, β = 0.04, learning rate 1e-5) are ordinary for a 0.5B-8B
    policy; the tiny CPU demo model needs fewer, shorter answers and a higher learning rate.
    """

    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient towards the reference (the starting adapter); 0 = no KL term, no reference."},
    )
    num_generations: int = field(default=4, metadata={"help": "Answers sampled per prompt (the group); at least 2."})
    max_completion_length: int = field(default=128, metadata={"help": "Longest sampled answer, in tokens."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts longer than this many tokens (chat template applied) are dropped."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the answers (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass of the answers, in (0, 1]."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the prompts (ignored if max_steps)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "If set, train exactly this many optimiser steps instead of by epochs."}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Completions per forward pass (prompts x generations)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimiser step."})
    num_iterations: int = field(
        default=1, metadata={"help": "Optimisation passes over each generated batch (GRPO's μ); > 1 reuses samples."}
    )
    epsilon: float = field(default=0.2, metadata={"help": "Clipping range of the policy ratio (PPO's ε)."})
    loss_type: str = field(
        default="dapo",
        metadata={
            "help": f"Token-loss aggregation: one of {GRPO_LOSS_TYPES} (TRL's default 'dapo' has no length bias)."
        },
    )
    scale_rewards: str = field(
        default="group",
        metadata={"help": f"Advantage scaling: one of {SCALE_REWARDS} ('none' = Dr. GRPO, no std normalisation)."},
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave answers cut at max_completion_length out of the loss (DAPO)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the prompt order, sampling and training."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory on large models."}
    )
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU even if an accelerator is visible."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (for GPUs that support it)."})

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta={self.beta!r} must be a number >= 0")
        for name in ("learning_rate", "temperature", "num_train_epochs", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1]")
        for name in (
            "num_generations",
            "max_completion_length",
            "max_prompt_length",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_iterations",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations} must be >= 2 (advantages compare a group)")
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if per_step % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps = {per_step} must be a multiple of "
                f"num_generations={self.num_generations} (each step holds whole groups)"
            )
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(f"max_steps={self.max_steps!r} must be None or a positive integer")
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} must be one of {GRPO_LOSS_TYPES}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards={self.scale_rewards!r} must be one of {SCALE_REWARDS}")
        if self.bf16 and self.use_cpu:
            raise ValueError("bf16=True needs use_cpu=False (bfloat16 mixed precision is for accelerators)")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for ``VersionMeta.config``."""
        return asdict(self)


def _completion_text(completion: Any) -> str:
    """The answer text of one TRL completion: a string, or a list of messages (conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"unexpected completion from TRL: {completion!r}")


def _trl_reward(reward_fn: RewardFn, name: str) -> Callable[..., list[float | None]]:
    """Wrap ``reward_fn(prompts, completions)`` in the keyword form TRL calls, with plain-text completions.

    The wrapper's ``__name__`` (TRL logs ``rewards/<name>/mean``) is ``name``. Non-finite rewards
    are refused: one NaN would silently zero the advantages of its whole group.
    """

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        texts = [_completion_text(c) for c in completions]
        values: list[float | None] = [float(v) for v in reward_fn(prompts, texts)]
        if len(values) != len(texts):
            raise ValueError(f"reward_fn returned {len(values)} rewards for {len(texts)} completions")
        bad = [v for v in values if v is None or not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward_fn returned non-finite rewards {bad[:3]}")
        return values

    reward.__name__ = name
    return reward


def ensemble_reward(score_fn: EnsembleScoreFn, lam: float) -> RewardFn:
    """Turn an ensemble scorer into the uncertainty-weighted reward ``mean - lam * variance``.

    ``score_fn(prompts, completions)`` returns one score per ensemble member and completion, shape
    ``(members, batch)``. The reward of a completion is the members' mean minus ``lam`` times
    their (population) variance, so answers the members disagree on are trusted less. The
    combination is :func:`training.losses.ensemble_score` with ``mode="uwo"`` when that module is
    present, else the same formula here.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam={lam!r} must be a number >= 0")

    def reward(prompts: list[list[dict[str, str]]], completions: list[str]) -> list[float]:
        import torch

        raw = score_fn(prompts, completions)
        # combined on the host: the scores are a few floats per answer
        scores = torch.as_tensor(raw.detach() if isinstance(raw, torch.Tensor) else raw, device="cpu").float()
        if scores.dim() != 2 or scores.shape[1] != len(completions) or scores.shape[0] < 1:
            raise ValueError(
                f"score_fn must return scores of shape (members, {len(completions)}), got {tuple(scores.shape)}"
            )
        return [float(v) for v in _uwo(scores, float(lam))]

    reward.__name__ = "ensemble_reward"
    return reward


def _uwo(scores: Any, lam: float) -> Any:  # scores: torch.Tensor (members, batch) -> (batch,)
    """Uncertainty-weighted optimisation: members' mean minus ``lam`` times their population variance."""
    try:
        from training.losses import ensemble_score
    except ImportError:
        return scores.mean(0) - lam * scores.var(0, unbiased=False)
    return ensemble_score(scores, mode="uwo", lam=lam).float().reshape(-1)


def followup_reward(scorer: FollowupScorer) -> RewardFn:
    """The follow-up likelihood reward of ``scorer``: log p(positive follow-up) - log p(negative follow-up).

    See :class:`training.followup.FollowupScorer`; its model is frozen and separate from the policy.
    """

    def reward(prompts: list[list[dict[str, str]]], completions: list[str]) -> list[float]:
        return scorer.score_batch(prompts, completions)

    reward.__name__ = "followup_reward"
    return reward


def _prompt_lengths(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[int]:
    """Token count of each prompt as the policy sees it (chat template with the generation prompt)."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def train_grpo(
    *,
    base_model_path: str | Path,
    adapter_path: str | Path,
    prompts: Sequence[list[dict[str, str]]],
    reward_fn: RewardFn,
    out_dir: str | Path,
    config: GRPOTrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train the adapter at ``adapter_path`` with GRPO on ``prompts`` and ``reward_fn``; save it into ``out_dir``.

    Answers are sampled in-process from the policy being trained (transformers ``generate``).
    The reference policy (for ``beta > 0``) is the starting point itself: base model + the
    adapter at ``adapter_path``, frozen in TRL's "ref" adapter.

    ``progress``, if given, is called after every optimiser step with a dict holding ``step``,
    ``max_steps``, ``fraction`` and TRL's logged metrics (``loss``, ``reward``, ``reward_std``,
    ``kl`` when ``beta > 0``, ``entropy``, ``completions/mean_length``, ``rewards/<name>/mean``,
    ``learning_rate``, ...). An exception raised by ``progress`` or ``reward_fn`` stops training
    and propagates; nothing is saved then.

    Returns plain metrics: ``n_prompts``, ``n_prompts_used`` (after dropping prompts longer than
    ``max_prompt_length``), ``steps``, ``first_reward``, ``final_reward``, ``mean_reward``,
    ``final_kl``, ``first_loss``, ``final_loss``, ``train_seconds``.
    """
    prompts = [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt, got none")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
    adapter_path, out = check_folders(adapter_path, out_dir)

    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path), padding_side="left")
    used = [
        p for p, n in zip(prompts, _prompt_lengths(tokenizer, prompts), strict=True) if n <= config.max_prompt_length
    ]
    if not used:
        raise ValueError(
            f"every prompt is longer than max_prompt_length={config.max_prompt_length} tokens; nothing to train on"
        )
    model = load_trainable_policy(base_model_path, adapter_path, bf16=config.bf16)
    history: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="prefloop-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,  # required by the Trainer; nothing is written there
            beta=config.beta,
            num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            temperature=config.temperature,
            top_p=config.top_p,
            num_iterations=config.num_iterations,
            epsilon=config.epsilon,
            loss_type=config.loss_type,
            scale_rewards=config.scale_rewards,
            mask_truncated_completions=config.mask_truncated_completions,
            **trainer_arguments(config),
        )
        # Reference model: with beta > 0, TRL 1.16's GRPOTrainer given a PeftModel with a trained
        # "default" adapter and no `peft_config` adds a frozen copy named "ref" and computes the
        # reference log-probs under it (see train_dpo): pi_ref = the policy that is serving now.
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[_trl_reward(reward_fn, "reward_fn")],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in used]),
            processing_class=tokenizer,
            callbacks=[progress_callback(progress, history)],
        )
        seconds = train_quietly(trainer, model, reference=config.beta > 0)

    first, last = save_trained(trainer, out, history, "GRPO")
    rewards = [h["reward"] for h in history if "reward" in h]
    return {
        "n_prompts": len(prompts),
        "n_prompts_used": len(used),
        "steps": int(trainer.state.global_step),
        "first_reward": first.get("reward"),
        "final_reward": last.get("reward"),
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "final_kl": last.get("kl"),
        "first_loss": first["loss"],
        "final_loss": last["loss"],
        "train_seconds": round(seconds, 3),
    }
