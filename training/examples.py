"""The one converter from a label to training examples: every export (training.feedback_io.rows)
and every run kind (webapp.runs.data) goes through `label_examples`, so an export and a run see the
same examples. What each label kind becomes (docs/training.md has it as a table):

- pairwise "a" / "b" (strength 1-3): a pair, winner over loser, with its strength; KTO: winner
  liked, loser disliked;
- pairwise "tie": a tie (the reward model's tie loss); nothing for KTO;
- pairwise "both bad": a tie; KTO: both disliked;
- ranking (tied answers share a group): a pair for every answer over every answer of a lower group;
  the list, best first, tied answers sharing a rank (LiPO, the reward model's Plackett-Luce loss);
  KTO: the best group liked, the worst disliked, the middle left out;
- partial ranking (top k): as a ranking whose unranked answers form a last, tied group;
- critique with a rewrite: a pair, the rewrite over the answer; KTO: rewrite liked, answer disliked;
- thumbs "up" / "down" on one answer (an unpaired TRL row): KTO: the answer liked or disliked;
- critique without a rewrite, rating: nothing to train on (kept in the raw export).

Pairs train DPO, IPO, robust DPO, online DPO's human share and the reward model.

Answers whose texts are the same (after trimming) teach nothing: no pair, tie or KTO example is made
of two equal texts, and a list with two equal answers is left out. Thumbs in the chat and follow-up
scores become KTO examples directly (webapp.runs.data, webapp.feedback.followups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Examples:
    """What one label teaches, by example shape."""

    pairs: list[tuple[str, str, int | None]] = field(default_factory=list)  # chosen, rejected, strength
    ties: list[tuple[str, str]] = field(default_factory=list)
    ranking: tuple[list[str], list[int]] | None = None  # answers best first, their ranks (0 = best)
    kto: list[tuple[str, bool]] = field(default_factory=list)  # answer, liked

    def __bool__(self) -> bool:
        return bool(self.pairs or self.ties or self.ranking or self.kto)


def full_ranking(groups: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """A ranking of answer indexes with the answers it leaves out added as a last, tied group: a
    top-k ranking says the ranked answers are better than the rest, and nothing within the rest."""
    ranked = [list(group) for group in groups if group]
    placed = {i for group in ranked for i in group}
    rest = [i for i in range(n) if i not in placed]
    return [*ranked, rest] if rest else ranked


def _same(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def label_examples(
    *,
    kind: str,
    answers: Sequence[str],
    choice: str | None = None,
    strength: int | None = None,
    ranking: Sequence[Sequence[int]] | None = None,
    rewrite: str | None = None,
) -> Examples:
    """What a label of `kind` ("pairwise", "ranking", "critique", "rating", "thumbs") over `answers`
    teaches: `choice` ("a", "b", "tie", "both_bad") and `strength` for pairwise, "up" or "down" for
    thumbs, `ranking` (groups of answer indexes, best first; partial rankings allowed) for ranking,
    `rewrite` for critique."""
    out = Examples()
    if kind == "pairwise" and choice and len(answers) == 2:
        a, b = answers
        if _same(a, b):
            return out
        if choice in ("a", "b"):
            win, lose = (a, b) if choice == "a" else (b, a)
            out.pairs.append((win, lose, strength))
            out.kto += [(win, True), (lose, False)]
        elif choice == "tie":
            out.ties.append((a, b))
        elif choice == "both_bad":
            out.ties.append((a, b))
            out.kto += [(a, False), (b, False)]
    elif kind == "ranking" and ranking:
        groups = full_ranking(ranking, len(answers))
        out.pairs += [
            (answers[w], answers[lo], None)
            for i, upper in enumerate(groups)
            for lower in groups[i + 1 :]
            for w in upper
            for lo in lower
            if not _same(answers[w], answers[lo])
        ]
        completions = [answers[i] for group in groups for i in sorted(group)]
        ranks = [rank for rank, group in enumerate(groups) for _ in group]
        if len(set(ranks)) >= 2 and len({c.strip() for c in completions}) == len(completions):
            out.ranking = (completions, ranks)
        if len(groups) >= 2:
            best, worst = [answers[i] for i in groups[0]], [answers[i] for i in groups[-1]]
            out.kto += [(t, True) for t in best if not any(_same(t, w) for w in worst)]
            out.kto += [(t, False) for t in worst if not any(_same(t, b) for b in best)]
    elif kind == "thumbs" and choice in ("up", "down") and len(answers) == 1:
        out.kto.append((answers[0], choice == "up"))
    elif kind == "critique" and rewrite and answers and not _same(rewrite, answers[0]):
        out.pairs.append((rewrite, answers[0], None))
        out.kto += [(rewrite, True), (answers[0], False)]
    return out
