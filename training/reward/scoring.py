"""Scoring with trained reward models: one model (:class:`RewardScorer`, its inputs built exactly as in
training) and several combined (:class:`RewardEnsemble`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.reward.backbone import _load_scoring_model
from training.reward.config import REWARD_META_FILE
from training.reward.inputs import _encode, _layout, _quiet_transformers, _tokenizer_with_pad


class RewardScorer:
    """One trained reward model: scores (prompt, completion) inputs built exactly as in training."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int,
        min_context_tokens: int,
        batch_size: int = 16,
        temperature: float = 1.0,
    ) -> None:
        if isinstance(temperature, bool) or not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
        self.model = model.eval()
        self.temperature = temperature  # scores are the model's outputs divided by this (see fit_temperature)
        self.heads = int(getattr(model.config, "num_labels", 1))  # > 1 for a 'heads' ensemble
        self.tokenizer = tokenizer
        self.layout = _layout(tokenizer)
        self.max_length = max_length
        self.min_context_tokens = min_context_tokens
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 16, device: str = "cpu") -> RewardScorer:
        """Load a model saved by :func:`train_reward_model` onto ``device``."""
        path = Path(path)
        meta_file = path / REWARD_META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} has no {REWARD_META_FILE}; it was not saved by train_reward_model")
        meta = json.loads(meta_file.read_text())
        model = _load_scoring_model(
            str(path), pooling=meta.get("pooling", "model"), heads=int(meta.get("heads", 1))
        ).to(device)
        tokenizer = _tokenizer_with_pad(str(path))
        return cls(
            model,
            tokenizer,
            max_length=int(meta["max_length"]),
            min_context_tokens=int(meta["min_context_tokens"]),
            batch_size=batch_size,
            temperature=float(meta.get("temperature", 1.0)),
        )

    def score(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> list[float]:
        """One score per (prompt, completion), in order: the model's score, or for a model with
        several score heads the mean of its heads' scores."""
        per_head = self.score_heads(prompts, completions)
        return per_head[0] if len(per_head) == 1 else _column_means(per_head)

    def score_heads(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> list[list[float]]:
        """Each score head's scores of every (prompt, completion), ``(heads, inputs)``; one head for a
        plain reward model, divided by the model's temperature (1 unless it was calibrated). Batches are
        formed by length to pad little."""
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        with _quiet_transformers():
            encoded = [
                _encode(self.tokenizer, self.layout, list(p), c, self.max_length, self.min_context_tokens)
                for p, c in zip(prompts, completions, strict=True)
            ]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        scores = [[0.0] * len(encoded) for _ in range(self.heads)]  # (heads, inputs)
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                ids = [list(encoded[i][0]) for i in chunk]
                inputs = {
                    "input_ids": _padded(ids, pad, device),
                    "attention_mask": _padded([[1] * len(r) for r in ids], 0, device),
                }
                if self.layout.type_ids is not None:
                    types = [list(encoded[i][1] or []) for i in chunk]
                    inputs["token_type_ids"] = _padded(types, 0, device, length=max(map(len, ids)))
                logits = self.model(**inputs).logits.float().reshape(len(chunk), self.heads)  # (chunk, heads)
                for row, i in enumerate(chunk):
                    for k in range(self.heads):
                        scores[k][i] = float(logits[row, k]) / self.temperature
        return scores


class RewardEnsemble:
    """Several reward models scored together; one model is an ensemble of one, and each score head of
    a model with several (``ensemble_method="heads"``) counts as one member."""

    def __init__(self, members: Sequence[RewardScorer], *, lam: float = 1.0) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member, got none")
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam={lam!r} must be a finite number >= 0")
        self.members = list(members)
        self.lam = lam

    @classmethod
    def load(
        cls, paths: Sequence[str | Path], *, lam: float = 1.0, batch_size: int = 16, device: str = "cpu"
    ) -> RewardEnsemble:
        """Load the members saved at ``paths`` (each a folder written by :func:`train_reward_model`)."""
        if isinstance(paths, (str, Path)):
            raise TypeError(f"paths must be a list of folders, not the single path {paths!r}")
        return cls([RewardScorer.load(p, batch_size=batch_size, device=device) for p in paths], lam=lam)

    def score(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> dict[str, list[Any]]:
        """Scores of each (prompt, completion) pair, combined over the members.

        Returns ``{"mean", "std", "min", "uwo", "members"}``: the first four are lists with one
        value per input, from :func:`training.losses.ensemble_score` (``uwo`` = mean - lam x
        variance; ``std`` is the members' population standard deviation, 0 for one member);
        ``members`` holds each member's own scores (members x inputs), a model's score heads one
        after another.
        """
        import torch

        from training.losses import ensemble_score

        per_member = [head for member in self.members for head in member.score_heads(prompts, completions)]
        scores = torch.tensor(per_member, dtype=torch.float64, device="cpu")  # host floats: combined on the host
        scores = scores.reshape(len(per_member), len(completions))
        mean = ensemble_score(scores, mode="mean")
        return {
            "mean": mean.tolist(),
            "std": (mean - ensemble_score(scores, mode="std", lam=1.0)).tolist(),
            "min": ensemble_score(scores, mode="min").tolist(),
            "uwo": ensemble_score(scores, mode="uwo", lam=self.lam).tolist(),
            "members": per_member,
        }


def _padded(rows: list[list[int]], value: int, device: Any, length: int | None = None) -> Any:  # -> torch.Tensor
    """`rows` right-padded with `value` to `length` (the longest), one (rows, length) tensor built on `device`."""
    import torch

    length = max(map(len, rows)) if length is None else length
    return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long, device=device)


def _column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of each column of equally long ``rows`` (models or heads x inputs -> inputs)."""
    return [sum(column) / len(column) for column in zip(*rows, strict=True)]
