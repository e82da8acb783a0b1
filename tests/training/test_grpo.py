"""Tests for training.grpo: the config, the reward adapters, and GRPO of a LoRA adapter on the tiny model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from training.dpo import DPOTrainConfig, create_initial_adapter
from training.followup import FollowupScorer
from training.grpo import GRPOTrainConfig, _trl_reward, ensemble_reward, followup_reward, train_grpo
from training.tiny_model import chat_corpus

# 2 prompts x 4 answers of up to 12 tokens per step; sampling at temperature 1.5 so that a group differs.
SMOKE_CONFIG = GRPOTrainConfig(
    max_steps=3,
    num_generations=4,
    per_device_train_batch_size=8,
    max_completion_length=12,
    temperature=1.5,
    learning_rate=1e-3,
    beta=0.1,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the tiny model is fastest on one thread; more only contend on a busy machine


def _prompts(n: int = 8) -> list[list[dict[str, str]]]:
    return [[conversation[0]] for conversation in chat_corpus()[:n]]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def word_match(prompts: list[list[dict[str, str]]], completions: list[str]) -> list[float]:
    """Share of the answer's words that occur in the question: a simple on-topic reward."""
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        words = _words(completion)
        rewards.append(len(words & _words(prompt[-1]["content"])) / len(words) if words else 0.0)
    return rewards


def _lora_tensors(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def initial_adapter(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("adapters") / "v1", DPOTrainConfig())


# --- config and reward adapters -----------------------------------------------------------------


def test_config_defaults_and_to_dict() -> None:
    config = GRPOTrainConfig()
    data = config.to_dict()
    assert data["beta"] == 0.04 and data["num_generations"] == 4 and data["loss_type"] == "dapo"
    assert GRPOTrainConfig(**data) == config
    assert json.loads(json.dumps(data)) == data
    assert GRPOTrainConfig(beta=0.0).beta == 0.0  # no KL term is allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": -0.1}, "beta=-0.1"),
        ({"num_generations": 1, "per_device_train_batch_size": 1}, "num_generations=1 must be >= 2"),
        ({"num_generations": 3}, "= 8 must be a multiple of num_generations=3"),
        ({"max_completion_length": 0}, "max_completion_length=0"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"loss_type": "ppo"}, "loss_type='ppo'"),
        ({"scale_rewards": "std"}, "scale_rewards='std'"),
        ({"bf16": True}, "use_cpu=False"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GRPOTrainConfig(**kwargs)


def test_trl_reward_wrapper_passes_plain_text() -> None:
    seen: list[Any] = []

    def reward_fn(prompts: list[Any], completions: list[str]) -> list[float]:
        seen.append((prompts, completions))
        return [float(len(c)) for c in completions]

    wrapped = _trl_reward(reward_fn, "length")
    prompts = _prompts(2)
    completions = [[{"role": "assistant", "content": "abc"}], [{"role": "assistant", "content": ""}]]
    assert wrapped(prompts=prompts, completions=completions, completion_ids=[[1], [2]], trainer_state=None) == [
        3.0,
        0.0,
    ]
    assert seen == [(prompts, ["abc", ""])] and wrapped.__name__ == "length"
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        _trl_reward(lambda p, c: [1.0], "r")(prompts=prompts, completions=completions)
    with pytest.raises(ValueError, match="non-finite"):
        _trl_reward(lambda p, c: [1.0, math.nan], "r")(prompts=prompts, completions=completions)


def test_ensemble_reward_is_mean_minus_lambda_variance() -> None:
    import torch

    def members(prompts: list[Any], completions: list[str]) -> list[list[float]]:
        return [[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]  # (members=2, batch=3)

    reward = ensemble_reward(members, lam=0.5)
    # mean (2, 0, 2); population variance (1, 0, 0)
    assert reward(_prompts(3), ["a", "b", "c"]) == pytest.approx([1.5, 0.0, 2.0])
    tensor_reward = ensemble_reward(lambda p, c: torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]), lam=0.0)
    assert tensor_reward(_prompts(3), ["a", "b", "c"]) == pytest.approx([2.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(members, 2\)"):
        reward(_prompts(2), ["a", "b"])
    with pytest.raises(ValueError, match="lam=-1"):
        ensemble_reward(members, lam=-1)


def test_followup_reward_uses_the_scorer(tiny_policy_path: Path) -> None:
    scorer = FollowupScorer.from_pretrained(tiny_policy_path)
    reward = followup_reward(scorer)
    prompts, answers = _prompts(2), ["The capital of France is Paris.", "Grass is green."]
    assert reward(prompts, answers) == pytest.approx(scorer.score_batch(prompts, answers))
    assert reward.__name__ == "followup_reward"


def test_train_grpo_refuses_bad_input(tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path) -> None:
    common = {"base_model_path": tiny_policy_path, "reward_fn": word_match, "out_dir": tmp_path / "out"}
    with pytest.raises(ValueError, match="at least one prompt"):
        train_grpo(adapter_path=initial_adapter, prompts=[], config=SMOKE_CONFIG, **common)
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a non-empty list"):
        train_grpo(adapter_path=initial_adapter, prompts=[_prompts(1)[0], []], config=SMOKE_CONFIG, **common)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        train_grpo(adapter_path=tmp_path, prompts=_prompts(2), config=SMOKE_CONFIG, **common)
    with pytest.raises(ValueError, match="max_prompt_length=4"):
        train_grpo(
            adapter_path=initial_adapter, prompts=_prompts(2), config=GRPOTrainConfig(max_prompt_length=4), **common
        )
    assert not (tmp_path / "out").exists()


# --- training on the tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_policy_path: Path, initial_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    calls: list[dict[str, Any]] = []
    out = tmp_path_factory.mktemp("grpo") / "v2"
    metrics = train_grpo(
        base_model_path=tiny_policy_path,
        adapter_path=initial_adapter,
        prompts=_prompts(8),
        reward_fn=word_match,
        out_dir=out,
        config=SMOKE_CONFIG,
        progress=calls.append,
    )
    return {"path": out, "metrics": metrics, "calls": calls}


def test_train_grpo_smoke(initial_adapter: Path, trained: dict[str, Any]) -> None:
    metrics, calls, out = trained["metrics"], trained["calls"], trained["path"]
    assert metrics["steps"] == 3 and [c["step"] for c in calls] == [1, 2, 3]
    assert metrics["n_prompts"] == metrics["n_prompts_used"] == 8
    for call in calls:
        assert 0.0 <= call["reward"] <= 1.0 and call["kl"] >= 0.0
        assert call["rewards/reward_fn/mean"] == pytest.approx(call["reward"])
        assert 1 <= call["completions/mean_length"] <= 12
    # The policy starts as its reference (the starting adapter), so the first KL is zero.
    assert calls[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert calls[-1]["fraction"] == 1.0
    assert metrics["first_reward"] == calls[0]["reward"] and metrics["final_kl"] == calls[-1]["kl"]
    assert json.loads(json.dumps(metrics)) == metrics

    before, after = _lora_tensors(initial_adapter), _lora_tensors(out)
    assert set(after) == set(before) and all(".ref." not in k for k in after)
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 1e-4


def test_reference_is_the_starting_policy(tiny_policy_path: Path, trained: dict[str, Any], tmp_path: Path) -> None:
    """Training from version 2 measures the KL against version 2, not the base model: it starts at zero."""
    calls: list[dict[str, Any]] = []
    config = GRPOTrainConfig(
        max_steps=1, num_generations=2, per_device_train_batch_size=4, max_completion_length=8, beta=0.1
    )
    train_grpo(
        base_model_path=tiny_policy_path,
        adapter_path=trained["path"],
        prompts=_prompts(4),
        reward_fn=word_match,
        out_dir=tmp_path / "v3",
        config=config,
        progress=calls.append,
    )
    assert calls[0]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_train_grpo_with_ensemble_reward_and_no_kl(
    tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path
) -> None:
    def members(prompts: list[Any], completions: list[str]) -> list[list[float]]:
        return [word_match(prompts, completions), [min(len(c), 40) / 40 for c in completions]]

    calls: list[dict[str, Any]] = []
    config = GRPOTrainConfig(
        max_steps=1, num_generations=2, per_device_train_batch_size=4, max_completion_length=8, beta=0.0
    )
    metrics = train_grpo(
        base_model_path=tiny_policy_path,
        adapter_path=initial_adapter,
        prompts=_prompts(4),
        reward_fn=ensemble_reward(members, lam=1.0),
        out_dir=tmp_path / "v2",
        config=config,
        progress=calls.append,
    )
    assert metrics["steps"] == 1 and metrics["final_kl"] is None  # beta = 0: no reference, no KL term
    assert "kl" not in calls[0] and isinstance(calls[0]["reward"], float)


def test_reward_error_stops_training(tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path) -> None:
    def broken(prompts: list[Any], completions: list[str]) -> list[float]:
        raise RuntimeError("reward service down")

    with pytest.raises(RuntimeError, match="reward service down"):
        train_grpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            prompts=_prompts(2),
            reward_fn=broken,
            out_dir=tmp_path / "out",
            config=SMOKE_CONFIG,
        )
    assert not (tmp_path / "out").exists()
