"""Tests for training.dpo: the preference data, the config, and DPO of a LoRA adapter on the tiny model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from training.dpo import (
    DPOTrainConfig,
    PreferencePair,
    build_dpo_records,
    create_initial_adapter,
    train_dpo,
)
from training.tiny_model import chat_corpus

USER = [{"role": "user", "content": "What colour is grass?"}]


def _pairs(n: int = 8) -> list[PreferencePair]:
    """Chosen = the corpus answer the tiny model was pre-trained on; rejected = another question's answer."""
    corpus = chat_corpus()
    pairs = []
    for i in range(n):
        (question, answer), wrong = corpus[i], corpus[(i + 1) % len(corpus)][1]
        prompt = [question] if i % 4 else [{"role": "system", "content": "Answer briefly."}, question]
        pairs.append(
            PreferencePair(prompt=prompt, chosen=answer["content"], rejected=wrong["content"], strength=1 + i % 3)
        )
    return pairs


def _load_policy(base_path: Path, adapter_path: Path | None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_path))
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, str(adapter_path))
    return model.eval()


def _answer_logprob(model, tokenizer, prompt: list[dict[str, str]], answer: str) -> float:
    """Sum of the log-probabilities of the answer's tokens (with its end-of-turn), given the prompt."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    token_logprobs = logprobs.gather(1, ids[0, 1:, None])[:, 0]
    return float(token_logprobs[len(prompt_ids) - 1 :].sum())


def _mean_margin(model, tokenizer, pairs: list[PreferencePair]) -> float:
    margins = [
        _answer_logprob(model, tokenizer, p.prompt, p.chosen) - _answer_logprob(model, tokenizer, p.prompt, p.rejected)
        for p in pairs
    ]
    return sum(margins) / len(margins)


def _lora_tensors(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def initial_adapter(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapters") / "v1"
    assert create_initial_adapter(tiny_policy_path, out, DPOTrainConfig()) == out
    return out


@pytest.fixture(scope="module")
def trained(tiny_policy_path: Path, initial_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Version 2: DPO of the initial adapter on 8 pairs with the default config."""
    out = tmp_path_factory.mktemp("adapters") / "v2"
    calls: list[dict[str, Any]] = []
    metrics = train_dpo(
        base_model_path=tiny_policy_path,
        adapter_path=initial_adapter,
        pairs=_pairs(8),
        out_dir=out,
        config=DPOTrainConfig(),
        progress=calls.append,
    )
    return {"path": out, "metrics": metrics, "calls": calls}


# --- data ---------------------------------------------------------------------------------------


def test_build_dpo_records_format() -> None:
    system = {"role": "system", "content": "Be brief."}
    pairs = [
        PreferencePair(prompt=[system, *USER], chosen="Grass is green.", rejected="Grass is purple.", strength=3),
        PreferencePair(prompt=USER, chosen="Green.", rejected="Blue."),
    ]
    records = build_dpo_records(pairs)
    assert records == [
        {
            "prompt": [system, *USER],
            "chosen": [{"role": "assistant", "content": "Grass is green."}],
            "rejected": [{"role": "assistant", "content": "Grass is purple."}],
        },
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "Green."}],
            "rejected": [{"role": "assistant", "content": "Blue."}],
        },
    ]
    # The records are copies: editing them does not change the pairs.
    records[0]["prompt"][0]["content"] = "changed"
    assert pairs[0].prompt[0]["content"] == "Be brief."
    assert build_dpo_records([]) == []
    with pytest.raises(TypeError, match="PreferencePair"):
        build_dpo_records([{"prompt": USER, "chosen": "a", "rejected": "b"}])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": []}, "non-empty list"),
        ({"prompt": "What colour is grass?"}, "non-empty list"),
        ({"prompt": [{"role": "user"}]}, "exactly 'role' and 'content'"),
        ({"prompt": [{"role": "robot", "content": "hi"}]}, "'robot'"),
        ({"prompt": [{"role": "user", "content": 3}]}, "content must be a string"),
        ({"prompt": [*USER, {"role": "assistant", "content": "Green."}]}, "last prompt message must be from the user"),
        ({"prompt": [{"role": "user", "content": "  "}]}, "last user message must not be empty"),
        ({"chosen": ""}, "chosen must be a non-empty string"),
        ({"rejected": None}, "rejected must be a non-empty string"),
        ({"rejected": "Grass is green."}, "must differ"),
        ({"strength": 0}, "strength must be an integer from 1 to 3, got 0"),
        ({"strength": 4}, "got 4"),
        ({"strength": True}, "got True"),
        ({"strength": 2.0}, "got 2.0"),
    ],
)
def test_preference_pair_validation(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"prompt": USER, "chosen": "Grass is green.", "rejected": "Grass is red."}
    with pytest.raises(ValueError, match=message):
        PreferencePair(**{**fields, **kwargs})


# --- config -------------------------------------------------------------------------------------


def test_config_defaults_and_to_dict() -> None:
    config = DPOTrainConfig()
    data = config.to_dict()
    assert data["loss_type"] == "sigmoid" and data["beta"] == 0.1
    assert data["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert DPOTrainConfig(**data) == config
    assert json.loads(json.dumps(data)) == data
    assert DPOTrainConfig(target_modules=("q_proj",)).target_modules == ["q_proj"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "hinge"}, "loss_type='hinge'"),
        ({"beta": 0.0}, "beta=0.0"),
        ({"label_smoothing": 0.5, "loss_type": "robust"}, "label_smoothing=0.5"),
        ({"label_smoothing": 0.1}, "only applies to loss_type='robust'"),
        ({"learning_rate": -1e-4}, "learning_rate=-0.0001"),
        ({"num_train_epochs": 0}, "num_train_epochs=0"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
        ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps=1.5"),
        ({"max_length": 4}, "max_length=4"),
        ({"lora_r": 0}, "lora_r=0"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
        ({"target_modules": "q_proj"}, "not the string 'q_proj'"),
        ({"target_modules": []}, r"target_modules=\[\]"),
        ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
        ({"bf16": True}, "use_cpu=False"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DPOTrainConfig(**kwargs)


def test_train_dpo_needs_pairs_and_adapter(tmp_path: Path, tiny_policy_path: Path, initial_adapter: Path) -> None:
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            pairs=[],
            out_dir=tmp_path / "out",
            config=DPOTrainConfig(),
        )
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=tmp_path,
            pairs=_pairs(1),
            out_dir=tmp_path / "out",
            config=DPOTrainConfig(),
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            pairs=_pairs(1),
            out_dir=tmp_path / "busy",
            config=DPOTrainConfig(),
        )
    assert not (tmp_path / "out").exists()


# --- adapters and training on the tiny model ----------------------------------------------------


def test_initial_adapter_is_exactly_the_base_model(tiny_policy_path: Path, initial_adapter: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    assert (initial_adapter / "adapter_config.json").is_file()
    adapter_config = json.loads((initial_adapter / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert sorted(adapter_config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    tensors = _lora_tensors(initial_adapter)
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert all(("lora_A" in k) or ("lora_B" in k) for k in tensors)
    assert all(not t.any() for k, t in tensors.items() if "lora_B" in k)
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_A" in k)

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chat_corpus()[:4]]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = _load_policy(tiny_policy_path, None)(**batch).logits
        policy_logits = _load_policy(tiny_policy_path, initial_adapter)(**batch).logits
    assert torch.equal(base_logits, policy_logits)


def test_train_dpo_changes_adapter_weights(initial_adapter: Path, trained: dict[str, Any]) -> None:
    out: Path = trained["path"]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "ref").exists()  # TRL's reference adapter is not saved
    before, after = _lora_tensors(initial_adapter), _lora_tensors(out)
    assert set(after) == set(before)
    assert all(".ref." not in k for k in after)
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(after[k].any() for k in after if "lora_B" in k)
    max_change = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert max_change > 1e-4
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["inference_mode"] is True
    assert not adapter_config.get("modules_to_save")


def test_train_dpo_metrics_and_progress(trained: dict[str, Any]) -> None:
    metrics, calls = trained["metrics"], trained["calls"]
    # 8 pairs, batches of 2, 3 epochs.
    assert metrics["n_pairs"] == 8 and metrics["n_pairs_used"] == 8
    assert metrics["steps"] == 12
    assert metrics["first_loss"] > metrics["final_loss"]
    assert metrics["final_rewards_margins"] > 0
    assert 0.0 <= metrics["final_rewards_accuracies"] <= 1.0
    assert metrics["train_seconds"] > 0
    assert json.loads(json.dumps(metrics)) == metrics

    steps = [c["step"] for c in calls]
    assert steps == list(range(1, 13))
    assert all(c["max_steps"] == 12 for c in calls)
    assert calls[-1]["fraction"] == 1.0
    assert all(a["fraction"] < b["fraction"] for a, b in itertools.pairwise(calls))
    for key in ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        assert all(isinstance(c[key], float) for c in calls), key
    assert calls[0]["loss"] == pytest.approx(metrics["first_loss"])
    assert calls[-1]["loss"] == pytest.approx(metrics["final_loss"])
    # At the first step the policy is still the reference, so the sigmoid loss is exactly ln 2.
    assert calls[0]["loss"] == pytest.approx(0.6931, abs=1e-3)


def test_trained_adapter_prefers_chosen(tiny_policy_path: Path, initial_adapter: Path, trained: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    pairs = _pairs(8)
    before = _mean_margin(_load_policy(tiny_policy_path, initial_adapter), tokenizer, pairs)
    after = _mean_margin(_load_policy(tiny_policy_path, trained["path"]), tokenizer, pairs)
    assert after > before + 0.1, (before, after)


def test_reference_is_the_starting_policy(tiny_policy_path: Path, trained: dict[str, Any], tmp_path: Path) -> None:
    """Training from version 2 measures rewards against version 2, not against the bare base model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    pairs = _pairs(4)
    base_margin = _mean_margin(_load_policy(tiny_policy_path, None), tokenizer, pairs)
    v2_margin = _mean_margin(_load_policy(tiny_policy_path, trained["path"]), tokenizer, pairs)
    # Against the base model, version 2's reward margin (beta x log-prob margin gain) would be far from zero ...
    assert DPOTrainConfig().beta * (v2_margin - base_margin) > 1e-3
    calls: list[dict[str, Any]] = []
    config = DPOTrainConfig(max_steps=2, per_device_train_batch_size=4, loss_type="robust", label_smoothing=0.1)
    metrics = train_dpo(
        base_model_path=tiny_policy_path,
        adapter_path=trained["path"],
        pairs=pairs,
        out_dir=tmp_path / "v3",
        config=config,
        progress=calls.append,
    )
    # ... but at the first step the policy equals its reference, so every reward is zero.
    assert calls[0]["step"] == 1 and metrics["steps"] == 2
    assert calls[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert calls[0]["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert calls[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert _lora_tensors(tmp_path / "v3").keys() == _lora_tensors(trained["path"]).keys()


def test_progress_exception_stops_training(tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path) -> None:
    def cancel(entry: dict[str, Any]) -> None:
        raise RuntimeError(f"cancelled at step {entry['step']}")

    with pytest.raises(RuntimeError, match="cancelled at step 1"):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            pairs=_pairs(4),
            out_dir=tmp_path / "out",
            config=DPOTrainConfig(),
            progress=cancel,
        )
    assert not (tmp_path / "out").exists()


def test_train_dpo_refuses_when_every_prompt_is_too_long(
    tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="max_length=8"):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            pairs=_pairs(2),
            out_dir=tmp_path / "out",
            config=DPOTrainConfig(max_length=8),
        )
    assert not (tmp_path / "out").exists()


# --- weighted pairs -----------------------------------------------------------------------------


def _flipped(pairs: list[PreferencePair], weight: float) -> list[PreferencePair]:
    return [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen, weight=weight) for p in pairs]


def test_records_carry_weights_only_when_they_differ() -> None:
    sound = _pairs(2)
    assert all("weight" not in r for r in build_dpo_records(sound))
    records = build_dpo_records([*sound, *_flipped(sound, 0.25)])
    assert [r["weight"] for r in records] == [1.0, 1.0, 0.25, 0.25]
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        PreferencePair(prompt=USER, chosen="a", rejected="b", weight=-1.0)


def test_weights_let_trusted_labels_outvote_flipped_ones(
    tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path
) -> None:
    """The same 8 sound pairs and the same 8 pairs flipped by an untrusted annotator: equal weights
    cancel out, while weighting the flipped ones down moves the policy towards the sound answers."""
    from transformers import AutoTokenizer

    sound = _pairs(8)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_policy_path))
    margins = {}
    for name, weight in (("equal", 1.0), ("weighted", 0.1)):
        train_dpo(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            pairs=[*sound, *_flipped(sound, weight)],
            out_dir=tmp_path / name,
            config=DPOTrainConfig(learning_rate=1e-3, num_train_epochs=2),
        )
        margins[name] = _mean_margin(_load_policy(tiny_policy_path, tmp_path / name), tokenizer, sound)
    before = _mean_margin(_load_policy(tiny_policy_path, initial_adapter), tokenizer, sound)
    assert margins["weighted"] > before + 0.1, (before, margins)
    assert margins["weighted"] > margins["equal"] + 0.1, (before, margins)
