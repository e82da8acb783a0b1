"""The chat as a tree: regenerate and edit start branches beside the old turns, the page moves
between siblings, sibling answers become a ranking label, a system prompt leads every context, and
an admin (only) may pick the version that answers. Services and pages, on both databases."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from tests.factories import make_serving_version, make_user
from webapp.accounts.models import User
from webapp.feedback import chat, services
from webapp.feedback.models import Label, Message, Task
from webapp.feedback.selectors import context_before
from webapp.runs.services import version_register

pytestmark = pytest.mark.django_db


def _answered(conversation, text: str, answer: str, parent=None) -> tuple[Message, Message]:
    question, reply = services.chat_turn_start(conversation=conversation, text=text, parent=parent)
    services.chat_reply_finish(message=reply, content=answer)
    return question, reply


def _branch_texts(conversation) -> list[str]:
    conversation.refresh_from_db()
    return [turn.message.content for turn in chat.conversation_branch(conversation=conversation)]


def test_regenerate_and_edit_make_siblings_and_the_branch_follows_the_newest():
    make_serving_version()
    conv = services.conversation_create(owner=make_user())
    question, first = _answered(conv, "Name a colour.", "Blue.")
    second = chat.chat_regenerate(message=first)
    services.chat_reply_finish(message=second, content="Green.")
    assert second.parent_id == question.pk and second.status == Message.Status.COMPLETE
    assert _branch_texts(conv) == ["Name a colour.", "Green."]
    turns = chat.conversation_branch(conversation=conv)
    assert (turns[1].index, len(turns[1].siblings), turns[1].previous, turns[1].next) == (2, 2, first, None)

    _answered(conv, "Why that one?", "It is calm.")
    edited, reply = chat.chat_edit(message=question, text="Name a fruit.")
    services.chat_reply_finish(message=reply, content="A pear.")
    assert edited.parent_id is None and _branch_texts(conv) == ["Name a fruit.", "A pear."]

    # back to the first question's branch: it opens at its newest turn, the follow-up kept
    chat.chat_switch(message=question)
    assert _branch_texts(conv) == ["Name a colour.", "Green.", "Why that one?", "It is calm."]
    chat.chat_switch(message=first)
    assert _branch_texts(conv) == ["Name a colour.", "Blue."]
    assert Message.objects.filter(conversation=conv).count() == 7  # nothing written was lost

    # a new turn follows the branch on screen, not the newest message of the conversation
    follow, _ = services.chat_turn_start(conversation=conv, text="And another?")
    assert follow.parent_id == first.pk


def test_only_answers_regenerate_and_only_questions_edit():
    make_serving_version()
    conv = services.conversation_create(owner=make_user())
    question, answer = _answered(conv, "Hi", "Hello!")
    with pytest.raises(ValidationError):
        chat.chat_regenerate(message=question)
    with pytest.raises(ValidationError):
        chat.chat_edit(message=answer, text="x")
    with pytest.raises(ValidationError):
        chat.chat_edit(message=question, text="   ")
    with pytest.raises(ValidationError):  # a turn follows an answer of the same conversation
        services.chat_turn_start(conversation=services.conversation_create(owner=conv.owner), text="x", parent=answer)
    assert Message.objects.count() == 2


def test_sibling_answers_become_one_ranking_label_and_a_second_submit_is_harmless():
    make_serving_version()
    user = make_user()
    conv = services.conversation_create(owner=user)
    question, a = _answered(conv, "Say hi.", "Hi!")
    b = chat.chat_regenerate(message=a)
    services.chat_reply_finish(message=b, content="Hello there, friend!")
    c = chat.chat_regenerate(message=a)
    services.chat_reply_finish(message=c, content="Hey.")

    label, created = chat.chat_rank(question=question, places={b.pk: 1, a.pk: 2, c.pk: 2}, by=user)
    assert created and label.kind == "ranking" and label.annotator == user
    task = label.task
    assert task.kind == Task.Kind.RANKING and task.message_id == question.pk
    text_of = {s.candidate_id: s.candidate.text for s in task.slots.select_related("candidate")}
    assert [[text_of[c] for c in group] for group in label.ranking] == [["Hello there, friend!"], ["Hi!", "Hey."]]
    assert task.prompt.messages == [{"role": "user", "content": "Say hi."}]

    again, created_again = chat.chat_rank(question=question, places={b.pk: 1, a.pk: 2, c.pk: 3}, by=user)
    assert (again.pk, created_again) == (label.pk, False) and Task.objects.filter(kind="ranking").count() == 1
    assert chat.ranked_questions(conversation=conv, by=user) == {question.pk}


@pytest.mark.parametrize(
    "places, why",
    [
        ("none", "every answer"),
        ("only-first", "every answer"),
        ("with-question", "every answer"),
        ("place-zero", "Places go from 1"),
    ],
)
def test_a_bad_ranking_is_refused_and_stores_nothing(places, why):
    make_serving_version()
    user = make_user()
    conv = services.conversation_create(owner=user)
    question, a = _answered(conv, "Say hi.", "Hi!")
    b = chat.chat_regenerate(message=a)
    services.chat_reply_finish(message=b, content="Hello!")
    given = {
        "none": {},
        "only-first": {a.pk: 1},
        "with-question": {a.pk: 1, b.pk: 2, question.pk: 3},
        "place-zero": {a.pk: 0, b.pk: 1},
    }[places]
    with pytest.raises(ValidationError, match=why):
        chat.chat_rank(question=question, places=given, by=user)
    with pytest.raises(ValidationError, match="two or more"):  # one answer alone is not a ranking
        chat.chat_rank(question=_answered(conv, "Alone?", "Yes.")[0], places={}, by=user)
    assert not Label.objects.exists() and not Task.objects.exists()


def test_the_system_prompt_leads_every_context_and_a_pinned_version_answers():
    serving = make_serving_version()
    other = version_register(artifact_path="/nonexistent/v2", base_model="tiny", parent=serving)
    admin, person = make_user(User.Role.ADMIN), make_user()
    conv = services.conversation_create(owner=admin)
    chat.conversation_settings_set(conversation=conv, by=admin, system_prompt="  Answer in French. ")
    _, reply = services.chat_turn_start(conversation=conv, text="Hello")
    assert context_before(message=reply) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]
    assert reply.policy_version == serving

    chat.conversation_settings_set(conversation=conv, by=admin, version=other, pin=True)
    assert chat.chat_regenerate(message=reply).policy_version == other
    chat.conversation_settings_set(conversation=conv, by=admin, version=None, pin=True)
    assert chat.chat_regenerate(message=reply).policy_version == serving

    theirs = services.conversation_create(owner=person)
    with pytest.raises(PermissionDenied):
        chat.conversation_settings_set(conversation=theirs, by=person, version=other, pin=True)
    with pytest.raises(ValidationError, match="limit"):
        chat.conversation_settings_set(conversation=theirs, by=person, system_prompt="x" * 9000)
    theirs.refresh_from_db()
    assert (theirs.policy_version, theirs.system_prompt) == (None, "")


def _page(client: Client, conv) -> str:
    response = client.get(f"/chat/{conv.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_pages_edit_regenerate_switch_rank_and_render_answers_as_safe_markdown():
    make_serving_version()
    user = make_user(username="chatter")
    client = Client()
    client.force_login(user)
    conv = services.conversation_create(owner=user)
    question, first = _answered(conv, "Show code", "Use **bold** <script>alert(1)</script>")
    html = _page(client, conv)
    assert "<strong>bold</strong>" in html and "<script>alert(1)" not in html

    assert client.post(f"/chat/message/{first.pk}/regenerate/").status_code == 302
    second = Message.objects.filter(parent=question).latest("id")
    assert second.status == Message.Status.STREAMING and f'data-stream-url="/chat/message/{second.pk}/stream/"' in (
        _page(client, conv)
    )
    services.chat_reply_finish(message=second, content="Another answer.")
    html = _page(client, conv)
    assert "2 / 2" in html and "Rank the 2 answers to this turn" in html

    posted = client.post(f"/chat/message/{question.pk}/rank/", {f"place-{first.pk}": "2", f"place-{second.pk}": "1"})
    assert posted.status_code == 302 and Label.objects.get().ranking[0] == [
        Task.objects.get().slots.get(position=1).candidate_id
    ]
    assert "You ranked these 2 answers" in _page(client, conv)
    bad = client.post(f"/chat/message/{question.pk}/rank/", {f"place-{first.pk}": "one"})
    assert bad.status_code == 400 and b"whole number" in bad.content

    assert client.post(f"/chat/message/{question.pk}/edit/", {"text": "Show a poem"}).status_code == 302
    assert client.post(f"/chat/message/{question.pk}/edit/", {"text": ""}).status_code == 400
    html = _page(client, conv)
    assert 'plain">Show a poem<' in html and 'plain">Show code<' not in html
    assert re.search(r'class="sibling-pos">2 / 2<', html)

    assert client.post(f"/chat/message/{first.pk}/switch/").status_code == 302
    html = _page(client, conv)
    assert 'plain">Show code<' in html and "1 / 2" in html and 'plain">Show a poem<' not in html

    done = client.get(f"/chat/message/{first.pk}/")
    assert done.status_code == 200 and b'data-done="1"' in done.content and b"<strong>bold</strong>" in done.content


def test_the_settings_form_sets_a_system_prompt_and_only_admins_pick_a_version():
    serving = make_serving_version()
    person, admin = make_user(), make_user(User.Role.ADMIN)
    client = Client()
    client.force_login(person)
    conv = services.conversation_create(owner=person)
    assert 'id="chat-version"' not in _page(client, conv)
    assert client.post(f"/chat/{conv.pk}/settings/", {"system_prompt": "Be brief."}).status_code == 302
    refused = client.post(f"/chat/{conv.pk}/settings/", {"version": str(serving.pk)})
    assert refused.status_code == 403
    conv.refresh_from_db()
    assert (conv.system_prompt, conv.policy_version) == ("Be brief.", None)

    client.force_login(admin)
    mine = services.conversation_create(owner=admin)
    assert 'id="chat-version"' in _page(client, mine)
    assert client.post(f"/chat/{mine.pk}/settings/", {"version": "nope"}).status_code == 400
    assert (
        client.post(f"/chat/{mine.pk}/settings/", {"system_prompt": "", "version": str(serving.pk)}).status_code == 302
    )
    mine.refresh_from_db()
    assert mine.policy_version == serving
    assert "picked by an admin" in _page(client, mine)
