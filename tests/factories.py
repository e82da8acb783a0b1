"""Small factories for test rows, written through the services where one exists."""

from __future__ import annotations

import itertools

from webapp.accounts.models import User
from webapp.accounts.services import user_ensure
from webapp.feedback.models import Candidate, Project, ProjectMember, Prompt, Task, TaskCandidate
from webapp.feedback.projects import project_default
from webapp.runs.models import ModelVersion, RewardModel
from webapp.runs.services import reward_model_register, reward_model_serve, version_promote, version_register

_seq = itertools.count(1)


def make_user(role: str = User.Role.ANNOTATOR, username: str | None = None, password: str = "pw-for-tests") -> User:
    user, _ = user_ensure(username=username or f"user{next(_seq)}", password=password, role=role)
    return user


def make_serving_version(path: str = "/nonexistent/adapter") -> ModelVersion:
    version = version_register(artifact_path=path, base_model="tiny", parent=None)
    return version_promote(version=version)


def make_project(*, members: tuple[User, ...] | list[User] = (), **fields) -> Project:
    """A project; `members` may annotate it (membership is explicit)."""
    fields.setdefault("name", f"project {next(_seq)}")
    fields.setdefault("feedback_types", ["pairwise", "ranking", "critique", "rating"])
    project = Project.objects.create(**fields)
    for user in members:
        ProjectMember.objects.create(project=project, user=user)
    return project


def make_task(
    *,
    created_by: User | None = None,
    project: Project | None = None,
    kind: str = "pairwise",
    texts: tuple[str, ...] = ("first answer", "second answer"),
    question: str = "What is the capital of France?",
    **fields,
) -> Task:
    """A task with candidates `texts` in order (A first)."""
    project = project or project_default()
    prompt = Prompt.objects.create(
        project=project, messages=[{"role": "user", "content": question}], source="api", created_by=created_by
    )
    fields.setdefault("required_labels", project.overlap)
    task = Task.objects.create(project=project, kind=kind, prompt=prompt, created_by=created_by, **fields)
    for position, text in enumerate(texts):
        candidate = Candidate.objects.create(prompt=prompt, text=text)
        TaskCandidate.objects.create(task=task, candidate=candidate, position=position)
    return task


def make_pairwise_task(*, created_by: User, **fields) -> Task:
    return make_task(created_by=created_by, **fields)


def make_heads_reward_model(heads: int, path: str = "/nonexistent/rm") -> RewardModel:
    """A serving reward model with ``heads`` score heads in one folder, as a 'heads' run leaves it."""
    return make_serving_reward_model(
        artifact_path=path,
        backbone="tiny",
        member_paths=[""],
        config={"ensemble_method": "heads"},
        metrics={"members": [{"path": path, "heads": heads}]},
    )


def make_serving_reward_model(**fields) -> RewardModel:
    """A registered reward model that serves its project (`fields` as `reward_model_register` takes them)."""
    return reward_model_serve(reward_model=reward_model_register(**fields), reason="made by a test")
