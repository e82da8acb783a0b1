"""Kahneman-Tversky Optimisation of a LoRA adapter on thumbs up / thumbs down from the chat, with TRL.

A thumb is unpaired feedback: one answer to one prompt, marked desirable (thumbs up) or not
(thumbs down). KTO ("KTO: Model Alignment as Prospect Theoretic Optimization", Ethayarajh et
al. 2024) learns from such labels directly, without pairing answers, so every thumb a user
gives in the chat becomes a :class:`ThumbExample` and :func:`train_kto` trains the adapter of the
policy version that is serving now, exactly as :func:`training.dpo.train_dpo` does for pairs.

Everything here takes and returns plain data and paths; heavy libraries are imported inside
the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.adapters import (
    ProgressFn,
    check_folders,
    check_sharding,
    load_trainable_policy,
    progress_callback,
    save_trained,
    sharding_field,
    sharding_used,
    train_quietly,
    trainer_arguments,
)
from training.dpo import VALID_ROLES

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def check_prompt(prompt: Any, name: str = "prompt") -> list[dict[str, str]]:
    """Check that ``prompt`` is a non-empty chat ending with a non-empty user turn; return a copy.

    Raises ``ValueError`` naming ``name`` and the bad value otherwise.
    """
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{name} must be a non-empty list of chat messages, got {prompt!r}")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"{name}[{i}] must be a dict with exactly 'role' and 'content', got {message!r}")
        if message["role"] not in VALID_ROLES:
            raise ValueError(f"{name}[{i}] has role {message['role']!r}; expected one of {VALID_ROLES}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{name}[{i}] content must be a string, got {message['content']!r}")
    if prompt[-1]["role"] != "user":
        raise ValueError(f"the last message of {name} must be from the user, got role {prompt[-1]['role']!r}")
    if not prompt[-1]["content"].strip():
        raise ValueError(f"the last user message of {name} must not be empty, got {prompt[-1]['content']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


@dataclass
class ThumbExample:
    """One thumb from the chat: for ``prompt``, the answer ``completion`` was liked or disliked."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answer; the last one is the user's turn."}
    )
    completion: str = field(metadata={"help": "The assistant answer that was rated."})
    desirable: bool = field(metadata={"help": "True for thumbs up, False for thumbs down."})

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        if not isinstance(self.completion, str) or not self.completion.strip():
            raise ValueError(f"completion must be a non-empty string, got {self.completion!r}")
        if not isinstance(self.desirable, bool):
            raise ValueError(f"desirable must be True or False, got {self.desirable!r}")


def build_kto_records(examples: Iterable[ThumbExample]) -> list[dict[str, Any]]:
    """Turn thumbs into TRL's conversational unpaired-preference format, one record per thumb, in order.

    Each record is ``{"prompt": [messages...], "completion": [{"role": "assistant", "content": ...}],
    "label": bool}``; TRL renders prompt and answer with the tokenizer's chat template.
    """
    records = []
    for i, example in enumerate(examples):
        if not isinstance(example, ThumbExample):
            raise TypeError(f"examples[{i}] must be a ThumbExample, got {type(example).__name__}")
        records.append(
            {
                "prompt": [{"role": m["role"], "content": m["content"]} for m in example.prompt],
                "completion": [{"role": "assistant", "content": example.completion}],
                "label": example.desirable,
            }
        )
    return records


@dataclass
class KTOTrainConfig:
    """Settings for KTO on a LoRA adapter.

    The defaults mirror :class:`training.dpo.DPOTrainConfig` (β = 0.1, LoRA learning rate 2e-4
    with linear decay). KTO estimates its reference point (the KL term) from mismatched prompt /
    answer pairs inside each batch, so a batch holds at least 2 examples; batches of 4 or more
    give a steadier estimate.
    """

    beta: float = field(
        default=0.1,
        metadata={"help": "KTO β: how strongly the policy is kept near the reference (higher = closer)."},
    )
    loss_type: str = field(
        default="kto",
        metadata={
            "help": f"Loss: one of {KTO_LOSS_TYPES} ('apo_zero_unpaired' drops the KL reference point; use it when "
            "the liked answers are better than what the model says now)."
        },
    )
    desirable_weight: float = field(
        default=1.0, metadata={"help": "Weight of the thumbs-up losses (before balancing, see balance_weights)."}
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "Weight of the thumbs-down losses (before balancing, see balance_weights)."}
    )
    balance_weights: bool = field(
        default=True,
        metadata={
            "help": "Scale up the weight of the rarer label so that both labels carry the same total weight "
            "(KTO paper, eq. 8); off = use the weights as given."
        },
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the thumbs (ignored if max_steps)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "If set, train exactly this many optimiser steps instead of by epochs."}
    )
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Thumbs per forward pass; at least 2 for the 'kto' loss (its KL estimate)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimiser step."})
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Longest prompt + answer in tokens; longer ones are cut at the end, prompts this long dropped."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for the data order and training."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory on large models."}
    )
    sharding: str = sharding_field()
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU even if an accelerator is visible."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (for GPUs that support it)."})

    def __post_init__(self) -> None:
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} must be one of {KTO_LOSS_TYPES}")
        for name in ("beta", "learning_rate", "desirable_weight", "undesirable_weight", "num_train_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(f"max_steps={self.max_steps!r} must be None or a positive integer")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be >= 2 for loss_type='kto': "
                "its KL reference point is estimated from mismatched pairs within a batch"
            )
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 8:
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 8")
        if self.bf16 and self.use_cpu:
            raise ValueError("bf16=True needs use_cpu=False (bfloat16 mixed precision is for accelerators)")
        check_sharding(self.sharding)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for ``VersionMeta.config``."""
        return asdict(self)


def balanced_weights(n_desirable: int, n_undesirable: int, config: KTOTrainConfig) -> tuple[float, float]:
    """The (desirable, undesirable) loss weights to use for these label counts.

    With ``config.balance_weights`` the rarer label's weight is multiplied by the ratio of the
    counts, so that ``n_desirable * w_d == n_undesirable * w_u`` when the configured weights are
    equal (the lower end of the range the KTO paper recommends, eq. 8). With only one label
    present, or balancing off, the configured weights are returned unchanged.
    """
    w_d, w_u = float(config.desirable_weight), float(config.undesirable_weight)
    if not config.balance_weights or n_desirable == 0 or n_undesirable == 0:
        return w_d, w_u
    if n_desirable < n_undesirable:
        w_d *= n_undesirable / n_desirable
    elif n_undesirable < n_desirable:
        w_u *= n_desirable / n_undesirable
    return w_d, w_u


def train_kto(
    *,
    base_model_path: str | Path,
    adapter_path: str | Path,
    examples: Sequence[ThumbExample],
    out_dir: str | Path,
    config: KTOTrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train the adapter at ``adapter_path`` with KTO on ``examples``; save the result into ``out_dir``.

    The reference policy is the starting point itself (base model + the adapter at
    ``adapter_path``, frozen in TRL's "ref" adapter), as in :func:`training.dpo.train_dpo`. The
    thumbs are shuffled once (seeded) and then read in order: TRL's KL estimate pairs each prompt
    with the answer of its neighbour in the batch, so the order must stay fixed while training.

    ``progress``, if given, is called after every optimiser step with a dict holding ``step``,
    ``max_steps``, ``fraction`` and TRL's logged metrics (``loss``, ``kl``, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins`` when a batch holds both labels, ``logps/chosen``,
    ``learning_rate``, ...). An exception raised by ``progress`` stops training and propagates;
    nothing is saved then.

    Returns plain metrics: ``n_examples``, ``n_desirable``, ``n_undesirable``, ``n_examples_used``
    (after dropping prompts of ``max_length`` tokens or more), ``desirable_weight``,
    ``undesirable_weight`` (after balancing), ``steps``, ``first_loss``, ``final_loss``,
    ``final_kl``, ``final_rewards_chosen``, ``final_rewards_rejected``, ``train_seconds``.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("train_kto needs at least one thumb, got none")
    records = build_kto_records(examples)
    adapter_path, out = check_folders(adapter_path, out_dir)
    n_desirable = sum(1 for e in examples if e.desirable)
    n_undesirable = len(examples) - n_desirable
    w_desirable, w_undesirable = balanced_weights(n_desirable, n_undesirable, config)
    random.Random(config.seed).shuffle(records)

    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import KTOConfig, KTOTrainer

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
    model = load_trainable_policy(base_model_path, adapter_path, bf16=config.bf16)
    history: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="prefloop-kto-") as scratch:
        args = KTOConfig(
            output_dir=scratch,  # required by the Trainer; nothing is written there
            beta=config.beta,
            loss_type=config.loss_type,
            desirable_weight=w_desirable,
            undesirable_weight=w_undesirable,
            max_length=config.max_length,
            # The KL estimate pairs neighbours within a batch, so the order must not change
            # (TRL refuses anything else for the 'kto' loss). The records were shuffled above.
            train_sampling_strategy="sequential",
            **trainer_arguments(config),
        )
        # Reference model: as in train_dpo, TRL 1.16's KTOTrainer given a PeftModel with a trained
        # "default" adapter, no `peft_config` and no `ref_model` adds a frozen copy named "ref" and
        # computes the reference log-probs (and the KL reference point) under it, so pi_ref = the
        # policy that is serving now.
        trainer = KTOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            callbacks=[progress_callback(progress, history)],
        )
        prepared = trainer.train_dataset  # tokenised, prompts of max_length tokens or more dropped
        n_used = len(prepared) if isinstance(prepared, Dataset) else len(records)
        if n_used == 0:
            raise ValueError(
                f"every prompt is at least max_length={config.max_length} tokens long; nothing to train on"
            )
        seconds = train_quietly(trainer, model, reference=True)

    first, last = save_trained(trainer, out, history, "KTO")
    return {
        "n_examples": len(examples),
        "n_desirable": n_desirable,
        "n_undesirable": n_undesirable,
        "n_examples_used": n_used,
        "desirable_weight": w_desirable,
        "undesirable_weight": w_undesirable,
        "steps": int(trainer.state.global_step),
        "first_loss": first["loss"],
        "final_loss": last["loss"],
        "final_kl": last.get("kl"),
        "final_rewards_chosen": last.get("rewards/chosen"),
        "final_rewards_rejected": last.get("rewards/rejected"),
        "train_seconds": round(seconds, 3),
        "sharding": sharding_used(trainer),
    }
