"""Follow-up likelihood as a reward ("Aligning Language Models Using Follow-up Likelihood as Reward
Signal", Zhang et al. 2024).

How a user answers an assistant's reply says how good the reply was: "Thanks, that helps!"
follows good answers, "That's wrong." follows bad ones. A frozen language model that has seen
many conversations predicts this: the follow-up likelihood reward (FLR) of an answer is the mean
log-likelihood of positive follow-ups minus that of negative follow-ups, each given the context
and the answer. No labels are needed at scoring time, so it serves as

* a reward for online RL (:func:`training.grpo.followup_reward` wraps a :class:`FollowupScorer`);
* an implicit signal from the chats users have with the policy: :meth:`FollowupScorer.score_chat`
  scores every answer of a chat and also reports how likely the user's actual next message was.
  The chats' real follow-ups are also the natural data for adapting the scorer's model (the paper
  fine-tunes its reward model on conversations with natural-language feedback).

Heavy libraries are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.kto import check_prompt

DEFAULT_POSITIVE_FOLLOWUPS = (
    "Thanks, that helps!",
    "Great, that is exactly what I needed.",
    "Perfect, thank you.",
)
DEFAULT_NEGATIVE_FOLLOWUPS = (
    "That's wrong.",
    "That is not what I asked.",
    "No, that doesn't answer my question.",
)

Chat = list[dict[str, str]]


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _followup_ids(
    tokenizer: Any, context: Chat, answer: str, followup: str, max_length: int | None
) -> tuple[list[int], int]:
    """Token ids of context + answer + follow-up (up to the follow-up's end), and where the follow-up starts.

    The chat is rendered with the tokenizer's chat template, the follow-up as the next user turn.
    The follow-up's tokens are its content's; the role header and end-of-turn marker are the
    same for every follow-up and are not scored. With ``max_length``, the oldest tokens are cut.
    """
    messages = [*context, {"role": "assistant", "content": answer}, {"role": "user", "content": followup}]
    return _last_turn_ids(tokenizer, messages, max_length)


def _last_turn_ids(tokenizer: Any, messages: Chat, max_length: int | None) -> tuple[list[int], int]:
    """Token ids of the rendered chat up to its last message's content end, and where that content starts."""
    followup = messages[-1]["content"]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    content = followup.strip()
    end = text.rfind(content)
    if end < 0:
        raise ValueError(f"the chat template did not render the follow-up {followup!r}")
    prefix_ids = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    ids = tokenizer(text[: end + len(content)], add_special_tokens=False)["input_ids"]
    start = _common_prefix_length(prefix_ids, ids)  # tokens may merge across the boundary: start there
    if start == 0:
        raise ValueError("the follow-up must not be the start of the rendered chat")
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        if cut >= start:
            raise ValueError(f"the follow-up {followup!r} alone is longer than max_length={max_length} tokens")
        ids, start = ids[cut:], start - cut
    return ids, start


def followup_logprobs(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Chat, str, str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Mean per-token log-likelihood of each ``(context, answer, followup)``'s follow-up under ``model``.

    ``context`` is the chat up to the user's turn the ``answer`` replies to; ``followup`` is the
    user's next message. Computed without gradients, in batches of ``batch_size`` (right padded).
    """

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    encoded = []
    for i, (context, answer, followup) in enumerate(items):
        check_prompt(context, f"items[{i}] context")
        if not isinstance(answer, str):
            raise ValueError(f"items[{i}] answer must be a string, got {answer!r}")
        if not isinstance(followup, str) or not followup.strip():
            raise ValueError(f"items[{i}] follow-up must be a non-empty string, got {followup!r}")
        encoded.append(_followup_ids(tokenizer, context, answer, followup, max_length))
    return _mean_logprobs(model, tokenizer, encoded, batch_size)


def _mean_logprobs(model: Any, tokenizer: Any, encoded: list[tuple[list[int], int]], batch_size: int) -> list[float]:
    """Mean log-likelihood of each sequence's tokens from its start index on, in batches."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths share a batch
    results = [0.0] * len(encoded)
    with torch.no_grad():
        for chunk_start in range(0, len(order), batch_size):
            chunk = order[chunk_start : chunk_start + batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            rows = [encoded[i] for i in chunk]

            def on_model(values: list[list[Any]], dtype: Any) -> Any:  # (chunk, columns), built where the model is
                return torch.tensor(values, dtype=dtype, device=device)

            input_ids = on_model([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], torch.long)
            attention_mask = on_model([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], torch.long)
            # target positions 1..width-1: those of the tokens from each sequence's start index on
            scored = on_model(
                [[start - 1 <= j < len(ids) - 1 for j in range(width - 1)] for ids, start in rows], torch.bool
            )
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # (b, w-1, V)
            token_logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (b, w-1)
            means = (token_logps * scored).sum(-1) / scored.sum(-1)
            for row, i in enumerate(chunk):
                results[i] = float(means[row])
    return results


def followup_logprob(model: Any, tokenizer: Any, context: Chat, answer: str, followup: str) -> float:
    """Mean per-token log-likelihood of the user's next message ``followup`` given ``context`` + ``answer``."""
    return followup_logprobs(model, tokenizer, [(context, answer, followup)])[0]


@dataclass
class FollowupSignal:
    """The follow-up signals of one assistant answer in a chat."""

    turn: int = field(metadata={"help": "Index of the assistant message in the chat."})
    score: float = field(metadata={"help": "Template reward: mean log p(positive) - mean log p(negative follow-ups)."})
    next_message: str | None = field(
        default=None, metadata={"help": "The user's actual next message, or None where the chat ends."}
    )
    next_logprob: float | None = field(
        default=None, metadata={"help": "Mean per-token log-likelihood of next_message given the chat so far."}
    )


DEFAULT_SATISFIED_REPLIES = (
    "You're welcome, glad that helped!",
    "Happy to help.",
    "Great, I'm glad it works for you.",
)
DEFAULT_DISSATISFIED_REPLIES = (
    "Sorry, let me correct that.",
    "My apologies, I got that wrong.",
    "Sorry about that, here is a better answer.",
)


class FollowupScorer:
    """Scores answers by how much likelier positive than negative user follow-ups are after them.

    ``score = mean_p log p(p | context, answer) - mean_n log p(n | context, answer)`` over the
    positive and negative follow-up templates, each term a mean per-token log-likelihood under
    the frozen ``model``. Positive means the model expects the user to be satisfied.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        positive: Sequence[str] = DEFAULT_POSITIVE_FOLLOWUPS,
        negative: Sequence[str] = DEFAULT_NEGATIVE_FOLLOWUPS,
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:
        """Wrap ``model`` (a causal LM, put in eval mode, never changed here) and its ``tokenizer``."""
        for name, templates in (("positive", positive), ("negative", negative)):
            if isinstance(templates, str) or not templates:
                raise ValueError(f"{name} must be a non-empty list of follow-up messages, got {templates!r}")
            if not all(isinstance(t, str) and t.strip() for t in templates):
                raise ValueError(f"{name} follow-ups must be non-empty strings, got {list(templates)!r}")
        if set(positive) & set(negative):
            raise ValueError(
                f"a follow-up cannot be both positive and negative: {sorted(set(positive) & set(negative))}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length={max_length} must be None or >= 2")
        self.model = model.eval()  # scoring runs without gradients; pass a copy if the model is also trained
        self.tokenizer = tokenizer
        self.positive = list(positive)
        self.negative = list(negative)
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, model_path: str | Path, adapter_path: str | Path | None = None, *, device: str = "cpu", **kwargs: Any
    ) -> FollowupScorer:
        """Load the scorer's model from a ``save_pretrained`` folder onto ``device``, with an optional
        LoRA adapter merged in."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        model = AutoModelForCausalLM.from_pretrained(str(model_path))
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
        return cls(model.to(device), tokenizer, **kwargs)  # type: ignore[arg-type]  # transformers types .to oddly

    def logprobs(self, items: Sequence[tuple[Chat, str, str]]) -> list[float]:
        """:func:`followup_logprobs` with this scorer's model, batch size and length limit."""
        return followup_logprobs(
            self.model, self.tokenizer, items, batch_size=self.batch_size, max_length=self.max_length
        )

    def score_batch(self, contexts: Sequence[Chat], answers: Sequence[str]) -> list[float]:
        """The follow-up reward of each ``answers[i]`` to ``contexts[i]`` (chats ending with the user's turn)."""
        if len(contexts) != len(answers):
            raise ValueError(f"got {len(contexts)} contexts but {len(answers)} answers")
        templates = self.positive + self.negative
        items = [(c, a, t) for c, a in zip(contexts, answers, strict=True) for t in templates]
        values = self.logprobs(items)
        k, n_pos = len(templates), len(self.positive)
        scores = []
        for i in range(len(answers)):
            row = values[i * k : (i + 1) * k]
            scores.append(sum(row[:n_pos]) / n_pos - sum(row[n_pos:]) / (k - n_pos))
        return scores

    def score(self, context: Chat, answer: str) -> float:
        """The follow-up reward of ``answer`` to ``context``."""
        return self.score_batch([context], [answer])[0]

    def score_replies(self, items: Sequence[tuple[Chat, str, str]]) -> list[float]:
        """Score each ``(context, answer, reply)`` answer by the user's actual next message ``reply``.

        The same likelihood reading as :meth:`score_batch`, one turn later: after the user's real
        reply, how much likelier the model finds an assistant that was thanked ("You're welcome,
        glad that helped!") than one that must apologise ("Sorry, let me correct that."). Positive
        when the reply reads as satisfied ("Thanks!"), negative when it reads as a complaint
        ("That's wrong."). This is implicit feedback from real chats: no label is needed.
        """
        satisfied, dissatisfied = DEFAULT_SATISFIED_REPLIES, DEFAULT_DISSATISFIED_REPLIES
        encoded = []
        for i, (context, answer, reply) in enumerate(items):
            check_prompt(context, f"items[{i}] context")
            if not isinstance(reply, str) or not reply.strip():
                raise ValueError(f"items[{i}] reply must be a non-empty string, got {reply!r}")
            chat = [*context, {"role": "assistant", "content": answer}, {"role": "user", "content": reply}]
            for template in (*satisfied, *dissatisfied):
                turn = [*chat, {"role": "assistant", "content": template}]
                encoded.append(_last_turn_ids(self.tokenizer, turn, self.max_length))
        values = _mean_logprobs(self.model, self.tokenizer, encoded, self.batch_size)
        k, n_yes = len(satisfied) + len(dissatisfied), len(satisfied)
        scores = []
        for i in range(len(items)):
            row = values[i * k : (i + 1) * k]
            scores.append(sum(row[:n_yes]) / n_yes - sum(row[n_yes:]) / (k - n_yes))
        return scores

    def score_chat(self, messages: Chat) -> list[FollowupSignal]:
        """Follow-up signals for every assistant answer of a chat, in order.

        Each answer gets the template reward; where the user wrote again after it, the signal
        also holds that actual next message and its likelihood (a low value means the user
        reacted in a way the scorer did not expect).
        """
        signals: list[FollowupSignal] = []
        contexts, answers, turns = [], [], []
        for i, message in enumerate(messages):
            if message.get("role") == "assistant" and i > 0 and messages[i - 1].get("role") == "user":
                contexts.append([dict(m) for m in messages[:i]])
                answers.append(message["content"])
                turns.append(i)
        scores = self.score_batch(contexts, answers)
        nexts: list[tuple[int, Chat, str, str]] = []
        for turn, context, answer, score in zip(turns, contexts, answers, scores, strict=True):
            signals.append(FollowupSignal(turn=turn, score=score))
            following = messages[turn + 1] if turn + 1 < len(messages) else None
            if following is not None and following.get("role") == "user" and following["content"].strip():
                nexts.append((len(signals) - 1, context, answer, following["content"]))
        logps = self.logprobs([(context, answer, reply) for _, context, answer, reply in nexts])
        for (index, _, _, reply), logp in zip(nexts, logps, strict=True):
            signals[index].next_message = reply
            signals[index].next_logprob = logp
        return signals
