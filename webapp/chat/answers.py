"""Writing a chat answer: the one path by which the chat page and the API stream the policy's
answer to an assistant turn and store it (written, or failed with the reason)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from webapp.feedback import services
from webapp.feedback.models import Message
from webapp.feedback.selectors import context_before
from webapp.runs import policy

logger = logging.getLogger(__name__)

NO_VERSION = "no policy version is serving: an admin must run the set-up first (manage.py prefloop_setup)"


class AnswerFailed(Exception):
    """The policy server could not write the answer; the turn is stored failed with this reason."""


def answer_unwritable(message: Message) -> str | None:
    """Why no version can write this turn (it is then stored failed with the reason), or None."""
    if message.policy_version is not None:
        return None
    services.chat_reply_finish(message=message, content="", failed=True, error=NO_VERSION)
    return NO_VERSION


def answer_deltas(message: Message) -> Iterator[str]:
    """The answer of the turn's version as text deltas while it is written, stored at the end.

    A version other than the serving one (picked by an admin, or retired since) is loaded where
    it is missing (webapp.runs.policy).
    When the policy server fails, what was written is stored as a failed answer with the reason,
    and AnswerFailed is raised with it.
    """
    version = message.policy_version
    assert version is not None, "answer_unwritable says so first"
    context = context_before(message=message)
    parts: list[str] = []
    try:
        for delta in policy.stream(context, version=version):  # an older version is loaded where it is missing
            parts.append(delta)
            yield delta
    except policy.PolicyServerError as exc:
        logger.warning("policy server failed while streaming message %s: %s", message.pk, exc)
        services.chat_reply_finish(message=message, content="".join(parts), failed=True, error=str(exc))
        raise AnswerFailed(str(exc)) from exc
    services.chat_reply_finish(message=message, content="".join(parts))
