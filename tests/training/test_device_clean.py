"""Inputs go where the model is (training.device), proved without a GPU: the model is loaded on the
CPU, then each step runs with torch's default device set to `meta` (shapes only, no data), so a
tensor built without the model's device lands beside it on another device and the step fails
loudly, as it would beside a model on a GPU. The LiPO trainer and the gate's log-probabilities
once failed so (`sequence_logps`)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from training.adapters import load_trainable_policy
from training.device import Placement, device_of, placement
from training.dpo import DPOTrainConfig
from training.lipo import LiPOTrainConfig, RankedAnswers, lipo_step_loss, sequence_logps

PROMPT = [{"role": "user", "content": "Count to three."}]
ANSWERS = ["one two three", "one three", "three"]


@pytest.fixture(scope="module")
def policy(tiny_policy_path, tmp_path_factory):
    from transformers import AutoTokenizer

    from training.dpo import create_initial_adapter

    start = create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("adapter") / "v1", DPOTrainConfig())
    model = load_trainable_policy(tiny_policy_path, start, bf16=False).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_policy_path))


@contextmanager
def default_device_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


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


def test_a_tensor_built_without_the_models_device_fails_loudly(policy):
    """What the tests above guard against (the LiPO trainer's `sequence_logps` failed so, with
    "Cannot copy out of meta tensor"): a tensor made on the default device, used beside the model."""
    model, _ = policy
    with default_device_meta(), pytest.raises(NotImplementedError, match="meta"):
        torch.arange(3).to(device_of(model))


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
