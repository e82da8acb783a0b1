"""A DPO run on two processes over gloo (training.launch under torchrun, through the Trainer's
accelerate), on the CPU, with DDP and with FSDP2: its adapter is the one-process run's with the same
effective batch, within 1e-5 (float32 sums in another order), and process 0 reports every step. A
cancel that stops both processes is tested where a user cancels, through the API
(tests/e2e/test_processes.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from training.dpo import DPOTrainConfig, PreferencePair, create_initial_adapter, train_dpo
from training.launch import run_on_processes

PAIRS = [
    PreferencePair(prompt=[{"role": "user", "content": "Hi?"}], chosen="Hello there!", rejected="Go away."),
    PreferencePair(prompt=[{"role": "user", "content": "Sky?"}], chosen="Blue.", rejected="Green."),
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def start(tiny_policy_path, tmp_path_factory):
    return create_initial_adapter(tiny_policy_path, tmp_path_factory.mktemp("v1") / "v1", DPOTrainConfig())


def _kwargs(base, start, out, per_process_batch: int, sharding: str = "ddp") -> dict:
    # two pairs, an effective batch of two: every step sees both pairs, whatever order each takes
    config = DPOTrainConfig(
        max_steps=3, per_device_train_batch_size=per_process_batch, learning_rate=1e-3, sharding=sharding
    )
    return {"base_model_path": base, "adapter_path": start, "pairs": PAIRS, "out_dir": out, "config": config}


@pytest.fixture(scope="module")
def one_process(tiny_policy_path, start, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one"
    return train_dpo(**_kwargs(tiny_policy_path, start, out, 2)), out


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train_the_adapter_one_process_trains(tiny_policy_path, start, one_process, tmp_path, sharding):
    """DDP (a copy of the model on each process) and FSDP2 (weights, gradients and optimiser state
    split over them, read back from the trainer: an ignored setting would show "ddp")."""
    one, one_dir = one_process
    seen: list[dict] = []
    two = run_on_processes(
        "training.dpo.train_dpo", _kwargs(tiny_policy_path, start, tmp_path / "two", 1, sharding),
        processes=2, work_dir=tmp_path / "work", progress=seen.append,
    )  # fmt: skip
    assert one["sharding"] == "none" and two["sharding"] == sharding
    assert two["steps"] == one["steps"] == 3 and [s["step"] for s in seen] == [1, 2, 3]
    a, b = (load_file(str(folder / "adapter_model.safetensors")) for folder in (one_dir, tmp_path / "two"))
    before = load_file(str(start / "adapter_model.safetensors"))
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 100 * TOLERANCE and gap < TOLERANCE, (moved, gap)
    assert torch.allclose(torch.tensor(one["final_loss"]), torch.tensor(two["final_loss"]), atol=1e-4)
