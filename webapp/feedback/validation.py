"""Checks on chat messages shared by the pages, the REST API and the services."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

MAX_MESSAGES = 200
MAX_CONTENT_CHARS = 20_000
ROLES = ("system", "user", "assistant")


def clean_messages(value: Any) -> list[dict[str, str]]:
    """Return the messages as plain `{"role", "content"}` dicts, or raise a ValidationError that
    says which message is wrong and why. The context must end with a user turn."""
    if not isinstance(value, list) or not value:
        raise ValidationError("messages must be a non-empty list of {role, content} objects")
    if len(value) > MAX_MESSAGES:
        raise ValidationError(f"at most {MAX_MESSAGES} messages are allowed, got {len(value)}")
    cleaned: list[dict[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValidationError(f"message {i} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValidationError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValidationError(f"message {i} must have a non-empty string content")
        if len(content) > MAX_CONTENT_CHARS:
            raise ValidationError(f"message {i} is {len(content)} characters long; the limit is {MAX_CONTENT_CHARS}")
        cleaned.append({"role": role, "content": content})
    if cleaned[-1]["role"] != "user":
        raise ValidationError("the last message must be from the user: it is the turn to answer")
    return cleaned


def clean_user_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Write a message first: it cannot be empty.")
    if len(value) > MAX_CONTENT_CHARS:
        raise ValidationError(f"The message is {len(value)} characters long; the limit is {MAX_CONTENT_CHARS}.")
    return value.strip()


def clean_label(
    *, kind: str, data: dict[str, Any], candidate_ids: list[int], allow_partial_ranking: bool = False
) -> dict[str, Any]:
    """Check one judgment of a task of `kind` and return the Label fields it sets.

    Raises a ValidationError that names the field and the problem. `candidate_ids` are the task's
    candidates in their shown order (A first).
    """
    rationale = str(data.get("rationale") or "")[:5000]
    if kind == "pairwise":
        choice = data.get("choice")
        if choice not in ("a", "b", "tie", "both_bad"):
            raise ValidationError(f"choice must be one of a, b, tie, both_bad (got {choice!r})")
        strength = data.get("strength")
        if choice in ("tie", "both_bad"):
            strength = None
        else:
            strength = _int_in(strength if strength not in (None, "") else 1, "strength", 1, 3)
        return {"choice": choice, "strength": strength, "rationale": rationale}
    if kind == "ranking":
        return {
            "ranking": _clean_ranking(data.get("ranking"), candidate_ids, allow_partial_ranking),
            "rationale": rationale,
        }
    if kind == "critique":
        critique = str(data.get("critique") or "").strip()
        rewrite = str(data.get("rewrite") or "").strip()
        if not critique:
            raise ValidationError("critique must say what is wrong or right with the answer")
        if len(critique) > MAX_CONTENT_CHARS or len(rewrite) > MAX_CONTENT_CHARS:
            raise ValidationError(f"critique and rewrite are limited to {MAX_CONTENT_CHARS} characters each")
        return {"critique": critique, "rewrite": rewrite, "rationale": rationale}
    if kind == "rating":
        return {"rating": _int_in(data.get("rating"), "rating", 1, 7), "rationale": rationale}
    if kind == "thumbs":
        choice = data.get("choice")
        if choice not in ("up", "down"):
            raise ValidationError(f"choice must be up or down for a thumbs item (got {choice!r})")
        return {"choice": choice, "rationale": rationale}
    raise ValidationError(f"tasks of kind {kind!r} take no label")


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a whole number from {low} to {high} (got {value!r})") from None
    if not low <= number <= high or (isinstance(value, float) and value != number):
        raise ValidationError(f"{name} must be a whole number from {low} to {high} (got {value!r})")
    return number


def _clean_ranking(value: Any, candidate_ids: list[int], allow_partial: bool) -> list[list[int]]:
    """A ranking is a list of groups of candidate ids, best first; a group of several ids is a tie."""
    if not isinstance(value, list) or not value:
        raise ValidationError("ranking must be a non-empty list of groups of candidate ids, best first")
    groups: list[list[int]] = []
    seen: set[int] = set()
    for i, group in enumerate(value):
        members = group if isinstance(group, list) else [group]
        if not members:
            raise ValidationError(f"ranking group {i} is empty")
        clean_group = []
        for member in members:
            if not isinstance(member, int) or isinstance(member, bool) or member not in candidate_ids:
                raise ValidationError(f"ranking group {i} names {member!r}, which is not a candidate of this task")
            if member in seen:
                raise ValidationError(f"candidate {member} appears twice in the ranking")
            seen.add(member)
            clean_group.append(member)
        groups.append(clean_group)
    missing = [c for c in candidate_ids if c not in seen]
    if missing and not allow_partial:
        raise ValidationError(f"rank every candidate: {', '.join(map(str, missing))} missing")
    if len(seen) < 2 and len(candidate_ids) >= 2:
        raise ValidationError("a ranking must place at least two candidates")
    return groups
