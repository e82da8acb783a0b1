"""Do reward models learn people or length? The plain reward model against the length-robust one.

Data from ``../shared/data`` (nothing downloaded): HH-RLHF harmless-base, split as
``bench/reward_model.py`` splits it (seed 0, 80/20), and PandaLM's test set with a 2-of-3 majority,
split by instruction. On HH harmless the longer answer wins only about half the time, so two
training sets are made from each train split:

- **as is**: the first ``--train-pairs`` pairs of the train split;
- **length-biased**: the train split resampled (seeded) so that the preferred answer is the longer one
  in ``--bias`` (75%) of the pairs — every pair whose chosen answer is longer, and as many of the
  others as that share allows — like the public sets on which "the longer answer wins" scores 70% or
  more, where a reward model learns length because it pays.

Each is scored on the whole test split, and on two parts of it: **length misleads** (the test pairs
whose preferred answer is the shorter one: "the longer answer wins" scores 0 there) and **length
honest** (the preferred answer is the longer one). Arms, on the packaged all-MiniLM-L6-v2:

- **plain**: ``train_reward_model`` with the app's reward settings (``RewardConfig``'s defaults, one
  member), ``length_robust=False``;
- **robust**: the same with ``length_robust=True`` (the length expert fitted first and held fixed,
  dropped when scoring, and the score-length decorrelation penalty);
- **fair TRL** (``--trl``): TRL's ``RewardTrainer`` as ``bench/reward_model.py``'s arm (d) runs it, at
  its learning rate chosen there on HH dev pairs (5e-5);
- **longer wins**: the rule, on the same pairs (equal lengths count half).

Prints accuracy (with its binomial standard error) per arm, training set and test part, then each
arm's gap to the rule where length misleads, and robust minus plain on each whole test split.

    python bench/length_robust.py                         # HH and PandaLM, both training sets
    python bench/length_robust.py --trl --json out.json    # with the fair TRL arm
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from reward_model import (  # noqa: E402
    DEFAULT_DATA,
    hh_transcript,
    left_truncated_ids,
    load_hh,
    load_pandalm,
    minilm_path,
    score_ids,
    split_indices,
    train_fair_trl,
)

from training.length import longer_wins_accuracy  # noqa: E402
from training.reward import PreferenceExample, RewardConfig, RewardEnsemble, train_reward_model  # noqa: E402

PANDALM = ROOT.parent / "shared" / "data" / "pandalm-testset-v1.json"


def length_biased(examples: list[PreferenceExample], share: float, seed: int) -> list[PreferenceExample]:
    """A resample of `examples` in which the chosen answer is the longer one in `share` of the pairs:
    every such pair, and as many of the others as the share allows (a seeded sample)."""
    longer = [e for e in examples if len(e.chosen) > len(e.rejected)]
    others = [e for e in examples if len(e.chosen) <= len(e.rejected)]
    keep = min(len(others), round(len(longer) * (1 - share) / share))
    picked = longer + random.Random(seed).sample(others, keep)
    random.Random(seed + 1).shuffle(picked)
    return picked


def accuracy(chosen_scores: list[float], rejected_scores: list[float]) -> float:
    hits = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return sum(hits) / len(hits)


def parts(test: list[PreferenceExample]) -> dict[str, list[int]]:
    """Indices of the whole test split and of its two parts."""
    return {
        "all": list(range(len(test))),
        "length misleads": [i for i, e in enumerate(test) if len(e.chosen) < len(e.rejected)],
        "length honest": [i for i, e in enumerate(test) if len(e.chosen) > len(e.rejected)],
    }


def ours(
    train: list[PreferenceExample], test: list[PreferenceExample], *, robust: bool, args
) -> tuple[list, list, float]:
    config = RewardConfig(
        backbone=minilm_path(), max_length=args.max_length, length_robust=robust, seed=args.seed, calibrate=False
    )
    with tempfile.TemporaryDirectory(prefix="bench-length-") as scratch:
        started = time.perf_counter()
        metrics = train_reward_model(train, Path(scratch) / "rm", config)
        seconds = time.perf_counter() - started
        ensemble = RewardEnsemble.load(metrics["member_paths"])
        prompts = [e.prompt for e in test]
        chosen = ensemble.score(prompts, [e.chosen for e in test])["mean"]
        rejected = ensemble.score(prompts, [e.rejected for e in test])["mean"]
    return list(chosen), list(rejected), seconds


def fair_trl(train: list[PreferenceExample], test: list[PreferenceExample], *, args) -> tuple[list, list, float]:
    rows = [
        {"chosen": hh_transcript(e.prompt, e.chosen), "rejected": hh_transcript(e.prompt, e.rejected)} for e in train
    ]
    trl_args = argparse.Namespace(lr=args.trl_lr, epochs=1.0, batch_size=8, max_length=args.max_length, seed=args.seed)
    model, tokenizer, _, _, seconds = train_fair_trl(rows, minilm_path(), trl_args, args.trl_lr)
    chosen_ids, _ = left_truncated_ids(tokenizer, [hh_transcript(e.prompt, e.chosen) for e in test], args.max_length)
    rejected_ids, _ = left_truncated_ids(
        tokenizer, [hh_transcript(e.prompt, e.rejected) for e in test], args.max_length
    )
    return score_ids(model, tokenizer, chosen_ids), score_ids(model, tokenizer, rejected_ids), seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="hh,pandalm", help="hh, pandalm or both")
    parser.add_argument("--train-pairs", type=int, default=720, help="pairs of the 'as is' training set (HH)")
    parser.add_argument("--bias", type=float, default=0.75, help="share of length-biased pairs the longer one wins")
    parser.add_argument("--sets", default="as_is,length_biased", help="training sets")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl", action="store_true", help="also the fair TRL arm")
    parser.add_argument("--arms", default="plain,robust,fair_trl", help="arms to run (fair_trl only with --trl)")
    parser.add_argument("--trl-lr", type=float, default=5e-5, help="its rate (chosen on HH dev pairs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name in args.data.split(","):
        if name == "hh":
            examples, _, _ = load_hh(DEFAULT_DATA)
            train_idx, test_idx = split_indices(len(examples), seed=0)
        else:
            examples, _, _ = load_pandalm(PANDALM)
            groups = [json.dumps(e.prompt) for e in examples]
            train_idx, test_idx = split_indices(len(examples), seed=0, groups=groups)
        pool, test = [examples[i] for i in train_idx], [examples[i] for i in test_idx]
        sets = {
            "as_is": pool[: min(args.train_pairs, len(pool))],
            "length_biased": length_biased(pool, args.bias, args.seed),
        }
        split = parts(test)
        rule = {
            part: longer_wins_accuracy([test[i].chosen for i in idx], [test[i].rejected for i in idx])
            for part, idx in split.items()
        }
        print(f"{name}: {len(test)} test pairs, {len(split['length misleads'])} where length misleads; "
              f"longer wins: " + ", ".join(f"{p} {a:.1%}" for p, a in rule.items()), flush=True)  # fmt: skip
        for set_name in args.sets.split(","):
            train = sets[set_name]
            share = sum(len(e.chosen) > len(e.rejected) for e in train) / len(train)
            for arm in [a for a in args.arms.split(",") if a != "fair_trl" or args.trl]:
                if arm == "fair_trl":
                    chosen, rejected, seconds = fair_trl(train, test, args=args)
                else:
                    chosen, rejected, seconds = ours(train, test, robust=arm == "robust", args=args)
                row = {"data": name, "train_set": set_name, "train_pairs": len(train), "train_longer_wins": share,
                       "arm": arm, "train_s": round(seconds, 1), "rule": rule}  # fmt: skip
                for part, idx in split.items():
                    acc = accuracy([chosen[i] for i in idx], [rejected[i] for i in idx])
                    row[part] = {"accuracy": acc, "n": len(idx), "se": math.sqrt(acc * (1 - acc) / len(idx))}
                results[f"{name}/{set_name}/{arm}"] = row
                print(f"  {set_name:13s} ({len(train)} pairs, longer wins {share:.0%}) {arm:8s} "
                      + " ".join(f"{p}: {row[p]['accuracy']:.1%} ± {row[p]['se']:.1%} (n={row[p]['n']})" for p in split)
                      + f"  [{seconds:.0f} s]", flush=True)  # fmt: skip
    print()
    for key, row in results.items():
        gap = row["length misleads"]["accuracy"] - row["rule"]["length misleads"]
        print(f"{key}: {100 * gap:+.1f} points over 'longer wins' where length misleads")
    for key, row in results.items():
        if row["arm"] == "robust" and key.rsplit("/", 1)[0] + "/plain" in results:
            plain = results[key.rsplit("/", 1)[0] + "/plain"]
            delta = row["all"]["accuracy"] - plain["all"]["accuracy"]
            print(f"{key}: robust - plain on the whole test split {100 * delta:+.1f} points")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
