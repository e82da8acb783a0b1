"""Every write to conversations, prompts, candidates, tasks and labels goes through these functions."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from webapp.accounts.models import User
from webapp.feedback.explore import task_stats_refresh
from webapp.feedback.generation import answers_for, item_create
from webapp.feedback.gold import gold_correct
from webapp.feedback.models import (
    Assignment,
    Candidate,
    Conversation,
    Label,
    Message,
    MessageFeedback,
    Project,
    ProjectMember,
    Prompt,
    Task,
    TaskCandidate,
)
from webapp.feedback.projects import project_default
from webapp.feedback.validation import clean_label, clean_messages, clean_user_text
from webapp.hooks.services import event_emit, hooks_active
from webapp.runs.models import ModelVersion
from webapp.runs.selectors import version_serving
from webapp.runs.services import run_maybe_trigger

logger = logging.getLogger(__name__)


def conversation_create(*, owner: User, title: str = "") -> Conversation:
    return Conversation.objects.create(owner=owner, title=title[:200])


def reply_version(conversation: Conversation) -> ModelVersion | None:
    """The version that writes a conversation's next answer: the one an admin pinned, else the serving one."""
    return conversation.policy_version or version_serving()


def reply_start(*, conversation: Conversation, parent: Message, also: list[str] | None = None) -> Message:
    """An empty answer to `parent` that the stream will fill, by the conversation's reply version,
    made the branch on screen; the conversation is saved with its fields `also`."""
    reply = Message.objects.create(
        conversation=conversation,
        parent=parent,
        role="assistant",
        status=Message.Status.STREAMING,
        policy_version=reply_version(conversation),
    )
    conversation.current = reply
    conversation.save(update_fields=["current", "updated_at", *(also or [])])
    return reply


@transaction.atomic
def chat_turn_start(
    *, conversation: Conversation, text: str, parent: Message | None = None, at_root: bool = False
) -> tuple[Message, Message]:
    """Store the user's turn and an empty assistant turn that the stream will fill.

    The turn follows `parent`, or the branch on screen (`conversation.current`) when none is
    given; `at_root` starts a new first turn. The assistant turn records the version asked to
    write it: the one an admin pinned to the conversation, else the serving one.
    """
    content = clean_user_text(text)
    if parent is not None and (parent.conversation_id != conversation.pk or parent.role != "assistant"):
        raise ValidationError("A turn follows an answer of this conversation.")
    if parent is None and not at_root:
        parent = conversation.current or conversation.messages.order_by("-created_at", "-id").first()
    user_message = Message.objects.create(conversation=conversation, parent=parent, role="user", content=content)
    if not conversation.title:
        conversation.title = content[:80]
    reply = reply_start(conversation=conversation, parent=user_message, also=["title"])
    if parent is not None and parent.role == "assistant":  # the user's reply is feedback on that answer
        from webapp.feedback.followups import followups_send

        followups_send()
    return user_message, reply


def chat_reply_finish(*, message: Message, content: str, failed: bool = False, error: str = "") -> Message:
    """Store the answer as written; a failed one keeps why (`error`), which its page shows."""
    message.content = content
    message.status = Message.Status.FAILED if failed else Message.Status.COMPLETE
    message.error = error[:2000] if failed else ""
    message.save(update_fields=["content", "status", "error"])
    return message


def pairwise_task_create(
    *,
    messages: list[dict[str, str]],
    created_by: User,
    source: str,
    conversation: Conversation | None = None,
    message: Message | None = None,
) -> Task:
    """Ask the serving policy for two answers to `messages` and store them as a pairwise task.

    The policy server is called before the transaction opens, so no database lock is held while
    the model writes. Raises `PolicyServerError` when the server cannot answer.
    """
    context = clean_messages(messages)
    version = _serving_or_fail()
    project = project_default()
    texts = answers_for(context, project=project, version=version, k=2)  # two different answers when it can
    with transaction.atomic():
        prompt = Prompt.objects.create(
            project=project, messages=context, source=source, created_by=created_by, conversation=conversation
        )
        return item_create(prompt, texts, [version, version], kind=Task.Kind.PAIRWISE, message=message)


def _serving_or_fail() -> ModelVersion:
    version = version_serving()
    if version is None:
        raise ValidationError("no policy version is serving yet: run `manage.py prefloop_setup`")
    return version


def prompt_create(
    *, messages: list[dict[str, str]], created_by: User, source: str, project: Project | None = None
) -> Prompt:
    return Prompt.objects.create(
        project=project or project_default(), messages=clean_messages(messages), source=source, created_by=created_by
    )


def label_create(
    *,
    task: Task,
    annotator: User,
    data: dict[str, Any],
    source: str,
    assignment: Assignment | None = None,
    idempotency_key: str = "",
) -> tuple[Label, bool]:
    """Validate and store one raw judgment of `task`; return it and whether it is new.

    The same person judging the same task again, or reusing an idempotency key, gets the first
    label back: a double submit is harmless. Raises ValidationError for bad input.
    """
    if idempotency_key:
        existing = Label.objects.filter(annotator=annotator, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    slots = list(task.slots.order_by("position").values_list("candidate_id", flat=True))
    fields = clean_label(
        kind=task.kind, data=data, candidate_ids=slots, allow_partial_ranking=task.project.allow_partial_ranking
    )
    try:
        with transaction.atomic():
            label = Label.objects.create(
                task=task,
                annotator=annotator,
                assignment=assignment,
                kind=task.kind,
                source=source,
                gold_correct=gold_correct(task, fields),
                idempotency_key=idempotency_key,
                **fields,
            )
            if assignment is not None:
                mine = Assignment.objects.filter(pk=assignment.pk)
                submitted = {"status": Assignment.Status.SUBMITTED, "finished_at": timezone.now()}
                # a lease that expired (or was given back) meanwhile takes its slot again: the work is kept
                closed = (Assignment.Status.EXPIRED, Assignment.Status.SKIPPED)
                if not mine.filter(status=Assignment.Status.LEASED).update(**submitted) and mine.filter(
                    status__in=closed
                ).update(**submitted):
                    task_taken_add([task.pk], +1)
    except IntegrityError:
        existing = (
            Label.objects.filter(task=task, annotator=annotator).first()
            or Label.objects.filter(annotator=annotator, idempotency_key=idempotency_key).first()
        )
        if existing is None:
            raise
        return existing, False
    n_labels = task_stats_refresh([task.pk])[task.pk]
    _label_events(label, task, n_labels)
    run_maybe_trigger(only=task.project)  # only this label's project has a new label
    return label, True


def _label_events(label: Label, task: Task, n_labels: int) -> None:
    """Tell the webhooks that listen: a label was stored; and, when it was the last its item's
    overlap asked for (the item now has `n_labels`), the item is complete."""
    hooks = hooks_active()  # one read for both events
    event_emit("label.created", {
        "label": label.pk, "task": task.pk, "project": task.project_id, "kind": label.kind,
        "annotator": label.annotator.username, "source": label.source, "choice": label.choice or None,
        "strength": label.strength, "ranking": label.ranking, "rating": label.rating,
        "critique": label.critique or None, "rewrite": label.rewrite or None, "rationale": label.rationale or None,
    }, hooks=hooks)  # fmt: skip
    if n_labels == task.required_labels:
        event_emit("item.completed", {"task": task.pk, "project": task.project_id, "labels": n_labels}, hooks=hooks)


def labels_bulk_create(*, labels: list[Label]) -> list[Label]:
    """Store raw labels built by an import (unsaved `Label` rows) in one query; return them.

    Unlike `label_create` there is no validation, no idempotency check and no training trigger:
    an import's labels never had them. Each counts towards its item's overlap, as a submitted
    judgment does, so an item the file labelled is not served to people again for nothing. Call it
    inside the import's transaction.
    """
    stored = Label.objects.bulk_create(labels)
    task_taken_add(Counter(label.task_id for label in stored))
    task_stats_refresh(label.task_id for label in stored)
    return stored


def label_submit(
    *, task: Task, annotator: User, choice: str, strength: int | None = 1, rationale: str = ""
) -> tuple[Label, bool]:
    """Store one annotator's pairwise judgment from the chat; return it and whether it is new.

    A second submit by the same annotator returns the first label unchanged, so a double click or
    a retried request is harmless. Raises ValidationError for a bad choice or strength.
    """
    return label_create(
        task=task,
        annotator=annotator,
        data={"choice": choice, "strength": strength, "rationale": rationale},
        source=Label.Source.UI,
    )


def message_feedback_set(*, message: Message, user: User, value: str, reason: str = "") -> MessageFeedback:
    """Thumbs up or down on an assistant message; a person's latest thumb on a message counts."""
    if message.role != "assistant":
        raise ValidationError("thumbs go on answers of the policy only")
    if value not in MessageFeedback.Value.values:
        raise ValidationError(f"value must be up or down (got {value!r})")
    feedback, _ = MessageFeedback.objects.update_or_create(
        message=message, user=user, defaults={"value": value, "reason": reason.strip()[:2000]}
    )
    return feedback


@dataclass
class BulkCreated:
    tasks: list[Task]  # with `prepared_slots`: their TaskCandidate rows, A first
    items: list[dict[str, Any]]  # the item each task was made from, in the same order
    skipped: list[str]  # external ids the project already had


@transaction.atomic
def tasks_bulk_create(
    *, project: Project, items: list[dict[str, Any]], created_by: User | None, source: str = Prompt.Source.API
) -> BulkCreated:
    """Create tasks with their prompts and candidates in a few queries; all or nothing.

    Each item: `messages`, `kind`, `candidates` (texts, shown in this order), optional `is_gold`,
    `gold` and `external_id`. An item whose external id the project already has, or that repeats
    an earlier item's id, is skipped (so a re-run of an import adds nothing twice).
    """
    disabled = sorted({item["kind"] for item in items} - set(project.feedback_types))
    if disabled:
        raise ValidationError(
            f"project {project.name!r} does not ask for {', '.join(disabled)} judgments "
            f"(it asks for {', '.join(project.feedback_types) or 'none'})"
        )
    ids = [item.get("external_id") or "" for item in items]
    known = set(
        Prompt.objects.filter(project=project, external_id__in=[i for i in ids if i]).values_list(
            "external_id", flat=True
        )
    )
    fresh, skipped = [], []
    for item, ext in zip(items, ids, strict=True):
        if ext and ext in known:
            skipped.append(ext)
            continue
        if ext:
            known.add(ext)
        fresh.append(item)
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                project=project,
                messages=item["messages"],
                source=source,
                created_by=created_by,
                external_id=item.get("external_id") or "",
            )
            for item in fresh
        ]
    )
    tasks = Task.objects.bulk_create(
        [
            Task(
                project=project,
                kind=item["kind"],
                prompt=prompt,
                required_labels=project.overlap,
                is_gold=bool(item.get("is_gold")),
                gold=item.get("gold"),
                created_by=created_by,
            )
            for item, prompt in zip(fresh, prompts, strict=True)
        ]
    )
    origin = Candidate.Origin.IMPORT if source == Prompt.Source.IMPORT else Candidate.Origin.HUMAN
    candidates = Candidate.objects.bulk_create(
        [
            Candidate(prompt=prompt, text=text, origin=origin)
            for item, prompt in zip(fresh, prompts, strict=True)
            for text in item["candidates"]
        ]
    )
    slots, cursor = [], 0
    for item, task in zip(fresh, tasks, strict=True):
        task.prepared_slots = []  # type: ignore[attr-defined]
        for position in range(len(item["candidates"])):
            slot = TaskCandidate(task=task, candidate=candidates[cursor], position=position)
            task.prepared_slots.append(slot)  # type: ignore[attr-defined]
            slots.append(slot)
            cursor += 1
    TaskCandidate.objects.bulk_create(slots)
    return BulkCreated(tasks=tasks, items=fresh, skipped=skipped)


def task_taken_add(task_ids: list[int] | Counter[int], delta: int = 1) -> None:
    """Keep `Task.taken` (a task's open assignments, leased or submitted: what the queue's index
    reads) in step with a change of assignments' status; rows in id order, so no two writers deadlock."""
    counts = task_ids if isinstance(task_ids, Counter) else Counter(task_ids)
    for task_id, n in sorted(counts.items()):
        Task.objects.filter(pk=task_id).update(taken=Greatest(F("taken") + n * delta, 0))


def project_member_add(*, project: Project, user: User, role: str | None = None) -> tuple[ProjectMember, bool]:
    """Make `user` a member of `project` (idempotent); return the membership and whether it is new.
    With `role`, the membership takes that role, whether it is new or not."""
    if role is not None and role not in ProjectMember.Role.values:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ProjectMember.Role.values)}")
    membership, created = ProjectMember.objects.get_or_create(
        project=project, user=user, defaults={"role": role or ProjectMember.Role.ANNOTATOR}
    )
    if role is not None and membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return membership, created


def project_archive(*, project: Project, archived: bool) -> Project:
    """Archive a project (it serves no new items and stops training by itself; its data stay) or
    bring it back. Archiving twice keeps the first time."""
    if archived and project.archived_at is None:
        project.archived_at = timezone.now()
    elif not archived:
        project.archived_at = None
    project.save(update_fields=["archived_at"])
    return project


def project_member_remove(*, project: Project, user: User) -> bool:
    """End a membership; the person's labels stay. Return whether there was one."""
    deleted, _ = ProjectMember.objects.filter(project=project, user=user).delete()
    return bool(deleted)
