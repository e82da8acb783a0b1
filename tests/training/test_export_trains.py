"""An export of real human preferences trains with TRL as it is: DPOTrainer and RewardTrainer.

PandaLM pairs (three annotators each) are read with ``read_feedback``, reduced to their majority
choice, written with ``write_export(..., "preference")`` to JSON lines, loaded with
``datasets.load_dataset("json", ...)`` and trained for a few steps on the tiny model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training.feedback_io import ImportedItem, preference_rows_from_pairwise, read_feedback, write_export
from training.tiny_model import TinyPolicyConfig, build_tiny_policy

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PANDALM = DATA_DIR / "pandalm-testset-v1.json"
N_ROWS = 16
MAX_CHARS = 240  # prompt + both answers, so that every row fits max_length tokens of the tiny tokenizer
MAX_LENGTH = 160


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model trains ~20x faster on one thread on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(tmp_path_factory.mktemp("export-trains") / "tiny", TinyPolicyConfig(pretrain_steps=0))


def _majority_rows() -> list[dict[str, Any]]:
    """The first N_ROWS short PandaLM pairs with a non-tie majority, as preference rows."""
    if not PANDALM.is_file():
        pytest.skip(f"shared human data not found: {PANDALM} (see ../shared/data/README.md)")
    rows: list[dict[str, Any]] = []
    for item in read_feedback(PANDALM, "pandalm"):
        if not isinstance(item, ImportedItem):
            continue
        texts = [c.text for c in item.candidates]
        size = len(item.messages[-1]["content"]) + sum(len(t) for t in texts)
        (choice, votes), *_ = Counter(label.choice for label in item.labels).most_common(1)
        if size > MAX_CHARS or votes < 2 or choice not in ("a", "b") or not all(texts):
            continue
        rows += preference_rows_from_pairwise(item.messages, texts, choice)
        if len(rows) == N_ROWS:
            return rows
    raise AssertionError(f"PandaLM has fewer than {N_ROWS} short majority pairs")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    from datasets import load_dataset

    tmp = tmp_path_factory.mktemp("export")
    path = tmp / "pandalm-preference.jsonl"
    assert write_export(_majority_rows(), path, "preference") == N_ROWS
    ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp / "cache"))
    assert len(ds) == N_ROWS
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "margin"}
    assert ds[0]["prompt"][-1]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    return ds


def _snapshot(model) -> dict[str, Any]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _changed(model, before: dict[str, Any]) -> int:
    import torch

    now = dict(model.named_parameters())
    return sum(not torch.equal(now[name].detach(), value) for name, value in before.items())


def _train_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _common_args(out_dir: Path) -> dict[str, Any]:
    return {
        "output_dir": str(out_dir),
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_length": MAX_LENGTH,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
        "data_seed": 0,
    }


def test_dpo_trains_on_exported_preferences(dataset, tiny_model_path: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path))
    args = DPOConfig(**_common_args(tmp_path / "dpo"), learning_rate=1e-3, beta=0.1)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    assert len(trainer.train_dataset) == N_ROWS  # no prompt was dropped as too long
    before = _snapshot(model)
    loss_before = trainer.evaluate()["eval_loss"]
    assert loss_before == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at the start
    trainer.train()
    losses = _train_losses(trainer)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0]
    assert _changed(model, before) > 0
    assert trainer.evaluate()["eval_loss"] < loss_before - 0.05


def test_reward_model_trains_on_exported_preferences(dataset, tiny_model_path: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_path), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**_common_args(tmp_path / "reward"), learning_rate=3e-3)
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    assert len(trainer.train_dataset) == N_ROWS  # every pair fits max_length (longer ones are dropped)
    before = _snapshot(model)
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    losses = _train_losses(trainer)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0]
    assert _changed(model, before) > 0
    assert trainer.evaluate()["eval_loss"] < loss_before
