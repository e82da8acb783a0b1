"""The chat over the API: conversations, their message trees, branches, and answers streamed as
server-sent events. A conversation is its owner's alone, as on the pages (admins included)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import QuerySet
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.api.serializers import RefuseUnknownFields, StrictCharField, paginated
from webapp.chat.answers import AnswerFailed, answer_deltas, answer_unwritable
from webapp.core.http import api_user, streaming_response
from webapp.feedback import chat
from webapp.feedback import services as feedback_services
from webapp.feedback.chat import SYSTEM_PROMPT_MAX_CHARS
from webapp.feedback.models import Conversation, Message
from webapp.runs.models import ModelVersion


class ChatMessageSerializer(serializers.ModelSerializer):
    policy_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )

    class Meta:
        model = Message
        fields = ["id", "parent", "role", "content", "status", "error", "policy_version", "created_at"]


class ConversationSerializer(serializers.ModelSerializer):
    policy_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True, allow_null=True
    )

    class Meta:
        model = Conversation
        fields = ["id", "title", "system_prompt", "policy_version", "current", "created_at", "updated_at"]


class ConversationDetailSerializer(ConversationSerializer):
    messages = serializers.SerializerMethodField(help_text="Every turn of every branch, oldest first.")
    branch = serializers.SerializerMethodField(help_text="The ids from the first turn to `current`.")

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "messages", "branch"]

    @extend_schema_field(ChatMessageSerializer(many=True))
    def get_messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        rows = conversation.messages.select_related("policy_version").order_by("created_at", "id")
        return ChatMessageSerializer(rows, many=True).data  # type: ignore[return-value]

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_branch(self, conversation: Conversation) -> list[int]:
        return [turn.message.pk for turn in chat.conversation_branch(conversation=conversation)]


class ConversationInputSerializer(RefuseUnknownFields, serializers.Serializer):
    title = StrictCharField(required=False, allow_blank=True, max_length=200)
    system_prompt = StrictCharField(
        required=False, allow_blank=True, max_length=SYSTEM_PROMPT_MAX_CHARS, trim_whitespace=False
    )
    policy_version = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Admins: the version number that answers; null: the serving one.",
    )
    current = serializers.IntegerField(required=False, min_value=1, help_text="Show the branch through this message.")


class TurnInputSerializer(RefuseUnknownFields, serializers.Serializer):
    text = StrictCharField(trim_whitespace=False, allow_blank=True)
    parent = serializers.IntegerField(  # type: ignore[assignment]
        required=False,
        allow_null=True,
        min_value=1,
        help_text="The answer this turn follows; left out: the end of the branch on screen; null: a new first turn.",
    )


class RankInputSerializer(RefuseUnknownFields, serializers.Serializer):
    ranking = serializers.ListField(
        child=serializers.JSONField(),
        help_text="The answers to this turn best first, by message id; a list of ids in one place is a tie.",
    )


TURN_RESPONSE = inline_serializer(
    name="ChatTurn", fields={"user_message": ChatMessageSerializer(), "reply": ChatMessageSerializer()}
)
REPLY_RESPONSE = inline_serializer(name="ChatReply", fields={"reply": ChatMessageSerializer()})
RANK_RESPONSE = inline_serializer(
    name="ChatRanking", fields={"task": serializers.IntegerField(), "label": serializers.IntegerField()}
)


def _conversations(request: Request) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=api_user(request)).select_related("policy_version")


def _own_message(request: Request, message_id: int) -> Message:
    return get_object_or_404(
        Message.objects.select_related("conversation", "policy_version"),
        pk=message_id,
        conversation__owner=api_user(request),
    )


def _settings_apply(request: Request, conversation: Conversation, data: dict[str, Any]) -> None:
    pin = "policy_version" in data
    version = None
    if pin and data["policy_version"] is not None:
        version = ModelVersion.objects.filter(number=data["policy_version"]).first()
        if version is None:
            raise ValidationError({"policy_version": [f"no version v{data['policy_version']}"]})
    try:
        chat.conversation_settings_set(
            conversation=conversation,
            by=api_user(request),
            system_prompt=data.get("system_prompt"),
            title=data.get("title"),
            version=version,
            pin=pin,
        )
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from exc
    if data.get("current") is not None:
        message = conversation.messages.filter(pk=data["current"]).first()
        if message is None:
            raise ValidationError({"current": [f"message {data['current']} is not in this conversation"]})
        chat.chat_switch(message=message)
        conversation.refresh_from_db()


class ConversationListCreateApi(generics.ListAPIView):
    serializer_class = ConversationSerializer

    def get_queryset(self) -> QuerySet[Conversation]:
        return _conversations(self.request).order_by("-updated_at", "-id")

    @extend_schema(
        operation_id="conversations_list",
        responses=paginated(ConversationSerializer, "Conversation"),
        summary="Your conversations, newest first",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=ConversationInputSerializer,
        responses={201: ConversationDetailSerializer},
        summary="Start a conversation (optionally with a system prompt; admins may pick the version)",
    )
    def post(self, request: Request) -> Response:
        body = ConversationInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        if "current" in data:
            raise ValidationError({"current": ["a new conversation has no messages yet"]})
        if "policy_version" in data and not api_user(request).is_prefloop_admin:
            raise PermissionDenied("Only an admin may pick the version that answers.")
        conversation = feedback_services.conversation_create(owner=api_user(request))
        _settings_apply(request, conversation, data)
        return Response(ConversationDetailSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailApi(APIView):
    @extend_schema(responses=ConversationDetailSerializer, summary="A conversation with every turn of every branch")
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = get_object_or_404(_conversations(request), pk=conversation_id)
        return Response(ConversationDetailSerializer(conversation).data)

    @extend_schema(
        request=ConversationInputSerializer,
        responses=ConversationDetailSerializer,
        summary="Change the title or system prompt, pick the version (admins), or show another branch (`current`)",
    )
    def patch(self, request: Request, conversation_id: int) -> Response:
        conversation = get_object_or_404(_conversations(request), pk=conversation_id)
        body = ConversationInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        _settings_apply(request, conversation, dict(body.validated_data))
        return Response(ConversationDetailSerializer(conversation).data)

    @extend_schema(request=None, responses={204: None}, summary="Delete a conversation; labels made from it stay")
    def delete(self, request: Request, conversation_id: int) -> Response:
        conversation = get_object_or_404(_conversations(request), pk=conversation_id)
        conversation.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationTurnApi(APIView):
    @extend_schema(
        request=TurnInputSerializer,
        responses={201: TURN_RESPONSE},
        summary="Send a turn; read the answer from the reply's stream",
        description="The reply is created empty (`status: streaming`); `GET /api/messages/{reply id}/stream/` "
        "writes it and sends it as server-sent events. A `parent` other than the end of the branch "
        "starts a new branch (how an edited question is sent).",
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        conversation = get_object_or_404(_conversations(request), pk=conversation_id)
        body = TurnInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        parent = None
        at_root = "parent" in body.validated_data and body.validated_data["parent"] is None
        if body.validated_data.get("parent") is not None:
            parent = conversation.messages.filter(pk=body.validated_data["parent"]).first()
            if parent is None:
                raise ValidationError({"parent": ["not a message of this conversation"]})
        user_message, reply = feedback_services.chat_turn_start(
            conversation=conversation, text=body.validated_data["text"], parent=parent, at_root=at_root
        )
        return Response(
            {"user_message": ChatMessageSerializer(user_message).data, "reply": ChatMessageSerializer(reply).data},
            status=status.HTTP_201_CREATED,
        )


class MessageRegenerateApi(APIView):
    @extend_schema(
        request=None,
        responses={201: REPLY_RESPONSE},
        summary="Ask for another answer to the same turn (a sibling; the old answer stays)",
    )
    def post(self, request: Request, message_id: int) -> Response:
        reply = chat.chat_regenerate(message=_own_message(request, message_id))
        return Response({"reply": ChatMessageSerializer(reply).data}, status=status.HTTP_201_CREATED)


class MessageRankApi(APIView):
    @extend_schema(
        request=RankInputSerializer,
        responses={201: RANK_RESPONSE, 200: RANK_RESPONSE},
        summary="Rank the answers to one of your turns: they become a ranking label",
    )
    def post(self, request: Request, message_id: int) -> Response:
        question = _own_message(request, message_id)
        body = RankInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        places: dict[int, int] = {}
        for place, group in enumerate(body.validated_data["ranking"], start=1):
            for answer in group if isinstance(group, list) else [group]:
                if not isinstance(answer, int) or isinstance(answer, bool) or answer in places:
                    raise ValidationError({"ranking": [f"place {place}: {answer!r} is not a new message id"]})
                places[answer] = place
        label, created = chat.chat_rank(question=question, places=places, by=api_user(request))
        return Response(
            {"task": label.task_id, "label": label.pk},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


class EventStreamRenderer(BaseRenderer):
    """Lets a client that asks for `text/event-stream` (a browser's EventSource) past content
    negotiation; the stream itself is written by the view, and its errors answer in JSON."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return JSONRenderer().render(data)


class MessageStreamApi(APIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        # an error is the API's one JSON shape, whatever the client asked for
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), "application/json"
        return super().handle_exception(exc)

    @extend_schema(
        responses={
            200: OpenApiResponse(
                response=OpenApiTypes.STR,
                description='`text/event-stream`: `delta` events (`{"text"}`) while the answer is written, '
                'then `done` (the stored message) or `error` (`{"detail"}`: why the policy could not answer). '
                "A finished answer is sent again as one delta.",
            )
        },
        summary="The answer to a turn, streamed as server-sent events",
    )
    def get(self, request: Request, message_id: int) -> HttpResponse | StreamingHttpResponse:
        message = _own_message(request, message_id)
        if message.role != "assistant":
            raise ValidationError({"detail": ["only an answer of the policy is streamed"]})
        if message.status != Message.Status.STREAMING:
            return _replay(message)
        if answer_unwritable(message) is not None:
            return _replay(message)

        def events() -> Iterator[str]:
            try:
                for delta in answer_deltas(message):
                    yield _event("delta", {"text": delta})
            except AnswerFailed as exc:
                yield _event("error", {"detail": f"The policy server could not answer: {exc}"})
                return
            yield _event("done", {"message": ChatMessageSerializer(message).data})

        return _sse(streaming_response(request, events(), content_type="text/event-stream; charset=utf-8"))


def _replay(message: Message) -> HttpResponse | StreamingHttpResponse:
    if message.status == Message.Status.FAILED:
        body = _event("error", {"detail": message.error or "The policy server could not answer."})
    else:
        body = _event("delta", {"text": message.content}) + _event(
            "done", {"message": ChatMessageSerializer(message).data}
        )
    return _sse(HttpResponse(body, content_type="text/event-stream; charset=utf-8"))


def _sse(response: HttpResponse | StreamingHttpResponse) -> HttpResponse | StreamingHttpResponse:
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
