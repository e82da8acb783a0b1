"""Chat pages: views parse the request, call one service, and render a page or an htmx partial."""

from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from webapp.chat.answers import AnswerFailed, answer_deltas, answer_unwritable
from webapp.core.http import AuthedHttpRequest, streaming_response
from webapp.core.parsing import parse_id
from webapp.feedback import chat, services
from webapp.feedback.models import Conversation, Message, MessageFeedback, Task
from webapp.feedback.selectors import context_before, conversation_list, task_with_candidates
from webapp.runs import policy
from webapp.runs.models import ModelVersion
from webapp.runs.selectors import run_active, version_serving


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


def _own_conversation(request: AuthedHttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(
        Conversation.objects.select_related("policy_version"), pk=conversation_id, owner=request.user
    )


@require_GET
@login_required
def conversation(request: AuthedHttpRequest, conversation_id: int) -> HttpResponse:
    conv = _own_conversation(request, conversation_id)
    turns = chat.conversation_branch(conversation=conv)
    thumbs = {t.message_id: t for t in MessageFeedback.objects.filter(user=request.user, message__conversation=conv)}
    for turn in turns:
        turn.message.thumb = thumbs.get(turn.message.pk)  # type: ignore[attr-defined]
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conv,
            "turns": turns,
            "ranked": chat.ranked_questions(conversation=conv, by=request.user),
            "serving": version_serving(),
            "versions": ModelVersion.objects.order_by("-number")[:50] if request.user.is_prefloop_admin else [],
        },
    )


@require_POST
@login_required
def conversation_settings(request: AuthedHttpRequest, conversation_id: int) -> HttpResponse:
    """The conversation's system prompt and (admins) the version that answers it."""
    conv = _own_conversation(request, conversation_id)
    pin = "version" in request.POST
    version = None
    if pin and request.POST["version"]:
        version_id = parse_id(request.POST["version"])
        version = ModelVersion.objects.filter(pk=version_id).first() if version_id else None
        if version is None:
            return HttpResponse("No such policy version.", status=400)
    try:
        chat.conversation_settings_set(
            conversation=conv,
            by=request.user,
            system_prompt=request.POST.get("system_prompt"),
            version=version,
            pin=pin,
        )
    except PermissionDenied as exc:
        return HttpResponse(str(exc), status=403)
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return redirect("chat:conversation", conv.pk)


@require_POST
@login_required
def send(request: AuthedHttpRequest, conversation_id: int) -> HttpResponse:
    """Store the user's turn; the returned partial streams the answer into the page."""
    conv = _own_conversation(request, conversation_id)
    try:
        user_message, reply = services.chat_turn_start(conversation=conv, text=request.POST.get("text", ""))
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    if not request.htmx:
        return redirect("chat:conversation", conv.pk)
    html = "".join(
        render(request, "chat/_message.html", {"turn": chat.message_turn(message=m)}).content.decode()
        for m in (user_message, reply)
    )
    return HttpResponse(html)


@require_POST
@login_required
def stream(request: AuthedHttpRequest, message_id: int) -> HttpResponseBase:
    """Stream the serving policy's answer to this assistant turn as plain text, then store it."""
    message = _own_message(request, message_id)
    if message.role != "assistant" or message.status != Message.Status.STREAMING:
        return HttpResponse("This answer is already written.", status=409)
    why = answer_unwritable(message)
    if why is not None:
        return HttpResponse(f"The policy could not answer: {why}.", status=503)

    def chunks() -> Iterator[str]:
        try:
            yield from answer_deltas(message)
        except AnswerFailed as exc:
            yield f"\n[The policy server could not answer: {exc}]"

    response = streaming_response(request, chunks(), content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@require_GET
@login_required
def message(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    """One turn as the page shows it (its answer rendered, its siblings, its buttons)."""
    found = _own_message(request, message_id)
    found.thumb = found.feedback.filter(user=request.user).first()  # type: ignore[attr-defined]
    ranked = chat.ranked_questions(conversation=found.conversation, by=request.user)
    return render(request, "chat/_message.html", {"turn": chat.message_turn(message=found), "ranked": ranked})


@require_POST
@login_required
def regenerate(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    found = _own_message(request, message_id)
    try:
        chat.chat_regenerate(message=found)
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return redirect("chat:conversation", found.conversation_id)


@require_POST
@login_required
def edit(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    found = _own_message(request, message_id)
    try:
        chat.chat_edit(message=found, text=request.POST.get("text", ""))
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return redirect("chat:conversation", found.conversation_id)


@require_POST
@login_required
def switch(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    found = _own_message(request, message_id)
    chat.chat_switch(message=found)
    return redirect(f"{reverse('chat:conversation', args=[found.conversation_id])}#message-{found.pk}")


@require_POST
@login_required
def rank(request: AuthedHttpRequest, message_id: int) -> HttpResponse:
    """Rank the answers to one of your turns: fields `place-<answer id>` = 1 (best), 2, ..."""
    question = _own_message(request, message_id)
    places: dict[int, int] = {}
    for name in request.POST:
        if name.startswith("place-"):
            value = request.POST.get(name)
            answer_id, place = parse_id(name.removeprefix("place-")), parse_id(value)
            if answer_id is None or place is None:
                return HttpResponse(f"{name}: a place is a whole number from 1 (best).", status=400)
            places[answer_id] = place
    try:
        chat.chat_rank(question=question, places=places, by=request.user)
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return redirect(f"{reverse('chat:conversation', args=[question.conversation_id])}#message-{question.pk}")


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
