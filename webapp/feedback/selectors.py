from __future__ import annotations

import json

from django.db.models import Prefetch, Q, QuerySet

from webapp.accounts.models import User
from webapp.feedback.models import Conversation, Label, Message, Project, Prompt, Task, TaskCandidate
from webapp.runs.models import TrainingRun


def conversation_list(*, owner: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=owner)


def conversation_messages(*, conversation: Conversation) -> list[Message]:
    return list(conversation.messages.select_related("policy_version").order_by("created_at", "id"))


def context_before(*, message: Message) -> list[dict[str, str]]:
    """The chat messages that led to `message` (its ancestors, oldest first), as the model sees them."""
    chain: list[Message] = []
    by_id = {m.pk: m for m in message.conversation.messages.all()}
    current = by_id.get(message.parent_id) if message.parent_id else None
    while current is not None:
        chain.append(current)
        current = by_id.get(current.parent_id) if current.parent_id else None
    turns = [{"role": m.role, "content": m.content} for m in reversed(chain) if m.status == m.Status.COMPLETE]
    system = message.conversation.system_prompt
    return ([{"role": "system", "content": system}] if system else []) + turns


def slots_prefetch(path: str = "slots") -> Prefetch:
    """A task's answer slots with their candidates (and versions) joined in, in one query per chunk.

    Chained prefetches (``slots__candidate``) make SQLite fail on large exports ("Expression tree
    is too large"): Django filters the candidates of hidden reverse relations with one ``OR`` per
    id. A join has no such limit, and saves a query.
    """
    return Prefetch(path, queryset=TaskCandidate.objects.select_related("candidate__policy_version"))


def task_with_candidates(*, task_id: int) -> Task:
    return Task.objects.select_related("prompt").prefetch_related(slots_prefetch()).get(pk=task_id)


def task_list_for(*, user: User) -> QuerySet[Task]:
    """Admins see every task; others the tasks they made (chat comparisons) or were served."""
    tasks = Task.objects.select_related("prompt", "project").prefetch_related(slots_prefetch())
    if user.is_prefloop_admin:
        return tasks
    return tasks.filter(Q(created_by=user) | Q(assignments__annotator=user)).distinct()


def label_list_for(*, user: User) -> QuerySet[Label]:
    labels = Label.objects.select_related("task", "annotator")
    return labels if user.is_prefloop_admin else labels.filter(annotator=user)


def labels_since_last_run(
    *, kind: str = TrainingRun.Kind.DPO, project: Project | None = None, at_most: int | None = None
) -> int:
    """Labels (of `project`, when given) written since the last run of `kind` (of that project),
    counting no further than `at_most` (what a threshold needs: a bounded read at every label)."""
    runs = TrainingRun.objects.filter(kind=kind)
    labels = Label.objects.all()
    if project is not None:
        runs, labels = runs.filter(project=project), labels.filter(task__project=project)
    last = runs.order_by("-created_at").first()
    if last is not None:
        labels = labels.filter(created_at__gt=last.created_at)
    if at_most is not None:
        return labels.values("id")[:at_most].count()
    return labels.count()


def prompts_recent(*, limit: int, project: Project | None = None) -> list[list[dict[str, str]]]:
    """The newest `limit` distinct prompts (chats and imports, of `project` when given) that end
    with a user turn, newest first."""
    seen: set[str] = set()
    prompts: list[list[dict[str, str]]] = []
    rows = Prompt.objects.all() if project is None else Prompt.objects.filter(project=project)
    for messages in rows.order_by("-id").values_list("messages", flat=True).iterator(chunk_size=500):
        key = json.dumps(messages, sort_keys=True)
        if not messages or messages[-1].get("role") != "user" or key in seen:
            continue
        seen.add(key)
        prompts.append(messages)
        if len(prompts) >= limit:
            break
    return prompts


def projects_for(user: User) -> QuerySet[Project]:
    """Projects a person may annotate: admins all, archived ones too; others only the unarchived
    ones they are a member of (a project without members is open to no annotator: membership is
    explicit)."""
    if user.is_prefloop_admin:
        return Project.objects.all()
    return Project.objects.filter(members=user, archived_at__isnull=True)
