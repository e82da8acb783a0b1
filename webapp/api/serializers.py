from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import serializers

from webapp.accounts.models import User
from webapp.core.jobs import JOB_KINDS, JobStatus
from webapp.feedback.models import (
    Assignment,
    Candidate,
    FeedbackKind,
    GenerationJob,
    ImportJob,
    Label,
    MessageFeedback,
    Project,
    ProjectMember,
    Prompt,
    Task,
)
from webapp.feedback.validation import clean_messages
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun, VersionEvent


class RefuseUnknownFields:
    """A body naming a field the endpoint does not know is a 400 that names it: a misspelt field
    (`"choise"`) would otherwise be dropped without a word."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in set(data) - set(self.fields))  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError({name: ["is not a field here"] for name in unknown[:20]})
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictCharField(serializers.CharField):
    """Text, and only text: REST framework's CharField turns a number or a boolean into its string."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField()


class PromptInputSerializer(RefuseUnknownFields, serializers.Serializer):
    """Either `messages` (a chat ending with a user turn) or `text` (one user turn)."""

    messages = MessageSerializer(many=True, required=False)
    text = serializers.CharField(required=False, max_length=20_000)
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all(), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("messages" in attrs) == ("text" in attrs):
            raise serializers.ValidationError("give exactly one of 'messages' or 'text'")
        # an empty `messages` list is refused by clean_messages below (it answered 500 once: found by schemathesis)
        messages = attrs["messages"] if "messages" in attrs else [{"role": "user", "content": attrs["text"]}]
        try:
            return {"messages": clean_messages([dict(m) for m in messages]), "project": attrs.get("project")}
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"messages": exc.messages}) from None


class ProjectSerializer(RefuseUnknownFields, serializers.ModelSerializer):
    members = serializers.ListField(
        child=serializers.CharField(max_length=150),
        write_only=True,
        required=False,
        max_length=10_000,
        help_text="Usernames of the annotators who may work on it (membership is explicit; admins always may).",
    )
    archived = serializers.BooleanField(
        source="is_archived",
        required=False,
        help_text="An archived project serves no new items and trains by itself no more; its data stay.",
    )

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "guidelines",
            "feedback_types",
            "overlap",
            "gold_rate",
            "allow_partial_ranking",
            "show_gold_results",
            "lease_seconds",
            "answers_per_prompt",
            "temperature",
            "top_p",
            "max_tokens",
            "regenerate_share",
            "queue_order",
            "queue_epsilon",
            "members",
            "archived",
            "created_at",
        ]
        extra_kwargs = {
            "answers_per_prompt": {"min_value": 2, "max_value": 9},
            "temperature": {"min_value": 0.0, "max_value": 2.0},
            "top_p": {"min_value": 0.01, "max_value": 1.0},
            "max_tokens": {"min_value": 1, "max_value": 8192},
            "regenerate_share": {"min_value": 0.0, "max_value": 1.0},
            "queue_epsilon": {"min_value": 0.0, "max_value": 1.0},
        }

    def validate_members(self, value: list[str]) -> list[User]:
        names = list(dict.fromkeys(value))
        users = {u.username: u for u in User.objects.filter(username__in=names)}
        missing = [n for n in names if n not in users]
        if missing:
            raise serializers.ValidationError(f"no such user: {', '.join(missing[:20])}")
        return [users[n] for n in names]

    def create(self, validated_data: dict[str, Any]) -> Project:
        from webapp.feedback.services import project_archive, project_member_add

        members = validated_data.pop("members", [])
        archived = validated_data.pop("is_archived", False)
        with transaction.atomic():
            project = Project.objects.create(**validated_data)
            for user in members:
                project_member_add(project=project, user=user)
            if archived:
                project_archive(project=project, archived=True)
        return project

    def update(self, instance: Project, validated_data: dict[str, Any]) -> Project:
        from webapp.feedback.services import project_archive

        if "members" in validated_data:
            raise serializers.ValidationError({"members": "change members at /api/projects/<id>/members/"})
        archived = validated_data.pop("is_archived", None)
        with transaction.atomic():
            project = super().update(instance, validated_data)
            if archived is not None and archived != project.is_archived:
                project_archive(project=project, archived=archived)
        return project

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        from webapp.feedback.generation import generation_settings_error

        settings = {k: v for k, v in attrs.items() if k not in ("members", "is_archived")}
        merged = Project(**{**self._current(), **settings})
        compares = {FeedbackKind.PAIRWISE, FeedbackKind.RANKING} & set(merged.feedback_types)
        problem = generation_settings_error(merged)
        if compares and problem:  # a project of critiques or ratings only does not generate pairs
            raise serializers.ValidationError({"answers_per_prompt": problem})
        return attrs

    def _current(self) -> dict[str, Any]:
        if self.instance is None:
            return {}
        return {"answers_per_prompt": self.instance.answers_per_prompt, "feedback_types": self.instance.feedback_types}

    def validate_feedback_types(self, value: Any) -> list[str]:
        allowed = set(FeedbackKind.values)
        if not isinstance(value, list) or not value or not set(value) <= allowed:
            raise serializers.ValidationError(f"a non-empty list drawn from {', '.join(sorted(allowed))}")
        return list(dict.fromkeys(value))

    def validate_overlap(self, value: int) -> int:
        if not 1 <= value <= 20:
            raise serializers.ValidationError("overlap must be 1 to 20")
        return value

    def validate_gold_rate(self, value: float) -> float:
        if not 0 <= value <= 1:
            raise serializers.ValidationError("gold_rate must be between 0 and 1")
        return value


class ProjectMemberSerializer(RefuseUnknownFields, serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(
        choices=ProjectMember.Role.choices,
        required=False,
        help_text="annotator (judges items), reviewer (also adjudicates), admin (also manages the project). "
        "Default: annotator for a new member; an existing member keeps theirs.",
    )


class TaskBulkItemSerializer(PromptInputSerializer):
    """One item of a bulk task upload: a context, its candidates, and optionally a gold answer."""

    project = None  # type: ignore[assignment]
    kind = serializers.ChoiceField(choices=FeedbackKind.values, default="pairwise")
    candidates = serializers.ListField(child=serializers.CharField(max_length=20_000), min_length=1, max_length=9)
    is_gold = serializers.BooleanField(default=False)
    gold = serializers.JSONField(required=False, allow_null=True)
    external_id = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind, candidates = attrs["kind"], attrs["candidates"]
        wanted = {"pairwise": (2, 2), "ranking": (2, 9), "critique": (1, 1), "rating": (1, 1), "thumbs": (1, 1)}[kind]
        if not wanted[0] <= len(candidates) <= wanted[1]:
            raise serializers.ValidationError(
                f"a {kind} task takes {wanted[0]}"
                + (f" to {wanted[1]}" if wanted[1] != wanted[0] else "")
                + f" candidates, got {len(candidates)}"
            )
        if attrs["is_gold"] and not attrs.get("gold"):
            raise serializers.ValidationError("a gold item needs its answer in 'gold'")
        if attrs.get("gold"):
            _check_gold(kind, attrs["gold"], len(candidates))
        base = super().validate(attrs)
        return {**attrs, "messages": base["messages"]}


def _check_gold(kind: str, gold: Any, n_candidates: int) -> None:
    from training.feedback_io import validate_gold

    try:
        validate_gold(kind, gold, n_candidates)
    except ValueError as exc:
        raise serializers.ValidationError({"gold": str(exc)}) from None


class TaskBulkSerializer(RefuseUnknownFields, serializers.Serializer):
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all())
    items = TaskBulkItemSerializer(many=True, max_length=1000, min_length=1)  # type: ignore[call-arg]


class AdminOnlyFields:
    """Leaves out `admin_only` fields unless the request's user is an admin: annotators must not
    tell gold items from the rest, or gold-based trust measures nothing. Without a request in the
    serializer's context the fields are left out too (fail closed)."""

    admin_only: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)  # type: ignore[misc]
        if not _is_admin(self.context):  # type: ignore[attr-defined]
            for name in self.admin_only:
                data.pop(name, None)
        return data


def _is_admin(context: Mapping[str, Any]) -> bool:
    """Whether the serializer's request comes from an admin (no request: no)."""
    user = getattr(context.get("request"), "user", None)
    return bool(user is not None and user.is_authenticated and user.is_prefloop_admin)


class AssignmentSerializer(serializers.ModelSerializer):
    task = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "status", "task", "leased_at", "expires_at"]

    def get_task(self, assignment: Assignment) -> dict[str, Any]:
        return TaskSerializer(assignment.task, context=self.context).data


class SkipSerializer(RefuseUnknownFields, serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class ThumbsSerializer(RefuseUnknownFields, serializers.Serializer):
    value = serializers.ChoiceField(choices=MessageFeedback.Value.choices)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "project", "messages", "source", "external_id", "created_at"]


class CandidateSerializer(serializers.ModelSerializer):
    policy_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )

    class Meta:
        model = Candidate
        fields = ["id", "prompt", "text", "origin", "policy_version", "created_at"]

    def to_representation(self, instance: Candidate) -> dict[str, Any]:
        data = dict(super().to_representation(instance))
        if getattr(instance, "in_arena", False):  # a blind comparison's answer: which version wrote it stays hidden
            data["policy_version"] = None
        return data


class TaskSerializer(AdminOnlyFields, serializers.ModelSerializer):
    candidates = serializers.SerializerMethodField()
    prompt = PromptSerializer(read_only=True)
    admin_only = ("is_gold",)

    class Meta:
        model = Task
        fields = ["id", "project", "kind", "prompt", "candidates", "required_labels", "is_gold", "created_at"]

    def get_candidates(self, task: Task) -> list[dict[str, Any]]:
        slots = sorted(task.slots.all(), key=lambda s: s.position)
        rows: list[dict[str, Any]] = [dict(CandidateSerializer(slot.candidate).data) for slot in slots]
        if task.arena and not _is_admin(self.context):  # a blind comparison: the versions stay hidden
            for row in rows:
                row["policy_version"] = None
        return rows


class JudgmentSerializer(RefuseUnknownFields, serializers.Serializer):
    """The fields of a judgment; which ones a task needs depends on its kind."""

    choice = serializers.ChoiceField(choices=Label.Choice.choices, required=False)
    strength = serializers.IntegerField(min_value=1, max_value=3, required=False, allow_null=True)
    ranking = serializers.JSONField(required=False, help_text="Groups of candidate ids, best first: [[3], [1, 2]].")
    critique = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    rewrite = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    rating = serializers.IntegerField(min_value=1, max_value=7, required=False)
    rationale = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class LabelInputSerializer(JudgmentSerializer):
    task = serializers.PrimaryKeyRelatedField(queryset=Task.objects.all())


class LabelSerializer(AdminOnlyFields, serializers.ModelSerializer):
    annotator: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    admin_only = ("gold_correct",)

    class Meta:
        model = Label
        fields = [
            "id",
            "task",
            "annotator",
            "kind",
            "source",
            "choice",
            "strength",
            "ranking",
            "critique",
            "rewrite",
            "rating",
            "rationale",
            "gold_correct",
            "created_at",
        ]


class SubmittedNextSerializer(serializers.Serializer):
    """What `submit-and-next` answers: the label submitted, and the next task served (null: none left)."""

    submitted = LabelSerializer()
    next = AssignmentSerializer(allow_null=True)


class ModelVersionSerializer(serializers.ModelSerializer):
    name = serializers.CharField(read_only=True)
    parent = serializers.SlugRelatedField(slug_field="number", read_only=True, allow_null=True)  # type: ignore[assignment,var-annotated]

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "number",
            "name",
            "status",
            "parent",
            "kind",
            "base_model",
            "artifact_path",
            "metrics",
            "data_hash",
            "gate",
            "project",
            "n_labels",
            "created_at",
            "promoted_at",
        ]

    n_labels = serializers.SerializerMethodField(help_text="How many labels trained this version.")

    def get_n_labels(self, version: ModelVersion) -> int:
        return len(version.label_ids or [])


class VersionPromoteSerializer(RefuseUnknownFields, serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    confirm = serializers.BooleanField(
        required=False, default=False, help_text="Needed to promote a candidate the gate rejected."
    )


class VersionEventSerializer(serializers.ModelSerializer):
    version = serializers.SlugRelatedField(slug_field="number", read_only=True)  # type: ignore[var-annotated]
    previous = serializers.SlugRelatedField(slug_field="number", read_only=True, allow_null=True)  # type: ignore[var-annotated]
    actor = serializers.CharField(source="actor_name", read_only=True)

    class Meta:
        model = VersionEvent
        fields = ["id", "action", "version", "previous", "actor", "reason", "created_at"]


class RewardModelSerializer(serializers.ModelSerializer):
    name = serializers.CharField(read_only=True)
    run = serializers.PrimaryKeyRelatedField(read_only=True)  # type: ignore[var-annotated]
    n_members = serializers.IntegerField(
        read_only=True, help_text="Ensemble members as scored: one per model, or per score head of a 'heads' model."
    )

    class Meta:
        model = RewardModel
        fields = [
            "id",
            "number",
            "name",
            "run",
            "backbone",
            "artifact_path",
            "member_paths",
            "n_members",
            "project",
            "status",
            "gate",
            "promoted_at",
            "config",
            "metrics",
            "data_hash",
            "created_at",
        ]


RUN_REQUEST_KINDS = [("policy", "The project's recipe decides"), *TrainingRun.Kind.choices]


class RunCreateSerializer(RefuseUnknownFields, serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=RUN_REQUEST_KINDS,
        default="policy",
        help_text="`policy` (the default): the update method of the project's recipe.",
    )
    project = serializers.PrimaryKeyRelatedField(
        queryset=Project.objects.all(), required=False, allow_null=True, help_text="Default: the chat's project."
    )


class TrainingRunSerializer(serializers.ModelSerializer):
    time_limit_s = serializers.IntegerField(read_only=True, help_text="Seconds it may run (JOB_TIME_LIMITS; 0: none).")
    parent_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )
    result_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )
    result_reward_model: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "kind",
            "project",
            "status",
            "stage",
            "trigger",
            "recipe",
            "attempts",
            "heartbeat_at",
            "time_limit_s",
            "cancel_requested",
            "log_tail",
            "progress",
            "n_labels",
            "n_pairs",
            "metrics",
            "error",
            "parent_version",
            "result_version",
            "result_reward_model",
            "created_at",
            "started_at",
            "finished_at",
        ]


def paginated(serializer: type[serializers.Serializer], name: str) -> serializers.Serializer:
    """The schema of a page of `serializer` rows, as REST framework's page-number pagination answers."""
    from drf_spectacular.utils import inline_serializer

    return inline_serializer(
        name=f"Paginated{name}List",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
        },
    )


class ArenaRequestSerializer(RefuseUnknownFields, serializers.Serializer):
    versions = serializers.ListField(
        child=serializers.IntegerField(min_value=1), min_length=2, max_length=2, help_text="Two version numbers."
    )
    prompts = serializers.IntegerField(
        min_value=1, max_value=1000, default=20, help_text="How many of the newest prompts."
    )


class GenerationJobSerializer(serializers.ModelSerializer):
    time_limit_s = serializers.IntegerField(read_only=True, help_text="Seconds it may run (JOB_TIME_LIMITS; 0: none).")
    policy_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )

    class Meta:
        model = GenerationJob
        fields = [
            "id",
            "project",
            "kind",
            "prompt_ids",
            "policy_version",
            "status",
            "prompts_total",
            "prompts_done",
            "tasks_created",
            "failed",
            "error",
            "attempts",
            "heartbeat_at",
            "time_limit_s",
            "cancel_requested",
            "log_tail",
            "created_at",
            "started_at",
            "finished_at",
        ]


class ImportJobSerializer(serializers.ModelSerializer):
    time_limit_s = serializers.IntegerField(read_only=True, help_text="Seconds it may run (JOB_TIME_LIMITS; 0: none).")
    progress = serializers.FloatField(
        read_only=True, allow_null=True, help_text="The share of the file read (null: its length is not known)."
    )

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "project",
            "format",
            "file_name",
            "size_bytes",
            "status",
            "items",
            "created_tasks",
            "created_prompts",
            "skipped",
            "labels",
            "bad_lines",
            "bad",
            "lines_total",
            "lines_read",
            "progress",
            "error",
            "attempts",
            "heartbeat_at",
            "time_limit_s",
            "cancel_requested",
            "log_tail",
            "created_at",
            "started_at",
            "finished_at",
        ]


class JobSerializer(serializers.Serializer):
    """A background job of any kind, as `GET /api/jobs/` lists it (webapp.core.jobs.job_row)."""

    kind = serializers.ChoiceField(choices=JOB_KINDS)
    id = serializers.IntegerField()
    name = serializers.CharField()
    project = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.FloatField(allow_null=True, help_text="0 to 1; null where the kind cannot tell.")
    attempts = serializers.IntegerField()
    heartbeat_at = serializers.DateTimeField(allow_null=True)
    time_limit_s = serializers.IntegerField(help_text="Seconds it may run (JOB_TIME_LIMITS; 0: none).")
    cancel_requested = serializers.BooleanField()
    waiting_on = serializers.CharField(help_text="Why a queued job is not moving (no worker on its queue), or empty.")
    error = serializers.CharField()
    log_tail = serializers.CharField(help_text="The last lines its worker logged for it.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
