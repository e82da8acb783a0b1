"""Reward models from human preferences: pairs (with strength and ties) and rankings, on any backbone.

A reward model here is a sequence-classification model with one output (``num_labels=1``) on top
of any backbone: a causal LM (``AutoModelForSequenceClassification``: the score is read at the
last token, e.g. the tiny Qwen2 policy) or an encoder. An encoder that declares mean pooling (a
sentence-transformers model such as all-MiniLM-L6-v2) is read the way it was trained, through
the masked mean of its token states (``RewardConfig.pooling``); other encoders through their
pooled first token. It is trained with a subclass of TRL's ``RewardTrainer`` (its
optimiser, schedule, logging, dropout handling and model set-up), whose loss is:

* pairs: Bradley-Terry, ``-log sigmoid(r_c - r_r - m)``, with the margin ``m`` from the labeller's
  strength (``RewardConfig.margin_from_strength``; no strength -> 0), exactly TRL's ``margin`` column;
* ties (and "both bad", see :func:`examples_from_items`): with ``tie_policy="equal"`` (the
  default) the symmetric Bradley-Terry loss ``½[-log sigmoid(r_a - r_b) - log sigmoid(r_b - r_a)]``, i.e. the
  Bradley-Terry likelihood with target probability ½. Its gradient ``sigmoid(d) - ½`` pulls the two
  scores together and vanishes when they are equal, and its scale is that of a pair's loss, so ties
  cannot dominate. We keep ties rather than drop them because a tie is a label too: "these two are
  equally good" is what stops a reward model from inventing large differences between answers
  that people could not tell apart (dropping ties leaves the model free to spread them
  arbitrarily). ``tie_policy="drop"`` drops them instead (what TRL's preference format does);
* rankings: the Plackett-Luce negative log-likelihood of the whole ranked list (ties within a
  list allowed), :func:`training.losses.plackett_luce_loss`.

Truncation is ours, deliberate, and never drops an example (TRL 1.16's ``RewardTrainer`` silently
drops every pair with a side longer than ``max_length``). In multi-turn human-feedback data the two
sides of a pair share the whole conversation and differ only in the last assistant reply; cutting
the end of a long input (what tokenizers do by default) removes exactly the part that differs and
leaves two identical inputs. So each input is built as [context][reply]: the reply is kept whole
(only a reply longer than ``max_length - min_context_tokens`` loses its end, and two replies that
differ do so from their first tokens on, so the difference survives), and the context is cut from
the left, keeping the end of the conversation: the last user turn and the turns just before it.

Ensembles: ``ensemble_size`` members trained from different seeds (head initialisation and data
order) or on bootstrap resamples of the examples, or ``ensemble_size`` score heads on one backbone
(``ensemble_method="heads"``: one model with ``num_labels`` = the number of heads, trained once on
the mean of the heads' losses, for about the cost of one member); :class:`RewardEnsemble` loads
them and combines their scores with :func:`training.losses.ensemble_score`.

Heavy libraries are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.adapters import ProgressFn, progress_callback
from training.feedback_io.records import ImportedItem, validate_messages
from training.feedback_io.rows import STRENGTH_MARGIN

if TYPE_CHECKING:
    from torch import Tensor

TIE_POLICIES = ("equal", "drop")
POOLINGS = ("auto", "model", "mean")
HEAD_INITS = ("random", "probe")
ENSEMBLE_METHODS = ("seeds", "bootstrap", "heads")
# Written next to each trained model: how its inputs were built, so scoring builds them the same way.
REWARD_META_FILE = "prefloop_reward.json"
CALIBRATION_MIN_PAIRS = 20  # fewer held-out pairs than this fit no temperature: one or two pairs would set it at random
TEMPERATURE_RANGE = (1e-6, 1e6)  # where fit_temperature looks (a barely trained model can need T near 0.01)
# Role names for backbones without a chat template (encoders, base LMs): "User: ...", "Assistant: ...".
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


# --------------------------------------------------------------------------- examples


@dataclass
class PreferenceExample:
    """One pairwise judgement: for ``prompt``, ``chosen`` was preferred to ``rejected`` (or a tie)."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answer; the last one is the user's turn."}
    )
    chosen: str = field(metadata={"help": "The preferred answer (for a tie: either answer)."})
    rejected: str = field(metadata={"help": "The other answer."})
    strength: int | None = field(
        default=None,
        metadata={"help": "How strongly chosen was preferred: 1 (slightly) to 3 (clearly), or None (unknown)."},
    )
    tie: bool = field(default=False, metadata={"help": "True if the labeller judged the two answers equally good."})
    group: str | None = field(
        default=None, metadata={"help": "Optional slice name (task, source, annotator...) for per-group accuracy."}
    )

    def __post_init__(self) -> None:
        validate_messages(self.prompt)
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.tie, bool):
            raise ValueError(f"tie must be True or False, got {self.tie!r}")
        if self.strength is not None and (
            isinstance(self.strength, bool) or not isinstance(self.strength, int) or not 1 <= self.strength <= 3
        ):
            raise ValueError(f"strength must be None or an integer from 1 to 3, got {self.strength!r}")
        if self.tie and self.strength is not None:
            raise ValueError(f"a tie has no strength, got strength={self.strength!r}")
        if not self.tie and self.chosen == self.rejected:
            raise ValueError(
                f"chosen and rejected are the same text ({self.chosen!r:.60}); mark it tie=True or drop it"
            )
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ValueError(f"group must be None or a non-empty string, got {self.group!r}")


@dataclass
class RankingExample:
    """One listwise judgement: ``completions`` for ``prompt`` ranked by ``ranks`` (0 = best, equal = tie)."""

    prompt: list[dict[str, str]] = field(
        metadata={"help": "Chat messages ({'role', 'content'}) before the answers; the last one is the user's turn."}
    )
    completions: list[str] = field(metadata={"help": "Two or more answers."})
    ranks: list[int] = field(metadata={"help": "One rank per answer: 0 = best; equal ranks are ties; gaps allowed."})
    group: str | None = field(
        default=None, metadata={"help": "Optional slice name (task, source, annotator...) for per-group accuracy."}
    )

    def __post_init__(self) -> None:
        validate_messages(self.prompt)
        if not isinstance(self.completions, list) or len(self.completions) < 2:
            raise ValueError(f"completions must be a list of two or more answers, got {self.completions!r:.80}")
        if not all(isinstance(c, str) for c in self.completions):
            raise ValueError("every completion must be a string")
        if not isinstance(self.ranks, list) or len(self.ranks) != len(self.completions):
            raise ValueError(
                f"ranks={self.ranks!r} must be a list with one rank per completion ({len(self.completions)})"
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in self.ranks):
            raise ValueError(f"ranks={self.ranks!r} must be integers >= 0 (0 = best)")
        if len(set(self.ranks)) < 2:
            raise ValueError(f"ranks={self.ranks!r} are all equal: the ranking orders nothing")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ValueError(f"group must be None or a non-empty string, got {self.group!r}")


Example = PreferenceExample | RankingExample


def examples_from_items(
    items: Iterable[Any], *, group: Callable[[ImportedItem], str | None] | None = None
) -> list[Example]:
    """Training examples from imported items (:func:`training.feedback_io.read_feedback`), in order.

    Each pairwise label gives one :class:`PreferenceExample`: "a"/"b" -> chosen/rejected with the
    label's strength; "tie" -> ``tie=True``; "both_bad" -> ``tie=True`` too, because for a reward
    that only orders answers, "both are bad" says that neither is better, which is what a tie says
    (how bad both are is not something a pairwise loss can learn). Each ranking label gives one
    :class:`RankingExample` (ranking groups -> ranks). Other labels and :class:`BadRecord` entries
    are skipped. ``group(item)``, if given, names each example's group.
    """
    examples: list[Example] = []
    for item in items:
        if not isinstance(item, ImportedItem):
            continue
        name = group(item) if group is not None else None
        texts = [c.text for c in item.candidates]
        for label in item.labels:
            if label.kind == "pairwise" and item.kind == "pairwise":
                a, b = texts
                if label.choice in ("tie", "both_bad"):
                    if a != b:
                        examples.append(PreferenceExample(item.messages, a, b, tie=True, group=name))
                    continue
                chosen, rejected = (a, b) if label.choice == "a" else (b, a)
                if chosen != rejected:
                    examples.append(PreferenceExample(item.messages, chosen, rejected, label.strength, group=name))
            elif label.kind == "ranking" and label.ranking is not None:
                ranks = [0] * len(texts)
                for level, members in enumerate(label.ranking):
                    for index in members:
                        ranks[index] = level
                if len(set(ranks)) >= 2:
                    examples.append(RankingExample(item.messages, list(texts), ranks, group=name))
    return examples


# --------------------------------------------------------------------------- config


@dataclass
class RewardConfig:
    """Settings for training a reward model (or an ensemble of them).

    The defaults suit a small encoder or a 0.5B-1.5B LM and a few hundred to a few thousand
    pairs: full fine-tuning at 5e-5 with linear decay, one epoch, batches of 8. For the tiny CPU
    demo policy raise the learning rate (1e-3) and the epochs.
    """

    backbone: str = field(
        metadata={"help": "Path of the backbone: any model AutoModelForSequenceClassification loads (LM or encoder)."}
    )
    max_length: int = field(
        default=512,
        metadata={
            "help": "Longest input in tokens; longer ones are truncated (context cut from the left), never dropped."
        },
    )
    min_context_tokens: int = field(
        default=64,
        metadata={
            "help": "Context tokens always kept next to a very long reply, the reply's end being cut instead "
            "(at most half of max_length)."
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the examples (ignored if max_steps)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "If set, train exactly this many optimiser steps instead of by epochs."}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Examples (pairs or lists) per forward pass."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimiser step."})
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch examples of similar length together (Trainer's LengthGroupedSampler, shuffled "
            "groups): far less padding, so faster on a CPU."
        },
    )
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps with a linear warm-up."})
    average_last: float = field(
        default=0.0,
        metadata={
            "help": "Keep the mean of the weights over this last fraction of optimiser steps instead of the final "
            "weights (tail averaging, as in SWA); 0 = the final weights."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Train with the backbone's dropout off (TRL's default): the scores of one input agree."},
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the backbone's input embeddings and its first N transformer blocks (0 = train "
            "everything). The frozen part needs no backward pass and no optimiser state, so each step is "
            "cheaper, and the lower layers of a pretrained backbone gain little from a few hundred pairs."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    margin_from_strength: dict[int, float] = field(
        default_factory=lambda: dict(STRENGTH_MARGIN),
        metadata={
            "help": "Bradley-Terry margin for each strength (1 slightly .. 3 clearly better); no strength -> 0. "
            "Use {1: 0, 2: 0, 3: 0} for the plain loss."
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": f"How one score is read from the backbone: one of {POOLINGS}. 'model': the sequence-"
            "classification head of transformers (last token of an LM, pooled [CLS] of an encoder); 'mean': "
            "a linear head on the masked mean of the last hidden states; 'auto': 'mean' when the backbone "
            "declares mean pooling (a sentence-transformers model, such as all-MiniLM-L6-v2), else 'model'."
        },
    )
    head_init: str = field(
        default="random",
        metadata={
            "help": f"How the new score head starts: one of {HEAD_INITS}. 'random': transformers' initialisation; "
            "'probe': fitted first on the frozen backbone's features of the training inputs with this same loss "
            "(a linear probe, then fine-tuning: 'LP-FT', Kumar et al. 2022), so the first steps of fine-tuning "
            "follow a head that already ranks the answers instead of a random one. Costs one forward pass over "
            "the training inputs, once: members of a 'seeds' ensemble share that fit (their data and starting "
            "backbone are the same), a 'bootstrap' member fits on its own resample."
        },
    )
    head_spread: float = field(
        default=0.5,
        metadata={
            "help": "ensemble_method='heads' with a random head_init: how far apart the heads start, in (0, 1]. "
            "Head k starts at (1 - head_spread) x head 0's random weights + head_spread x its own. 1 = independent "
            "random heads, which pull the shared backbone different ways and train far slower; near 0 the heads "
            "barely differ. (A probed start needs none: its heads are fitted on different resamples.)"
        },
    )
    probe_l2: float = field(
        default=0.01,
        metadata={"help": "L2 penalty on the probe's weights (head_init='probe'); larger = a more cautious head."},
    )
    probe_examples: int | None = field(
        default=None,
        metadata={
            "help": "Fit the probe (head_init='probe') on this many training examples, drawn without replacement "
            "with the config's seed, instead of all of them. The head has only hidden_size + 1 weights, so a "
            "few hundred pairs pin it down, and the probe's one forward pass shrinks in proportion. None = all."
        },
    )
    tie_policy: str = field(
        default="equal",
        metadata={"help": f"Pairwise ties: one of {TIE_POLICIES} ('equal': pull the two scores together; 'drop')."},
    )
    center_rewards_coefficient: float | None = field(
        default=0.01,
        metadata={
            "help": "Weight of mean(r^2) over all scores (TRL's centring, Eisenstein et al. 2023): keeps scores "
            "near 0, so ensemble members share an offset and their spread measures disagreement. None = off."
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Bradley-Terry pairs: train towards P(chosen wins) = 1 - label_smoothing instead of 1, in "
            "[0, 0.5). Crowd labels disagree with each other, and the plain loss rewards every pair for pulling "
            "its scores ever further apart; smoothing stops each pair at log((1 - e) / e), so sigmoid(score "
            "difference) is less overconfident (on HH-RLHF 0.1 cut the calibration error by about 40% and cost "
            "up to 1.7 accuracy points). Ties and ranked lists are unchanged."
        },
    )
    calibrate: bool = field(
        default=False,
        metadata={
            "help": "With eval_examples: fit one temperature T per model on those held-out pairs (temperature "
            "scaling, Guo et al. 2017) and divide its scores by T from then on. Rankings, and so accuracy, are "
            "unchanged; sigmoid(score difference) becomes a calibrated probability of the pair's outcome. Needs "
            f"at least {CALIBRATION_MIN_PAIRS} held-out non-tie pairs; with fewer, nothing is fitted."
        },
    )
    ensemble_size: int = field(
        default=1,
        metadata={"help": "Number of reward models to train, or of score heads with 'heads' (1 = a single one)."},
    )
    ensemble_method: str = field(
        default="seeds",
        metadata={
            "help": f"How members differ: one of {ENSEMBLE_METHODS}. 'seeds': member k is trained with seed + k; "
            "'bootstrap': on a resample of the examples; 'heads': ensemble_size linear heads on one backbone, "
            "trained together on the mean of their losses (one training run; the heads start from different "
            "random weights, or with head_init='probe' from probes fitted on different resamples)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the first member (head initialisation, data order)."})
    scoring_batch_size: int = field(default=16, metadata={"help": "Inputs per forward pass when scoring."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory on large models."}
    )
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU even if an accelerator is visible."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (for GPUs that support it)."})

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, (str, Path)) or not str(self.backbone):
            raise ValueError(f"backbone={self.backbone!r} must be a non-empty path")
        self.backbone = str(self.backbone)
        for name in ("max_length", "min_context_tokens", "per_device_train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an integer")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length!r} must be >= 8")
        if self.min_context_tokens < 0:
            raise ValueError(f"min_context_tokens={self.min_context_tokens!r} must be >= 0")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "scoring_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)) or (
            self.learning_rate <= 0
        ):
            raise ValueError(f"learning_rate={self.learning_rate!r} must be a positive number")
        if not (isinstance(self.num_train_epochs, (int, float)) and math.isfinite(self.num_train_epochs)) or (
            self.num_train_epochs <= 0
        ):
            raise ValueError(f"num_train_epochs={self.num_train_epochs!r} must be positive")
        for name in ("max_steps", "probe_examples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be None or a positive integer")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if not 0.0 <= self.average_last < 1.0:
            raise ValueError(f"average_last={self.average_last!r} must be in [0, 1)")
        if isinstance(self.freeze_layers, bool) or not isinstance(self.freeze_layers, int) or self.freeze_layers < 0:
            raise ValueError(f"freeze_layers={self.freeze_layers!r} must be an integer >= 0")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        margins = {int(k): v for k, v in dict(self.margin_from_strength).items()}  # JSON round trips give "1" keys
        if set(margins) != {1, 2, 3}:
            raise ValueError(f"margin_from_strength={self.margin_from_strength!r} must map each of 1, 2, 3")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in margins.values()):
            raise ValueError(f"margin_from_strength={self.margin_from_strength!r} must hold finite numbers >= 0")
        self.margin_from_strength = {k: float(v) for k, v in sorted(margins.items())}
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} must be one of {POOLINGS}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r} must be one of {HEAD_INITS}")
        if not (isinstance(self.probe_l2, (int, float)) and math.isfinite(self.probe_l2)) or self.probe_l2 < 0:
            raise ValueError(f"probe_l2={self.probe_l2!r} must be a finite number >= 0")
        if self.tie_policy not in TIE_POLICIES:
            raise ValueError(f"tie_policy={self.tie_policy!r} must be one of {TIE_POLICIES}")
        if self.center_rewards_coefficient is not None and not (
            math.isfinite(self.center_rewards_coefficient) and self.center_rewards_coefficient >= 0
        ):
            raise ValueError(f"center_rewards_coefficient={self.center_rewards_coefficient!r} must be None or >= 0")
        if isinstance(self.label_smoothing, bool) or not (
            isinstance(self.label_smoothing, (int, float)) and 0.0 <= self.label_smoothing < 0.5
        ):
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be a number in [0, 0.5)")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate={self.calibrate!r} must be True or False")
        if isinstance(self.ensemble_size, bool) or not isinstance(self.ensemble_size, int) or self.ensemble_size < 1:
            raise ValueError(f"ensemble_size={self.ensemble_size!r} must be a positive integer")
        if self.ensemble_method not in ENSEMBLE_METHODS:
            raise ValueError(f"ensemble_method={self.ensemble_method!r} must be one of {ENSEMBLE_METHODS}")
        if not (
            isinstance(self.head_spread, (int, float))
            and not isinstance(self.head_spread, bool)
            and 0 < self.head_spread <= 1
        ):
            raise ValueError(f"head_spread={self.head_spread!r} must be a number in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if self.bf16 and self.use_cpu:
            raise ValueError("bf16=True needs use_cpu=False (bfloat16 mixed precision is for accelerators)")

    def margin(self, strength: int | None) -> float:
        """The Bradley-Terry margin for a pair's strength (None -> 0.0)."""
        return 0.0 if strength is None else self.margin_from_strength[strength]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for ``VersionMeta.config``."""
        return asdict(self)


# --------------------------------------------------------------------------- inputs


@dataclass
class _Layout:
    """How one (context, reply) input is laid out for a tokenizer, found once per tokenizer."""

    chat_template: bool  # render with the tokenizer's chat template (else "User: ..." plain text)
    prefix: list[int]  # special tokens before the context, e.g. [CLS]
    middle: list[int]  # between context and reply, e.g. [SEP]
    suffix: list[int]  # after the reply, e.g. [SEP]
    type_ids: tuple[list[int], list[int]] | None  # token types of (prefix + context + middle, reply + suffix)

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _find(haystack: list[int], needle: list[int], start: int = 0) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def _layout(tokenizer) -> _Layout:
    """Probe ``tokenizer`` for its pair layout.

    A chat template already writes every special token into the text, so chat models get none
    added. Otherwise the tokenizer's own sentence-pair layout is used (``[CLS] a [SEP] b [SEP]``
    with token types 0/1 for BERT-like encoders, a BOS or nothing for base LMs): it is read off
    an encoded probe pair, so truncation can work on token ids and add the special tokens after.
    """
    if getattr(tokenizer, "chat_template", None):
        return _Layout(True, [], [], [], None)
    probe_a, probe_b = "first words", "second words"
    a = tokenizer(probe_a, add_special_tokens=False)["input_ids"]
    b = tokenizer(probe_b, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(probe_a, probe_b, add_special_tokens=True)
    ids = list(encoded["input_ids"])
    i = _find(ids, a)
    j = _find(ids, b, i + len(a)) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ValueError(f"cannot find the layout of a sentence pair for tokenizer {type(tokenizer).__name__}")
    prefix, middle, suffix = ids[:i], ids[i + len(a) : j], ids[j + len(b) :]
    type_ids = None
    if "token_type_ids" in encoded and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        types = list(encoded["token_type_ids"])
        type_ids = ([types[0]], [types[j]])  # one type for the first segment, one for the second
    return _Layout(False, prefix, middle, suffix, type_ids)


def _render(tokenizer, layout: _Layout, prompt: list[dict[str, str]], completion: str) -> tuple[str, str]:
    """The input as (context text, reply text); the reply text holds everything after the shared context."""
    if layout.chat_template:
        context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
        cut = 0
        while cut < min(len(context), len(full)) and context[cut] == full[cut]:
            cut += 1
        return full[:cut], full[cut:]
    turns = [f"{ROLE_LABELS[m['role']]}: {m['content']}" for m in prompt]
    return "\n\n".join([*turns, "Assistant:"]), " " + completion


def _encode(
    tokenizer, layout: _Layout, prompt: list[dict[str, str]], completion: str, max_length: int, min_context_tokens: int
) -> tuple[list[int], list[int] | None, bool]:
    """Token ids (and token types, if the model uses them) of one input, at most ``max_length`` long.

    Returns ``(input_ids, token_type_ids or None, truncated)``. See the module docstring for why
    the context is cut from the left and the reply is kept.
    """
    context_text, reply_text = _render(tokenizer, layout, prompt, completion)
    context = tokenizer(context_text, add_special_tokens=False)["input_ids"]
    reply = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    budget = max_length - layout.n_special
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room next to {layout.n_special} special tokens")
    truncated = len(context) + len(reply) > budget
    # A reply may use all the room but the last min_context_tokens (or half, for tiny max_length).
    reserve = min(len(context), min_context_tokens, budget // 2)
    if len(reply) > budget - reserve:
        reply = reply[: budget - reserve]  # the end of a very long reply goes; its beginning differs and stays
    keep = budget - len(reply)
    context = context[len(context) - keep :] if 0 < keep < len(context) else (context if keep > 0 else [])
    ids = [*layout.prefix, *context, *layout.middle, *reply, *layout.suffix]
    types = None
    if layout.type_ids is not None:
        first, second = layout.type_ids
        n_first = len(layout.prefix) + len(context) + len(layout.middle)
        types = first * n_first + second * (len(reply) + len(layout.suffix))
    return ids, types, truncated


def encode_input(
    tokenizer, prompt: list[dict[str, str]], completion: str, *, max_length: int, min_context_tokens: int = 64
) -> dict[str, Any]:
    """The model input for one (prompt, completion), exactly as training and scoring build it.

    Returns ``{"input_ids", "token_type_ids" (None unless the model uses token types), "truncated"}``;
    at most ``max_length`` tokens, the context cut from the left (see the module docstring).
    """
    ids, types, truncated = _encode(tokenizer, _layout(tokenizer), prompt, completion, max_length, min_context_tokens)
    return {"input_ids": ids, "token_type_ids": types, "truncated": truncated}


def _tokenizer_with_pad(path: str):  # -> PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer at {path} has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' expected warnings: the new score head of a backbone, and "sequence longer
    than the model's maximum" while a whole conversation is tokenised before it is truncated here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def backbone_pooling(path: str | Path) -> str:
    """'mean' if the backbone folder is a sentence-transformers model that pools by mean, else 'model'.

    Such encoders were trained to be read through the mean of their token states (their
    ``1_Pooling/config.json`` says so); their [CLS] pooler is left over from pre-training.
    """
    pooling_file = Path(path) / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        declared = json.loads(pooling_file.read_text())
        if declared.get("pooling_mode_mean_tokens") and not declared.get("pooling_mode_cls_token"):
            return "mean"
    return "model"


def _resolve_pooling(config: RewardConfig) -> str:
    return backbone_pooling(config.backbone) if config.pooling == "auto" else config.pooling


@functools.cache
def _mean_pooled_class():  # -> type[PreTrainedModel]
    import torch
    from transformers import AutoModel, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledRewardModel(PreTrainedModel):
        """Any backbone (``AutoModel``) with a linear head (``config.num_labels`` outputs, one per score
        head) on the masked mean of its last hidden states. Saved and loaded with
        ``save_pretrained``/``from_pretrained(path, config=...)``."""

        config_class = PretrainedConfig
        base_model_prefix = "backbone"  # a bare backbone checkpoint loads into self.backbone

        def __init__(self, config) -> None:
            super().__init__(config)
            kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "xlm-roberta") else {}
            self.backbone = AutoModel.from_config(config, **kwargs)
            self.score = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return SequenceClassifierOutput(logits=self.score(pooled.to(self.score.weight.dtype)))

    return MeanPooledRewardModel


def _load_scoring_model(path: str, *, pooling: str = "model", heads: int = 1, dtype=None):  # -> PreTrainedModel
    """The backbone at ``path`` with a score head of ``heads`` outputs (one per head of a 'heads' ensemble)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    dtype = dtype or torch.float32
    with suppress_seqcls_warning(), _quiet_transformers():  # the score head is new; a causal LM's lm_head unused
        if pooling == "mean":
            config = AutoConfig.from_pretrained(path, num_labels=heads)
            return _mean_pooled_class().from_pretrained(path, config=config, dtype=dtype)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=heads, dtype=dtype)


# --------------------------------------------------------------------------- training


def _rows(
    examples: Sequence[Example], tokenizer, layout: _Layout, config: RewardConfig
) -> tuple[list[dict[str, Any]], int]:
    """One training row per example: token ids of every answer, ranks, margin and tie flag."""
    rows, n_truncated = [], 0
    for example in examples:
        if isinstance(example, PreferenceExample):
            texts, ranks = [example.chosen, example.rejected], [0, 0] if example.tie else [0, 1]
            margin, tie = (0.0 if example.tie else config.margin(example.strength)), example.tie
        else:
            texts, ranks, margin, tie = list(example.completions), list(example.ranks), 0.0, False
        ids, types = [], []
        for text in texts:
            input_ids, type_ids, truncated = _encode(
                tokenizer, layout, example.prompt, text, config.max_length, config.min_context_tokens
            )
            ids.append(input_ids)
            types.append(type_ids or [])
            n_truncated += truncated
        row: dict[str, Any] = {
            "completion_ids": ids,
            "ranks": ranks,
            "margin": float(margin),
            "tie": tie,
            "length": sum(len(i) for i in ids),  # for group_by_length
        }
        if layout.type_ids is not None:
            row["completion_type_ids"] = types
        rows.append(row)
    return rows, n_truncated


def _row_targets(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    """What :func:`preference_loss` needs besides the scores, for ``rows`` whose answers are scored in order.

    ``index`` ``(rows, n_max)``: position of each row's answers among all answers (-1 = none);
    ``ranks`` ``(rows, n_max)``; ``margin`` and ``tie`` ``(rows,)``.
    """
    import torch

    n_max = max(len(row["completion_ids"]) for row in rows)
    index = torch.full((len(rows), n_max), -1, dtype=torch.long)
    ranks = torch.zeros((len(rows), n_max), dtype=torch.long)
    offset = 0
    for b, row in enumerate(rows):
        n = len(row["completion_ids"])
        index[b, :n] = torch.arange(offset, offset + n)
        ranks[b, :n] = torch.tensor(row["ranks"], dtype=torch.long)
        offset += n
    return {
        "index": index,
        "ranks": ranks,
        "margin": torch.tensor([row["margin"] for row in rows], dtype=torch.float),
        "tie": torch.tensor([bool(row["tie"]) for row in rows], dtype=torch.bool),
    }


@dataclass
class _ListCollator:
    """Pads every answer of a batch of rows into one (answers, length) batch, right-padded as TRL does."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [ids for row in rows for ids in row["completion_ids"]]
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)  # (answers, length)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **_row_targets(rows)}
        if "completion_type_ids" in rows[0]:
            token_type_ids = torch.zeros((len(sequences), length), dtype=torch.long)
            types = [t for row in rows for t in row["completion_type_ids"]]
            for i, t in enumerate(types):
                token_type_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            batch["token_type_ids"] = token_type_ids
        return batch

    @staticmethod
    def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        """The part of a collated batch the model takes (the rest is for :func:`preference_loss`)."""
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def preference_loss(
    scores: Tensor,
    index: Tensor,
    ranks: Tensor,
    margin: Tensor,
    tie: Tensor,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The reward-model loss of one batch of rows (pairs, ties and ranked lists mixed).

    Args:
        scores: ``(answers,)`` the model's score of every answer in the batch.
        index: ``(batch, n_max)`` position in ``scores`` of each row's answers (-1 = no answer).
        ranks: ``(batch, n_max)`` 0 = best; a pair is ``[0, 1]`` (chosen first), a tie ``[0, 0]``.
        margin: ``(batch,)`` Bradley-Terry margins of the pairs.
        tie: ``(batch,)`` True for a tied pair.

    Rows of two answers are pairs: Bradley-Terry with margin (and ``label_smoothing``, see
    :func:`training.losses.bradley_terry_loss`), or for a tie the symmetric Bradley-Terry loss
    (target ½); longer rows are Plackett-Luce lists. The loss is the mean over
    rows of each row's loss, plus ``center_rewards_coefficient * mean(scores²)``.
    Returns ``(loss, diagnostics)`` with plain floats.
    """
    import torch

    from training.losses import bradley_terry_loss, plackett_luce_loss

    mask = index >= 0  # (batch, n_max)
    per_row = scores[index.clamp(min=0)]  # (batch, n_max); padded entries hold a copy of answer 0, masked below
    n_answers = mask.sum(dim=1)  # (batch,)
    pair = (n_answers == 2) & ~tie
    tied = (n_answers == 2) & tie
    listed = n_answers > 2
    total = scores.new_zeros(())
    diagnostics: dict[str, float] = {}
    if bool(pair.any()):
        chosen, rejected = per_row[pair, 0], per_row[pair, 1]
        loss, diag = bradley_terry_loss(chosen, rejected, margin[pair], label_smoothing=label_smoothing)
        total = total + loss * int(pair.sum())
        diagnostics["accuracy"] = float(diag["rewards/accuracies"])
        diagnostics["margin"] = float(diag["rewards/margins"])
    if bool(tied.any()):
        a, b = per_row[tied, 0], per_row[tied, 1]
        forward, _ = bradley_terry_loss(a, b)
        backward, _ = bradley_terry_loss(b, a)
        total = total + 0.5 * (forward + backward) * int(tied.sum())
        diagnostics["tie_abs_diff"] = float((a - b).detach().abs().mean())
    if bool(listed.any()):
        loss, diag = plackett_luce_loss(per_row[listed], ranks[listed], mask[listed])
        total = total + loss * int(listed.sum())
        diagnostics["ranking_pair_accuracy"] = float(diag["ranking/pair_accuracy"])
    loss = total / index.shape[0]
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * torch.mean(scores**2)
    diagnostics["mean_reward"] = float(scores.detach().mean())
    return loss, diagnostics


def heads_preference_loss(
    scores: Tensor,
    index: Tensor,
    ranks: Tensor,
    margin: Tensor,
    tie: Tensor,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of a reward model with several score heads: the mean over heads of each head's
    :func:`preference_loss`.

    ``scores`` is ``(answers, heads)``, or ``(answers,)`` for one head (then this is exactly
    :func:`preference_loss`). Each head gets its own loss, so the heads stay separate reward models
    that share a backbone, not one model whose scores are averaged before the loss. The diagnostics
    are those of the heads' mean score, the score the ensemble is read by.
    """
    import torch

    def loss_of(head_scores: Tensor) -> tuple[Tensor, dict[str, float]]:
        return preference_loss(head_scores, index, ranks, margin, tie, center_rewards_coefficient, label_smoothing)

    if scores.dim() == 1:
        return loss_of(scores)
    losses = [loss_of(scores[:, k])[0] for k in range(scores.shape[1])]
    with torch.no_grad():
        _, diagnostics = loss_of(scores.mean(dim=1))
    return torch.stack(losses).mean(), diagnostics


def _trainer_class():  # -> type[RewardTrainer]
    from trl import RewardTrainer

    class PrefloopRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer on rows already tokenised and truncated by this module.

        What changes: the dataset is used as is (TRL would re-tokenise it and drop long pairs, and
        it knows neither ties nor lists), batches come from :class:`_ListCollator`, and the loss is
        :func:`preference_loss` (Bradley-Terry with margins exactly as TRL's, plus ties and
        Plackett-Luce lists), averaged over the score heads if there are several.
        """

        center_coefficient: float | None = None
        label_smoothing: float = 0.0

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "completion_ids" not in dataset.column_names:
                raise ValueError(f"the {dataset_name} dataset must come from training.reward (completion_ids)")
            return dataset

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["completion_ids", "completion_type_ids", "ranks", "margin", "tie", "length"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            outputs = model(**_ListCollator.model_inputs(inputs))
            scores = outputs.logits.squeeze(-1).float()  # (answers,), or (answers, heads) for several heads
            loss, diagnostics = heads_preference_loss(
                scores,
                inputs["index"],
                inputs["ranks"],
                inputs["margin"],
                inputs["tie"],
                self.center_coefficient,
                self.label_smoothing,
            )
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            for key, value in diagnostics.items():
                self._metrics[mode][key].append(value)
            return (loss, outputs) if return_outputs else loss

    return PrefloopRewardTrainer


def _score_head(model):  # -> torch.nn.Linear
    """The linear layer that turns the backbone's features into the scores: the last one with
    ``config.num_labels`` outputs (one per score head)."""
    import torch

    n_out = int(getattr(model.config, "num_labels", 1))
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_out]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear score head with {n_out} output(s)")
    return heads[-1]


def _head_features(model, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int) -> list[Tensor]:
    """The score head's input for every answer of ``rows``: one ``(answers of the row, hidden)`` tensor per row.

    Taken with a forward hook in eval mode (no dropout), batches sorted by length. A causal LM's
    head sees every position; the position read is the one transformers reads for the score (the
    last token that is not padding), and the features are checked to give the model's own scores.
    """
    import torch

    head = _score_head(model)
    collate = _ListCollator(pad_token_id=pad_token_id)
    captured: list[Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    per_row: list[Tensor | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = collate([rows[i] for i in chunk])
                captured.clear()
                logits = model(**_ListCollator.model_inputs(batch)).logits.float()  # (answers, heads)
                features = captured[-1]
                if features.dim() == 3:  # (answers, length, hidden): a causal LM scores its last real token
                    non_pad = (batch["input_ids"] != model.config.pad_token_id).long()
                    positions = torch.arange(non_pad.shape[1]) * non_pad
                    features = features[torch.arange(features.shape[0]), positions.argmax(-1)]
                if not torch.allclose(head(features).float(), logits.reshape(len(features), -1), atol=1e-3, rtol=1e-3):
                    raise RuntimeError(f"cannot read the score head's features of {type(model).__name__}")
                offset = 0
                for i in chunk:
                    n = len(rows[i]["completion_ids"])
                    per_row[i] = features[offset : offset + n].float()
                    offset += n
    finally:
        hook.remove()
        model.train(was_training)
    return [f for f in per_row if f is not None]


def fit_head_by_probe(
    model,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    *,
    l2: float,
    center_rewards_coefficient: float | None = None,
    label_smoothing: float = 0.0,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``model``'s score head, in place, on its frozen features of ``rows`` (a linear probe).

    The head's weights and bias become the minimiser of the mean :func:`preference_loss` of the
    rows (pairs, ties and lists alike, the very loss fine-tuning then continues) plus
    ``l2 * |w|²``, found by L-BFGS from zero, i.e. from scores that are all equal. The backbone is
    not changed. A head with several outputs (a 'heads' ensemble) is fitted output by output: the
    first on the rows, output k on a bootstrap resample of them drawn with ``seed + k``, all from the
    same forward pass. Returns ``probe_loss_start`` (the loss at zero), ``probe_loss`` and
    ``probe_accuracy`` (on the rows' pairs) of the first output's fit.
    """
    import torch

    head = _score_head(model)
    per_row = _head_features(model, rows, pad_token_id, batch_size)  # the one forward pass, shared by all heads
    results = []
    for k in range(head.out_features):
        # Head 0 is fitted on the rows themselves; each further head of a 'heads' ensemble on its own
        # bootstrap resample of them (seeded), so the heads start apart as bootstrap members do.
        picks = list(range(len(rows)))
        if k > 0:
            rng = random.Random(seed + k)
            picks = [rng.randrange(len(rows)) for _ in rows]
        weight, bias, result = _fit_probe(
            torch.cat([per_row[i] for i in picks]),
            _row_targets([rows[i] for i in picks]),
            l2=l2,
            with_bias=head.bias is not None,
            center_rewards_coefficient=center_rewards_coefficient,
            label_smoothing=label_smoothing,
        )
        with torch.no_grad():
            head.weight[k].copy_(weight.to(head.weight.dtype))
            if head.bias is not None:
                head.bias[k] = float(bias)
        results.append(result)
    return results[0]  # head 0's fit, on the rows themselves


def _fit_probe(
    features: Tensor,
    targets: dict[str, Tensor],
    *,
    l2: float,
    with_bias: bool,
    center_rewards_coefficient: float | None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Minimise the mean :func:`preference_loss` of ``features @ weight + bias`` plus ``l2 * |w|²`` by
    L-BFGS from zero; return ``(weight, bias, metrics)``."""
    import torch

    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=with_bias)

    def objective() -> tuple[Tensor, dict[str, float]]:
        scores = features @ weight + bias  # (answers,)
        loss, diagnostics = preference_loss(
            scores, **targets, center_rewards_coefficient=center_rewards_coefficient, label_smoothing=label_smoothing
        )
        return loss + l2 * (weight**2).sum(), diagnostics

    with torch.no_grad():
        start_loss = float(objective()[0])
    optimiser = torch.optim.LBFGS(
        [weight, bias] if with_bias else [weight], max_iter=500, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss, _ = objective()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        loss, diagnostics = objective()
    return (
        weight.detach(),
        bias.detach(),
        {
            "probe_loss_start": start_loss,
            "probe_loss": float(loss),
            "probe_accuracy": diagnostics.get("accuracy", float("nan")),
        },
    )


def spread_heads(model, spread: float) -> None:
    """Set the score head's outputs 1.. to ``(1 - spread) x output 0 + spread x their own`` weights, in place.

    A 'heads' ensemble shares one backbone; heads drawn independently point the backbone's features
    different ways at the start and slow training down (on the tiny test model, the loss after 60
    steps stayed at 0.60 with independent heads, against 0.17 for one head and 0.24 at spread ½).
    Starting the heads partly together keeps them pulling the same way while they still differ."""
    import torch

    head = _score_head(model)
    with torch.no_grad():
        head.weight[1:] = (1.0 - spread) * head.weight[:1] + spread * head.weight[1:]
        if head.bias is not None:
            head.bias[1:] = (1.0 - spread) * head.bias[:1] + spread * head.bias[1:]


def freeze_bottom_layers(model, n_layers: int) -> int:
    """Freeze the input embeddings and the first ``n_layers`` transformer blocks of ``model``; return
    how many parameters stay trainable.

    The blocks are the model's ``ModuleList`` of ``config.num_hidden_layers`` modules (BERT's
    ``encoder.layer``, Qwen2's ``layers``, ...); everything registered before the first block (word,
    position and token-type embeddings and their norm) counts as embeddings, and whatever comes
    after the blocks (final norm, pooler, score head) stays trainable."""
    import torch

    if n_layers > 0:
        n_blocks = getattr(model.config, "num_hidden_layers", None)
        found = next(
            (
                (name, module)
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.ModuleList) and len(module) == n_blocks
            ),
            None,
        )
        if found is None:
            raise ValueError(f"freeze_layers={n_layers}: the model has no list of {n_blocks} transformer blocks")
        prefix, blocks = found
        if n_layers > len(blocks):
            raise ValueError(f"freeze_layers={n_layers} exceeds the backbone's {len(blocks)} transformer blocks")
        for name, param in model.named_parameters():
            if name.startswith(prefix + "."):
                break
            param.requires_grad_(False)  # the embeddings
        for block in blocks[:n_layers]:
            block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tail_average_callback(fraction: float):  # -> TrainerCallback
    """A callback that keeps the running mean of the trainable weights over the last ``fraction`` of the
    optimiser steps and writes it into the model when training ends."""
    import torch
    from transformers import TrainerCallback

    class TailAverage(TrainerCallback):
        def __init__(self) -> None:
            self.mean: dict[str, torch.Tensor] = {}
            self.n = 0

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step <= math.floor(state.max_steps * (1.0 - fraction)):
                return
            self.n += 1
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if not param.requires_grad:
                        continue
                    if name not in self.mean:  # kept in float32: a bf16 running mean would lose the small steps
                        self.mean[name] = param.detach().float().clone()
                    else:
                        self.mean[name] += (param.detach().float() - self.mean[name]) / self.n

        def on_train_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.mean:
                        param.copy_(self.mean[name].to(param.dtype))

    return TailAverage()


def _member_examples(examples: list[Example], config: RewardConfig, member: int) -> list[Example]:
    if config.ensemble_method in ("seeds", "heads") or config.ensemble_size == 1:
        return examples
    rng = random.Random(config.seed + member)
    return [examples[rng.randrange(len(examples))] for _ in examples]  # a bootstrap resample, with replacement


def _train_member(
    rows: list[dict[str, Any]],
    tokenizer,
    config: RewardConfig,
    seed: int,
    out: Path,
    progress: ProgressFn | None,
    probe_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and save one member. ``probe_cache``, a dict shared by members that train on the same
    rows, keeps the first member's probed head (``head_init="probe"``) for the others to copy."""
    from datasets import Dataset
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig as TRLRewardConfig

    set_seed(seed)  # before loading: the new score head is drawn from this seed
    pooling = _resolve_pooling(config)
    heads = config.ensemble_size if config.ensemble_method == "heads" else 1
    model = _load_scoring_model(config.backbone, pooling=pooling, heads=heads)
    trainable = freeze_bottom_layers(model, config.freeze_layers)  # first: a bad count fails before any work
    probe: dict[str, float] = {}
    if heads > 1 and config.head_init == "random":
        spread_heads(model, config.head_spread)
    if config.head_init == "probe" and probe_cache:  # the same rows and backbone: the same fit, copied
        _score_head(model).load_state_dict(probe_cache["head"])
        probe = {**probe_cache["metrics"], "probe_seconds": 0.0}
    elif config.head_init == "probe":
        started = time.perf_counter()
        probe_rows = rows
        if config.probe_examples is not None and config.probe_examples < len(rows):
            # drawn with the config's seed, not the member's: 'seeds' members share one fit of the same sample
            probe_rows = random.Random(config.seed).sample(rows, config.probe_examples)
        probe = fit_head_by_probe(
            model,
            probe_rows,
            tokenizer.pad_token_id,
            l2=config.probe_l2,
            center_rewards_coefficient=config.center_rewards_coefficient,
            label_smoothing=config.label_smoothing,
            batch_size=config.scoring_batch_size,
            seed=seed,
        )
        probe["probe_seconds"] = round(time.perf_counter() - started, 3)
        probe["probe_examples"] = len(probe_rows)
        if probe_cache is not None:
            head_state = {name: value.detach().clone() for name, value in _score_head(model).state_dict().items()}
            probe_cache.update(head=head_state, metrics=dict(probe))
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prefloop-reward-") as scratch:
        args = TRLRewardConfig(
            output_dir=scratch,  # required by the Trainer; nothing is written there (no checkpoints, no reports)
            learning_rate=config.learning_rate,
            num_train_epochs=config.num_train_epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            per_device_train_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
            weight_decay=config.weight_decay,
            disable_dropout=config.disable_dropout,
            max_length=None,  # our rows are truncated already; TRL must not filter them
            center_rewards_coefficient=config.center_rewards_coefficient,
            seed=seed,
            data_seed=seed,
            gradient_checkpointing=config.gradient_checkpointing,
            use_cpu=config.use_cpu,
            bf16=config.bf16,
            remove_unused_columns=True,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            length_column_name="length",
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        # TRL's RewardTrainer refuses a model with num_labels != 1, a guard against a classifier passed by
        # mistake; a 'heads' model's outputs are separate rewards, each with its own loss
        # (heads_preference_loss), so it is shown one label while the trainer is built.
        model.config.num_labels = 1
        try:
            trainer = _trainer_class()(
                model=model,
                args=args,
                data_collator=_ListCollator(pad_token_id=tokenizer.pad_token_id),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[progress_callback(progress, history)],
            )
        finally:
            model.config.num_labels = heads
        trainer.center_coefficient = config.center_rewards_coefficient
        trainer.label_smoothing = config.label_smoothing
        if config.average_last > 0:
            trainer.add_callback(_tail_average_callback(config.average_last))
        trainer.remove_callback(PrinterCallback)  # with tqdm disabled the Trainer would print every log line
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start + probe.get("probe_seconds", 0.0)
    if not history:
        raise RuntimeError("reward-model training logged no step; check max_steps and the data")
    trained = trainer.accelerator.unwrap_model(trainer.model)
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    meta = {
        "max_length": config.max_length,
        "min_context_tokens": config.min_context_tokens,
        "seed": seed,
        "pooling": pooling,
        "heads": heads,
    }
    (out / REWARD_META_FILE).write_text(json.dumps({**meta, "config": config.to_dict()}, indent=2))
    return {
        "path": str(out),
        "seed": seed,
        "steps": int(trainer.state.global_step),
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "train_seconds": round(seconds, 3),
        "trainable_parameters": trainable,
        "heads": heads,
        **probe,
    }


def train_reward_model(
    examples: Sequence[Example],
    out_dir: str | Path,
    config: RewardConfig,
    progress: ProgressFn | None = None,
    *,
    eval_examples: Sequence[PreferenceExample] | None = None,
) -> dict[str, Any]:
    """Train a reward model (or ``config.ensemble_size`` of them) on ``examples``; save into ``out_dir``.

    One member is saved in ``out_dir`` itself; an ensemble in ``out_dir/member-0``, ``member-1``...;
    a 'heads' ensemble is one model with ``ensemble_size`` score heads, saved in ``out_dir``. Each
    folder holds the model, its tokenizer and ``prefloop_reward.json`` (how inputs are built), and
    loads with :meth:`RewardEnsemble.load`. Nothing is dropped for length (see the module
    docstring); ties follow ``config.tie_policy``.

    ``progress``, if given, is called after every optimiser step with ``member``, ``members``,
    ``step``, ``max_steps``, ``fraction``, ``loss``, ``accuracy`` (on the batch's pairs),
    ``learning_rate``... An exception raised by ``progress`` stops training and propagates.

    Returns plain metrics: ``n_examples``, ``n_pairs``, ``n_ties``, ``n_ties_dropped``,
    ``n_rankings``, ``n_inputs_truncated``, ``members`` (per member: ``path``, ``seed``, ``heads``,
    ``trainable_parameters``, ``steps``, ``first_loss``, ``final_loss``, ``train_seconds``), ``member_paths``,
    ``train_seconds``, and, when ``eval_examples`` are given, ``eval`` (see
    :func:`evaluate_pairs`, with the ensemble's mean score). With ``config.calibrate`` each model's
    temperature is fitted on the ``eval_examples`` pairs first and saved with it, and ``calibration``
    reports the temperatures and the ECE before and after (``eval`` is then read after).
    """
    examples = list(examples)
    for i, example in enumerate(examples):
        if not isinstance(example, (PreferenceExample, RankingExample)):
            raise TypeError(
                f"examples[{i}] must be a PreferenceExample or RankingExample, got {type(example).__name__}"
            )
    n_ties = sum(isinstance(e, PreferenceExample) and e.tie for e in examples)
    if config.tie_policy == "drop":
        examples = [e for e in examples if not (isinstance(e, PreferenceExample) and e.tie)]
    if not examples:
        raise ValueError("train_reward_model needs at least one example (after dropping ties), got none")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {out} is not empty")

    tokenizer = _tokenizer_with_pad(config.backbone)
    layout = _layout(tokenizer)
    with _quiet_transformers():
        rows, n_truncated = _rows(examples, tokenizer, layout, config)
    position = {id(e): i for i, e in enumerate(examples)}
    members = []
    shared_probe: dict[str, Any] = {}  # one probe fit for the members that train on all the rows
    n_members = 1 if config.ensemble_method == "heads" else config.ensemble_size  # heads: one model, trained once
    for k in range(n_members):
        member_examples = _member_examples(examples, config, k)
        resampled = member_examples is not examples  # _member_examples alone decides who gets a bootstrap resample
        member_rows = [rows[position[id(e)]] for e in member_examples] if resampled else rows
        target = out if n_members == 1 else out / f"member-{k}"

        def member_progress(entry: dict[str, Any], k: int = k) -> None:
            if progress is not None:
                progress({"member": k, "members": n_members, **entry})

        members.append(
            _train_member(
                member_rows,
                tokenizer,
                config,
                config.seed + k,
                target,
                member_progress,
                probe_cache=None if resampled else shared_probe,
            )
        )

    metrics: dict[str, Any] = {
        "n_examples": len(examples),
        "n_pairs": sum(isinstance(e, PreferenceExample) and not e.tie for e in examples),
        "n_ties": n_ties,
        "n_ties_dropped": n_ties if config.tie_policy == "drop" else 0,
        "n_rankings": sum(isinstance(e, RankingExample) for e in examples),
        "n_inputs_truncated": n_truncated,
        "members": members,
        "member_paths": [m["path"] for m in members],
        "train_seconds": round(sum(m["train_seconds"] for m in members), 3),
    }
    if eval_examples and config.calibrate:
        metrics["calibration"] = _calibrate_members(metrics["member_paths"], eval_examples, config.scoring_batch_size)
    if eval_examples:
        ensemble = RewardEnsemble.load(metrics["member_paths"], batch_size=config.scoring_batch_size)
        metrics["eval"] = evaluate_pairs(ensemble, eval_examples)
    return metrics


def _calibrate_members(
    paths: Sequence[str], eval_examples: Sequence[PreferenceExample], batch_size: int
) -> dict[str, Any]:
    """Fit each saved model's temperature on the held-out pairs and record it in its metadata file.

    Returns ``temperatures`` (one per model, fitted on all the pairs) and the held-out pairs' ECE of
    the ensemble's mean score before (``ece_before``) and after (``ece_after``); or, with fewer than
    ``CALIBRATION_MIN_PAIRS`` non-tie pairs, or pairs that a model ranks all right (or all wrong), only
    ``skipped`` (why), and the models keep temperature 1.
    So that ``ece_after`` is not read on the very pairs a temperature was fitted on, it is
    cross-fitted: the even-numbered pairs are scaled by temperatures fitted on the odd-numbered
    ones, and the other way round (by the full fit where a half alone pins nothing down).
    """
    pairs = [e for e in eval_examples if isinstance(e, PreferenceExample) and not e.tie]
    if len(pairs) < CALIBRATION_MIN_PAIRS:
        return {"skipped": f"{len(pairs)} held-out pairs, fewer than the {CALIBRATION_MIN_PAIRS} a temperature needs"}
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    n = len(pairs)
    before, after, temperatures = [], [], []
    halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    for path in paths:
        scorer = RewardScorer.load(path, batch_size=batch_size)
        scorer.temperature = 1.0  # fit on the model's own outputs, even if it was calibrated before
        scores = scorer.score(prompts, completions)
        if not _pins_temperature(scores[:n], scores[n:]):
            return {"skipped": f"the {n} held-out pairs do not pin a temperature down (the model ranks all one way)"}
        temperature = fit_temperature(scores[:n], scores[n:])
        crossed = list(scores)
        for fit_on, apply_to in (halves, halves[::-1]):
            chosen, rejected = [scores[i] for i in fit_on], [scores[n + i] for i in fit_on]
            # a half the model ranks all one way has no fit of its own: the other half takes the full one
            t = fit_temperature(chosen, rejected) if _pins_temperature(chosen, rejected) else temperature
            for i in apply_to:
                crossed[i], crossed[n + i] = scores[i] / t, scores[n + i] / t
        temperatures.append(temperature)
        before.append(scores)
        after.append(crossed)
    # written only once every model has a temperature: a skip above leaves all of them at 1
    for path, temperature in zip(paths, temperatures, strict=True):
        meta_file = Path(path) / REWARD_META_FILE
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "temperature": temperature}, indent=2))

    def mean_ece(per_model: list[list[float]]) -> float:
        mean = _column_means(per_model)
        return expected_calibration_error(preference_probabilities(mean[:n], mean[n:]))

    return {"temperatures": temperatures, "ece_before": mean_ece(before), "ece_after": mean_ece(after), "n_pairs": n}


def _pins_temperature(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> bool:
    """Whether the pairs have a best temperature: some ranked right and some wrong. Ranked all right,
    the loss keeps falling as T goes to 0 (all wrong: to infinity), and the pairs say nothing about
    how confident the model should be."""
    return len({c > r for c, r in zip(chosen_scores, rejected_scores, strict=True) if c != r}) == 2


def _column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of each column of equally long ``rows`` (models or heads x inputs -> inputs)."""
    return [sum(column) / len(column) for column in zip(*rows, strict=True)]


def fit_temperature(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Temperature scaling (Guo et al. 2017) for a reward model: the ``T`` that minimises the
    held-out pairs' mean ``-log sigmoid((r_c - r_r) / T)``.

    The loss is convex in ``1 / T``, so unimodal in ``log(1 / T)``, which is found by golden-section
    search over ``TEMPERATURE_RANGE`` on a log scale: an overconfident model gets ``T > 1``, an
    underconfident one ``T < 1``. Pairs that the model ranks all right, or all wrong, have no
    minimum (see :func:`_pins_temperature`) and are refused.
    """
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    gaps = [float(c) - float(r) for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    if not gaps:
        raise ValueError("fit_temperature needs at least one pair")
    if not all(math.isfinite(g) for g in gaps):
        raise ValueError("fit_temperature needs finite scores")
    if not _pins_temperature(chosen_scores, rejected_scores):
        raise ValueError("fit_temperature needs pairs ranked some right and some wrong; these have no best temperature")

    def loss(log_inverse: float) -> float:  # mean -log sigmoid(gap / T), computed stably, at log(1 / T)
        inverse = math.exp(log_inverse)
        return sum(max(-inverse * g, 0.0) + math.log1p(math.exp(-abs(inverse * g))) for g in gaps) / len(gaps)

    low, high = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])  # the range of log(1 / T)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(80):  # the bracket shrinks by 0.618 per step: 80 steps take it below 1e-16 of its width
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp(-(low + high) / 2.0)


# --------------------------------------------------------------------------- scoring


class RewardScorer:
    """One trained reward model: scores (prompt, completion) inputs built exactly as in training."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int,
        min_context_tokens: int,
        batch_size: int = 16,
        temperature: float = 1.0,
    ) -> None:
        if isinstance(temperature, bool) or not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
        self.model = model.eval()
        self.temperature = temperature  # scores are the model's outputs divided by this (see fit_temperature)
        self.heads = int(getattr(model.config, "num_labels", 1))  # > 1 for a 'heads' ensemble
        self.tokenizer = tokenizer
        self.layout = _layout(tokenizer)
        self.max_length = max_length
        self.min_context_tokens = min_context_tokens
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, *, batch_size: int = 16, device: str = "cpu") -> RewardScorer:
        """Load a model saved by :func:`train_reward_model` onto ``device``."""
        path = Path(path)
        meta_file = path / REWARD_META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} has no {REWARD_META_FILE}; it was not saved by train_reward_model")
        meta = json.loads(meta_file.read_text())
        model = _load_scoring_model(
            str(path), pooling=meta.get("pooling", "model"), heads=int(meta.get("heads", 1))
        ).to(device)
        tokenizer = _tokenizer_with_pad(str(path))
        return cls(
            model,
            tokenizer,
            max_length=int(meta["max_length"]),
            min_context_tokens=int(meta["min_context_tokens"]),
            batch_size=batch_size,
            temperature=float(meta.get("temperature", 1.0)),
        )

    def score(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> list[float]:
        """One score per (prompt, completion), in order: the model's score, or for a model with
        several score heads the mean of its heads' scores."""
        per_head = self.score_heads(prompts, completions)
        return per_head[0] if len(per_head) == 1 else _column_means(per_head)

    def score_heads(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> list[list[float]]:
        """Each score head's scores of every (prompt, completion), ``(heads, inputs)``; one head for a
        plain reward model, divided by the model's temperature (1 unless it was calibrated). Batches are
        formed by length to pad little."""
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        with _quiet_transformers():
            encoded = [
                _encode(self.tokenizer, self.layout, list(p), c, self.max_length, self.min_context_tokens)
                for p, c in zip(prompts, completions, strict=True)
            ]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        scores = [[0.0] * len(encoded) for _ in range(self.heads)]  # (heads, inputs)
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                length = max(len(encoded[i][0]) for i in chunk)
                input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)  # (chunk, length)
                attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
                token_type_ids = torch.zeros((len(chunk), length), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids, types, _ = encoded[i]
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    attention_mask[row, : len(ids)] = 1
                    if types is not None:
                        token_type_ids[row, : len(types)] = torch.tensor(types)
                inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
                if self.layout.type_ids is not None:
                    inputs["token_type_ids"] = token_type_ids.to(device)
                logits = self.model(**inputs).logits.float().reshape(len(chunk), self.heads)  # (chunk, heads)
                for row, i in enumerate(chunk):
                    for k in range(self.heads):
                        scores[k][i] = float(logits[row, k]) / self.temperature
        return scores


class RewardEnsemble:
    """Several reward models scored together; one model is an ensemble of one, and each score head of
    a model with several (``ensemble_method="heads"``) counts as one member."""

    def __init__(self, members: Sequence[RewardScorer], *, lam: float = 1.0) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member, got none")
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam={lam!r} must be a finite number >= 0")
        self.members = list(members)
        self.lam = lam

    @classmethod
    def load(
        cls, paths: Sequence[str | Path], *, lam: float = 1.0, batch_size: int = 16, device: str = "cpu"
    ) -> RewardEnsemble:
        """Load the members saved at ``paths`` (each a folder written by :func:`train_reward_model`)."""
        if isinstance(paths, (str, Path)):
            raise TypeError(f"paths must be a list of folders, not the single path {paths!r}")
        return cls([RewardScorer.load(p, batch_size=batch_size, device=device) for p in paths], lam=lam)

    def score(self, prompts: Sequence[list[dict[str, str]]], completions: Sequence[str]) -> dict[str, list[Any]]:
        """Scores of each (prompt, completion) pair, combined over the members.

        Returns ``{"mean", "std", "min", "uwo", "members"}``: the first four are lists with one
        value per input, from :func:`training.losses.ensemble_score` (``uwo`` = mean - lam x
        variance; ``std`` is the members' population standard deviation, 0 for one member);
        ``members`` holds each member's own scores (members x inputs), a model's score heads one
        after another.
        """
        import torch

        from training.losses import ensemble_score

        per_member = [head for member in self.members for head in member.score_heads(prompts, completions)]
        scores = torch.tensor(per_member, dtype=torch.float64).reshape(len(per_member), len(completions))
        mean = ensemble_score(scores, mode="mean")
        return {
            "mean": mean.tolist(),
            "std": (mean - ensemble_score(scores, mode="std", lam=1.0)).tolist(),
            "min": ensemble_score(scores, mode="min").tolist(),
            "uwo": ensemble_score(scores, mode="uwo", lam=self.lam).tolist(),
            "members": per_member,
        }


# --------------------------------------------------------------------------- metrics


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def preference_probabilities(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> list[float]:
    """The model's probability that chosen beats rejected, ``sigmoid(r_c - r_r)``, for each pair."""
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    return [_sigmoid(float(c) - float(r)) for c, r in zip(chosen_scores, rejected_scores, strict=True)]


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """Share of pairs where the chosen answer scores higher; an exact tie of scores counts ½."""
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(f"got {len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores")
    if not chosen_scores:
        raise ValueError("pairwise_accuracy needs at least one pair")
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return sum(hits) / len(hits)


def expected_calibration_error(probabilities: Sequence[float], n_bins: int = 10) -> float:
    """ECE of pairwise predictions ``p = sigmoid(r_c - r_r)`` (each pair's true winner is the chosen side).

    Every label is "chosen wins", so the plain binary ECE would only measure how close ``p`` is to 1.
    This is the usual top-label ECE instead: the model predicts the side it favours, with confidence
    ``max(p, 1 - p)``, and is right when ``p > ½`` (½ credit at ``p = ½``). Confidences fall in
    ``n_bins`` equal bins over [½, 1]; ECE = Σ_bins (n_bin / n) · |accuracy_bin - mean confidence_bin|.
    0 is perfectly calibrated; a model that says 0.9 and is right 60% of the time scores 0.3.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} must be a positive integer")
    if not probabilities:
        raise ValueError("expected_calibration_error needs at least one probability")
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p in probabilities:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probabilities must be in [0, 1], got {p!r}")
        confidence = max(p, 1.0 - p)
        correct = 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
        index = min(int((confidence - 0.5) * 2 * n_bins), n_bins - 1)
        bins[index].append((confidence, correct))
    n = len(probabilities)
    return sum(len(b) / n * abs(sum(c for _, c in b) / len(b) - sum(conf for conf, _ in b) / len(b)) for b in bins if b)


def accuracy_by_group(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], groups: Sequence[str | None]
) -> dict[str, dict[str, float]]:
    """Pairwise accuracy within each group: ``{group: {"accuracy", "n"}}``; pairs without a group are skipped."""
    if not len(chosen_scores) == len(rejected_scores) == len(groups):
        raise ValueError(
            f"got {len(chosen_scores)} chosen scores, {len(rejected_scores)} rejected scores and {len(groups)} groups"
        )
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            members.setdefault(g, []).append(i)
    return {
        g: {
            "accuracy": pairwise_accuracy([chosen_scores[i] for i in idx], [rejected_scores[i] for i in idx]),
            "n": len(idx),
        }
        for g, idx in sorted(members.items())
    }


def pairwise_metrics(
    chosen_scores: Sequence[float], rejected_scores: Sequence[float], groups: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """``{"n", "accuracy", "ece", "by_group"}`` for pairs scored (chosen, rejected)."""
    groups = list(groups) if groups is not None else [None] * len(chosen_scores)
    return {
        "n": len(chosen_scores),
        "accuracy": pairwise_accuracy(chosen_scores, rejected_scores),
        "ece": expected_calibration_error(preference_probabilities(chosen_scores, rejected_scores)),
        "by_group": accuracy_by_group(chosen_scores, rejected_scores, groups),
    }


def evaluate_pairs(
    ensemble: RewardEnsemble, examples: Sequence[PreferenceExample], *, mode: str = "mean"
) -> dict[str, Any]:
    """Accuracy, ECE and per-group accuracy of ``ensemble`` (its ``mode`` score) on the non-tie pairs.

    Returns :func:`pairwise_metrics` plus ``"members"``: the same metrics for each member alone
    (without ``by_group``).
    """
    pairs = [e for e in examples if isinstance(e, PreferenceExample) and not e.tie]
    if not pairs:
        raise ValueError("evaluate_pairs needs at least one non-tie PreferenceExample")
    prompts = [p.prompt for p in pairs] * 2
    scored = ensemble.score(prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    if mode not in scored or mode == "members":
        raise ValueError(f"mode={mode!r} must be one of ('mean', 'std', 'min', 'uwo')")
    n = len(pairs)
    combined = scored[mode]
    metrics = pairwise_metrics(combined[:n], combined[n:], [p.group for p in pairs])
    metrics["members"] = [
        {k: v for k, v in pairwise_metrics(s[:n], s[n:]).items() if k != "by_group"} for s in scored["members"]
    ]
    return metrics
