"""A campaign's people, invitations, final answers and webhooks over the API: what the dashboard's
People, item and Webhooks pages do, for external clients (admins; final answers: reviewers too)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Count, Max
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.accounts import services as account_services
from webapp.accounts.models import User
from webapp.api.permissions import IsPrefloopAdmin
from webapp.api.serializers import RefuseUnknownFields, StrictCharField
from webapp.core.http import api_user
from webapp.feedback.explore import adjudicate, reviewable_projects
from webapp.feedback.models import Adjudication, Invitation, Project, ProjectMember, Task
from webapp.feedback.people import invitation_create, invitation_revoke, person_set_active
from webapp.feedback.services import project_member_add
from webapp.hooks.models import EVENTS, Webhook, WebhookDelivery
from webapp.hooks.services import delivery_again, hook_create

# --- people ------------------------------------------------------------------------------------


class PersonSerializer(serializers.ModelSerializer):
    # Django's usernames take any letter; the model field's pattern, read as JSON Schema, only ASCII ones
    username = serializers.CharField(read_only=True)
    labels = serializers.IntegerField(source="n_labels", read_only=True, default=0)
    last_label_at = serializers.DateTimeField(read_only=True, allow_null=True, default=None)

    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "is_active", "date_joined", "labels", "last_label_at"]


class PersonInputSerializer(RefuseUnknownFields, serializers.Serializer):
    username = StrictCharField(max_length=150)
    password = StrictCharField(max_length=200, trim_whitespace=False)
    email = serializers.EmailField(required=False, allow_blank=True)
    role = serializers.ChoiceField(choices=User.Role.choices, default=User.Role.ANNOTATOR)
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all(), required=False, allow_null=True)
    project_role = serializers.ChoiceField(choices=ProjectMember.Role.choices, default=ProjectMember.Role.ANNOTATOR)


class PersonPatchSerializer(RefuseUnknownFields, serializers.Serializer):
    is_active = serializers.BooleanField()


def _people() -> Any:
    return User.objects.annotate(n_labels=Count("labels"), last_label_at=Max("labels__created_at")).order_by("username")


class PersonListCreateApi(generics.ListAPIView):
    permission_classes = [IsPrefloopAdmin]
    serializer_class = PersonSerializer

    def get_queryset(self) -> Any:
        return _people()

    @extend_schema(request=PersonInputSerializer, responses={201: PersonSerializer}, summary="Make an account (admins)")
    def post(self, request: Request) -> Response:
        body = PersonInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with transaction.atomic():
            user = account_services.user_create_by_admin(
                username=data["username"].strip(),
                password=data["password"],
                role=data["role"],
                email=data.get("email", ""),
            )
            if data.get("project") is not None:
                project_member_add(project=data["project"], user=user, role=data["project_role"])
        return Response(PersonSerializer(_people().get(pk=user.pk)).data, status=status.HTTP_201_CREATED)


class PersonDetailApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(responses=PersonSerializer, summary="One person (admins)")
    def get(self, request: Request, username: str) -> Response:
        return Response(PersonSerializer(get_object_or_404(_people(), username=username)).data)

    @extend_schema(
        request=PersonPatchSerializer,
        responses=PersonSerializer,
        summary="Deactivate a person (their labels stay, their held items go back) or let them back in",
    )
    def patch(self, request: Request, username: str) -> Response:
        person = get_object_or_404(User, username=username)
        body = PersonPatchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            person_set_active(user=person, active=body.validated_data["is_active"], by=api_user(request))
        except ValueError as exc:
            raise ValidationError({"is_active": [str(exc)]}) from None
        return Response(PersonSerializer(_people().get(pk=person.pk)).data)


# --- invitations ---------------------------------------------------------------------------------


class InvitationSerializer(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ["id", "role", "project", "project_role", "note", "created_at", "expires_at", "used_at", "state"]

    def get_state(self, invitation: Invitation) -> str:
        from django.utils import timezone

        return str(invitation.state(timezone.now()))


class InvitationInputSerializer(RefuseUnknownFields, serializers.Serializer):
    role = serializers.ChoiceField(choices=User.Role.choices, default=User.Role.ANNOTATOR)
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all(), required=False, allow_null=True)
    project_role = serializers.ChoiceField(choices=ProjectMember.Role.choices, default=ProjectMember.Role.ANNOTATOR)
    days = serializers.FloatField(default=7, min_value=0.01, max_value=90)
    note = StrictCharField(max_length=200, required=False, allow_blank=True)


INVITATION_MADE = inline_serializer(
    name="InvitationMade",
    fields={
        "invitation": InvitationSerializer(),
        "link": serializers.CharField(help_text="The one-time link; shown this once (only a digest is stored)."),
    },
)


class InvitationListCreateApi(generics.ListAPIView):
    permission_classes = [IsPrefloopAdmin]
    serializer_class = InvitationSerializer

    def get_queryset(self) -> Any:
        return Invitation.objects.order_by("-created_at", "-id")

    @extend_schema(
        request=InvitationInputSerializer, responses={201: INVITATION_MADE}, summary="Invite someone (admins)"
    )
    def post(self, request: Request) -> Response:
        body = InvitationInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        invitation, token = invitation_create(
            by=api_user(request),
            role=data["role"],
            project=data.get("project"),
            project_role=data["project_role"],
            days=data["days"],
            note=data.get("note", ""),
        )
        link = request.build_absolute_uri(f"/invitations/{token}/")
        return Response(
            {"invitation": InvitationSerializer(invitation).data, "link": link}, status=status.HTTP_201_CREATED
        )


class InvitationRevokeApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(request=None, responses=InvitationSerializer, summary="Revoke an invitation (admins)")
    def post(self, request: Request, invitation_id: int) -> Response:
        invitation = invitation_revoke(invitation=get_object_or_404(Invitation, pk=invitation_id))
        return Response(InvitationSerializer(invitation).data)


# --- final answers -------------------------------------------------------------------------------


class AdjudicationSerializer(serializers.ModelSerializer):
    reviewer = serializers.SlugRelatedField(slug_field="username", read_only=True)  # type: ignore[var-annotated]

    class Meta:
        model = Adjudication
        fields = ["task", "reviewer", "answer", "note", "created_at", "updated_at"]


class AdjudicationInputSerializer(RefuseUnknownFields, serializers.Serializer):
    choice = StrictCharField(required=False, allow_blank=True)
    ranking = serializers.JSONField(required=False)
    rating = serializers.IntegerField(required=False)
    critique = StrictCharField(required=False, allow_blank=True)
    rewrite = StrictCharField(required=False, allow_blank=True)
    note = StrictCharField(required=False, allow_blank=True, max_length=5000)
    make_gold = serializers.BooleanField(
        default=False, help_text="Admins: the final answer becomes the item's gold answer (its labels are scored)."
    )


class TaskAdjudicationApi(APIView):
    def _task(self, request: Request, task_id: int) -> Task:
        return get_object_or_404(Task.objects.filter(project__in=reviewable_projects(api_user(request))), pk=task_id)

    @extend_schema(responses=AdjudicationSerializer, summary="An item's final answer (its project's reviewers)")
    def get(self, request: Request, task_id: int) -> Response:
        adjudication = get_object_or_404(Adjudication, task=self._task(request, task_id))
        return Response(AdjudicationSerializer(adjudication).data)

    @extend_schema(
        request=AdjudicationInputSerializer,
        responses={200: AdjudicationSerializer, 201: AdjudicationSerializer},
        summary="Record or change an item's final answer, beside its raw labels (its project's reviewers)",
    )
    def put(self, request: Request, task_id: int) -> Response:
        task = self._task(request, task_id)
        body = AdjudicationInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        note, make_gold = data.pop("note", ""), data.pop("make_gold")
        try:
            adjudication, created = adjudicate(
                task=task, reviewer=api_user(request), data=data, note=note, make_gold=make_gold
            )
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from None
        return Response(
            AdjudicationSerializer(adjudication).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


# --- webhooks ------------------------------------------------------------------------------------


class WebhookSerializer(serializers.ModelSerializer):
    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "active", "created_at"]


class WebhookInputSerializer(RefuseUnknownFields, serializers.Serializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENTS)), min_length=1)


class WebhookPatchSerializer(RefuseUnknownFields, serializers.Serializer):
    active = serializers.BooleanField()


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "hook", "event", "payload", "status", "attempts", "response_status", "response_body",
                  "error", "created_at", "finished_at"]  # fmt: skip


HOOK_MADE = inline_serializer(
    name="WebhookMade",
    fields={
        "hook": WebhookSerializer(),
        "secret": serializers.CharField(help_text="The HMAC-SHA256 key; shown this once."),
        "max_attempts": serializers.IntegerField(),
    },
)


class WebhookListCreateApi(generics.ListAPIView):
    permission_classes = [IsPrefloopAdmin]
    serializer_class = WebhookSerializer
    queryset = Webhook.objects.order_by("id")

    @extend_schema(request=WebhookInputSerializer, responses={201: HOOK_MADE}, summary="Make a webhook (admins)")
    def post(self, request: Request) -> Response:
        body = WebhookInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            hook, secret = hook_create(created_by=api_user(request), **body.validated_data)
        except ValueError as exc:
            raise ValidationError({"url": [str(exc)]}) from None
        return Response(
            {"hook": WebhookSerializer(hook).data, "secret": secret, "max_attempts": settings.WEBHOOK_MAX_ATTEMPTS},
            status=status.HTTP_201_CREATED,
        )


class WebhookDetailApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(responses=WebhookSerializer, summary="A webhook (admins)")
    def get(self, request: Request, hook_id: int) -> Response:
        return Response(WebhookSerializer(get_object_or_404(Webhook, pk=hook_id)).data)

    @extend_schema(request=WebhookPatchSerializer, responses=WebhookSerializer, summary="Pause or resume a webhook")
    def patch(self, request: Request, hook_id: int) -> Response:
        hook = get_object_or_404(Webhook, pk=hook_id)
        body = WebhookPatchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        hook.active = body.validated_data["active"]
        hook.save(update_fields=["active"])
        return Response(WebhookSerializer(hook).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a webhook and its delivery log")
    def delete(self, request: Request, hook_id: int) -> Response:
        get_object_or_404(Webhook, pk=hook_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListApi(generics.ListAPIView):
    """A webhook's delivery log, newest first: each event, its status and the receiver's answer."""

    permission_classes = [IsPrefloopAdmin]
    serializer_class = DeliverySerializer

    def get_queryset(self) -> Any:
        hook = get_object_or_404(Webhook, pk=self.kwargs["hook_id"])
        return WebhookDelivery.objects.filter(hook=hook).order_by("-created_at", "-id")


class WebhookDeliveryResendApi(APIView):
    permission_classes = [IsPrefloopAdmin]

    @extend_schema(request=None, responses={202: DeliverySerializer}, summary="Send a delivery again (a new delivery)")
    def post(self, request: Request, delivery_id: int) -> Response:
        again = delivery_again(delivery=get_object_or_404(WebhookDelivery, pk=delivery_id))
        return Response(DeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
