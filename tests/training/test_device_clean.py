"""Inputs go where the model is (training.device), proved without a GPU for every run kind and the
gate: the models are loaded on the CPU, then each step runs with torch's default device set to
`meta` (shapes only, no data), so a tensor built without the model's device lands beside it on
another device and the step fails loudly, as it would beside a model on a GPU.

Host-side data is the one exception, as it is on a GPU worker: a tokenizer's tensors and a collated
batch are made on the CPU and moved to the model in one step, so they are made on the CPU here too
(:func:`host_data_on_the_cpu`). Everything else in a step must say its device.

What runs on `meta`: every TRL trainer's `training_step` (DPO plain and weighted, KTO, GRPO with
each of its two rewards, the reward model) through the real `train_*` functions; LiPO's step and
reference log-probabilities; the reward model's head probe; the gate's measurements; reward and
follow-up scoring. The LiPO trainer and the gate's log-probabilities once failed so
(`sequence_logps`), and so did the reward model's head probe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from training.adapters import load_trainable_policy
from training.device import Placement, device_of, placement
from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo
from training.lipo import LiPOTrainConfig, RankedAnswers, lipo_step_loss, sequence_logps

PROMPT = [{"role": "user", "content": "Count to three."}]
ANSWERS = ["one two three", "one three", "three"]
SKY = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the tiny model is fastest on one thread


@pytest.fixture(scope="module")
def start(tiny_policy_path, tmp_path_factory) -> Path:
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("adapter") / "v1", DPOTrainConfig())


@pytest.fixture(scope="module")
def policy(tiny_policy_path, start):
    from transformers import AutoTokenizer

    model = load_trainable_policy(tiny_policy_path, start, bf16=False).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_policy_path))


@contextmanager
def default_device_meta():
    with torch.device("meta"):
        yield


def _on(device: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.device(device):
            return fn(*args, **kwargs)

    return wrapper


def host_data_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenizer output and collated batches are made on the CPU (then moved), as on a GPU worker."""
    from torch.utils.data.dataloader import _BaseDataLoaderIter
    from transformers.tokenization_utils_base import BatchEncoding

    from training.reward.inputs import _ListCollator

    monkeypatch.setattr(BatchEncoding, "convert_to_tensors", _on("cpu", BatchEncoding.convert_to_tensors))
    monkeypatch.setattr(_BaseDataLoaderIter, "__next__", _on("cpu", _BaseDataLoaderIter.__next__))
    monkeypatch.setattr(_ListCollator, "__call__", _on("cpu", _ListCollator.__call__))


def steps_on_meta(monkeypatch: pytest.MonkeyPatch, *functions: tuple[Any, str], trainer_step: bool = True) -> None:
    """Every Trainer's `training_step` (unless `trainer_step` is False), and each `(owner, name)` of
    `functions`, runs with the default device `meta`; host-side data stays on the CPU."""
    from transformers import Trainer

    host_data_on_the_cpu(monkeypatch)
    for owner, name in ((Trainer, "training_step"),) * trainer_step + functions:
        monkeypatch.setattr(owner, name, _on("meta", getattr(owner, name)))


def grpo_steps_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO's step pads its sampled prompts on the host inside TRL's `training_step`, so its rewards
    (ours: the reward ensemble, the follow-up scorer) and its loss run on `meta` instead."""
    from trl import GRPOTrainer

    steps_on_meta(monkeypatch, (GRPOTrainer, "_calculate_rewards"), (GRPOTrainer, "compute_loss"), trainer_step=False)


def _pairs(weighted: bool) -> list[PreferencePair]:
    return [
        PreferencePair(prompt=PROMPT, chosen="one two three", rejected="three", weight=0.5 if weighted else 1.0),
        PreferencePair(prompt=SKY, chosen="Blue.", rejected="Green."),
    ]


def _reward_model(tiny_policy_path: Path, folder: Path) -> Path:
    from training.reward import PreferenceExample, RewardConfig, train_reward_model

    examples = [
        PreferenceExample(prompt=SKY, chosen="Blue.", rejected="Green."),
        PreferenceExample(prompt=PROMPT, chosen="one two three", rejected="three", strength=2),
        PreferenceExample(prompt=SKY, chosen="Blue sky.", rejected="Grey.", tie=True),
    ]
    config = RewardConfig(
        backbone=str(tiny_policy_path), max_length=48, max_steps=2, per_device_train_batch_size=2,
        head_init="probe", length_robust=True, average_last=0.5, ensemble_size=2, ensemble_method="heads",
    )  # fmt: skip
    metrics = train_reward_model(examples, folder, config)
    assert metrics["members"][0]["steps"] == 2
    return folder


@pytest.fixture(scope="module")
def reward_model(tiny_policy_path, tmp_path_factory) -> Path:
    """A reward model with a probed head, a length expert and two score heads, trained with its
    steps and its head probe on `meta`."""
    from training.reward import heads, train

    with pytest.MonkeyPatch.context() as monkeypatch:
        steps_on_meta(monkeypatch, (heads, "_head_features"))
        assert train.fit_head_by_probe.__module__ == heads.__name__  # the probe reads heads._head_features
        return _reward_model(tiny_policy_path, tmp_path_factory.mktemp("rm") / "rm")


# --------------------------------------------------------------------------- each run kind


def test_sequence_logps_builds_every_input_on_the_models_device(policy):
    model, tokenizer = policy
    with torch.no_grad():
        expected = sequence_logps(model, tokenizer, PROMPT, ANSWERS, 64)
        with default_device_meta():
            logps = sequence_logps(model, tokenizer, PROMPT, ANSWERS, 64)
    assert logps.device == device_of(model) and torch.allclose(logps, expected)


def test_a_lipo_step_runs_where_the_model_is(policy):
    model, tokenizer = policy
    ranking = RankedAnswers(prompt=PROMPT, completions=ANSWERS, ranks=[0, 1, 2])
    reference = torch.zeros(3)
    with default_device_meta():
        loss, diagnostics = lipo_step_loss(model, tokenizer, ranking, reference, LiPOTrainConfig(max_length=64))
        loss.backward()
    assert loss.device == device_of(model) and torch.isfinite(loss)
    assert all(v.device == device_of(model) for v in diagnostics.values() if isinstance(v, torch.Tensor))
    model.zero_grad()


def test_a_lipo_run_scores_and_steps_where_the_model_is(tiny_policy_path, start, tmp_path, monkeypatch):
    import training.lipo as lipo

    steps_on_meta(monkeypatch, (lipo, "sequence_logps"), (lipo, "lipo_step_loss"))
    ranking = RankedAnswers(prompt=PROMPT, completions=ANSWERS, ranks=[0, 1, 1])
    metrics = lipo.train_lipo(
        base_model_path=tiny_policy_path, adapter_path=start, rankings=[ranking], out_dir=tmp_path / "out",
        config=LiPOTrainConfig(max_length=64, epochs=2),
    )  # fmt: skip
    assert metrics["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("weighted", [False, True], ids=["dpo", "weighted-dpo"])
def test_a_dpo_run_steps_where_the_model_is(tiny_policy_path, start, tmp_path, monkeypatch, weighted):
    steps_on_meta(monkeypatch)
    metrics = train_dpo(
        base_model_path=tiny_policy_path, adapter_path=start, pairs=_pairs(weighted), out_dir=tmp_path / "out",
        config=DPOTrainConfig(max_steps=2),
    )  # fmt: skip
    assert metrics["steps"] == 2 and (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_a_kto_run_steps_where_the_model_is(tiny_policy_path, start, tmp_path, monkeypatch):
    from training.kto import KTOTrainConfig, ThumbExample, train_kto

    steps_on_meta(monkeypatch)
    thumbs = [
        ThumbExample(prompt=SKY, completion="Blue.", desirable=True),
        ThumbExample(prompt=SKY, completion="Green.", desirable=False),
        ThumbExample(prompt=PROMPT, completion="one two three", desirable=True),
        ThumbExample(prompt=PROMPT, completion="three", desirable=False),
    ]
    metrics = train_kto(
        base_model_path=tiny_policy_path, adapter_path=start, examples=thumbs, out_dir=tmp_path / "out",
        config=KTOTrainConfig(max_steps=2, per_device_train_batch_size=2),
    )  # fmt: skip
    assert metrics["steps"] == 2


def _grpo(tiny_policy_path: Path, start: Path, out: Path, reward_fn) -> dict[str, Any]:
    from training.grpo import GRPOTrainConfig, train_grpo

    config = GRPOTrainConfig(
        max_steps=2, num_generations=2, per_device_train_batch_size=4, max_completion_length=6, temperature=1.5
    )
    return train_grpo(
        base_model_path=tiny_policy_path, adapter_path=start, prompts=[PROMPT, SKY], reward_fn=reward_fn,
        out_dir=out, config=config,
    )  # fmt: skip


def test_a_grpo_run_scores_and_steps_where_the_models_are(tiny_policy_path, start, reward_model, tmp_path, monkeypatch):
    from training.grpo import ensemble_reward
    from training.reward import RewardEnsemble

    grpo_steps_on_meta(monkeypatch)
    ensemble = RewardEnsemble.load([reward_model])
    seen: list[int] = []

    def members(prompts, completions):
        seen.append(len(completions))
        return ensemble.score(prompts, completions)["members"]

    metrics = _grpo(tiny_policy_path, start, tmp_path / "out", ensemble_reward(members, 1.0))
    assert metrics["steps"] == 2 and seen and metrics["final_reward"] is not None


def test_a_grpo_run_on_follow_ups_scores_where_the_scorer_is(tiny_policy_path, start, tmp_path, monkeypatch):
    from training.followup import FollowupScorer
    from training.grpo import followup_reward

    grpo_steps_on_meta(monkeypatch)
    scorer = FollowupScorer.from_pretrained(tiny_policy_path, device=placement("cpu").device)
    metrics = _grpo(tiny_policy_path, start, tmp_path / "out", followup_reward(scorer))
    assert metrics["steps"] == 2 and metrics["final_reward"] is not None


def test_a_reward_model_trains_and_scores_where_it_is(reward_model):
    """Trained by the fixture (steps and head probe on `meta`); here its scores are read on `meta`."""
    from training.reward import RewardEnsemble

    ensemble = RewardEnsemble.load([reward_model])
    expected = ensemble.score([SKY, SKY], ["Blue.", "Green."])
    with default_device_meta():
        scores = ensemble.score([SKY, SKY], ["Blue.", "Green."])
    assert scores == expected and len(scores["members"]) == 2


def test_the_gate_measures_where_the_models_are(tiny_policy_path, start, reward_model, tmp_path, monkeypatch):
    import training.gate as gate
    from training.reward import RewardEnsemble

    candidate = train_dpo(
        base_model_path=tiny_policy_path, adapter_path=start, pairs=_pairs(False), out_dir=tmp_path / "v2",
        config=DPOTrainConfig(max_steps=1),
    )  # fmt: skip
    assert candidate["steps"] == 1
    ensemble = RewardEnsemble.load([reward_model])
    steps_on_meta(
        monkeypatch, (gate, "heldout_accuracy"), (gate, "kl_from_serving"), (gate, "win_rate"),
        (gate.PolicyPair, "sample"),
    )  # fmt: skip
    figures = gate.evaluate_candidate(
        base_model_path=tiny_policy_path, candidate_adapter=tmp_path / "v2", serving_adapter=start,
        pairs=[{"prompt": SKY, "chosen": "Blue.", "rejected": "Green."}], prompts=[PROMPT, SKY],
        score_members=lambda p, c: ensemble.score(p, c)["members"],
        config=gate.GateConfig(max_length=64, max_tokens=6, device=placement("cpu").device),
    )  # fmt: skip
    assert set(figures) == {"heldout_accuracy", "kl", "win_rate"}


# --------------------------------------------------------------------------- the guard itself


def test_a_tensor_built_without_the_models_device_fails_loudly(policy):
    """What the tests above guard against (the LiPO trainer's `sequence_logps` failed so, with
    "Cannot copy out of meta tensor"): a tensor made on the default device, used beside the model."""
    model, _ = policy
    with default_device_meta(), pytest.raises(NotImplementedError, match="meta"):
        torch.arange(3).to(device_of(model))


def test_the_guard_reaches_inside_a_trainers_step(tiny_policy_path, start, tmp_path, monkeypatch):
    """A loss that makes one tensor on the default device fails the run under the guard, so the runs
    above did make every tensor of their steps where the model is."""
    from trl import DPOTrainer

    compute_loss = DPOTrainer.compute_loss

    def careless(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * torch.ones(()).to(loss.device)

    monkeypatch.setattr(DPOTrainer, "compute_loss", careless)
    steps_on_meta(monkeypatch)
    with pytest.raises(NotImplementedError, match="meta"):
        train_dpo(
            base_model_path=tiny_policy_path, adapter_path=start, pairs=_pairs(False), out_dir=tmp_path / "out",
            config=DPOTrainConfig(max_steps=1),
        )  # fmt: skip


def test_one_place_decides_device_and_precision():
    cpu = placement("cpu")
    assert cpu == Placement(device="cpu", bf16=False) and cpu.use_cpu and cpu.dtype == torch.float32
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert placement("auto").device == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            placement("cuda")
    with pytest.raises(ValueError, match="one of auto, cpu, cuda"):
        placement("tpu")
