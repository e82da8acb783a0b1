"""Training: :func:`train_reward_model` trains one reward model, an ensemble of them, or one model with
several score heads, each with a subclass of TRL's ``RewardTrainer`` (:func:`_trainer_class`), and saves
them for :class:`training.reward.RewardEnsemble` to load.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.adapters import ProgressFn, progress_callback
from training.reward.backbone import _load_scoring_model, _resolve_pooling, freeze_bottom_layers
from training.reward.calibration import _calibrate_members
from training.reward.config import REWARD_META_FILE, RewardConfig
from training.reward.examples import Example, PreferenceExample, RankingExample
from training.reward.heads import _score_head, fit_head_by_probe, fit_length_expert, spread_heads
from training.reward.inputs import _layout, _ListCollator, _quiet_transformers, _rows, _tokenizer_with_pad
from training.reward.metrics import evaluate_pairs
from training.reward.scoring import RewardEnsemble


def _trainer_class():  # -> type[RewardTrainer]
    from trl import RewardTrainer

    from training.losses import heads_preference_loss, score_length_correlation

    class PrefloopRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer on rows already tokenised and truncated by :mod:`training.reward`.

        What changes: the dataset is used as is (TRL would re-tokenise it and drop long pairs, and
        it knows neither ties nor lists), batches come from :class:`_ListCollator`, and the loss is
        :func:`training.losses.preference_loss` (Bradley-Terry with margins exactly as TRL's, plus ties and
        Plackett-Luce lists), averaged over the score heads if there are several.
        """

        center_coefficient: float | None = None
        label_smoothing: float = 0.0
        length_decorrelation: float = 0.0

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "completion_ids" not in dataset.column_names:
                raise ValueError(f"the {dataset_name} dataset must come from training.reward (completion_ids)")
            return dataset

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = [
                    "completion_ids",
                    "completion_type_ids",
                    "ranks",
                    "margin",
                    "tie",
                    "weight",
                    "length",
                    "answer_lengths",
                ]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            outputs = model(**_ListCollator.model_inputs(inputs))
            scores = outputs.logits.squeeze(-1).float()  # (answers,), or (answers, heads) for several heads
            trained = scores  # what the preference loss sees: with a length expert, plus w·length
            length_weight = getattr(self.accelerator.unwrap_model(model), LENGTH_WEIGHT, None)
            if length_weight is not None:
                length = inputs["answer_length"].to(scores.device)  # (answers,)
                shift = length_weight.float() * length  # (answers,)
                trained = scores + (shift[:, None] if scores.dim() == 2 else shift)
            loss, diagnostics = heads_preference_loss(
                trained,
                inputs["index"],
                inputs["ranks"],
                inputs["margin"],
                inputs["tie"],
                self.center_coefficient,
                self.label_smoothing,
                inputs.get("weight"),
            )
            if length_weight is not None:
                quality = scores if scores.dim() == 1 else scores.mean(dim=1)  # (answers,)
                correlation = score_length_correlation(quality, length)
                loss = loss + self.length_decorrelation * correlation**2
                diagnostics = {
                    **diagnostics,
                    "length/weight": float(length_weight),
                    "length/correlation": float(correlation.detach()),
                }
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            for key, value in diagnostics.items():
                self._metrics[mode][key].append(value)
            return (loss, outputs) if return_outputs else loss

    return PrefloopRewardTrainer


LENGTH_WEIGHT = "prefloop_length_weight"  # the length expert's weight, on the model while it trains only


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
    model.to("cpu" if config.use_cpu else "cuda")  # where it trains: the head probe's forward passes run there too
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
            length_robust=config.length_robust,
        )
        probe["probe_seconds"] = round(time.perf_counter() - started, 3)
        probe["probe_examples"] = len(probe_rows)
        if probe_cache is not None:
            head_state = {name: value.detach().clone() for name, value in _score_head(model).state_dict().items()}
            probe_cache.update(head=head_state, metrics=dict(probe))
    if config.length_robust:  # the length expert, fitted first (beside the probe's head, if any), then held fixed
        import torch

        weight = probe.pop("probe_length_weight", None)
        if weight is None:
            weight = fit_length_expert(rows, label_smoothing=config.label_smoothing)
        model.register_buffer(LENGTH_WEIGHT, torch.tensor(float(weight)), persistent=False)
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
        trainer.length_decorrelation = config.length_decorrelation
        if config.average_last > 0:
            trainer.add_callback(_tail_average_callback(config.average_last))
        trainer.remove_callback(PrinterCallback)  # with tqdm disabled the Trainer would print every log line
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start + probe.get("probe_seconds", 0.0)
    if not history:
        raise RuntimeError("reward-model training logged no step; check max_steps and the data")
    trained = trainer.accelerator.unwrap_model(trainer.model)
    length_expert: dict[str, float] = {}
    if hasattr(trained, LENGTH_WEIGHT):  # dropped: the saved model scores people's preference, not length
        length_expert["length_weight"] = round(float(getattr(trained, LENGTH_WEIGHT)), 4)
        delattr(trained, LENGTH_WEIGHT)  # a buffer: never in the saved weights
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
        **length_expert,
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
    loads with :meth:`RewardEnsemble.load`. Nothing is dropped for length (see
    :mod:`training.reward`); ties follow ``config.tie_policy``.

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


def train_group_reward_models(
    examples: Sequence[Example],
    out_dir: str | Path,
    config: RewardConfig,
    groups: Sequence[Sequence[str]],
    progress: ProgressFn | None = None,
    *,
    eval_examples: Sequence[PreferenceExample] | None = None,
) -> dict[str, Any]:
    """One reward model per group of annotators (MaxMin-RLHF), saved as ``out_dir/member-<g>``: member g
    trains on the examples whose ``group`` (their annotator) is in ``groups[g]``, and on those with no
    annotator (ties), one model each (``config.ensemble_size`` is not used). Loaded with
    :meth:`RewardEnsemble.load`, the members score as an ensemble whose members are the groups.

    Returns the metrics of :func:`train_reward_model` for the whole (``members``, ``member_paths``,
    ``eval`` of the members' mean on every ``eval_examples`` pair) and ``groups``: per group, its
    ``annotators``, ``n_examples`` and its member's accuracy on that group's own held-out pairs
    (``eval_accuracy``, None without any)."""
    from dataclasses import replace

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out_dir {out} is not empty")
    member_config = replace(config, ensemble_size=1, ensemble_method="seeds")
    members, per_group = [], []
    for g, annotators in enumerate(groups):
        names = set(annotators)
        mine = [e for e in examples if e.group in names or e.group is None]
        held = [e for e in eval_examples or [] if e.group in names]

        def member_progress(entry: dict[str, Any], g: int = g) -> None:
            if progress is not None:
                progress({**entry, "member": g, "members": len(groups)})

        metrics = train_reward_model(
            mine, out / f"member-{g}", replace(member_config, calibrate=config.calibrate and bool(held)),
            member_progress, eval_examples=held or None,
        )  # fmt: skip
        members += metrics["members"]
        per_group.append({
            "annotators": sorted(names),
            "n_examples": len(mine),
            "eval_accuracy": metrics["eval"]["accuracy"] if held else None,
            "n_eval": len(held),
        })  # fmt: skip
    result: dict[str, Any] = {
        "n_examples": len(examples),
        "n_pairs": sum(isinstance(e, PreferenceExample) and not e.tie for e in examples),
        "members": members,
        "member_paths": [m["path"] for m in members],
        "train_seconds": round(sum(m["train_seconds"] for m in members), 3),
        "groups": per_group,
    }
    if eval_examples:
        ensemble = RewardEnsemble.load(result["member_paths"], batch_size=config.scoring_batch_size)
        result["eval"] = evaluate_pairs(ensemble, list(eval_examples))
    return result
