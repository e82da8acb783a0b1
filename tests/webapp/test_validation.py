from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from webapp.feedback.validation import clean_messages, clean_user_text


def test_clean_messages_keeps_role_and_content_only():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "extra": 1}]
    assert clean_messages(messages) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        pytest.param([], "non-empty list", id="empty"),
        pytest.param("hello", "non-empty list", id="not-a-list"),
        pytest.param([{"role": "robot", "content": "x"}], "role 'robot'", id="bad-role"),
        pytest.param([{"role": "user", "content": "  "}], "non-empty string", id="blank-content"),
        pytest.param([{"role": "user", "content": 3}], "non-empty string", id="content-not-text"),
        pytest.param(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "last message",
            id="ends-with-assistant",
        ),
        pytest.param(["user: hi"], "message 0 must be an object", id="not-an-object"),
    ],
)
def test_clean_messages_rejects_bad_input_with_a_message_naming_the_problem(messages, fragment):
    with pytest.raises(ValidationError) as info:
        clean_messages(messages)
    assert fragment in " ".join(info.value.messages)


def test_clean_user_text_strips_and_rejects_empty():
    assert clean_user_text("  hello \n") == "hello"
    with pytest.raises(ValidationError, match="cannot be empty"):
        clean_user_text("   ")
    with pytest.raises(ValidationError, match="limit"):
        clean_user_text("x" * 20_001)
