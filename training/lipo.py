"""Listwise policy updates with LiPO-λ (Liu et al. 2024), our own trainer: TRL has none.

A ranking of 2 to 9 answers trains the policy directly, instead of being cut into pairs: each
answer's implicit reward is β·(log π(y) - log π_ref(y)), and the LambdaRank-weighted pairwise
losses of `training.losses.lipo_lambda_loss` push the list into the human order. For a list of two
this is DPO.

The reference is the starting adapter (the serving version), as in DPO. It is frozen, so its
log-probabilities are computed once, before the first update, and reused: no second model and no
second adapter in memory.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.adapters import ProgressFn, check_folders, load_trainable_policy, save_adapter
from training.dpo import check_weight
from training.kto import check_prompt


@dataclass
class RankedAnswers:
    """One ranking: a chat context ending with a user turn, its answers, and their ranks."""

    prompt: list[dict[str, str]] = field(metadata={"help": "Chat messages ending with a user turn."})
    completions: list[str] = field(metadata={"help": "2 to 9 answers."})
    ranks: list[int] = field(metadata={"help": "One per answer: 0 = best; equal ranks are ties."})
    weight: float = field(
        default=1.0, metadata={"help": "How much this ranking counts in the loss (e.g. its annotator's trust)."}
    )

    def __post_init__(self) -> None:
        check_weight(self.weight)
        self.prompt = check_prompt(self.prompt)
        if not 2 <= len(self.completions) <= 9:
            raise ValueError(f"a ranking has 2 to 9 answers, got {len(self.completions)}")
        if len(self.ranks) != len(self.completions):
            raise ValueError(f"{len(self.ranks)} ranks for {len(self.completions)} answers")
        if any(not isinstance(r, int) or r < 0 for r in self.ranks):
            raise ValueError(f"ranks must be integers >= 0, got {self.ranks}")
        if len(set(self.ranks)) < 2:
            raise ValueError(f"every answer is tied ({self.ranks}): nothing to learn")


@dataclass
class LiPOTrainConfig:
    beta: float = field(default=0.1, metadata={"help": "Scale of the implicit reward, as in DPO."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate of the LoRA weights."})
    epochs: int = field(default=3, metadata={"help": "Passes over the rankings."})
    max_length: int = field(default=1024, metadata={"help": "Longest prompt plus answer, in tokens (longer: cut)."})
    seed: int = field(default=0, metadata={"help": "Seed of the order of the rankings."})
    bf16: bool = field(default=False, metadata={"help": "Load the base in bfloat16 (GPU)."})
    device: str = field(default="cpu", metadata={"help": "Where the model trains: cpu or cuda (training.device)."})

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} must be >= 8")


def sequence_logps(model, tokenizer, prompt: list[dict[str, str]], completions: Sequence[str], max_length: int):
    """Summed log-probabilities of each completion after the prompt, shape (n,), on the model's
    device (every tensor built here is put there: training.device)."""
    import torch

    from training.device import device_of

    device = device_of(model)
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows, starts = [], []
    for text in completions:
        answer = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        ids = (prefix_ids + answer)[-max_length:]  # cut the oldest context, never the answer's end
        rows.append(ids)
        starts.append(max(len(ids) - len(answer), 1))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # (n, width), right padded
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]  # (n, width-1, vocab)
    targets = input_ids[:, 1:]  # (n, width-1): token t+1 predicted at t
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    positions = torch.arange(targets.shape[1], device=device).unsqueeze(0)  # (1, width-1)
    lengths = torch.tensor([len(r) for r in rows], device=device).unsqueeze(1)
    first = torch.tensor(starts, device=device).unsqueeze(1) - 1  # the first answer token is predicted at start-1
    answer_mask = (positions >= first) & (positions < lengths - 1)
    return (token_logps * answer_mask).sum(dim=1)  # (n,)


def lipo_step_loss(model, tokenizer, ranking: RankedAnswers, reference, config: LiPOTrainConfig):
    """One ranking's LiPO-λ loss and its diagnostics, `reference` being the starting policy's
    log-probabilities of its answers; every tensor on the model's device."""
    import torch

    from training.device import device_of
    from training.losses import lipo_lambda_loss

    policy = sequence_logps(model, tokenizer, ranking.prompt, ranking.completions, config.max_length)
    ranks = torch.tensor([ranking.ranks], device=device_of(model))
    return lipo_lambda_loss(policy.unsqueeze(0), reference.unsqueeze(0), ranks, beta=config.beta)


def train_lipo(
    *,
    base_model_path: str | Path,
    adapter_path: str | Path,
    rankings: Sequence[RankedAnswers],
    out_dir: str | Path,
    config: LiPOTrainConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train the adapter on `rankings` with LiPO-λ and save it to `out_dir`; return plain metrics.

    One ranking per optimiser step; its loss is multiplied by its ``weight`` (the logged loss is not).
    """
    import torch
    from transformers import AutoTokenizer

    rankings = list(rankings)
    if not rankings:
        raise ValueError("train_lipo needs at least one ranking, got none")
    adapter, out = check_folders(adapter_path, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
    model = load_trainable_policy(base_model_path, adapter, bf16=config.bf16).to(config.device)
    model.eval()  # no dropout: policy and reference log-probs must be comparable
    with torch.no_grad():  # the reference is the starting policy: score it once, before any update
        ref = [sequence_logps(model, tokenizer, r.prompt, r.completions, config.max_length) for r in rankings]
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    order = list(range(len(rankings)))
    rng = random.Random(config.seed)
    history: list[dict[str, Any]] = []
    total, start = config.epochs * len(order), time.perf_counter()
    for epoch in range(config.epochs):
        rng.shuffle(order)
        for i in order:
            ranking = rankings[i]
            loss, diag = lipo_step_loss(model, tokenizer, ranking, ref[i], config)
            optimiser.zero_grad()
            (loss * ranking.weight).backward()  # a ranking's weight scales its step's gradient
            optimiser.step()
            step = len(history) + 1
            entry = {
                "step": step,
                "max_steps": total,
                "fraction": step / total,
                "epoch": epoch,
                "loss": float(loss.detach()),
            }
            entry.update({k: float(v) for k, v in diag.items()})
            history.append(entry)
            if progress is not None:
                progress(dict(entry))
    seconds = time.perf_counter() - start
    save_adapter(model, out)
    epoch_loss = [sum(h["loss"] for h in history if h["epoch"] == e) / len(order) for e in range(config.epochs)]
    return {
        "n_rankings": len(rankings),
        "steps": len(history),
        "first_epoch_loss": epoch_loss[0],
        "final_epoch_loss": epoch_loss[-1],
        "train_seconds": round(seconds, 3),
        "config": asdict(config),
    }
