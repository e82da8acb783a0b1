"""The normalised records that every reader yields, whatever the file format.

An :class:`ImportedItem` is one thing to show a labeller (a prompt, a pair, a ranking or an answer
to critique) with the labels that came with it in the file; a :class:`BadRecord` is a line that
could not be read. Records validate themselves on construction (``ValueError`` with a clear
message), so a reader that builds one from a bad line turns the error into a ``BadRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ITEM_KINDS = ("prompt", "pairwise", "ranking", "critique", "thumbs")
LABEL_KINDS = ("pairwise", "ranking", "critique", "rating", "thumbs")
PAIRWISE_CHOICES = ("a", "b", "tie", "both_bad")
THUMBS_CHOICES = ("up", "down")
ROLES = ("system", "user", "assistant")
# Label kinds an item of each kind may carry ("rating" rates the item's only or every candidate).
_LABELS_FOR_ITEM = {
    "prompt": (),
    "pairwise": ("pairwise", "rating"),
    "ranking": ("ranking", "rating"),
    "critique": ("critique", "rating"),
    "thumbs": ("thumbs", "rating"),
}
MAX_RANKED = 9
# (fewest, most) candidates of each item kind.
_CANDIDATES_FOR_ITEM = {
    "prompt": (0, 0), "pairwise": (2, 2), "ranking": (2, MAX_RANKED), "critique": (1, 1), "thumbs": (1, 1),
}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_messages(messages: Any) -> None:
    """Raise ValueError unless ``messages`` is a chat context: a non-empty list of
    ``{"role", "content"}`` dicts with known roles and string contents, ending with a non-empty
    user turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of chat messages, got {messages!r:.80}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be an object with exactly 'role' and 'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}] has role {message['role']!r}; expected one of {ROLES}")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}] content must be a string, got {type(message['content']).__name__}")
    if messages[-1]["role"] != "user":
        raise ValueError(f"the last message must be the user's turn, got role {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise ValueError("the last user message is empty")


def has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string of ``value`` (nested dicts, lists and dataclasses,
    walked without recursion). PostgreSQL cannot store one in text, so such a record is refused."""
    from dataclasses import fields, is_dataclass

    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in fields(item))
    return False


def validate_ranking(groups: Any, n_candidates: int) -> None:
    """Raise ValueError unless ``groups`` (best group first) puts each of the ``n_candidates``
    indexes in exactly one non-empty group."""
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"ranking must be a non-empty list of groups of candidate indexes, got {groups!r:.80}")
    seen: list[int] = []
    for group in groups:
        if not isinstance(group, list) or not group or not all(_is_int(i) for i in group):
            raise ValueError(f"each ranking group must be a non-empty list of indexes, got {group!r:.80}")
        seen.extend(group)
    if sorted(seen) != list(range(n_candidates)):
        raise ValueError(f"ranking {groups!r} must hold each candidate index 0..{n_candidates - 1} exactly once")


def validate_gold(kind: str, gold: Any, n_candidates: int) -> None:
    """Raise ValueError unless ``gold`` is an answer in the shape its item kind scores:
    ``{"choice": "a"|"b"|"tie"|"both_bad"}`` (pairwise), ``{"ranking": groups of answer positions,
    best first, 0 = the first answer given}`` (ranking), ``{"rating": 1-7}`` (rating),
    ``{"choice": "up"|"down"}`` (thumbs); a critique has no gold answer to score."""
    if not isinstance(gold, dict):
        raise ValueError(f"a gold answer must be an object, got {type(gold).__name__}")
    if kind == "pairwise" and gold.get("choice") not in ("a", "b", "tie", "both_bad"):
        raise ValueError('a pairwise gold answer is {"choice": "a", "b", "tie" or "both_bad"}')
    if kind == "ranking":
        try:
            validate_ranking(gold.get("ranking"), n_candidates)
        except ValueError as exc:
            raise ValueError(
                f'a ranking gold answer is {{"ranking": groups of answer positions from 0}}: {exc}'
            ) from None
    if kind == "thumbs" and gold.get("choice") not in THUMBS_CHOICES:
        raise ValueError('a thumbs gold answer is {"choice": "up" or "down"}')
    if kind == "rating" and not (_is_int(gold.get("rating")) and 1 <= gold["rating"] <= 7):
        raise ValueError('a rating gold answer is {"rating": 1 to 7}')
    if kind in ("critique", "prompt"):
        raise ValueError(f"a {kind} item has no gold answer to score")


@dataclass
class ImportedCandidate:
    """One answer shown to labellers."""

    text: str = field(metadata={"help": "The assistant's answer."})
    rank: int | None = field(default=None, metadata={"help": "Rank from the file: 0 = best; equal ranks = a tie."})

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValueError(f"candidate text must be a string, got {type(self.text).__name__}")
        if self.rank is not None and (not _is_int(self.rank) or self.rank < 0):
            raise ValueError(f"candidate rank must be None or an integer >= 0, got {self.rank!r}")


@dataclass
class ImportedLabel:
    """One labeller's judgement of an item, as found in the file."""

    annotator: str = field(metadata={"help": "Who labelled: a dataset name or an annotator id."})
    kind: str = field(metadata={"help": f"One of {LABEL_KINDS}."})
    choice: str | None = field(
        default=None, metadata={"help": f"pairwise: one of {PAIRWISE_CHOICES}; thumbs: one of {THUMBS_CHOICES}."}
    )
    strength: int | None = field(default=None, metadata={"help": "pairwise: 1 (slightly) to 3 (clearly), or None."})
    ranking: list[list[int]] | None = field(
        default=None, metadata={"help": "ranking: groups of candidate indexes, best first; a group of >1 is a tie."}
    )
    critique: str | None = field(default=None, metadata={"help": "critique: what is wrong (or right) with the answer."})
    rewrite: str | None = field(default=None, metadata={"help": "critique: a corrected answer, if one was written."})
    rating: int | None = field(default=None, metadata={"help": "rating: a score on the source's own scale."})

    def __post_init__(self) -> None:
        if not isinstance(self.annotator, str) or not self.annotator:
            raise ValueError(f"annotator must be a non-empty string, got {self.annotator!r}")
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label kind {self.kind!r} is not one of {LABEL_KINDS}")
        if self.kind == "pairwise" and self.choice not in PAIRWISE_CHOICES:
            raise ValueError(f"pairwise choice {self.choice!r} is not one of {PAIRWISE_CHOICES}")
        if self.kind == "thumbs" and self.choice not in THUMBS_CHOICES:
            raise ValueError(f"thumbs choice {self.choice!r} is not one of {THUMBS_CHOICES}")
        if self.strength is not None and (not _is_int(self.strength) or not 1 <= self.strength <= 3):
            raise ValueError(f"strength must be None or an integer from 1 to 3, got {self.strength!r}")
        if self.kind == "ranking" and self.ranking is None:
            raise ValueError("a ranking label needs `ranking`")
        if self.kind == "critique" and (not isinstance(self.critique, str) or not self.critique.strip()):
            raise ValueError("a critique label needs a non-empty `critique`")
        if self.rewrite is not None and not isinstance(self.rewrite, str):
            raise ValueError(f"rewrite must be None or a string, got {type(self.rewrite).__name__}")
        if self.kind == "rating" and not _is_int(self.rating):
            raise ValueError(f"a rating label needs an integer `rating`, got {self.rating!r}")


@dataclass
class ImportedItem:
    """One item read from a file: the chat context, the candidates and the labels that came with it."""

    line: int = field(metadata={"help": "1-based line of the file where the record starts."})
    external_id: str = field(metadata={"help": "Stable id (same file, same id on every run) to skip re-imports."})
    kind: str = field(metadata={"help": f"One of {ITEM_KINDS}."})
    messages: list[dict[str, str]] = field(metadata={"help": "Chat context ending with a user turn."})
    candidates: list[ImportedCandidate] = field(
        metadata={"help": "Answers: 0 (prompt), 2 (pairwise), 2..9 (ranking), or 1 (critique, thumbs)."}
    )
    labels: list[ImportedLabel] = field(metadata={"help": "Judgements from the file (none for plain imports)."})
    meta: dict[str, Any] = field(default_factory=dict, metadata={"help": "Source-specific extras (JSON-able)."})

    def __post_init__(self) -> None:
        if self.kind not in ITEM_KINDS:
            raise ValueError(f"item kind {self.kind!r} is not one of {ITEM_KINDS}")
        if not isinstance(self.external_id, str) or not self.external_id:
            raise ValueError(f"external_id must be a non-empty string, got {self.external_id!r}")
        validate_messages(self.messages)
        n = len(self.candidates)
        if not _CANDIDATES_FOR_ITEM[self.kind][0] <= n <= _CANDIDATES_FOR_ITEM[self.kind][1]:
            low, high = _CANDIDATES_FOR_ITEM[self.kind]
            needed = str(low) if low == high else f"{low} to {high}"
            raise ValueError(f"a {self.kind} item needs {needed} candidates, got {n}")
        if not all(isinstance(c, ImportedCandidate) for c in self.candidates):
            raise ValueError("candidates must be ImportedCandidate records")
        if not all(isinstance(label, ImportedLabel) for label in self.labels):
            raise ValueError("labels must be ImportedLabel records")
        for label in self.labels:
            if label.kind not in _LABELS_FOR_ITEM[self.kind]:
                raise ValueError(f"a {self.kind} item cannot carry a {label.kind} label")
            if label.kind == "ranking":
                validate_ranking(label.ranking, n)


@dataclass
class BadRecord:
    """A record that could not be read; reading goes on after it."""

    line: int = field(metadata={"help": "1-based line of the file where the record starts."})
    message: str = field(metadata={"help": "Why it could not be read."})
