"""Model inputs, built the same way for training and scoring: the layout of a (context, reply) input
for each tokenizer, tokenisation with truncation (the context cut from the left, the reply kept: see
:mod:`training.reward`), one training row per example, and the collation of rows into batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.reward.config import RewardConfig
from training.reward.examples import Example, PreferenceExample

if TYPE_CHECKING:
    from torch import Tensor

# Role names for backbones without a chat template (encoders, base LMs): "User: ...", "Assistant: ...".
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class _Layout:
    """How one (context, reply) input is laid out for a tokenizer, found once per tokenizer."""

    chat_template: bool  # render with the tokenizer's chat template (else "User: ..." plain text)
    prefix: list[int]  # special tokens before the context, e.g. [CLS]
    middle: list[int]  # between context and reply, e.g. [SEP]
    suffix: list[int]  # after the reply, e.g. [SEP]
    type_ids: tuple[list[int], list[int]] | None  # token types of (prefix + context + middle, reply + suffix)

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _find(haystack: list[int], needle: list[int], start: int = 0) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def _layout(tokenizer) -> _Layout:
    """Probe ``tokenizer`` for its pair layout.

    A chat template already writes every special token into the text, so chat models get none
    added. Otherwise the tokenizer's own sentence-pair layout is used (``[CLS] a [SEP] b [SEP]``
    with token types 0/1 for BERT-like encoders, a BOS or nothing for base LMs): it is read off
    an encoded probe pair, so truncation can work on token ids and add the special tokens after.
    """
    if getattr(tokenizer, "chat_template", None):
        return _Layout(True, [], [], [], None)
    probe_a, probe_b = "first words", "second words"
    a = tokenizer(probe_a, add_special_tokens=False)["input_ids"]
    b = tokenizer(probe_b, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(probe_a, probe_b, add_special_tokens=True)
    ids = list(encoded["input_ids"])
    i = _find(ids, a)
    j = _find(ids, b, i + len(a)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ValueError(f"cannot find the layout of a sentence pair for tokenizer {type(tokenizer).__name__}")
    prefix, middle, suffix = ids[:i], ids[i + len(a) : j], ids[j + len(b) :]
    type_ids = None
    if "token_type_ids" in encoded and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        types = list(encoded["token_type_ids"])
        type_ids = ([types[0]], [types[j]])  # one type for the first segment, one for the second
    return _Layout(False, prefix, middle, suffix, type_ids)


def _render(tokenizer, layout: _Layout, prompt: list[dict[str, str]], completion: str) -> tuple[str, str]:
    """The input as (context text, reply text); the reply text holds everything after the shared context."""
    if layout.chat_template:
        context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
        cut = 0
        while cut < min(len(context), len(full)) and context[cut] == full[cut]:
            cut += 1
        return full[:cut], full[cut:]
    turns = [f"{ROLE_LABELS[m['role']]}: {m['content']}" for m in prompt]
    return "\n\n".join([*turns, "Assistant:"]), " " + completion


def _encode(
    tokenizer, layout: _Layout, prompt: list[dict[str, str]], completion: str, max_length: int, min_context_tokens: int
) -> tuple[list[int], list[int] | None, bool]:
    """Token ids (and token types, if the model uses them) of one input, at most ``max_length`` long.

    Returns ``(input_ids, token_type_ids or None, truncated)``. See :mod:`training.reward` for why
    the context is cut from the left and the reply is kept.
    """
    context_text, reply_text = _render(tokenizer, layout, prompt, completion)
    context = tokenizer(context_text, add_special_tokens=False)["input_ids"]
    reply = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    budget = max_length - layout.n_special
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room next to {layout.n_special} special tokens")
    truncated = len(context) + len(reply) > budget
    # A reply may use all the room but the last min_context_tokens (or half, for tiny max_length).
    reserve = min(len(context), min_context_tokens, budget // 2)
    if len(reply) > budget - reserve:
        reply = reply[: budget - reserve]  # the end of a very long reply goes; its beginning differs and stays
    keep = budget - len(reply)
    context = context[len(context) - keep :] if 0 < keep < len(context) else (context if keep > 0 else [])
    ids = [*layout.prefix, *context, *layout.middle, *reply, *layout.suffix]
    types = None
    if layout.type_ids is not None:
        first, second = layout.type_ids
        n_first = len(layout.prefix) + len(context) + len(layout.middle)
        types = first * n_first + second * (len(reply) + len(layout.suffix))
    return ids, types, truncated


def encode_input(
    tokenizer, prompt: list[dict[str, str]], completion: str, *, max_length: int, min_context_tokens: int = 64
) -> dict[str, Any]:
    """The model input for one (prompt, completion), exactly as training and scoring build it.

    Returns ``{"input_ids", "token_type_ids" (None unless the model uses token types), "truncated"}``;
    at most ``max_length`` tokens, the context cut from the left (see :mod:`training.reward`).
    """
    ids, types, truncated = _encode(tokenizer, _layout(tokenizer), prompt, completion, max_length, min_context_tokens)
    return {"input_ids": ids, "token_type_ids": types, "truncated": truncated}


def _tokenizer_with_pad(path: str):  # -> PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer at {path} has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' expected warnings: the new score head of a backbone, and "sequence longer
    than the model's maximum" while a whole conversation is tokenised before it is truncated here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _rows(
    examples: Sequence[Example], tokenizer, layout: _Layout, config: RewardConfig
) -> tuple[list[dict[str, Any]], int]:
    """One training row per example: token ids of every answer, ranks, margin, tie flag and weight."""
    rows, n_truncated = [], 0
    for example in examples:
        if isinstance(example, PreferenceExample):
            texts, ranks = [example.chosen, example.rejected], [0, 0] if example.tie else [0, 1]
            margin, tie = (0.0 if example.tie else config.margin(example.strength)), example.tie
        else:
            texts, ranks, margin, tie = list(example.completions), list(example.ranks), 0.0, False
        ids, types = [], []
        for text in texts:
            input_ids, type_ids, truncated = _encode(
                tokenizer, layout, example.prompt, text, config.max_length, config.min_context_tokens
            )
            ids.append(input_ids)
            types.append(type_ids or [])
            n_truncated += truncated
        row: dict[str, Any] = {
            "completion_ids": ids,
            "ranks": ranks,
            "margin": float(margin),
            "tie": tie,
            "weight": float(example.weight),
            "length": sum(len(i) for i in ids),  # for group_by_length
            "answer_lengths": [answer_length(text) for text in texts],  # for RewardConfig.length_robust
        }
        if layout.type_ids is not None:
            row["completion_type_ids"] = types
        rows.append(row)
    return rows, n_truncated


def answer_length(text: str) -> float:
    """The length feature the length expert sees: log(1 + the answer's words), a scale on which one more
    sentence matters less in a long answer than in a short one."""
    return math.log1p(len(text.split()))


def answer_lengths(rows: list[dict[str, Any]]) -> Tensor:
    """``(answers,)`` the length feature of every answer of ``rows``, in the order they are scored."""
    import torch

    return torch.tensor([x for row in rows for x in row["answer_lengths"]], dtype=torch.float)


def _row_targets(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    """What :func:`training.losses.preference_loss` needs besides the scores, for ``rows`` whose answers
    are scored in order.

    ``index`` ``(rows, n_max)``: position of each row's answers among all answers (-1 = none);
    ``ranks`` ``(rows, n_max)``; ``margin``, ``tie`` and ``weight`` ``(rows,)``.
    """
    import torch

    n_max = max(len(row["completion_ids"]) for row in rows)
    index = torch.full((len(rows), n_max), -1, dtype=torch.long)
    ranks = torch.zeros((len(rows), n_max), dtype=torch.long)
    offset = 0
    for b, row in enumerate(rows):
        n = len(row["completion_ids"])
        index[b, :n] = torch.arange(offset, offset + n)
        ranks[b, :n] = torch.tensor(row["ranks"], dtype=torch.long)
        offset += n
    return {
        "index": index,
        "ranks": ranks,
        "margin": torch.tensor([row["margin"] for row in rows], dtype=torch.float),
        "tie": torch.tensor([bool(row["tie"]) for row in rows], dtype=torch.bool),
        "weight": torch.tensor([float(row.get("weight", 1.0)) for row in rows], dtype=torch.float),
    }


@dataclass
class _ListCollator:
    """Pads every answer of a batch of rows into one (answers, length) batch, right-padded as TRL does."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [ids for row in rows for ids in row["completion_ids"]]
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)  # (answers, length)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **_row_targets(rows)}
        if "answer_lengths" in rows[0]:
            batch["answer_length"] = answer_lengths(rows)
        if "completion_type_ids" in rows[0]:
            token_type_ids = torch.zeros((len(sequences), length), dtype=torch.long)
            types = [t for row in rows for t in row["completion_type_ids"]]
            for i, t in enumerate(types):
                token_type_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            batch["token_type_ids"] = token_type_ids
        return batch

    @staticmethod
    def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        """The part of a collated batch the model takes (the rest is for :func:`training.losses.preference_loss`)."""
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
