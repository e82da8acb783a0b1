"""The settings of a reward-model run (:class:`RewardConfig`) and the names its options choose from.

Plain Python: importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.feedback_io.rows import STRENGTH_MARGIN

TIE_POLICIES = ("equal", "drop")
POOLINGS = ("auto", "model", "mean")
HEAD_INITS = ("random", "probe")
ENSEMBLE_METHODS = ("seeds", "bootstrap", "heads")
# Written next to each trained model: how its inputs were built, so scoring builds them the same way.
REWARD_META_FILE = "prefloop_reward.json"
CALIBRATION_MIN_PAIRS = 20  # fewer held-out pairs than this fit no temperature: one or two pairs would set it at random


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
    length_robust: bool = field(
        default=False,
        metadata={
            "help": "Learn people, not length: while training, each score is the model's plus w·log(1 + words of "
            "the answer), where w, a length expert, is fitted on the pairs first and then held fixed "
            "(product-of-experts debiasing, Clark et al. 2019; ODIN's length head, Chen et al. 2024), so the "
            "preference that length alone explains is not learned again; w is dropped when scoring. A penalty "
            "on the squared correlation of the model's own scores with that length in each batch (ODIN) keeps "
            "length out of them too."
        },
    )
    length_decorrelation: float = field(
        default=1.0,
        metadata={"help": "With length_robust: the weight of the squared score-length correlation penalty (>= 0)."},
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
        if not isinstance(self.length_robust, bool):
            raise ValueError(f"length_robust={self.length_robust!r} must be True or False")
        if not (
            isinstance(self.length_decorrelation, (int, float))
            and not isinstance(self.length_decorrelation, bool)
            and math.isfinite(self.length_decorrelation)
            and self.length_decorrelation >= 0
        ):
            raise ValueError(f"length_decorrelation={self.length_decorrelation!r} must be a finite number >= 0")
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
