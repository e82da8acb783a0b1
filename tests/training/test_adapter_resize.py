"""Resizing a LoRA adapter to the recipe's rank keeps its update (exactly when growing)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training.adapters import adapter_rank, resize_adapter


@pytest.fixture(scope="module")
def trained_adapter(tiny_policy_path, tmp_path_factory):
    from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo

    root = tmp_path_factory.mktemp("resize")
    start = create_initial_adapter(tiny_policy_path, root / "v1", DPOTrainConfig())
    pairs = [
        PreferencePair(prompt=[{"role": "user", "content": f"Q{i}?"}], chosen="Yes.", rejected="No.") for i in range(4)
    ]
    train_dpo(
        base_model_path=tiny_policy_path,
        adapter_path=start,
        pairs=pairs,
        out_dir=root / "v2",
        config=DPOTrainConfig(learning_rate=1e-3, max_steps=4),
    )
    return root / "v2"


def _deltas(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return {
        name: scale * weights[name.replace(".lora_A.", ".lora_B.")].float() @ weights[name].float()
        for name in weights
        if ".lora_A." in name
    }


def test_a_larger_rank_keeps_the_update_and_the_models_answers(tiny_policy_path, trained_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert adapter_rank(trained_adapter) == 8
    grown = resize_adapter(trained_adapter, tmp_path / "r16", 16)
    assert adapter_rank(grown) == 16
    before, after = _deltas(trained_adapter), _deltas(grown)
    assert before.keys() == after.keys() and any(d.abs().max() > 1e-4 for d in before.values())
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=1e-5, rtol=1e-4)
    weights = load_file(str(grown / "adapter_model.safetensors"))
    a_name = next(n for n in weights if ".lora_A." in n)
    assert weights[a_name][8:].abs().sum() > 0 and weights[a_name.replace("lora_A", "lora_B")][:, 8:].abs().sum() == 0
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    logits = []
    for folder in (trained_adapter, grown):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_policy_path)), str(folder))
        with torch.no_grad():
            logits.append(model.eval()(input_ids=ids).logits)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


def test_a_smaller_rank_keeps_the_best_approximation(trained_adapter, tmp_path):
    shrunk = resize_adapter(trained_adapter, tmp_path / "r2", 2)
    assert adapter_rank(shrunk) == 2
    for name, delta in _deltas(trained_adapter).items():
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        torch.testing.assert_close(_deltas(shrunk)[name], best, atol=1e-5, rtol=1e-4)


def test_bad_ranks_and_occupied_folders_are_refused(trained_adapter, tmp_path):
    with pytest.raises(ValueError, match="rank=0 must be a positive integer"):
        resize_adapter(trained_adapter, tmp_path / "x", 0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is not empty"):
        resize_adapter(trained_adapter, tmp_path / "full", 4)
