"""Gold items: whether a judgment matches a gold item's known answer."""

from __future__ import annotations

from typing import Any

from webapp.feedback.models import Task


def gold_correct(task: Task, fields: dict[str, Any]) -> bool | None:
    """Whether a judgment (a label's fields) matches a gold item's answer; None for other items."""
    if not task.is_gold or not task.gold:
        return None
    if task.kind in (Task.Kind.PAIRWISE, Task.Kind.THUMBS):
        return fields.get("choice") == task.gold.get("choice")
    if task.kind == Task.Kind.RANKING:  # the gold ranks positions (the order the answers were given in)
        expected = task.gold.get("ranking") or []
        position = {slot.candidate_id: slot.position for slot in task.slots.all()}
        top = {position.get(candidate_id) for candidate_id in fields["ranking"][0]}
        return bool(expected) and top == set(expected[0])
    if task.kind == Task.Kind.RATING:
        return abs(int(fields["rating"]) - int(task.gold.get("rating", 0))) <= 1
    return None
