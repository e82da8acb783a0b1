"""The GPU path, run: every run kind for a few steps, the gate and a hot-swap of the policy server,
on a policy the size of a 0.5B model (Qwen2-0.5B's shapes, random weights built from its config:
nothing is downloaded), in bfloat16 on the GPU. Prints, for each, steps per second, tokens per
second and peak GPU memory.

    python bench/gpu_check.py              # on a machine with a CUDA GPU, in under 8 minutes
    python bench/gpu_check.py --dry-run    # the same steps on the CPU with the tiny policy (the suite)

Each part is timed on its own and its peak memory read from torch.cuda.max_memory_allocated
after a reset. Tokens per second count the prompt and answer tokens each step reads (generated
tokens for GRPO and the gate's samples). The hot-swap loads a new adapter into the built-in policy
server under the serving name and times the first answer after it (vLLM is timed the same way by
`--vllm URL`, when one runs beside the script).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Qwen2-0.5B's shapes (494M parameters, 136M of them the embedding of a 151,936-token vocabulary)
HALF_B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "model_vocab_size": 151_936,
    "max_position_embeddings": 4096,
    "pretrain_steps": 0,
}
QUESTIONS = [f"Question {i}: what is {i} plus {i + 1}? Explain the steps." for i in range(16)]


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _answer(i: int, good: bool) -> str:
    return f"{i} plus {i + 1} is {2 * i + 1}." if good else f"I think it is {i * 3}, or maybe not."


class Part:
    """One timed part: its steps, tokens and seconds, and the GPU's peak memory while it ran."""

    def __init__(self, name: str, cuda: bool) -> None:
        self.name, self.cuda = name, cuda
        self.steps, self.tokens, self.seconds, self.peak_gib, self.note = 0, 0, 0.0, 0.0, ""

    def __enter__(self) -> Part:
        import torch

        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        self.seconds = time.perf_counter() - self._start

    def row(self) -> dict[str, Any]:
        rate = self.steps / self.seconds if self.seconds else 0.0
        return {
            "part": self.name,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "steps_per_s": round(rate, 3),
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
            "peak_gib": round(self.peak_gib, 2),
            "note": self.note,
        }


def _tokens(tokenizer: Any, prompt: list[dict[str, str]], *answers: str) -> int:
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text)["input_ids"]) * len(answers) + sum(len(tokenizer(a)["input_ids"]) for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the tiny policy on the CPU: checks the script")
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps per run kind (default 8; 2 dry)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from training.device import placement
    from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo
    from training.gate import GateConfig, evaluate_candidate
    from training.grpo import GRPOTrainConfig, train_grpo
    from training.kto import KTOTrainConfig, ThumbExample, train_kto
    from training.lipo import LiPOTrainConfig, RankedAnswers, train_lipo
    from training.reward import PreferenceExample, RewardConfig, train_reward_model
    from training.tiny_model import TinyPolicyConfig, build_tiny_policy

    try:
        where = placement("cpu" if args.dry_run else "cuda")  # a GPU run refuses to fall back to the CPU
    except RuntimeError as exc:
        sys.exit(f"device cuda: {exc}; run it on a GPU machine, or with --dry-run to check the script on the CPU")
    cuda = where.device == "cuda"
    steps = args.steps or (2 if args.dry_run else 8)
    device = {"use_cpu": where.use_cpu, "bf16": where.bf16}
    print(f"device {where.device} ({torch.cuda.get_device_name() if cuda else 'no GPU'}), bf16 {where.bf16}, "
          f"torch {torch.__version__}, {steps} steps per run kind", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    shapes = TinyPolicyConfig(pretrain_steps=0) if args.dry_run else TinyPolicyConfig(**HALF_B)
    base = build_tiny_policy(work / "base", shapes)
    with safe_open(str(base / "model.safetensors"), "pt") as weights:
        n_params = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    print(f"built a {n_params / 1e6:.1f}M-parameter policy from its config in {time.perf_counter() - started:.0f} s",
          flush=True)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    v1 = create_initial_adapter(base, work / "v1", DPOTrainConfig())
    rows: list[dict[str, Any]] = []

    def part(name: str, run: Callable[[Part], None]) -> None:
        with Part(name, cuda) as p:
            try:
                run(p)
            except Exception as exc:  # a part that fails is reported, and the others still run
                p.note = f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"
        rows.append(p.row())
        r = rows[-1]
        print(f"  {name:<12} {r['steps']:>4} steps {r['seconds']:8.2f} s {r['steps_per_s']:8.3f} steps/s "
              f"{r['tokens_per_s']:10.1f} tok/s  peak {r['peak_gib']:6.2f} GiB  {r['note']}", flush=True)  # fmt: skip

    batch = 2
    pairs = [PreferencePair(prompt=_chat(q), chosen=_answer(i, True), rejected=_answer(i, False))
             for i, q in enumerate(QUESTIONS)]  # fmt: skip
    pair_tokens = sum(_tokens(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs) / len(pairs)

    def dpo(p: Part) -> None:
        config = DPOTrainConfig(max_steps=steps, per_device_train_batch_size=batch, **device)
        p.steps = train_dpo(base_model_path=base, adapter_path=v1, pairs=pairs, out_dir=work / "dpo",
                            config=config)["steps"]  # fmt: skip
        p.tokens = int(p.steps * batch * pair_tokens)

    def kto(p: Part) -> None:
        thumbs = [ThumbExample(prompt=x.prompt, completion=c, desirable=good)
                  for x in pairs for c, good in ((x.chosen, True), (x.rejected, False))]  # fmt: skip
        config = KTOTrainConfig(max_steps=steps, per_device_train_batch_size=batch, **device)
        p.steps = train_kto(base_model_path=base, adapter_path=v1, examples=thumbs, out_dir=work / "kto",
                            config=config)["steps"]  # fmt: skip
        p.tokens = int(p.steps * batch * pair_tokens / 2)

    def lipo(p: Part) -> None:
        rankings = [RankedAnswers(prompt=_chat(q), completions=[_answer(i, True), _answer(i, False), "No idea."],
                                  ranks=[0, 1, 2]) for i, q in enumerate(QUESTIONS[:steps])]  # fmt: skip
        config = LiPOTrainConfig(epochs=1, bf16=where.bf16, device=where.device)
        p.steps = train_lipo(base_model_path=base, adapter_path=v1, rankings=rankings, out_dir=work / "lipo",
                             config=config)["steps"]  # fmt: skip
        p.tokens = sum(_tokens(tokenizer, r.prompt, *r.completions) for r in rankings)

    def grpo(p: Part) -> None:
        generations, length = 4, 32
        config = GRPOTrainConfig(max_steps=steps, num_generations=generations, max_completion_length=length,
                                 per_device_train_batch_size=generations, **device)  # fmt: skip
        reward = lambda prompts, completions: [float(len(c.split())) for c in completions]  # noqa: E731
        p.steps = train_grpo(base_model_path=base, adapter_path=v1, prompts=[_chat(q) for q in QUESTIONS],
                             reward_fn=reward, out_dir=work / "grpo", config=config)["steps"]  # fmt: skip
        p.tokens = p.steps * generations * length

    def reward_model(p: Part) -> None:
        examples = [PreferenceExample(x.prompt, x.chosen, x.rejected) for x in pairs]
        config = RewardConfig(backbone=str(base), max_steps=steps, per_device_train_batch_size=batch,
                              use_cpu=where.use_cpu, bf16=where.bf16)  # fmt: skip
        train_reward_model(examples, work / "reward", config)
        p.steps, p.tokens = steps, int(steps * batch * pair_tokens)

    def gate(p: Part) -> None:
        config = GateConfig(max_tokens=32, samples_per_prompt=2, bf16=where.bf16, device=where.device)
        prompts = [_chat(q) for q in QUESTIONS[:4]]
        held_out = [{"prompt": x.prompt, "chosen": x.chosen, "rejected": x.rejected} for x in pairs[:8]]
        scores = lambda ps, answers: [[float(len(a)) for a in answers]]  # noqa: E731
        evaluate_candidate(base_model_path=base, candidate_adapter=work / "dpo", serving_adapter=v1, pairs=held_out,
                           prompts=prompts, score_members=scores, config=config)  # fmt: skip
        p.steps = len(held_out) + len(prompts)
        p.tokens = int(len(held_out) * pair_tokens * 2 + len(prompts) * 2 * 2 * 32)

    for name, run in [("dpo", dpo), ("kto", kto), ("lipo", lipo), ("grpo", grpo), ("reward", reward_model),
                      ("gate", gate)]:  # fmt: skip
        part(name, run)
    with _policy_server(base, work / "v1") as client:
        part("hot-swap", lambda p: _hot_swap(p, client, work / "dpo", cuda))
    print(f"total {time.perf_counter() - started:.0f} s; failed parts: "
          f"{sum(1 for r in rows if r['note'].startswith('FAILED')) or 'none'}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if any(r["note"].startswith("FAILED") for r in rows):
        sys.exit(1)


@contextmanager
def _policy_server(base: Path, adapter: Path) -> Iterator[Any]:
    """The built-in policy server on `base`, serving `adapter` as "policy", for the hot-swap."""
    import os
    import subprocess

    from tests.processes import free_port, stop_process_group
    from training.policy_client import PolicyClient
    from training.policy_server import policy_server_command

    port = free_port()
    argv = policy_server_command(base, port=port, lora_modules={"policy": adapter})
    with (adapter.parent / "server.log").open("wb") as log:
        server = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
        try:
            client = PolicyClient(f"http://127.0.0.1:{port}", timeout=300)
            client.wait_ready(timeout=300)
            yield client
        finally:
            stop_process_group(server)


def _hot_swap(p: Part, client: Any, adapter: Path, cuda: bool) -> None:
    """Load `adapter` in place under the serving name, and answer once with it: the swap's time."""
    client.load_lora_adapter("policy", str(adapter), load_inplace=True)
    answer = client.chat(_chat(QUESTIONS[0]), model="policy", max_tokens=32, temperature=0.0)
    p.steps, p.tokens = 1, 32
    p.note = f"answered {len(answer[0])} chars after the swap" + ("" if cuda else " (built-in server on the CPU)")


if __name__ == "__main__":
    main()
