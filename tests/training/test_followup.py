"""Tests for training.followup: follow-up log-likelihoods and the follow-up likelihood reward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.followup import (
    DEFAULT_NEGATIVE_FOLLOWUPS,
    DEFAULT_POSITIVE_FOLLOWUPS,
    FollowupScorer,
    _followup_ids,
    followup_logprob,
    followup_logprobs,
)
from training.tiny_model import chat_corpus

POSITIVE, NEGATIVE = "Thanks, that helps!", "That's wrong."
QA = [(conversation[0], conversation[1]["content"]) for conversation in chat_corpus()]
SEEN_WRONG = 3  # question i is trained with the wrong answers of questions i+1 .. i+3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the tiny model is fastest on one thread; more only contend on a busy machine


@pytest.fixture(scope="module")
def base(tiny_policy_path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(tiny_policy_path)).eval(), AutoTokenizer.from_pretrained(
        str(tiny_policy_path)
    )


def _feedback_chat(i: int, j: int) -> list[dict[str, str]]:
    """Question i answered with question j's answer, then the user's verdict."""
    question, _ = QA[i]
    verdict = POSITIVE if i == j else NEGATIVE
    return [question, {"role": "assistant", "content": QA[j][1]}, {"role": "user", "content": verdict}]


@pytest.fixture(scope="module")
def feedback_model(tiny_policy_path: Path) -> tuple[Any, Any]:
    """The tiny policy trained briefly on chats where a right answer is thanked and a wrong one called wrong.

    Every question appears with its own answer and with the answers of the next SEEN_WRONG
    questions; the loss is on the user's verdict turn, as a reward model of follow-ups learns it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_path))
    n = len(QA)
    chats = []
    for i in range(n):
        chats += [_feedback_chat(i, i)] * SEEN_WRONG + [
            _feedback_chat(i, (i + k) % n) for k in range(1, SEEN_WRONG + 1)
        ]
    return _train_last_turn(model, tokenizer, chats, steps=300), tokenizer  # the user's verdict is learned


def _train_last_turn(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], *, steps: int) -> Any:
    """Train `model` on `chats` with the loss on each chat's last turn only; return it in eval mode."""
    import torch

    rows = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    turn_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        picked = torch.randint(0, len(rows), (8,), generator=generator).tolist()
        batch = tokenizer([rows[i] for i in picked], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for row in range(labels.shape[0]):
            last_turn = int((batch["input_ids"][row] == turn_start).nonzero()[-1])
            labels[row, :last_turn] = -100
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


# --- log-likelihood of a follow-up --------------------------------------------------------------


def test_followup_tokens_are_the_message_content(base: tuple[Any, Any]) -> None:
    _, tokenizer = base
    context = [{"role": "user", "content": "What colour is grass?"}]
    ids, start = _followup_ids(tokenizer, context, "Grass is green.", POSITIVE, None)
    assert tokenizer.decode(ids[start:]) == POSITIVE
    assert tokenizer.decode(ids[:start]).endswith("Grass is green.<|im_end|>\n<|im_start|>user\n")
    short, short_start = _followup_ids(tokenizer, context, "Grass is green.", POSITIVE, 12)
    assert len(short) == 12 and short[short_start:] == ids[start:]
    with pytest.raises(ValueError, match="longer than max_length=2"):
        _followup_ids(tokenizer, context, "Grass is green.", POSITIVE, 2)


def test_followup_logprob_is_the_mean_token_logprob(base: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = base
    context = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What colour is grass?"}]
    ids, start = _followup_ids(tokenizer, context, "Grass is green.", POSITIVE, None)
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    expected = float(logps[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])].mean())
    assert followup_logprob(model, tokenizer, context, "Grass is green.", POSITIVE) == pytest.approx(expected, abs=1e-5)


def test_batched_logprobs_match_one_at_a_time(base: tuple[Any, Any]) -> None:
    model, tokenizer = base
    items = [([QA[i][0]], QA[j][1], f) for i, j in [(0, 0), (1, 5), (7, 7)] for f in (POSITIVE, "Why?")]
    one_by_one = [followup_logprob(model, tokenizer, *item) for item in items]
    assert followup_logprobs(model, tokenizer, items, batch_size=4) == pytest.approx(one_by_one, abs=1e-4)
    assert followup_logprobs(model, tokenizer, []) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (([], "a", POSITIVE), "context must be a non-empty list"),
        (([{"role": "assistant", "content": "hi"}], "a", POSITIVE), "must be from the user"),
        (([{"role": "user", "content": "hi"}], None, POSITIVE), "answer must be a string"),
        (([{"role": "user", "content": "hi"}], "a", "  "), "follow-up must be a non-empty string"),
    ],
)
def test_logprobs_validation(base: tuple[Any, Any], item: tuple[Any, Any, Any], message: str) -> None:
    model, tokenizer = base
    with pytest.raises(ValueError, match=message):
        followup_logprobs(model, tokenizer, [item])


def test_scorer_validation(base: tuple[Any, Any]) -> None:
    model, tokenizer = base
    with pytest.raises(ValueError, match="positive must be a non-empty list"):
        FollowupScorer(model, tokenizer, positive=[])
    with pytest.raises(ValueError, match="negative must be a non-empty list"):
        FollowupScorer(model, tokenizer, negative="That's wrong.")
    with pytest.raises(ValueError, match="both positive and negative"):
        FollowupScorer(model, tokenizer, positive=[POSITIVE], negative=[POSITIVE])
    with pytest.raises(ValueError, match="batch_size=0"):
        FollowupScorer(model, tokenizer, batch_size=0)
    scorer = FollowupScorer(model, tokenizer)
    assert scorer.positive == list(DEFAULT_POSITIVE_FOLLOWUPS) and scorer.negative == list(DEFAULT_NEGATIVE_FOLLOWUPS)
    with pytest.raises(ValueError, match="2 contexts but 1 answers"):
        scorer.score_batch([[QA[0][0]], [QA[1][0]]], ["a"])


# --- the follow-up reward -----------------------------------------------------------------------


def test_score_is_positive_minus_negative_logprob(base: tuple[Any, Any]) -> None:
    model, tokenizer = base
    scorer = FollowupScorer(model, tokenizer, positive=[POSITIVE, "Great."], negative=[NEGATIVE])
    context, answer = [QA[1][0]], QA[1][1]
    expected = (
        followup_logprob(model, tokenizer, context, answer, POSITIVE)
        + followup_logprob(model, tokenizer, context, answer, "Great.")
    ) / 2 - followup_logprob(model, tokenizer, context, answer, NEGATIVE)
    assert scorer.score(context, answer) == pytest.approx(expected, abs=1e-4)


def test_trained_scorer_prefers_correct_answers_on_held_out_pairs(
    feedback_model: tuple[Any, Any], base: tuple[Any, Any]
) -> None:
    """Right answers score above wrong answers the model never saw paired with that question."""
    n = len(QA)
    held_out = [(i, (i + k) % n) for i in range(n) for k in range(SEEN_WRONG + 1, n, 4)]  # 120 unseen pairs
    contexts = [[QA[i][0]] for i, _ in held_out for _ in range(2)]
    answers = [answer for i, j in held_out for answer in (QA[i][1], QA[j][1])]

    def accuracy(model_and_tokenizer: tuple[Any, Any]) -> float:
        scores = FollowupScorer(*model_and_tokenizer, positive=[POSITIVE], negative=[NEGATIVE]).score_batch(
            contexts, answers
        )
        return sum(scores[k] > scores[k + 1] for k in range(0, len(scores), 2)) / len(held_out)

    trained = accuracy(feedback_model)
    assert trained >= 0.8, trained
    assert trained > accuracy(base) + 0.2  # the untrained policy has not learned what users thank for


def test_score_chat_gives_signals_per_answer(feedback_model: tuple[Any, Any]) -> None:
    model, tokenizer = feedback_model
    scorer = FollowupScorer(model, tokenizer, positive=[POSITIVE], negative=[NEGATIVE])
    (q0, a0), (q1, _), (_, wrong) = QA[1], QA[2], QA[9]
    chat = [
        {"role": "system", "content": "Be brief."},
        q0,
        {"role": "assistant", "content": a0},
        {"role": "user", "content": POSITIVE},
        {"role": "assistant", "content": "You are welcome."},
        q1,
        {"role": "assistant", "content": wrong},
    ]
    signals = scorer.score_chat(chat)
    assert [s.turn for s in signals] == [2, 4, 6]  # every assistant answer to a user turn
    first, middle, last = signals
    assert middle.next_message == q1["content"]
    assert first.next_message == POSITIVE
    assert first.next_logprob == pytest.approx(followup_logprob(model, tokenizer, chat[:2], a0, POSITIVE), abs=1e-4)
    assert first.score == pytest.approx(scorer.score(chat[:2], a0), abs=1e-4)
    assert last.next_message is None and last.next_logprob is None
    assert last.score == pytest.approx(scorer.score(chat[:6], wrong), abs=1e-4)
    assert first.score > last.score  # a right answer, then a wrong one
    assert scorer.score_chat([q0]) == []


# --- the user's actual reply as feedback ---------------------------------------------------------

THANKS, COMPLAINT = "Thanks, that helps!", "That's wrong."


@pytest.fixture(scope="module")
def reply_model(tiny_policy_path: Path) -> tuple[Any, Any]:
    """The tiny policy trained briefly to answer a thank-you with "You're welcome" and a complaint with
    an apology (the loss on the assistant's last turn only), as a chat model learns from chats."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.followup import DEFAULT_DISSATISFIED_REPLIES, DEFAULT_SATISFIED_REPLIES

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_path))
    chats = []
    for k, (question, answer) in enumerate(QA[:20]):
        happy = [question, {"role": "assistant", "content": answer}, {"role": "user", "content": THANKS}]
        upset = [question, {"role": "assistant", "content": answer}, {"role": "user", "content": COMPLAINT}]
        chats.append([*happy, {"role": "assistant", "content": DEFAULT_SATISFIED_REPLIES[k % 3]}])
        chats.append([*upset, {"role": "assistant", "content": DEFAULT_DISSATISFIED_REPLIES[k % 3]}])
    return _train_last_turn(model, tokenizer, chats, steps=150), tokenizer


def test_an_answer_is_scored_by_the_users_actual_reply(reply_model: tuple[Any, Any], base: tuple[Any, Any]) -> None:
    scorer = FollowupScorer(*reply_model)
    held_out = QA[20:30]  # questions the model never saw thanked or called wrong
    items = [([q], a, reply) for q, a in held_out for reply in (THANKS, COMPLAINT)]
    scores = scorer.score_replies(items)
    thanked, complained = scores[0::2], scores[1::2]
    assert all(t > 0 for t in thanked) and all(c < 0 for c in complained), (thanked, complained)
    assert len(FollowupScorer(*base).score_replies(items[:2])) == 2  # any chat model can score
    with pytest.raises(ValueError, match="reply must be a non-empty string"):
        scorer.score_replies([([QA[0][0]], QA[0][1], " ")])
