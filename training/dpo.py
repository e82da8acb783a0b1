"""Direct Preference Optimisation of a LoRA adapter on pairwise human labels, with TRL.

The loop: the web app collects labelled pairs for a prompt (chat messages ending with a user
turn); ties are dropped and each remaining label becomes a :class:`PreferencePair`. A worker
then calls :func:`train_dpo` on the adapter of the policy version that is serving now and
writes the trained adapter as the next version. Version 1 is :func:`create_initial_adapter`:
a freshly initialised LoRA adapter, which is exactly the base model (peft sets ``lora_B = 0``).

Everything here takes and returns plain data and paths; heavy libraries are imported inside
the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.adapters import (
    ProgressFn,
    check_folders,
    check_sharding,
    load_base_model,
    load_trainable_policy,
    progress_callback,
    save_adapter,
    save_trained,
    sharding_field,
    sharding_used,
    train_quietly,
    trainer_arguments,
)

VALID_ROLES = ("system", "user", "assistant")
LOSS_TYPES = ("sigmoid", "robust", "ipo")
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class PreferencePair:
    """One human preference: for ``prompt``, answer ``chosen`` was preferred over ``rejected``."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answer; the last one is the user's turn."}
    )
    chosen: str = field(metadata={"help": "The preferred assistant answer."})
    rejected: str = field(metadata={"help": "The other assistant answer."})
    strength: int = field(
        default=1, metadata={"help": "How strongly the labeller preferred chosen: 1 (slightly) to 3 (clearly)."}
    )
    weight: float = field(
        default=1.0,
        metadata={"help": "How much this pair counts in the loss (e.g. its annotator's trust); 1 for all: plain DPO."},
    )

    def __post_init__(self) -> None:
        check_weight(self.weight)
        if not isinstance(self.prompt, list) or not self.prompt:
            raise ValueError(f"prompt must be a non-empty list of chat messages, got {self.prompt!r}")
        for i, message in enumerate(self.prompt):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise ValueError(f"prompt[{i}] must be a dict with exactly 'role' and 'content', got {message!r}")
            if message["role"] not in VALID_ROLES:
                raise ValueError(f"prompt[{i}] has role {message['role']!r}; expected one of {VALID_ROLES}")
            if not isinstance(message["content"], str):
                raise ValueError(f"prompt[{i}] content must be a string, got {message['content']!r}")
        if self.prompt[-1]["role"] != "user":
            raise ValueError(f"the last prompt message must be from the user, got role {self.prompt[-1]['role']!r}")
        if not self.prompt[-1]["content"].strip():
            raise ValueError(f"the last user message must not be empty, got {self.prompt[-1]['content']!r}")
        for name in ("chosen", "rejected"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.chosen == self.rejected:
            raise ValueError(f"chosen and rejected must differ, both are {self.chosen!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, int) or not 1 <= self.strength <= 3:
            raise ValueError(f"strength must be an integer from 1 to 3, got {self.strength!r}")


def check_weight(weight: Any) -> None:
    """A per-example loss weight is a finite number >= 0."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")


def build_dpo_records(pairs: Iterable[PreferencePair]) -> list[dict[str, Any]]:
    """Turn pairs into TRL's conversational preference format, one record per pair, in order.

    Each record is ``{"prompt": [messages...], "chosen": [{"role": "assistant", "content": ...}],
    "rejected": [{"role": "assistant", "content": ...}]}``; TRL renders prompt and answers with the
    tokenizer's chat template. Ties carry no preference and must be excluded by the caller before
    building pairs. ``strength`` is not part of the record: TRL's DPO loss has no margin. A pair's
    ``weight`` is added as ``"weight"`` when the pairs' weights differ (see :func:`train_dpo`).
    """
    pairs = list(pairs)
    weighted = len({getattr(p, "weight", 1.0) for p in pairs}) > 1
    records = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PreferencePair):
            raise TypeError(f"pairs[{i}] must be a PreferencePair, got {type(pair).__name__}")
        record: dict[str, Any] = {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in pair.prompt],
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        }
        if weighted:
            record["weight"] = float(pair.weight)
        records.append(record)
    return records


@dataclass
class DPOTrainConfig:
    """Settings for DPO on a LoRA adapter.

    The defaults make the tiny CPU model's adapter move visibly on 8 pairs in about a second (3
    epochs of batches of 2 = 12 steps; reward accuracy reaches 1 and the chosen-minus-rejected
    log-prob margin grows by about half a nat), and they stay ordinary for a real 0.5B-8B model with
    tens to hundreds of pairs per round: the usual β = 0.1, a LoRA learning rate of 2e-4 with linear
    decay, rank 8 / alpha 16 on the attention projections. For many pairs or large models lower the
    learning rate (5e-5) or the epochs; for a quicker visible effect on the tiny demo model raise it
    (1e-3).
    """

    beta: float = field(
        default=0.1,
        metadata={"help": "DPO β: how strongly the policy is kept near the reference (higher = closer)."},
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": f"DPO loss: one of {LOSS_TYPES} ('robust' tolerates flipped labels, 'ipo' is IPO)."},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "Robust DPO's ε, the assumed rate of flipped labels, in [0, 0.5); only for 'robust'."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the pairs (ignored if max_steps)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "If set, train exactly this many optimiser steps instead of by epochs."}
    )
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Pairs per forward pass."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimiser step."})
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Longest prompt + answer in tokens; longer ones are cut at the end, prompts this long dropped."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (used when creating the first adapter)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator; scale = alpha / r."})
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "LoRA dropout stored in the adapter config. TRL's DPO switches dropout off while training "
            "so that policy and reference log-probabilities are comparable."
        },
    )
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Module names that get LoRA (the attention projections; vLLM supports these)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for adapter initialisation, data order and training."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory on large models."}
    )
    sharding: str = sharding_field()
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU even if an accelerator is visible."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (for GPUs that support it)."})

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} must be one of {LOSS_TYPES}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta={self.beta!r} must be a positive number")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 0.5)")
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(
                f"label_smoothing={self.label_smoothing!r} only applies to loss_type='robust', "
                f"not {self.loss_type!r}; set it to 0"
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r} must be a positive number")
        if not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"num_train_epochs={self.num_train_epochs!r} must be positive")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
            raise ValueError(f"max_steps={self.max_steps!r} must be None or a positive integer")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 8:
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 8")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        if isinstance(self.target_modules, str):
            raise ValueError(f"target_modules must be a list of module names, not the string {self.target_modules!r}")
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"target_modules={self.target_modules!r} must be a non-empty list of module names")
        if "lm_head" in self.target_modules:
            raise ValueError(f"target_modules={self.target_modules!r}: TRL's DPO cannot train a LoRA on lm_head")
        if self.bf16 and self.use_cpu:
            raise ValueError("bf16=True needs use_cpu=False (bfloat16 mixed precision is for accelerators)")
        check_sharding(self.sharding)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for ``VersionMeta.config``."""
        return asdict(self)


def create_initial_adapter(base_model_path: str | Path, out_dir: str | Path, config: DPOTrainConfig) -> Path:
    """Save a fresh LoRA adapter for the base model into ``out_dir`` and return ``out_dir``.

    peft's default initialisation draws ``lora_A`` at random (seeded by ``config.seed``) and sets
    ``lora_B = 0``, so the adapter leaves the base model's outputs exactly unchanged.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    out = Path(out_dir)
    model = load_base_model(base_model_path, bf16=config.bf16)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora_config)
    return save_adapter(peft_model, out)


def _weighted_trainer_class():  # -> type[DPOTrainer]
    import torch
    from trl import DPOTrainer

    class WeightedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer with each example's loss multiplied by its ``weight`` column; it runs with
        one example per forward pass (see :func:`train_dpo`), so the product is exact."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            collate = self.data_collator

            def with_weights(examples: list[dict[str, Any]]) -> dict[str, Any]:
                batch = collate(examples)
                batch["weight"] = torch.tensor([float(e["weight"]) for e in examples])
                return batch

            self.data_collator = with_weights

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            columns: list[str] = list(self._signature_columns or [])
            if "weight" not in columns:
                self._signature_columns = [*columns, "weight"]  # type: ignore[assignment]  # declared None in transformers

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight")  # (batch,) with batch = 1
            if weight.numel() != 1:
                raise RuntimeError(f"weighted DPO runs one pair per forward pass, got {weight.numel()}")
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if return_outputs:
                loss, outputs = result
                return loss * weight.to(loss.device, loss.dtype).squeeze(), outputs
            return result * weight.to(result.device, result.dtype).squeeze()

    return WeightedDPOTrainer


def train_dpo(
    *,
    base_model_path: str | Path,
    adapter_path: str | Path,
    pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    config: DPOTrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train the adapter at ``adapter_path`` with DPO on ``pairs``; save the result into ``out_dir``.

    The reference policy is the starting point itself (base model + the adapter at
    ``adapter_path``, frozen), so each round is a KL-regularised step away from the policy that
    produced the labelled answers, not from the bare base model. The LoRA shape (rank, alpha,
    target modules) is the starting adapter's; ``config.lora_*`` only matter in
    :func:`create_initial_adapter`.

    ``progress``, if given, is called after every optimiser step with a dict holding ``step``,
    ``max_steps``, ``fraction`` and TRL's logged metrics (``loss``, ``rewards/margins``,
    ``rewards/accuracies``, ``rewards/chosen``, ``rewards/rejected``, ``learning_rate``, ...). An
    exception raised by ``progress`` stops training and propagates; nothing is saved then.

    Returns plain metrics: ``n_pairs``, ``n_pairs_used`` (after dropping prompts longer than
    ``max_length``), ``steps``, ``first_loss``, ``final_loss``, ``final_rewards_margins``,
    ``final_rewards_accuracies``, ``train_seconds``.

    Pairs whose ``weight`` differ train with a weighted loss, ``mean(w_i · loss_i)``: each pair goes
    through the model alone and the optimiser step accumulates the gradients of as many pairs as
    a batch holds, so the step's gradient is exactly that of the weighted batch loss. (TRL's DPO
    averages the batch's losses inside one function, with no per-example weight; its
    ``use_weighting`` is WPO's likelihood weighting, not a weight given by the caller.)
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair, got none (ties are not pairs)")
    records = build_dpo_records(pairs)
    adapter_path, out = check_folders(adapter_path, out_dir)

    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
    model = load_trainable_policy(base_model_path, adapter_path, bf16=config.bf16)
    history: list[dict[str, Any]] = []
    weighted = "weight" in records[0]
    arguments = trainer_arguments(config)
    if weighted:  # one pair per forward pass, the optimiser step over as many pairs as before
        arguments["gradient_accumulation_steps"] *= arguments["per_device_train_batch_size"]
        arguments["per_device_train_batch_size"] = 1

    with tempfile.TemporaryDirectory(prefix="prefloop-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,  # required by the Trainer; nothing is written there
            beta=config.beta,
            loss_type=[config.loss_type],
            label_smoothing=config.label_smoothing,
            max_length=config.max_length,
            **arguments,
        )
        # Reference: the starting adapter, frozen, as TRL's "ref" adapter (see adapters.check_reference_adapter).
        trainer = (_weighted_trainer_class() if weighted else DPOTrainer)(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            callbacks=[progress_callback(progress, history)],
        )
        prepared = trainer.train_dataset  # tokenised, with prompts of max_length tokens or more dropped
        n_used = len(prepared) if isinstance(prepared, Dataset) else len(records)
        if n_used == 0:
            raise ValueError(
                f"every prompt is at least max_length={config.max_length} tokens long; nothing to train on"
            )
        seconds = train_quietly(trainer, model, reference=True)

    first, last = save_trained(trainer, out, history, "DPO")
    return {
        "n_pairs": len(pairs),
        "n_pairs_used": n_used,
        "steps": int(trainer.state.global_step),
        "first_loss": first["loss"],
        "final_loss": last["loss"],
        "final_rewards_margins": last.get("rewards/margins"),
        "final_rewards_accuracies": last.get("rewards/accuracies"),
        "train_seconds": round(seconds, 3),
        "sharding": sharding_used(trainer),
    }
