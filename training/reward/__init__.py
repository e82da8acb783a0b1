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

Heavy libraries are imported inside the functions so that importing this package stays cheap.

The package, one concern per module:

* :mod:`.examples` - :class:`PreferenceExample`, :class:`RankingExample`, :func:`examples_from_items`;
* :mod:`.config` - :class:`RewardConfig` and the names its options choose from (no torch);
* :mod:`.inputs` - tokenisation and truncation (:func:`encode_input`), training rows and their collation;
* :mod:`.backbone` - pooling (:func:`backbone_pooling`), loading a backbone with score heads,
  :func:`freeze_bottom_layers`;
* :mod:`.heads` - how the score head starts: :func:`fit_head_by_probe`, :func:`spread_heads`;
* :mod:`.train` - :func:`train_reward_model`, the ``RewardTrainer`` subclass, tail averaging, ensembles;
* :mod:`.scoring` - :class:`RewardScorer`, :class:`RewardEnsemble`;
* :mod:`.calibration` - :func:`preference_probabilities`, :func:`expected_calibration_error`,
  :func:`fit_temperature` and the calibration of trained models;
* :mod:`.metrics` - :func:`pairwise_accuracy`, :func:`accuracy_by_group`, :func:`pairwise_metrics`,
  :func:`evaluate_pairs`;
* the loss, :func:`preference_loss` and :func:`heads_preference_loss`, lives in :mod:`training.losses`
  (which imports torch) and is imported from there when it is first asked for here.
"""

from __future__ import annotations

from typing import Any

# Private helpers are re-exported too (``name as name``): the tests import them from here.
from training.reward.backbone import _load_scoring_model as _load_scoring_model
from training.reward.backbone import _mean_pooled_class as _mean_pooled_class
from training.reward.backbone import _resolve_pooling as _resolve_pooling
from training.reward.backbone import backbone_pooling, freeze_bottom_layers
from training.reward.calibration import (
    TEMPERATURE_RANGE,
    expected_calibration_error,
    fit_temperature,
    preference_probabilities,
)
from training.reward.calibration import _calibrate_members as _calibrate_members
from training.reward.calibration import _pins_temperature as _pins_temperature
from training.reward.calibration import _sigmoid as _sigmoid
from training.reward.config import (
    CALIBRATION_MIN_PAIRS,
    ENSEMBLE_METHODS,
    HEAD_INITS,
    POOLINGS,
    REWARD_META_FILE,
    TIE_POLICIES,
    RewardConfig,
)
from training.reward.examples import Example, PreferenceExample, RankingExample, examples_from_items
from training.reward.heads import _fit_probe as _fit_probe
from training.reward.heads import _head_features as _head_features
from training.reward.heads import _score_head as _score_head
from training.reward.heads import fit_head_by_probe, spread_heads
from training.reward.inputs import ROLE_LABELS, encode_input
from training.reward.inputs import _encode as _encode
from training.reward.inputs import _find as _find
from training.reward.inputs import _Layout as _Layout
from training.reward.inputs import _layout as _layout
from training.reward.inputs import _ListCollator as _ListCollator
from training.reward.inputs import _quiet_transformers as _quiet_transformers
from training.reward.inputs import _render as _render
from training.reward.inputs import _row_targets as _row_targets
from training.reward.inputs import _rows as _rows
from training.reward.inputs import _tokenizer_with_pad as _tokenizer_with_pad
from training.reward.metrics import accuracy_by_group, evaluate_pairs, pairwise_accuracy, pairwise_metrics
from training.reward.scoring import RewardEnsemble, RewardScorer
from training.reward.scoring import _column_means as _column_means
from training.reward.train import _member_examples as _member_examples
from training.reward.train import _tail_average_callback as _tail_average_callback
from training.reward.train import _train_member as _train_member
from training.reward.train import _trainer_class as _trainer_class
from training.reward.train import train_group_reward_models, train_reward_model

# In training.losses, which imports torch: looked up there when first asked for (see __getattr__).
_FROM_LOSSES = ("heads_preference_loss", "preference_loss")

__all__ = [
    "CALIBRATION_MIN_PAIRS",
    "ENSEMBLE_METHODS",
    "HEAD_INITS",
    "POOLINGS",
    "REWARD_META_FILE",
    "ROLE_LABELS",
    "TEMPERATURE_RANGE",
    "TIE_POLICIES",
    "Example",
    "PreferenceExample",
    "RankingExample",
    "RewardConfig",
    "RewardEnsemble",
    "RewardScorer",
    "accuracy_by_group",
    "backbone_pooling",
    "encode_input",
    "evaluate_pairs",
    "examples_from_items",
    "expected_calibration_error",
    "fit_head_by_probe",
    "fit_temperature",
    "freeze_bottom_layers",
    "heads_preference_loss",
    "pairwise_accuracy",
    "pairwise_metrics",
    "preference_loss",
    "preference_probabilities",
    "spread_heads",
    "train_group_reward_models",
    "train_reward_model",
]


def __getattr__(name: str) -> Any:
    """``preference_loss`` and ``heads_preference_loss`` from :mod:`training.losses`, imported on first use so
    that importing this package does not import torch."""
    if name in _FROM_LOSSES:
        from training import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FROM_LOSSES])
