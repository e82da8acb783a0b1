"""What a reward model learns from: pairwise judgements (:class:`PreferenceExample`, with strength and
ties) and ranked lists (:class:`RankingExample`), made from imported feedback by :func:`examples_from_items`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from training.dpo import check_weight
from training.feedback_io.records import ImportedItem, validate_messages


@dataclass
class PreferenceExample:
    """One pairwise judgement: for ``prompt``, ``chosen`` was preferred to ``rejected`` (or a tie)."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answer; the last one is the user's turn."}
    )
    chosen: str = field(metadata={"help": "The preferred answer (for a tie: either answer)."})
    rejected: str = field(metadata={"help": "The other answer."})
    strength: int | None = field(
        default=None,
        metadata={"help": "How strongly chosen was preferred: 1 (slightly) to 3 (clearly), or None (unknown)."},
    )
    tie: bool = field(default=False, metadata={"help": "True if the labeller judged the two answers equally good."})
    group: str | None = field(
        default=None, metadata={"help": "Optional slice name (task, source, annotator...) for per-group accuracy."}
    )
    weight: float = field(
        default=1.0, metadata={"help": "How much this judgement counts in the loss (e.g. its annotator's trust)."}
    )

    def __post_init__(self) -> None:
        check_weight(self.weight)
        validate_messages(self.prompt)
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.tie, bool):
            raise ValueError(f"tie must be True or False, got {self.tie!r}")
        if self.strength is not None and (
            isinstance(self.strength, bool) or not isinstance(self.strength, int) or not 1 <= self.strength <= 3
        ):
            raise ValueError(f"strength must be None or an integer from 1 to 3, got {self.strength!r}")
        if self.tie and self.strength is not None:
            raise ValueError(f"a tie has no strength, got strength={self.strength!r}")
        if not self.tie and self.chosen == self.rejected:
            raise ValueError(
                f"chosen and rejected are the same text ({self.chosen!r:.60}); mark it tie=True or drop it"
            )
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ValueError(f"group must be None or a non-empty string, got {self.group!r}")


@dataclass
class RankingExample:
    """One listwise judgement: ``completions`` for ``prompt`` ranked by ``ranks`` (0 = best, equal = tie)."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answers; the last one is the user's turn."}
    )
    completions: list[str] = field(metadata={"help": "Two or more answers."})
    ranks: list[int] = field(metadata={"help": "One rank per answer: 0 = best; equal ranks are ties; gaps allowed."})
    group: str | None = field(
        default=None, metadata={"help": "Optional slice name (task, source, annotator...) for per-group accuracy."}
    )
    weight: float = field(
        default=1.0, metadata={"help": "How much this judgement counts in the loss (e.g. its annotator's trust)."}
    )

    def __post_init__(self) -> None:
        check_weight(self.weight)
        validate_messages(self.prompt)
        if not isinstance(self.completions, list) or len(self.completions) < 2:
            raise ValueError(f"completions must be a list of two or more answers, got {self.completions!r:.80}")
        if not all(isinstance(c, str) for c in self.completions):
            raise ValueError("every completion must be a string")
        if not isinstance(self.ranks, list) or len(self.ranks) != len(self.completions):
            raise ValueError(
                f"ranks={self.ranks!r} must be a list with one rank per completion ({len(self.completions)})"
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in self.ranks):
            raise ValueError(f"ranks={self.ranks!r} must be integers >= 0 (0 = best)")
        if len(set(self.ranks)) < 2:
            raise ValueError(f"ranks={self.ranks!r} are all equal: the ranking orders nothing")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ValueError(f"group must be None or a non-empty string, got {self.group!r}")


Example = PreferenceExample | RankingExample


def examples_from_items(
    items: Iterable[Any], *, group: Callable[[ImportedItem], str | None] | None = None
) -> list[Example]:
    """Training examples from imported items (:func:`training.feedback_io.read_feedback`), in order.

    Each pairwise label gives one :class:`PreferenceExample`: "a"/"b" -> chosen/rejected with the
    label's strength; "tie" -> ``tie=True``; "both_bad" -> ``tie=True`` too, because for a reward
    that only orders answers, "both are bad" says that neither is better, which is what a tie says
    (how bad both are is not something a pairwise loss can learn). Each ranking label gives one
    :class:`RankingExample` (ranking groups -> ranks). Other labels and :class:`BadRecord` entries
    are skipped. ``group(item)``, if given, names each example's group.
    """
    examples: list[Example] = []
    for item in items:
        if not isinstance(item, ImportedItem):
            continue
        name = group(item) if group is not None else None
        texts = [c.text for c in item.candidates]
        for label in item.labels:
            if label.kind == "pairwise" and item.kind == "pairwise":
                a, b = texts
                if label.choice in ("tie", "both_bad"):
                    if a != b:
                        examples.append(PreferenceExample(item.messages, a, b, tie=True, group=name))
                    continue
                chosen, rejected = (a, b) if label.choice == "a" else (b, a)
                if chosen != rejected:
                    examples.append(PreferenceExample(item.messages, chosen, rejected, label.strength, group=name))
            elif label.kind == "ranking" and label.ranking is not None:
                ranks = [0] * len(texts)
                for level, members in enumerate(label.ranking):
                    for index in members:
                        ranks[index] = level
                if len(set(ranks)) >= 2:
                    examples.append(RankingExample(item.messages, list(texts), ranks, group=name))
    return examples
