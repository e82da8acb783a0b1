"""The chat as a tree of turns: each turn's parent is the one before it, so editing a turn or
asking for another answer starts a branch beside the old one, and nothing written is lost.

`Conversation.current` is the last turn of the branch on screen; the page and the API show the
path from the root to it, each turn with its siblings (the other answers to the same turn, or the
other versions of an edited question).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from webapp.accounts.models import User
from webapp.feedback.generation import item_create
from webapp.feedback.models import Conversation, Label, Message, Prompt, Task
from webapp.feedback.projects import project_default
from webapp.feedback.selectors import context_before
from webapp.feedback.services import label_create, reply_start
from webapp.feedback.validation import clean_user_text
from webapp.runs.models import ModelVersion

SYSTEM_PROMPT_MAX_CHARS = 8000


@dataclass
class Turn:
    """One turn of the branch on screen, with its place among its siblings."""

    message: Message
    siblings: list[Message] = field(default_factory=list)  # itself included, oldest first

    @property
    def index(self) -> int:  # 1-based, as shown ("2 / 3")
        return [s.pk for s in self.siblings].index(self.message.pk) + 1

    @property
    def previous(self) -> Message | None:
        return self.siblings[self.index - 2] if self.index > 1 else None

    @property
    def next(self) -> Message | None:
        return self.siblings[self.index] if self.index < len(self.siblings) else None

    @property
    def rankable(self) -> list[Message]:
        """The finished answers to the same question: two or more can be ranked."""
        if self.message.role != "assistant":
            return []
        done = [s for s in self.siblings if s.status == Message.Status.COMPLETE and s.content]
        return done if len(done) >= 2 else []


def _children(messages: list[Message]) -> dict[int | None, list[Message]]:
    children: dict[int | None, list[Message]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.created_at, m.pk)):
        children[message.parent_id].append(message)
    return children


def _tip(start: Message, children: dict[int | None, list[Message]]) -> Message:
    """The newest leaf below `start`: switching to a branch shows it to its latest turn."""
    current = start
    while children.get(current.pk):
        current = children[current.pk][-1]
    return current


def conversation_branch(*, conversation: Conversation) -> list[Turn]:
    """The turns from the root to `conversation.current` (the newest turn when none is set)."""
    messages = list(conversation.messages.select_related("policy_version"))
    if not messages:
        return []
    by_id = {m.pk: m for m in messages}
    children = _children(messages)
    tip = by_id.get(conversation.current_id) if conversation.current_id else None
    if tip is None:
        tip = max(messages, key=lambda m: (m.created_at, m.pk))
    path: list[Message] = []
    node: Message | None = tip
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return [Turn(message=m, siblings=children[m.parent_id]) for m in reversed(path)]


def message_turn(*, message: Message) -> Turn:
    siblings = Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id)
    return Turn(message=message, siblings=list(siblings.select_related("policy_version").order_by("created_at", "id")))


@transaction.atomic
def chat_regenerate(*, message: Message) -> Message:
    """Another answer to the question `message` answered: a sibling, written by the reply version."""
    if message.role != "assistant":
        raise ValidationError("Only an answer of the policy can be written again.")
    if message.parent_id is None:
        raise ValidationError("This answer has no question before it to answer again.")
    return reply_start(conversation=message.conversation, parent=message.parent)  # type: ignore[arg-type]


@transaction.atomic
def chat_edit(*, message: Message, text: str) -> tuple[Message, Message]:
    """A new version of the user turn `message` (a sibling: the old one and its answers stay), and
    the answer it gets."""
    if message.role != "user":
        raise ValidationError("Only your own turns can be edited; ask for another answer instead.")
    content = clean_user_text(text)
    edited = Message.objects.create(
        conversation=message.conversation, parent=message.parent, role="user", content=content
    )
    return edited, reply_start(conversation=message.conversation, parent=edited)


@transaction.atomic
def chat_switch(*, message: Message) -> Message:
    """Show the branch through `message`, down to its newest turn; return that turn."""
    conversation = message.conversation
    tip = _tip(message, _children(list(conversation.messages.all())))
    conversation.current = tip
    conversation.save(update_fields=["current", "updated_at"])
    return tip


def conversation_settings_set(
    *,
    conversation: Conversation,
    by: User,
    system_prompt: str | None = None,
    title: str | None = None,
    version: ModelVersion | None = None,
    pin: bool = False,
) -> Conversation:
    """Change the system prompt, the title, or (admins, `pin=True`) the version that answers;
    `version=None` with `pin=True` goes back to the serving version."""
    fields = ["updated_at"]
    if system_prompt is not None:
        if len(system_prompt) > SYSTEM_PROMPT_MAX_CHARS:
            raise ValidationError(
                f"The system prompt is {len(system_prompt)} characters long; the limit is {SYSTEM_PROMPT_MAX_CHARS}."
            )
        conversation.system_prompt = system_prompt.strip()
        fields.append("system_prompt")
    if title is not None:
        conversation.title = title.strip()[:200]
        fields.append("title")
    if pin:
        if not by.is_prefloop_admin:
            raise PermissionDenied("Only an admin may pick the version that answers.")
        conversation.policy_version = version
        fields.append("policy_version")
    conversation.save(update_fields=fields)
    return conversation


def _ranking_key(question: Message, answers: list[Message]) -> str:
    return f"chat-rank:{question.pk}:" + ",".join(str(m.pk) for m in sorted(answers, key=lambda m: m.pk))


@transaction.atomic
def chat_rank(*, question: Message, places: dict[int, int], by: User) -> tuple[Label, bool]:
    """Rank the answers to the user turn `question` (answer id -> place, 1 best; equal places tie).

    They become a ranking item of the chat project, over the same texts and versions, with this
    person's label on it, as Open-Assistant collects rankings of sibling answers. Ranking the same
    answers again returns the first label: a double submit is harmless.
    """
    Message.objects.select_for_update().filter(pk=question.pk).first()  # one ranking at a time per turn
    answers = list(
        Message.objects.filter(parent=question, role="assistant", status=Message.Status.COMPLETE)
        .exclude(content="")
        .order_by("created_at", "id")
    )
    if question.role != "user" or len(answers) < 2:
        raise ValidationError("Rank needs two or more finished answers to the same turn.")
    ids = {m.pk for m in answers}
    if set(places) != ids:
        raise ValidationError("Give every answer to this turn a place, and no other message.")
    if any(not 1 <= place <= len(answers) for place in places.values()):
        raise ValidationError(f"Places go from 1 (best) to {len(answers)}.")
    key = _ranking_key(question, answers)
    existing = Label.objects.filter(annotator=by, idempotency_key=key).first()
    if existing is not None:
        return existing, False
    conversation = question.conversation
    context = context_before(message=answers[0])
    prompt = Prompt.objects.create(
        project=project_default(), messages=context, source=Prompt.Source.CHAT, created_by=by, conversation=conversation
    )
    task = item_create(
        prompt,
        [m.content for m in answers],
        [m.policy_version for m in answers],  # type: ignore[misc]
        kind=Task.Kind.RANKING,
        message=question,
    )
    candidate_of = dict(
        zip(
            (m.pk for m in answers), task.slots.order_by("position").values_list("candidate_id", flat=True), strict=True
        )
    )
    groups = [
        [candidate_of[m] for m in sorted(places, key=lambda pk: pk) if places[m] == place]
        for place in sorted(set(places.values()))
    ]
    return label_create(task=task, annotator=by, data={"ranking": groups}, source=Label.Source.UI, idempotency_key=key)


def ranked_questions(*, conversation: Conversation, by: User) -> set[int]:
    """The user turns of `conversation` whose answers this person has ranked."""
    return set(
        Task.objects.filter(
            kind=Task.Kind.RANKING, message__conversation=conversation, labels__annotator=by
        ).values_list("message_id", flat=True)
    )
