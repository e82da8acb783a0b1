"""The evaluation gate's figures: does a candidate policy beat the one serving, on data it never saw?

Three measurements of a candidate LoRA adapter against the serving one, both on the same base:

- **held-out preference accuracy**: the candidate's implicit reward with the serving version as
  the reference, ``log π_candidate(y|x) - log π_serving(y|x)``, favours the chosen answer of a
  held-out pair on this share of the pairs, a tie counted half (as DPO's reward accuracy, on unseen
  pairs); the wins, losses and ties are kept for the gate's test (training.evidence);
- **reward-model win rate**: both versions answer the same prompts (sampled with the same seed);
  each member of a reward-model ensemble scores both answers; a prompt is a win only where the
  ensemble's lower bound of the candidate's advantage, ``mean_k d_k - std_k d_k`` with
  ``d_k = R_k(candidate) - R_k(serving)``, is above 0, a loss where the upper bound is below 0,
  and undecided otherwise (half a win, as a tie counts in an arena). With one member the bounds
  are the plain difference. (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
  Overoptimization": trust the reward only where the members agree.) It is also reported
  length-controlled (``length_controlled``, training.length): the win rate at equal answer
  length, so a candidate that only writes longer does not look better.
- **KL from the serving version**: the Monte-Carlo estimate ``E_{y~π_candidate}[log π_candidate(y|x)
  - log π_serving(y|x)]`` over answers sampled at temperature 1, in nats per answer.

The two adapters share one copy of the base model (peft switches between them). Heavy libraries
are imported inside the functions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.length import length_controlled_win_rate
from training.lipo import sequence_logps

CANDIDATE, SERVING = "candidate", "serving"
# score_fn(prompts, answers) -> one list of scores per ensemble member, each one score per answer
MembersScoreFn = Callable[[list[list[dict[str, str]]], list[str]], Sequence[Sequence[float]]]


@dataclass
class GateConfig:
    max_length: int = field(default=1024, metadata={"help": "Longest prompt plus answer, in tokens."})
    max_tokens: int = field(default=64, metadata={"help": "Longest sampled answer, in tokens."})
    samples_per_prompt: int = field(default=2, metadata={"help": "Answers sampled per prompt for the KL estimate."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (the same for both versions)."})
    bf16: bool = field(default=False, metadata={"help": "Load the base in bfloat16 (GPU)."})
    device: str = field(default="cpu", metadata={"help": "Where the models run: cpu or cuda."})

    def __post_init__(self) -> None:
        for name in ("max_length", "max_tokens", "samples_per_prompt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")


class PolicyPair:
    """The base model with two adapters: the candidate's and the serving version's."""

    def __init__(
        self,
        base_model_path: str | Path,
        candidate_adapter: str | Path,
        serving_adapter: str | Path,
        config: GateConfig,
    ) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from training.generation import eos_token_ids

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model_path), padding_side="left")
        dtype = torch.bfloat16 if config.bf16 else torch.float32
        base = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=dtype)
        model = PeftModel.from_pretrained(base, str(serving_adapter), adapter_name=SERVING)
        model.load_adapter(str(candidate_adapter), adapter_name=CANDIDATE)
        self.model = model.to(torch.device(config.device)).eval()
        self.eos = eos_token_ids(self.model, self.tokenizer)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]

    def logps(self, adapter: str, prompt: list[dict[str, str]], answers: Sequence[str]) -> list[float]:
        """Summed log-probabilities of each answer after `prompt` under `adapter`."""
        import torch

        self.model.set_adapter(adapter)
        with torch.inference_mode():
            return [
                float(v) for v in sequence_logps(self.model, self.tokenizer, prompt, answers, self.config.max_length)
            ]

    def sample(self, adapter: str, prompts: list[list[dict[str, str]]], n: int) -> list[list[str]]:
        """`n` answers per prompt from `adapter`, sampled at temperature 1 with the config's seed."""
        import torch

        self.model.set_adapter(adapter)
        torch.manual_seed(self.config.seed)
        out = []
        for prompt in prompts:
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            batch = self.tokenizer([text], return_tensors="pt", add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                tokens = self.model.generate(
                    **batch,
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=self.config.max_tokens,
                    num_return_sequences=n,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                )[:, batch["input_ids"].shape[1] :].tolist()
            answers = []
            for row in tokens:
                end = next((i for i, t in enumerate(row) if t in self.eos), len(row))
                answers.append(str(self.tokenizer.decode(row[:end], skip_special_tokens=True)))
            out.append(answers)
        return out


def heldout_accuracy(pair: PolicyPair, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of `pairs` ({"prompt", "chosen", "rejected"}) whose chosen answer the candidate's implicit
    reward (serving version as reference) strictly favours, and the mean reward margin."""
    if not pairs:
        raise ValueError("heldout_accuracy needs at least one pair")
    margins = []
    for p in pairs:
        answers = [p["chosen"], p["rejected"]]
        cand, serv = pair.logps(CANDIDATE, p["prompt"], answers), pair.logps(SERVING, p["prompt"], answers)
        margins.append((cand[0] - serv[0]) - (cand[1] - serv[1]))
    return accuracy_figure(margins)


TIE_MARGIN = 1e-6  # nats: a margin this small is a tie (a candidate equal to the serving version)


def accuracy_figure(margins: Sequence[float]) -> dict[str, Any]:
    """The held-out figure from the candidate's reward margins: wins (chosen favoured), losses and
    ties; `value` counts a tie as half, so a candidate equal to the serving version reads 0.5."""
    wins = sum(m > TIE_MARGIN for m in margins)
    losses = sum(m < -TIE_MARGIN for m in margins)
    ties = len(margins) - wins - losses
    return {
        "value": (wins + 0.5 * ties) / len(margins),
        "n": len(margins),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "mean_margin": statistics.fmean(margins),
    }


def kl_from_serving(pair: PolicyPair, prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Sampled estimate of KL(candidate ‖ serving) in nats per answer, over `prompts`."""
    if not prompts:
        raise ValueError("kl_from_serving needs at least one prompt")
    samples = pair.sample(CANDIDATE, prompts, pair.config.samples_per_prompt)
    terms = []
    for prompt, answers in zip(prompts, samples, strict=True):
        cand, serv = pair.logps(CANDIDATE, prompt, answers), pair.logps(SERVING, prompt, answers)
        terms += [c - s for c, s in zip(cand, serv, strict=True)]
    return {"value": statistics.fmean(terms), "n": len(terms), "sd": statistics.stdev(terms) if len(terms) > 1 else 0.0}


def win_rate(
    prompts: list[list[dict[str, str]]],
    candidate_answers: Sequence[str],
    serving_answers: Sequence[str],
    score_members: MembersScoreFn,
) -> dict[str, Any]:
    """The candidate's win rate over the serving version as the ensemble's bounds judge it."""
    if not prompts or len(prompts) != len(candidate_answers) or len(prompts) != len(serving_answers):
        raise ValueError("win_rate needs one candidate and one serving answer per prompt, and at least one prompt")
    cand = [list(map(float, m)) for m in score_members(prompts, list(candidate_answers))]
    serv = [list(map(float, m)) for m in score_members(prompts, list(serving_answers))]
    outcomes = []
    for i in range(len(prompts)):
        diffs = [c[i] - s[i] for c, s in zip(cand, serv, strict=True)]
        mean = statistics.fmean(diffs)
        spread = statistics.pstdev(diffs) if len(diffs) > 1 else 0.0
        outcomes.append(1.0 if mean - spread > 0 else 0.0 if mean + spread < 0 else 0.5)
    wins, losses = outcomes.count(1.0), outcomes.count(0.0)
    undecided = len(prompts) - wins - losses
    value = (wins + 0.5 * undecided) / len(prompts)
    controlled = length_controlled_win_rate(
        outcomes, [len(a) for a in candidate_answers], [len(a) for a in serving_answers]
    )
    # each member's own win rate (a tie half): where the members are groups of annotators, each group's
    per_member = [
        statistics.fmean(1.0 if c[i] > s[i] else 0.5 if c[i] == s[i] else 0.0 for i in range(len(prompts)))
        for c, s in zip(cand, serv, strict=True)
    ]
    return {
        "value": value,
        "n": len(prompts),
        "wins": wins,
        "losses": losses,
        "undecided": undecided,
        "length_controlled": controlled,
        "per_member": [round(v, 4) for v in per_member],
    }


def evaluate_candidate(
    *,
    base_model_path: str | Path,
    candidate_adapter: str | Path,
    serving_adapter: str | Path,
    pairs: Sequence[dict[str, Any]],
    prompts: list[list[dict[str, str]]],
    score_members: MembersScoreFn | None,
    config: GateConfig,
    should_stop: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure what it can: {"heldout_accuracy": {...}, "win_rate": {...}, "kl": {...}}, each with its
    "value" and "n"; a measurement without data is left out. `should_stop` is called between the
    measurements (it may raise to stop)."""
    pair = PolicyPair(base_model_path, candidate_adapter, serving_adapter, config)
    figures: dict[str, dict[str, Any]] = {}
    if pairs:
        figures["heldout_accuracy"] = heldout_accuracy(pair, pairs)
    if should_stop is not None:
        should_stop()
    if prompts:
        figures["kl"] = kl_from_serving(pair, prompts)
        if should_stop is not None:
            should_stop()
        if score_members is not None:
            cand = [a[0] for a in pair.sample(CANDIDATE, prompts, 1)]
            serv = [a[0] for a in pair.sample(SERVING, prompts, 1)]
            figures["win_rate"] = win_rate(prompts, cand, serv, score_members)
    for figure in figures.values():
        if not math.isfinite(figure["value"]):
            raise ValueError(f"the gate measured a non-finite figure: {figure}")
    return figures
