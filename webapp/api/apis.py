"""REST endpoints: one operation, one class, with input and output serializers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from training.feedback_io import EXPORT_KINDS, FORMATS, read_feedback
from webapp.accounts.models import User
from webapp.api.permissions import AdminForWrites, IsPrefloopAdmin
from webapp.api.serializers import (
    ArenaRequestSerializer,
    AssignmentSerializer,
    CandidateSerializer,
    GenerationJobSerializer,
    ImportJobSerializer,
    JobSerializer,
    JudgmentSerializer,
    LabelInputSerializer,
    LabelSerializer,
    ModelVersionSerializer,
    ProjectMemberSerializer,
    ProjectSerializer,
    PromptInputSerializer,
    PromptSerializer,
    RewardModelSerializer,
    RunCreateSerializer,
    SkipSerializer,
    SubmittedNextSerializer,
    TaskBulkSerializer,
    TaskSerializer,
    ThumbsSerializer,
    TrainingRunSerializer,
    VersionEventSerializer,
    VersionPromoteSerializer,
    paginated,
)
from webapp.core.http import api_user
from webapp.core.jobs import JOB_KINDS, JobStatus, job_cancel, job_model_for, job_row, jobs_list, queue_listeners
from webapp.core.parsing import parse_id
from webapp.feedback import assignments
from webapp.feedback import services as feedback_services
from webapp.feedback.assignments import label_create
from webapp.feedback.followups import followup_row, followups_scored
from webapp.feedback.generation import arena_job_create, generation_job_create, generation_settings_error
from webapp.feedback.models import (
    Assignment,
    Candidate,
    GenerationJob,
    ImportJob,
    Label,
    Message,
    Project,
    Prompt,
    TaskCandidate,
)
from webapp.feedback.quality import project_quality
from webapp.feedback.selectors import label_list_for, projects_for, task_list_for
from webapp.feedback.transfer import export_download, import_items, import_job_create, report_counts
from webapp.runs import services as run_services
from webapp.runs.arena import arena_board
from webapp.runs.data import training_preview
from webapp.runs.models import ModelVersion, RewardModel, TrainingRun, VersionEvent
from webapp.runs.recipe import PRESETS, RecipeError
from webapp.runs.selectors import reward_model_list, run_list, version_list

BULK_LIMIT = 1000
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Any unique string; a retry with the same key returns the first result instead of a second label.",
)


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 200:
        raise ValidationError({"Idempotency-Key": "at most 200 characters"})
    return key


def _object_body(request: Request) -> Any:
    """The body of a request whose body may be left out: a JSON object, or nothing ({})."""
    if not isinstance(request.data, dict):
        raise ValidationError({"detail": f"the body must be a JSON object, got {type(request.data).__name__}"})
    return request.data


def _filter(queryset: QuerySet[Any], request: Request, fields: dict[str, str]) -> QuerySet[Any]:
    """Apply `?name=value` filters; a malformed number is a 400, not a 500."""
    for param, lookup in fields.items():
        value = request.query_params.get(param)
        if value is None or value == "":
            continue
        if lookup.endswith("_id") or lookup == "task_id":
            if parse_id(value) is None:
                raise ValidationError({param: f"must be a number, got {value!r}"})
        if lookup == "is_gold":
            if not api_user(request).is_prefloop_admin:
                raise PermissionDenied("Only admins can filter by is_gold.")
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValidationError({param: "must be true or false"})
            value = value.lower() in ("true", "1")  # type: ignore[assignment]
        queryset = queryset.filter(**{lookup: value})
    return queryset


def _prompts_for(request: Request) -> QuerySet[Prompt]:
    prompts = Prompt.objects.all()
    return prompts if api_user(request).is_prefloop_admin else prompts.filter(created_by=api_user(request))


class PromptListCreateApi(APIView):
    @extend_schema(operation_id="prompts_list", responses=paginated(PromptSerializer, "Prompt"), summary="List prompts")
    def get(self, request: Request) -> Response:
        paginator = generics.GenericAPIView.pagination_class()  # type: ignore[misc]
        page = paginator.paginate_queryset(_prompts_for(request).order_by("-id"), request, view=self)
        return paginator.get_paginated_response(PromptSerializer(page, many=True).data)

    @extend_schema(
        request=PromptInputSerializer,
        responses={201: PromptSerializer},
        summary="Create a prompt, or up to 1,000 at once (send a list)",
    )
    def post(self, request: Request) -> Response:
        many = isinstance(request.data, list)
        if many and not 1 <= len(request.data) <= BULK_LIMIT:
            raise ValidationError({"detail": f"send 1 to {BULK_LIMIT} prompts at once, not {len(request.data)}"})
        serializer = PromptInputSerializer(data=request.data, many=many)
        serializer.is_valid(raise_exception=True)
        rows = serializer.validated_data if many else [serializer.validated_data]
        user = api_user(request)
        allowed = set(projects_for(user).values_list("pk", flat=True))
        if any(row["project"] is not None and row["project"].pk not in allowed for row in rows):
            raise PermissionDenied("you are not a member of that project")
        with transaction.atomic():
            prompts = [
                feedback_services.prompt_create(
                    messages=row["messages"], created_by=user, source=Prompt.Source.API, project=row["project"]
                )
                for row in rows
            ]
            for project in {prompt.project for prompt in prompts}:  # their answers, written by a worker
                generation_job_create(project=project, created_by=user)
        data = PromptSerializer(prompts, many=True).data
        return Response(data if many else data[0], status=status.HTTP_201_CREATED)


class PromptTaskCreateApi(APIView):
    @extend_schema(
        request=None,
        responses={202: GenerationJobSerializer},
        summary="Queue the policy's answers to this prompt: a worker makes them an item of its project "
        "(watch the job at /api/generation-jobs/<id>/)",
    )
    def post(self, request: Request, prompt_id: int) -> Response:
        prompt = get_object_or_404(_prompts_for(request), pk=prompt_id)
        job = generation_job_create(project=prompt.project, created_by=api_user(request), prompt_ids=[prompt.pk])
        return Response(GenerationJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class CandidateListApi(generics.ListAPIView):
    serializer_class = CandidateSerializer

    def get_queryset(self) -> QuerySet[Candidate]:
        candidates = Candidate.objects.filter(prompt__in=_prompts_for(self.request)).select_related("policy_version")
        if not api_user(self.request).is_prefloop_admin:  # an arena stays blind to the prompt's author too
            in_arena = TaskCandidate.objects.filter(candidate=OuterRef("pk"), task__arena=True)
            candidates = candidates.annotate(in_arena=Exists(in_arena))
        prompt = self.request.query_params.get("prompt")
        if prompt is not None:
            prompt_id = parse_id(prompt)
            if prompt_id is None:
                raise ValidationError({"prompt": f"must be a number, got {prompt!r}"})
            candidates = candidates.filter(prompt_id=prompt_id)
        return candidates.order_by("id")


class TaskListApi(generics.ListAPIView):
    """Tasks you made or were served (admins: all), filtered by `project`, `prompt`, `kind` and `is_gold`."""

    serializer_class = TaskSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        tasks = task_list_for(user=api_user(self.request)).order_by("-id")
        fields = {"project": "project_id", "prompt": "prompt_id", "kind": "kind", "is_gold": "is_gold"}
        return _filter(tasks, self.request, fields)


class TaskDetailApi(generics.RetrieveAPIView):
    serializer_class = TaskSerializer
    lookup_url_kwarg = "task_id"

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return task_list_for(user=api_user(self.request))


class LabelListCreateApi(APIView):
    @extend_schema(
        operation_id="labels_list",
        responses=paginated(LabelSerializer, "Label"),
        summary="List labels (your own; admins see all), filtered by project, kind, task and annotator",
    )
    def get(self, request: Request) -> Response:
        labels = _filter(
            label_list_for(user=api_user(request)).order_by("-id"),
            request,
            {"project": "task__project_id", "kind": "kind", "task": "task_id", "annotator": "annotator__username"},
        )
        paginator = generics.GenericAPIView.pagination_class()  # type: ignore[misc]
        page = paginator.paginate_queryset(labels, request, view=self)
        return paginator.get_paginated_response(LabelSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(
        request=LabelInputSerializer,
        responses={201: LabelSerializer, 200: LabelSerializer},
        parameters=[IDEMPOTENCY_KEY],
        summary="Submit a judgment of a task you made or were served (a repeat returns the first, with 200)",
    )
    def post(self, request: Request) -> Response:
        serializer = LabelInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        user = api_user(request)
        task = get_object_or_404(task_list_for(user=user), pk=data.pop("task").pk)
        assignment = task.assignments.filter(annotator=user).first()
        label, created = label_create(
            task=task,
            annotator=user,
            data=data,
            source=Label.Source.API,
            assignment=assignment,
            idempotency_key=_idempotency_key(request),
        )
        return _label_response(request, label, created, data, task_id=task.pk)


def _label_response(request: Request, label: Label, created: bool, data: dict[str, Any], *, task_id: int) -> Response:
    """201 for a new label; 200 for a repeat of the same judgment; 409 for a different one."""
    if not created:
        stored = LabelSerializer(label, context={"request": request}).data
        differs = [
            k
            for k in ("choice", "strength", "ranking", "critique", "rewrite", "rating")
            if k in data and data[k] not in (None, "") and data[k] != stored.get(k)
        ]
        if differs and label.task_id == task_id:
            return Response(
                {
                    "error": {
                        "code": "already_labelled",
                        "message": f"You already judged task {task_id} ({', '.join(differs)} differ); "
                        "labels are kept as given.",
                        "label": stored,
                    }
                },
                status=status.HTTP_409_CONFLICT,
            )
    shown = LabelSerializer(label, context={"request": request}).data
    return Response(shown, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ProjectListCreateApi(APIView):
    permission_classes = [AdminForWrites]

    @extend_schema(
        operation_id="projects_list", responses=paginated(ProjectSerializer, "Project"), summary="Projects open to you"
    )
    def get(self, request: Request) -> Response:
        paginator = generics.GenericAPIView.pagination_class()  # type: ignore[misc]
        page = paginator.paginate_queryset(projects_for(api_user(request)).order_by("id"), request, view=self)
        return paginator.get_paginated_response(ProjectSerializer(page, many=True).data)

    @extend_schema(request=ProjectSerializer, responses={201: ProjectSerializer}, summary="Create a project (admins)")
    def post(self, request: Request) -> Response:
        serializer = ProjectSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = serializer.save()
        return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectMembersApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(responses=ProjectMemberSerializer(many=True), summary="The project's members (admins)")
    def get(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        rows = project.memberships.select_related("user").order_by("user__username")
        return Response([{"username": m.user.username, "role": m.role} for m in rows])

    @extend_schema(
        request=ProjectMemberSerializer,
        responses={201: ProjectMemberSerializer, 200: ProjectMemberSerializer},
        summary="Let a person work on the project in a role (admins; 200 when they already may: the role is "
        "then changed if one is given)",
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        body = ProjectMemberSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        user = User.objects.filter(username=body.validated_data["username"]).first()
        if user is None:
            raise ValidationError({"username": f"no such user: {body.validated_data['username']!r}"})
        membership, created = feedback_services.project_member_add(
            project=project, user=user, role=body.validated_data.get("role")
        )
        return Response(
            {"username": user.username, "role": membership.role},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ProjectMemberApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(request=None, responses={204: None}, summary="End a membership; the person's labels stay (admins)")
    def delete(self, request: Request, project_id: int, username: str) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        user = get_object_or_404(User, username=username)
        if not feedback_services.project_member_remove(project=project, user=user):
            raise NotFound(f"{username} is not a member of {project.name}.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProjectDetailApi(generics.RetrieveUpdateAPIView):
    """A project open to you; admins change its settings with PATCH."""

    serializer_class = ProjectSerializer
    lookup_url_kwarg = "project_id"
    permission_classes = [AdminForWrites]
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return projects_for(api_user(self.request))


class ProjectGenerateApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        request=None,
        responses={202: GenerationJobSerializer},
        summary="Queue the serving version's answers to every open prompt of this project (admins)",
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        problem = generation_settings_error(project)
        if problem:
            raise ValidationError({"answers_per_prompt": problem})
        job = generation_job_create(project=project, created_by=api_user(request))
        return Response(GenerationJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ProjectArenaApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="The project's leaderboard of versions from blind comparisons: Bradley-Terry ratings with "
        "bootstrap 95% intervals, beside each version's reward-model win rate (admins)",
    )
    def get(self, request: Request, project_id: int) -> Response:
        return Response(arena_board(project=get_object_or_404(Project, pk=project_id)))

    @extend_schema(
        request=ArenaRequestSerializer,
        responses={202: GenerationJobSerializer},
        summary="Queue blind comparisons of two versions on the project's newest prompts (admins)",
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        body = ArenaRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        numbers = body.validated_data["versions"]
        found = {v.number: v for v in ModelVersion.objects.filter(number__in=numbers)}
        missing = [n for n in numbers if n not in found]
        if missing:
            raise ValidationError({"versions": f"no version {', '.join(map(str, missing))}"})
        try:
            job = arena_job_create(
                project=project,
                versions=(found[numbers[0]], found[numbers[1]]),
                prompts=body.validated_data["prompts"],
                created_by=api_user(request),
            )
        except ValueError as exc:
            raise ValidationError({"versions": str(exc)}) from exc
        return Response(GenerationJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class FollowupListApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        operation_id="followups_list",
        responses=OpenApiTypes.OBJECT,
        summary="The chat's answers scored by the user's actual next message, newest first (admins)",
    )
    def get(self, request: Request) -> Response:
        paginator = generics.GenericAPIView.pagination_class()  # type: ignore[misc]
        answers = followups_scored().select_related("policy_version").prefetch_related("replies").order_by("-id")
        page = paginator.paginate_queryset(answers, request, view=self) or []
        return paginator.get_paginated_response([followup_row(answer) for answer in page])


class GenerationJobListApi(generics.ListAPIView):
    """Generation jobs, newest first (admins: all; others: the jobs they asked for), filtered by `project`."""

    serializer_class = GenerationJobSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return _filter(_generation_jobs_for(self.request).order_by("-id"), self.request, {"project": "project_id"})


class GenerationJobDetailApi(generics.RetrieveAPIView):
    serializer_class = GenerationJobSerializer
    lookup_url_kwarg = "job_id"

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return _generation_jobs_for(self.request)


def _generation_jobs_for(request: Request) -> QuerySet[GenerationJob]:
    jobs = GenerationJob.objects.select_related("policy_version")
    return jobs if api_user(request).is_prefloop_admin else jobs.filter(created_by=api_user(request))


class ProjectQualityApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Agreement, aggregates and annotator trust (admins)")
    def get(self, request: Request, project_id: int) -> Response:
        return Response(project_quality(project=get_object_or_404(Project, pk=project_id)))


class ProjectNextApi(APIView):
    @extend_schema(
        request=None,
        responses={200: AssignmentSerializer, 204: None},
        summary="Serve your next task of this project under a lease (204 when nothing is left)",
    )
    def post(self, request: Request, project_id: int) -> Response:
        user = api_user(request)
        project = get_object_or_404(projects_for(user), pk=project_id)
        served = _served_next(request, project, user)
        return Response(status=status.HTTP_204_NO_CONTENT) if served is None else Response(served)


def _served_next(request: Request, project: Any, user: User) -> dict[str, Any] | None:
    """The next task of `project` served to `user` under a lease, as the API shows it; None when none is left."""
    assignment = assignments.assignment_next(project=project, annotator=user)
    if assignment is None:
        return None
    assignment.task = task_list_for(user=user).get(pk=assignment.task_id)
    return dict(AssignmentSerializer(assignment, context={"request": request}).data)


class AssignmentSubmitApi(APIView):
    @extend_schema(
        request=JudgmentSerializer,
        responses={201: LabelSerializer, 200: LabelSerializer},
        parameters=[IDEMPOTENCY_KEY],
        summary="Judge a task you were served",
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        return _submitted(request, assignment_id)[0]


def _submitted(request: Request, assignment_id: int) -> tuple[Response, Assignment]:
    """Store the judgment of the caller's assignment: the answer (a label, or a 409) and the assignment."""
    user = api_user(request)
    assignment = get_object_or_404(Assignment.objects.select_related("task__project"), pk=assignment_id, annotator=user)
    serializer = JudgmentSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    try:
        label, created = assignments.assignment_submit(
            assignment=assignment, data=data, source=Label.Source.API, idempotency_key=_idempotency_key(request)
        )
    except ValueError as exc:
        conflict = {"error": {"code": "conflict", "message": str(exc)}}
        return Response(conflict, status=status.HTTP_409_CONFLICT), assignment
    return _label_response(request, label, created, data, task_id=assignment.task_id), assignment


class AssignmentSubmitNextApi(APIView):
    @extend_schema(
        request=JudgmentSerializer,
        responses={201: SubmittedNextSerializer, 200: SubmittedNextSerializer},
        parameters=[IDEMPOTENCY_KEY],
        summary="Judge a task you were served and be served the next of its project in the same request",
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        """One round trip a label, as the queue page makes: the submit's answer as `submitted`, and the
        next task as `next` (null when none is left, or when the project is no longer yours). A
        repeated submit answers the same label and the task served since."""
        answer, assignment = _submitted(request, assignment_id)
        if answer.status_code >= 400:
            return answer
        user = api_user(request)
        project = projects_for(user).filter(pk=assignment.task.project_id).first()
        served = None if project is None else _served_next(request, project, user)
        return Response({"submitted": answer.data, "next": served}, status=answer.status_code)


class AssignmentSkipApi(APIView):
    @extend_schema(request=SkipSerializer, responses={200: None}, summary="Skip a task you were served, with a reason")
    def post(self, request: Request, assignment_id: int) -> Response:
        assignment = get_object_or_404(Assignment, pk=assignment_id, annotator=api_user(request))
        serializer = SkipSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            assignments.assignment_skip(assignment=assignment, reason=serializer.validated_data["reason"])
        except ValueError as exc:
            return Response({"error": {"code": "conflict", "message": str(exc)}}, status=status.HTTP_409_CONFLICT)
        return Response({"id": assignment.pk, "status": "skipped"})


class TaskBulkCreateApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        request=TaskBulkSerializer,
        responses={201: OpenApiTypes.OBJECT},
        summary="Create up to 1,000 tasks with their candidates (admins); known external ids are skipped",
    )
    def post(self, request: Request) -> Response:
        serializer = TaskBulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = feedback_services.tasks_bulk_create(
            project=serializer.validated_data["project"],
            items=serializer.validated_data["items"],
            created_by=api_user(request),
        )
        return Response(
            {"created": [t.pk for t in result.tasks], "skipped": result.skipped}, status=status.HTTP_201_CREATED
        )


class MessageThumbsApi(APIView):
    @extend_schema(
        request=ThumbsSerializer,
        responses={200: OpenApiTypes.OBJECT},
        summary="Thumbs up or down on an answer in one of your chats",
    )
    def post(self, request: Request, message_id: int) -> Response:
        user = api_user(request)
        message = get_object_or_404(Message, pk=message_id, conversation__owner=user)
        serializer = ThumbsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        feedback = feedback_services.message_feedback_set(message=message, user=user, **serializer.validated_data)
        return Response({"message": message.pk, "value": feedback.value, "reason": feedback.reason})


class RunListCreateApi(APIView):
    permission_classes = [IsPrefloopAdmin]  # training internals: admins only

    @extend_schema(
        operation_id="runs_list",
        responses=paginated(TrainingRunSerializer, "TrainingRun"),
        summary="List training runs",
    )
    def get(self, request: Request) -> Response:
        paginator = generics.GenericAPIView.pagination_class()  # type: ignore[misc]
        page = paginator.paginate_queryset(run_list(), request, view=self)
        return paginator.get_paginated_response(TrainingRunSerializer(page, many=True).data)

    @extend_schema(
        request=RunCreateSerializer,
        responses={201: TrainingRunSerializer, 200: TrainingRunSerializer},
        summary="Launch a training run of a project: a policy update (`policy`, the default: the project "
        "recipe's method; or `dpo`, `lipo`, `kto`, `grpo`), or a `reward` model; returns the project's active "
        "run of that kind, with 200, if one is already queued or running",
    )
    def post(self, request: Request) -> Response:
        body = RunCreateSerializer(data=_object_body(request))
        body.is_valid(raise_exception=True)
        try:
            run, created = run_services.run_create(
                trigger=TrainingRun.Trigger.API,
                created_by=api_user(request),
                kind=body.validated_data["kind"],
                project=body.validated_data.get("project"),
            )
        except RecipeError as exc:
            raise _invalid_recipe(exc) from None
        return Response(
            TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class RunDetailApi(generics.RetrieveAPIView):
    permission_classes = [IsPrefloopAdmin]  # training internals: admins only
    serializer_class = TrainingRunSerializer
    lookup_url_kwarg = "run_id"

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return run_list()


class ApiConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class RunCancelApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        request=None,
        responses={200: TrainingRunSerializer},
        summary="Cancel a queued run at once, or a running one at its next step (it then ends `cancelled` and "
        "registers nothing); 409 for a finished run",
    )
    def post(self, request: Request, run_id: int) -> Response:
        get_object_or_404(TrainingRun, pk=run_id)
        try:
            run = run_services.run_cancel(run_id=run_id)
        except ValueError as exc:
            raise ApiConflict(str(exc)) from None
        return Response(TrainingRunSerializer(run).data)


class VersionPromoteApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        request=VersionPromoteSerializer,
        responses={200: ModelVersionSerializer},
        summary="Promote a version, or roll back to an earlier one: the policy server loads its adapter first, "
        "then it serves; recorded with who and why. A rejected candidate needs `confirm: true` (409 without, "
        "naming what it failed)",
    )
    def post(self, request: Request, version_id: int) -> Response:
        version = get_object_or_404(ModelVersion, pk=version_id)
        return _promoted(request, lambda **how: run_services.version_promote_by_admin(version=version, **how),
                         ModelVersionSerializer)  # fmt: skip


def _promoted(request: Request, promote: Any, serializer: Any) -> Response:
    """An admin's promotion or rollback (`promote(actor=, reason=, confirm=)`), answered with what now
    serves; 409 in words when it cannot be done or needs `confirm`."""
    body = VersionPromoteSerializer(data=_object_body(request))
    body.is_valid(raise_exception=True)
    try:
        done = promote(actor=api_user(request), reason=body.validated_data["reason"],
                       confirm=body.validated_data["confirm"])  # fmt: skip
    except (run_services.NeedsConfirmation, ValueError) as exc:
        raise ApiConflict(str(exc)) from None
    return Response(serializer(done).data)


class RewardModelPromoteApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        request=VersionPromoteSerializer,
        responses={200: RewardModelSerializer},
        summary="Make a reward model its project's serving one, or roll back to an earlier one; recorded with "
        "who and why. A rejected one needs `confirm: true` (409 without, naming why it was rejected)",
    )
    def post(self, request: Request, reward_model_id: int) -> Response:
        reward_model = get_object_or_404(RewardModel, pk=reward_model_id)
        return _promoted(
            request,
            lambda **how: run_services.reward_model_promote_by_admin(reward_model=reward_model, **how),
            RewardModelSerializer,
        )


class VersionLabelsApi(APIView):
    permission_classes = [IsPrefloopAdmin]  # training internals: admins only

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="Which labels trained a version: the snapshot of their ids")
    def get(self, request: Request, version_id: int) -> Response:
        version = get_object_or_404(ModelVersion, pk=version_id)
        return Response({"version": version.number, "label_ids": version.label_ids, "n_labels": len(version.label_ids)})


class VersionEventListApi(generics.ListAPIView):
    """The audit trail: every promotion, rollback and rejection, newest first."""

    permission_classes = [IsPrefloopAdmin]  # training internals: admins only

    serializer_class = VersionEventSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return VersionEvent.objects.select_related("version", "previous", "actor")


class ProjectRecipeApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="A project's training recipe, and what a run would train on")
    def get(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        return Response(_recipe_body(project))

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses=OpenApiTypes.OBJECT,
        summary="Change the fields of the recipe it names (PATCH), or set the whole recipe (PUT); 400 names every "
        "bad field",
    )
    def patch(self, request: Request, project_id: int) -> Response:
        return self._update(request, project_id, replace=False)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT, summary="Set the whole recipe")
    def put(self, request: Request, project_id: int) -> Response:
        return self._update(request, project_id, replace=True)

    def _update(self, request: Request, project_id: int, *, replace: bool) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        data = request.data
        if not isinstance(data, dict):
            raise ValidationError({"detail": "send the recipe as a JSON object"})
        data = dict(data)
        preset = data.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ValidationError({"preset": f"unknown preset {preset!r}: one of {', '.join(PRESETS)}"})
            data = {**PRESETS[preset], **data}
        try:
            run_services.recipe_update(project=project, data=data, replace=replace)
        except RecipeError as exc:
            raise ValidationError(exc.errors) from None
        return Response(_recipe_body(project))


def _invalid_recipe(exc: RecipeError) -> ValidationError:
    """A project whose stored recipe was made invalid by hand: a 400 that says how to mend it."""
    return ValidationError({"recipe": f"the project's stored recipe is invalid ({exc}); PUT a valid one"})


def _recipe_body(project: Project) -> dict[str, Any]:
    try:
        recipe = run_services.recipe_for(project)
    except RecipeError as exc:
        raise _invalid_recipe(exc) from None
    preview = training_preview(project=project, recipe=recipe)
    return {"project": project.pk, "recipe": recipe.to_dict(), "kind": recipe.kind, "training_data": preview}


class RewardModelListApi(generics.ListAPIView):
    permission_classes = [IsPrefloopAdmin]  # training internals: admins only
    serializer_class = RewardModelSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return reward_model_list()


class VersionListApi(generics.ListAPIView):
    permission_classes = [IsPrefloopAdmin]  # training internals: admins only
    serializer_class = ModelVersionSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return version_list()


class ProjectImportApi(APIView):
    permission_classes = [IsPrefloopAdmin]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "format": {"type": "string", "enum": sorted(FORMATS)},
                    "background": {"type": "boolean"},
                },
            }
        },
        responses={200: OpenApiTypes.OBJECT, 202: ImportJobSerializer},
        summary="Import a feedback file into this project (admins); a re-upload skips what is already in. "
        "A file over PREFLOOP_IMPORT_INLINE_BYTES (or with background=1) is imported by a worker: 202 and "
        "the job to watch at /api/imports/<id>/",
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = get_object_or_404(Project, pk=project_id)
        upload, fmt = request.FILES.get("file"), request.POST.get("format")
        if upload is None:
            raise ValidationError({"file": "attach the file to import"})
        if fmt not in FORMATS:
            raise ValidationError({"format": f"one of {', '.join(sorted(FORMATS))}"})
        background = request.POST.get("background", "").lower() in ("1", "true", "yes")
        if background or upload.size > settings.PREFLOOP_IMPORT_INLINE_BYTES:
            job = import_job_create(project=project, created_by=api_user(request), fmt=fmt, upload=upload)
            return Response(ImportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
        with tempfile.NamedTemporaryFile(suffix=Path(upload.name or "upload").suffix) as tmp:
            for chunk in upload.chunks():
                tmp.write(chunk)
            tmp.flush()
            try:
                report = import_items(project=project, records=read_feedback(tmp.name, fmt))
            except (OSError, ValueError) as exc:
                raise ValidationError({"file": f"cannot read it as {fmt}: {exc}"}) from exc
        return Response(report_counts(report))


class ImportJobDetailApi(generics.RetrieveAPIView):
    permission_classes = [IsPrefloopAdmin]
    serializer_class = ImportJobSerializer
    lookup_url_kwarg = "job_id"
    queryset = ImportJob.objects.all()


class ImportJobListApi(generics.ListAPIView):
    """Imports, newest first (admins), filtered by `project`."""

    permission_classes = [IsPrefloopAdmin]
    serializer_class = ImportJobSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return _filter(ImportJob.objects.order_by("-id"), self.request, {"project": "project_id"})


class ProjectExportApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, enum=sorted(EXPORT_KINDS), required=True),
            OpenApiParameter("min_agreement", float, required=False),
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR},
        summary="Stream this project's labels in one of TRL's formats as JSON lines (admins)",
    )
    def get(self, request: Request, project_id: int) -> StreamingHttpResponse:
        project = get_object_or_404(Project, pk=project_id)
        # `kind`, not `format`: DRF reads ?format= to choose a renderer.
        kind = request.query_params.get("kind", "")
        if kind not in EXPORT_KINDS:
            raise ValidationError({"kind": f"one of {', '.join(sorted(EXPORT_KINDS))}"})
        try:
            min_agreement = float(request.query_params.get("min_agreement") or 0)
        except ValueError:
            raise ValidationError({"min_agreement": "a number from 0 to 1"}) from None
        if not 0 <= min_agreement <= 1:
            raise ValidationError({"min_agreement": "a number from 0 to 1"})
        return export_download(request, project=project, kind=kind, min_agreement=min_agreement)


class JobListApi(APIView):
    """Every background job of every kind in one list (admins)."""

    permission_classes = [IsPrefloopAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=list(JOB_KINDS), description="Only jobs of this kind."),
            OpenApiParameter("status", OpenApiTypes.STR, enum=list(JobStatus.values), description="Only this status."),
            OpenApiParameter("project", OpenApiTypes.INT, description="Only this project's jobs."),
            OpenApiParameter("limit", OpenApiTypes.INT, description="At most this many, newest first (1-500)."),
        ],
        responses={200: JobSerializer(many=True)},
        summary="Every job (training and reward runs, generation, imports): status, progress, heartbeat, "
        "time limit, log tail, and why a queued one waits",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        kind, state = params.get("kind"), params.get("status")
        if kind is not None and kind not in JOB_KINDS:
            raise ValidationError({"kind": f"must be one of {', '.join(JOB_KINDS)}, got {kind!r}"})
        if state is not None and state not in JobStatus.values:
            raise ValidationError({"status": f"must be one of {', '.join(JobStatus.values)}, got {state!r}"})
        project = params.get("project")
        if project is not None and parse_id(project) is None:
            raise ValidationError({"project": f"must be a number, got {project!r}"})
        limit = parse_id(params.get("limit", "100"))
        if limit is None or not 1 <= limit <= 500:
            raise ValidationError({"limit": "must be a number from 1 to 500"})
        rows = jobs_list(kind=kind or "", status=state or "", project=parse_id(project) if project else None,
                         limit=limit)  # fmt: skip
        return Response(JobSerializer(rows, many=True).data)


class JobCancelApi(APIView):
    """Cancel any job: a queued one ends at once, a running one at its next step; 409 once it ended."""

    permission_classes = [IsPrefloopAdmin]

    @extend_schema(request=None, responses={200: JobSerializer}, summary="Cancel a job of any kind")
    def post(self, request: Request, kind: str, job_id: int) -> Response:
        try:
            model = job_model_for(kind)
        except ValueError as exc:
            raise NotFound(str(exc)) from None
        job = get_object_or_404(model, pk=job_id)
        if job.job_type() != kind:
            raise NotFound(f"job {job_id} is a {job.job_type()} job, not {kind}")
        try:
            job = job_cancel(model, job_id)
        except ValueError as exc:
            raise ApiConflict(str(exc)) from None
        return Response(JobSerializer(job_row(job, queue_listeners())).data)
