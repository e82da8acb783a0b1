"""Tests for training.kto: thumbs, the config, and KTO of a LoRA adapter on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.dpo import DPOTrainConfig, create_initial_adapter
from training.kto import (
    KTOTrainConfig,
    ThumbExample,
    balanced_weights,
    build_kto_records,
    train_kto,
)
from training.tiny_model import chat_corpus

USER = [{"role": "user", "content": "What colour is grass?"}]
# 4 epochs of 4 batches of 4 thumbs; a high learning rate so the tiny adapter moves within seconds.
TRAIN_CONFIG = KTOTrainConfig(learning_rate=1e-3, num_train_epochs=4, per_device_train_batch_size=4)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the tiny model is fastest on one thread; more only contend on a busy machine


def _thumbs(n_questions: int = 8) -> list[ThumbExample]:
    """Thumbs up for the corpus answer the tiny model was pre-trained on, down for another question's answer."""
    corpus = chat_corpus()
    thumbs = []
    for i in range(n_questions):
        (question, answer), wrong = corpus[i], corpus[(i + 1) % len(corpus)][1]
        thumbs.append(ThumbExample(prompt=[question], completion=answer["content"], desirable=True))
        thumbs.append(ThumbExample(prompt=[question], completion=wrong["content"], desirable=False))
    return thumbs


def _answer_logprob(model, tokenizer, prompt: list[dict[str, str]], answer: str) -> float:
    """Sum of the log-probabilities of the answer's tokens (with its end-of-turn), given the prompt."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    n_prompt = len(tokenizer(prompt_ids, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return float(logprobs.gather(1, ids[0, 1:, None])[:, 0][n_prompt - 1 :].sum())


def _margin(base: Path, adapter: Path, thumbs: list[ThumbExample]) -> float:
    """Mean log-prob of liked answers minus mean log-prob of disliked ones under base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).eval()
    up = [_answer_logprob(model, tokenizer, t.prompt, t.completion) for t in thumbs if t.desirable]
    down = [_answer_logprob(model, tokenizer, t.prompt, t.completion) for t in thumbs if not t.desirable]
    return sum(up) / len(up) - sum(down) / len(down)


def _lora_tensors(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def initial_adapter(tiny_policy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("adapters") / "v1", DPOTrainConfig())


@pytest.fixture(scope="module")
def trained(tiny_policy_path: Path, initial_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("kto") / "v2"
    calls: list[dict[str, Any]] = []
    metrics = train_kto(
        base_model_path=tiny_policy_path,
        adapter_path=initial_adapter,
        examples=_thumbs(8),
        out_dir=out,
        config=TRAIN_CONFIG,
        progress=calls.append,
    )
    return {"path": out, "metrics": metrics, "calls": calls}


# --- data and config ----------------------------------------------------------------------------


def test_build_kto_records_format() -> None:
    system = {"role": "system", "content": "Be brief."}
    thumbs = [
        ThumbExample(prompt=[system, *USER], completion="Grass is green.", desirable=True),
        ThumbExample(prompt=USER, completion="Grass is purple.", desirable=False),
    ]
    records = build_kto_records(thumbs)
    assert records == [
        {
            "prompt": [system, *USER],
            "completion": [{"role": "assistant", "content": "Grass is green."}],
            "label": True,
        },
        {"prompt": USER, "completion": [{"role": "assistant", "content": "Grass is purple."}], "label": False},
    ]
    records[0]["prompt"][0]["content"] = "changed"  # records are copies
    assert thumbs[0].prompt[0]["content"] == "Be brief."
    assert build_kto_records([]) == []
    with pytest.raises(TypeError, match="ThumbExample"):
        build_kto_records([{"prompt": USER, "completion": "a", "label": True}])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": []}, "non-empty list"),
        ({"prompt": [{"role": "user"}]}, "exactly 'role' and 'content'"),
        ({"prompt": [{"role": "robot", "content": "hi"}]}, "'robot'"),
        ({"prompt": [*USER, {"role": "assistant", "content": "Green."}]}, "must be from the user"),
        ({"completion": " "}, "completion must be a non-empty string"),
        ({"desirable": 1}, "desirable must be True or False, got 1"),
    ],
)
def test_thumb_validation(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"prompt": USER, "completion": "Grass is green.", "desirable": True}
    with pytest.raises(ValueError, match=message):
        ThumbExample(**{**fields, **kwargs})


def test_config_defaults_and_to_dict() -> None:
    config = KTOTrainConfig()
    data = config.to_dict()
    assert data["loss_type"] == "kto" and data["beta"] == 0.1 and data["balance_weights"] is True
    assert KTOTrainConfig(**data) == config
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "sigmoid"}, "loss_type='sigmoid'"),
        ({"beta": 0.0}, "beta=0.0"),
        ({"desirable_weight": -1.0}, "desirable_weight=-1.0"),
        ({"learning_rate": float("nan")}, "learning_rate=nan"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"per_device_train_batch_size": 1}, "per_device_train_batch_size=1 must be >= 2"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        ({"max_length": 4}, "max_length=4"),
        ({"bf16": True}, "use_cpu=False"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KTOTrainConfig(**kwargs)


def test_unpaired_loss_allows_batches_of_one() -> None:
    assert KTOTrainConfig(loss_type="apo_zero_unpaired", per_device_train_batch_size=1).per_device_train_batch_size == 1


def test_balanced_weights() -> None:
    config = KTOTrainConfig()
    assert balanced_weights(4, 4, config) == (1.0, 1.0)
    assert balanced_weights(2, 6, config) == (3.0, 1.0)  # 2 * 3.0 == 6 * 1.0
    assert balanced_weights(6, 3, config) == (1.0, 2.0)
    assert balanced_weights(5, 0, config) == (1.0, 1.0)  # one label only: nothing to balance
    assert balanced_weights(2, 6, KTOTrainConfig(balance_weights=False, undesirable_weight=0.5)) == (1.0, 0.5)


def test_train_kto_refuses_bad_input(tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path) -> None:
    common = {"base_model_path": tiny_policy_path, "config": KTOTrainConfig(), "out_dir": tmp_path / "out"}
    with pytest.raises(ValueError, match="at least one thumb"):
        train_kto(adapter_path=initial_adapter, examples=[], **common)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        train_kto(adapter_path=tmp_path, examples=_thumbs(1), **common)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        train_kto(adapter_path=initial_adapter, examples=_thumbs(1), **{**common, "out_dir": tmp_path / "busy"})
    with pytest.raises(ValueError, match="max_length=8"):
        train_kto(
            adapter_path=initial_adapter, examples=_thumbs(2), **{**common, "config": KTOTrainConfig(max_length=8)}
        )
    assert not (tmp_path / "out").exists()


# --- training on the tiny model -----------------------------------------------------------------


def test_train_kto_changes_adapter_weights(initial_adapter: Path, trained: dict[str, Any]) -> None:
    out: Path = trained["path"]
    assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()
    before, after = _lora_tensors(initial_adapter), _lora_tensors(out)
    assert set(after) == set(before) and all(".ref." not in k for k in after)
    assert any(after[k].any() for k in after if "lora_B" in k)  # lora_B starts at 0
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 1e-4


def test_train_kto_loss_falls_and_progress(trained: dict[str, Any]) -> None:
    metrics, calls = trained["metrics"], trained["calls"]
    # 16 thumbs in batches of 4 for 4 epochs; the order is fixed, so epoch k sees the same batches as epoch 1.
    assert metrics["steps"] == 16 and [c["step"] for c in calls] == list(range(1, 17))
    assert metrics["n_examples"] == metrics["n_examples_used"] == 16
    assert metrics["n_desirable"] == metrics["n_undesirable"] == 8
    assert metrics["desirable_weight"] == metrics["undesirable_weight"] == 1.0
    assert calls[-1]["fraction"] == 1.0 and all(c["max_steps"] == 16 for c in calls)
    # At the first step the policy equals its reference: every implied reward is 0, the KL point is 0,
    # and each KTO term is 1 - sigmoid(0) = 0.5.
    assert calls[0]["loss"] == pytest.approx(0.5, abs=1e-4)
    assert calls[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert calls[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    epoch_loss = [sum(c["loss"] for c in calls[e * 4 : e * 4 + 4]) / 4 for e in range(4)]
    assert epoch_loss[3] < epoch_loss[0] - 0.01, epoch_loss
    assert metrics["first_loss"] == calls[0]["loss"] and metrics["final_loss"] == calls[-1]["loss"]
    assert metrics["final_rewards_chosen"] > metrics["final_rewards_rejected"]
    assert json.loads(json.dumps(metrics)) == metrics


def test_trained_adapter_prefers_liked_answers(
    tiny_policy_path: Path, initial_adapter: Path, trained: dict[str, Any]
) -> None:
    thumbs = _thumbs(8)
    before = _margin(tiny_policy_path, initial_adapter, thumbs)
    after = _margin(tiny_policy_path, trained["path"], thumbs)
    assert after > before + 0.5, (before, after)


def test_reference_is_the_starting_policy(tiny_policy_path: Path, trained: dict[str, Any], tmp_path: Path) -> None:
    """Training from version 2 measures rewards against version 2, so they start at zero again."""
    calls: list[dict[str, Any]] = []
    thumbs = [t for t in _thumbs(4) if t.desirable] + [t for t in _thumbs(4) if not t.desirable][:2]
    metrics = train_kto(
        base_model_path=tiny_policy_path,
        adapter_path=trained["path"],
        examples=thumbs,  # 4 up, 2 down: balancing doubles the thumbs-down weight
        out_dir=tmp_path / "v3",
        config=KTOTrainConfig(max_steps=1, per_device_train_batch_size=6),
        progress=calls.append,
    )
    assert metrics["steps"] == 1 and (metrics["desirable_weight"], metrics["undesirable_weight"]) == (1.0, 2.0)
    assert calls[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert calls[0]["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert _lora_tensors(tmp_path / "v3").keys() == _lora_tensors(trained["path"]).keys()


def test_progress_exception_stops_training(tiny_policy_path: Path, initial_adapter: Path, tmp_path: Path) -> None:
    def cancel(entry: dict[str, Any]) -> None:
        raise RuntimeError(f"cancelled at step {entry['step']}")

    with pytest.raises(RuntimeError, match="cancelled at step 1"):
        train_kto(
            base_model_path=tiny_policy_path,
            adapter_path=initial_adapter,
            examples=_thumbs(2),
            out_dir=tmp_path / "out",
            config=KTOTrainConfig(),
            progress=cancel,
        )
    assert not (tmp_path / "out").exists()
