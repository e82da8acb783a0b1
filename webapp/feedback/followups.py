"""Follow-ups as feedback: the user's actual next message in a chat scores the answer before it
(training.followup.FollowupScorer.score_replies, on a worker), with no label asked for.

- `followups_unscored` finds answers the user has replied to and that have no score yet;
- `followup_scores_store` writes the scores (`Message.followup_score`);
- `followup_rows` gives them to the exports (`kto`: liked when positive; `raw`: as they are);
  KTO runs of the chat's project whose recipe sets `followup_margin` train on them
  (webapp.runs.data).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from webapp.core.queue import broker_send
from webapp.feedback.models import Message
from webapp.feedback.selectors import context_before

FOLLOWUP_TASK_NAME = "prefloop.score_followups"


def followups_send() -> None:
    """Have a worker score the answers that got a reply, once this transaction commits (unless
    FOLLOWUP_SCORE is off)."""
    if settings.FOLLOWUP_SCORE:
        transaction.on_commit(lambda: broker_send(FOLLOWUP_TASK_NAME, args=[], queue="cpu"))


def _first_reply(answer: Message) -> Message | None:
    replies = [m for m in answer.replies.all() if m.role == "user" and m.content.strip()]
    return min(replies, key=lambda m: (m.created_at, m.pk)) if replies else None


def followups_unscored(
    *, after: int = 0, limit: int = 64
) -> tuple[list[tuple[Message, list[dict[str, str]], str]], int | None]:
    """The next `limit` complete answers past id `after` that the user replied to and that have no
    score: (answer, its context, the reply) for each one that can be scored, and the last id looked
    at (None when there is none left)."""
    answers = list(
        Message.objects.filter(
            pk__gt=after,
            role="assistant",
            status=Message.Status.COMPLETE,
            followup_score__isnull=True,
            replies__role="user",
        )
        .distinct()
        .prefetch_related("replies")
        .order_by("id")[:limit]
    )
    out = []
    for answer in answers:
        reply = _first_reply(answer)
        context = context_before(message=answer)
        if reply is not None and answer.content.strip() and context and context[-1]["role"] == "user":
            out.append((answer, context, reply.content))
    return out, (answers[-1].pk if answers else None)


def followup_scores_store(scores: dict[int, float]) -> int:
    """Write each answer's score; return how many."""
    with transaction.atomic():
        for message_id, score in scores.items():
            Message.objects.filter(pk=message_id, role="assistant").update(followup_score=float(score))
    return len(scores)


def followups_scored() -> QuerySet[Message]:
    return Message.objects.filter(role="assistant", followup_score__isnull=False).order_by("id")


def followup_row(answer: Message) -> dict[str, Any]:
    """A scored answer as the `raw` export and `GET /api/followups/` show it."""
    reply = _first_reply(answer)
    return {
        "kind": "followup",
        "message": answer.pk,
        "conversation": answer.conversation_id,
        "prompt": context_before(message=answer),
        "answer": answer.content,
        "reply": reply.content if reply is not None else None,
        "followup_score": answer.followup_score,
        "policy_version": answer.policy_version.number if answer.policy_version else None,
        "created_at": answer.created_at.isoformat(),
    }


def followup_rows(kind: str) -> Iterator[dict[str, Any]]:
    """Export rows of the scored answers: `kto` (liked when the score is positive) or `raw`."""
    answers = followups_scored().select_related("policy_version").prefetch_related("replies")
    for answer in answers.iterator(chunk_size=500):
        row = followup_row(answer)
        if not row["prompt"] or row["reply"] is None:
            continue
        if kind == "raw":
            yield row
        else:
            yield {
                "prompt": row["prompt"],
                "completion": [{"role": "assistant", "content": answer.content}],
                "label": row["followup_score"] > 0,
                "followup_score": row["followup_score"],
            }


@lru_cache(maxsize=1)
def _scorer(model: str) -> Any:
    from training.device import placement
    from training.followup import FollowupScorer  # the model is loaded on the worker only

    return FollowupScorer.from_pretrained(model, device=placement(settings.TRAIN_DEVICE).device)


def followups_score_all() -> int:
    """Score every answer the user replied to and that has no score yet, with FOLLOWUP_MODEL, 64 at
    a time until none is left (nothing when FOLLOWUP_SCORE is off); return how many were scored."""
    if not settings.FOLLOWUP_SCORE:
        return 0
    done = 0
    after: int | None = 0
    while after is not None:
        pending, after = followups_unscored(after=after, limit=64)
        if not pending:
            continue
        scores = _scorer(settings.FOLLOWUP_MODEL).score_replies(
            [(context, answer.content, reply) for answer, context, reply in pending]
        )
        followup_scores_store({answer.pk: score for (answer, _, _), score in zip(pending, scores, strict=True)})
        done += len(pending)
    return done
