"""Chat pages: views parse the request, call one service, and render a page or an htmx partial."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.core.http import AuthedHttpRequest, streaming_response
from webapp.feedback import services
from webapp.feedback.models import Conversation, Message, MessageFeedback, Task
from webapp.feedback.selectors import context_before, conversation_list, conversation_messages, task_with_candidates
from webapp.runs import policy
from webapp.runs.selectors import run_active, version_serving

logger = logging.getLogger(__name__)


def _own_message(request: AuthedHttpRequest, message_id: int) -> Message:
    return get_object_or_404(
        Message.objects.select_related("conversation", "policy_version"),
        pk=message_id,
        conversation__owner=request.user,
    )


@require_GET
@login_required
def index(request: AuthedHttpRequest) -> HttpResponse:
    return render(request, "chat/index.html", {"conversations": conversation_list(owner=request.user)[:50]})


@require_POST
@login_required
def new(request: AuthedHttpRequest) -> HttpResponse:
    conversation = services.conversation_create(owner=request.user)
    return redirect("chat:conversation", conversation.pk)


@require_GET
@login_required
def conversation(request: AuthedHttpRequest, conversation_id: int) -> HttpResponse:
    conv = get_object_or_404(Conversation, pk=conversation_id, owner=request.user)
    messages = conversation_messages(conversation=conv)
    thumbs = {t.message_id: t for t in MessageFeedback.objects.filter(user=request.user, message__conversation=conv)}
    for message in messages:
        message.thumb = thumbs.get(message.pk)  # type: ignore[attr-defined]
    return render(
        request, "chat/conversation.html", {"conversation": conv, "messages": messages, "serving": version_serving()}
    )


@require_POST
@login_required
def send(request: AuthedHttpRequest, conversation_id: int) -> HttpResponse:
    """Store the user's turn; the returned partial streams the answer into the page."""
    conv = get_object_or_404(Conversation, pk=conversation_id, owner=request.user)
    try:
        user_message, reply = services.chat_turn_start(conversation=conv, text=request.POST.get("text", ""))
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    if not request.htmx:
        return redirect("chat:conversation", conv.pk)
    html = "".join(
        render(request, "chat/_message.html", {"message": m}).content.decode() for m in (user_message, reply)
    )
    return HttpResponse(html)


@require_POST
@login_required
def stream(request: AuthedHttpRequest, message_id: int) -> HttpResponseBase:
    """Stream the serving policy's answer to this assistant turn as plain text, then store it."""
    message = _own_message(request, message_id)
    if message.role != "assistant" or message.status != Message.Status.STREAMING:
        return HttpResponse("This answer is already written.", status=409)
    context = context_before(message=message)
    version = message.policy_version
    if version is None:
        why = "no policy version is serving: an admin must run the set-up first (manage.py prefloop_setup)"
        services.chat_reply_finish(message=message, content="", failed=True, error=why)
        return HttpResponse(f"The policy could not answer: {why}.", status=503)

    def chunks() -> Iterator[str]:
        parts: list[str] = []
        try:
            for delta in policy.stream(context, version=version):
                parts.append(delta)
                yield delta
        except policy.PolicyServerError as exc:
            logger.warning("policy server failed while streaming message %s: %s", message.pk, exc)
            services.chat_reply_finish(message=message, content="".join(parts), failed=True, error=str(exc))
            yield f"\n[The policy server could not answer: {exc}]"
            return
        services.chat_reply_finish(message=message, content="".join(parts))

    response = streaming_response(request, chunks(), content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@require_GET
@login_required
def footer(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    return render(request, "chat/_footer.html", {"message": _own_message(request, message_id)})


@require_POST
@login_required
def compare(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    """Ask the policy for two fresh answers to this turn's context, side by side."""
    message = _own_message(request, message_id)
    if message.role != "assistant":
        return HttpResponse("Only an answer of the policy can be compared.", status=400)
    try:
        task = services.pairwise_task_create(
            messages=context_before(message=message),
            created_by=request.user,
            source="chat",
            conversation=message.conversation,
            message=message,
        )
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    except policy.PolicyServerError as exc:
        return HttpResponse(f"The policy server could not answer: {exc}", status=503)
    return render(request, "chat/_compare.html", {"task": task_with_candidates(task_id=task.pk)})


@require_POST
@login_required
def label(request: AuthedHttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task, pk=task_id, created_by=request.user)
    try:
        saved, created = services.label_submit(
            task=task,
            annotator=request.user,
            choice=request.POST.get("choice", ""),
            strength=request.POST.get("strength") or 1,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return render(
        request, "chat/_label_done.html", {"task": task, "label": saved, "created": created, "run": run_active()}
    )


@require_POST
@login_required
def thumbs(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    """Thumbs up or down (with an optional reason) on one of the policy's answers."""
    message = _own_message(request, message_id)
    try:
        services.message_feedback_set(
            message=message,
            user=request.user,
            value=request.POST.get("value", ""),
            reason=request.POST.get("reason", ""),
        )
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    message.thumb = message.feedback.get(user=request.user)  # type: ignore[attr-defined]
    return render(request, "chat/_footer.html", {"message": message})
