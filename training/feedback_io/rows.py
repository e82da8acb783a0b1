"""Pure helpers that turn labels into export rows (plain dicts) in TRL's conversational formats.

Every row's ``prompt`` is the chat context (messages ending with a user turn); answers are
one-message assistant turns ``[{"role": "assistant", "content": ...}]``. Row shapes, by export
kind (see :mod:`.writers`):

- ``preference``: ``{"prompt", "chosen", "rejected", "margin"}`` (DPO, reward models);
- ``kto``: ``{"prompt", "completion", "label"}`` (KTO: desirable or not, unpaired);
- ``prompt``: ``{"prompt"}`` (GRPO / online RL);
- ``listwise``: ``{"prompt", "completions", "ranks"}`` (best first; ties share a rank);
- ``critique``: ``{"prompt", "completion", "critique", "rewrite"}``.

Margin: TRL's ``RewardTrainer`` uses a ``margin`` column as ``-log sigmoid(r_chosen - r_rejected
- margin)``; DPO ignores it. A label's strength maps to the Llama 2 style small margins
``STRENGTH_MARGIN``: 1 (slightly better) -> 1/3, 2 -> 2/3, 3 (clearly better) -> 1.0; no strength
(and pairs derived from rankings or rewrites) -> 0.0, the plain Bradley-Terry loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from training.examples import label_examples

from .records import ImportedItem

Messages = list[dict[str, str]]
EXPORT_KINDS = ("preference", "kto", "prompt", "listwise", "critique", "raw")
STRENGTH_MARGIN = {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def margin_from_strength(strength: int | None) -> float:
    """The reward margin for a pairwise strength (see the module docstring); None -> 0.0."""
    if strength is None:
        return 0.0
    if strength not in STRENGTH_MARGIN:
        raise ValueError(f"strength must be None or one of {sorted(STRENGTH_MARGIN)}, got {strength!r}")
    return STRENGTH_MARGIN[strength]


def assistant_turn(text: str) -> Messages:
    """``[{"role": "assistant", "content": text}]``."""
    return [{"role": "assistant", "content": text}]


def _copy(prompt: Sequence[dict[str, str]]) -> Messages:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def pairs_from_ranking(groups: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """All (winner, loser) index pairs between different groups of a ranking (best group first).

    Candidates in one group are tied and give no pair: ``[[2], [0, 1]]`` -> ``[(2, 0), (2, 1)]``.
    (Index pairs only; the texts' examples come from :func:`training.examples.label_examples`.)
    """
    return [
        (winner, loser)
        for i, better in enumerate(groups)
        for worse in groups[i + 1 :]
        for winner in better
        for loser in worse
    ]


def preference_row(
    prompt: Sequence[dict[str, str]], chosen: str, rejected: str, strength: int | None = None
) -> dict[str, Any]:
    """One ``preference`` row; ``margin`` from ``strength``."""
    return {
        "prompt": _copy(prompt),
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        "margin": margin_from_strength(strength),
    }


def preference_rows_from_pairwise(
    prompt: Sequence[dict[str, str]], candidates: Sequence[str], choice: str, strength: int | None = None
) -> list[dict[str, Any]]:
    """The preference row of a pairwise choice over ``candidates`` = (A, B): one row for "a" or "b",
    none for "tie" or "both_bad" (they say nothing about which is better) or for two equal texts."""
    _check_pairwise(candidates, choice)
    found = label_examples(kind="pairwise", answers=candidates, choice=choice, strength=strength)
    return [preference_row(prompt, c, r, s) for c, r, s in found.pairs]


def _check_pairwise(candidates: Sequence[str], choice: str) -> None:
    if len(candidates) != 2:
        raise ValueError(f"a pairwise choice needs 2 candidates, got {len(candidates)}")
    if choice not in ("a", "b", "tie", "both_bad"):
        raise ValueError(f"unknown pairwise choice {choice!r}")


def preference_rows_from_ranking(
    prompt: Sequence[dict[str, str]], candidates: Sequence[str], groups: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """One preference row (margin 0) per pair of a ranking's answers in different groups (a partial
    ranking's unranked answers form a last group; equal texts give none)."""
    found = label_examples(kind="ranking", answers=candidates, ranking=groups)
    return [preference_row(prompt, c, r) for c, r, _ in found.pairs]


def preference_rows_from_rewrite(
    prompt: Sequence[dict[str, str]], completion: str, rewrite: str | None
) -> list[dict[str, Any]]:
    """A human-corrected rewrite is preferred over the answer it corrects (margin 0); none without one."""
    found = label_examples(kind="critique", answers=[completion], rewrite=rewrite)
    return [preference_row(prompt, c, r) for c, r, _ in found.pairs]


def kto_row(prompt: Sequence[dict[str, str]], completion: str, label: bool) -> dict[str, Any]:
    """One ``kto`` row: ``label`` True = desirable."""
    return {"prompt": _copy(prompt), "completion": assistant_turn(completion), "label": bool(label)}


def kto_rows_from_pairwise(
    prompt: Sequence[dict[str, str]], candidates: Sequence[str], choice: str
) -> list[dict[str, Any]]:
    """Unpaired rows from a pairwise choice: "a"/"b" -> the winner desirable and the loser not;
    "both_bad" -> both undesirable; "tie" -> none (a tie says nothing about absolute quality)."""
    _check_pairwise(candidates, choice)
    found = label_examples(kind="pairwise", answers=candidates, choice=choice)
    return [kto_row(prompt, text, liked) for text, liked in found.kto]


def kto_rows_from_ranking(
    prompt: Sequence[dict[str, str]], candidates: Sequence[str], groups: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """Unpaired rows from a ranking: the best group desirable, the worst group not, the middle
    left out; a ranking with a single group (all tied) gives none."""
    found = label_examples(kind="ranking", answers=candidates, ranking=groups)
    return [kto_row(prompt, text, liked) for text, liked in found.kto]


def prompt_row(prompt: Sequence[dict[str, str]]) -> dict[str, Any]:
    """One ``prompt`` row."""
    return {"prompt": _copy(prompt)}


def listwise_row(
    prompt: Sequence[dict[str, str]], candidates: Sequence[str], groups: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """One ``listwise`` row: completions best first, ``ranks[i]`` = the group position of
    completion ``i`` (0 = best; tied completions share a rank)."""
    completions, ranks = [], []
    for rank, group in enumerate(groups):
        for index in sorted(group):
            completions.append(assistant_turn(candidates[index]))
            ranks.append(rank)
    return {"prompt": _copy(prompt), "completions": completions, "ranks": ranks}


def critique_row(
    prompt: Sequence[dict[str, str]], completion: str, critique: str, rewrite: str | None = None
) -> dict[str, Any]:
    """One ``critique`` row (``rewrite`` None when the labeller wrote none)."""
    return {"prompt": _copy(prompt), "completion": assistant_turn(completion), "critique": critique, "rewrite": rewrite}


def rows_from_item(item: ImportedItem, kind: str) -> list[dict[str, Any]]:
    """Export rows of ``kind`` from one item, one label at a time (several annotators of one item
    give several rows; aggregate labels first for one row per item).

    ``preference``, ``kto`` and ``listwise`` are what :func:`training.examples.label_examples` makes of
    each label (the one converter every run kind uses too); ``critique``: critique labels;
    ``prompt``: one row per item; ``raw``: the item as a dict.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {EXPORT_KINDS}")
    texts = [c.text for c in item.candidates]
    prompt = item.messages
    if kind == "prompt":
        return [prompt_row(prompt)]
    if kind == "raw":
        return [asdict(item)]
    rows: list[dict[str, Any]] = []
    for label in item.labels:
        if kind == "critique":
            if label.kind == "critique" and texts and label.critique is not None:
                rows.append(critique_row(prompt, texts[0], label.critique, label.rewrite))
            continue
        found = label_examples(
            kind=label.kind, answers=texts, choice=label.choice, strength=label.strength, ranking=label.ranking,
            rewrite=label.rewrite,
        )  # fmt: skip
        if kind == "preference":
            rows += [preference_row(prompt, c, r, s) for c, r, s in found.pairs]
        elif kind == "kto":
            rows += [kto_row(prompt, text, liked) for text, liked in found.kto]
        elif kind == "listwise" and found.ranking is not None:
            completions, ranks = found.ranking
            rows.append({"prompt": _copy(prompt), "completions": [assistant_turn(c) for c in completions],
                         "ranks": ranks})  # fmt: skip
    return rows


def rows_from_items(items: Iterable[ImportedItem | Any], kind: str) -> Iterator[dict[str, Any]]:
    """Stream :func:`rows_from_item` over ``items``, skipping anything that is not an ImportedItem
    (e.g. the BadRecords of a reader)."""
    for item in items:
        if isinstance(item, ImportedItem):
            yield from rows_from_item(item, kind)
